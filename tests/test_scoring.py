"""scoring.py against hand-computed log-likelihoods: a scripted bigram "model" whose next-token logits depend only
on the current token, so every score is a sum of known log-softmax values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from pytest_quantbench import scoring

VOCAB = {"<s>": 0, "a": 1, "b": 2, " ": 3, "x": 4}
HIT = 1 - math.log(math.e + 4)  # log-softmax of the favoured next token (logit 1 among four 0s)
MISS = -math.log(math.e + 4)


class CharTokenizer:
    """One token per character; <s> is BOS and is never added by `encode`."""

    bos_token, bos_token_id, eos_token_id, pad_token_id = "<s>", 0, 0, 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [VOCAB[c] for c in text]


class _Cache:
    def __init__(self):
        self.layers = []

    def reorder_cache(self, rows):
        self.rows = rows


class BigramModel:
    """Logits at a position favour token (current + 1) % 5; counts forward passes and the positions projected."""

    def __init__(self):
        self.config = SimpleNamespace(max_position_embeddings=64)
        self.device = torch.device("cpu")
        self.calls: list[tuple[int, int, int]] = []  # (rows, input width, logits kept)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0,
                past_key_values=None):
        table = torch.zeros(5, 5)
        table[torch.arange(5), (torch.arange(5) + 1) % 5] = 1.0
        logits = table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        self.calls.append((input_ids.shape[0], input_ids.shape[1], logits.shape[1]))
        return SimpleNamespace(logits=logits, past_key_values=_Cache() if use_cache else None)

    __call__ = forward


def test_encode_pair_moves_trailing_space_and_uses_bos_for_empty_context():
    tok = CharTokenizer()
    assert scoring.encode_pair(tok, "ab ", "a") == ([1, 2], [3, 1])
    assert scoring.encode_pair(tok, "", "ab") == ([0], [1, 2])


def test_single_token_choices_share_one_forward_pass_and_match_hand_values():
    model, tok = BigramModel(), CharTokenizer()
    # Two questions, four one-token choices each: a->b is the favoured transition.
    requests = [("ba", c) for c in "ab x"] + [("ab", c) for c in "ab x"]
    scores = scoring.loglikelihood(model, tok, requests)
    expected_first = [MISS, HIT, MISS, MISS]  # after "a" the favoured token is "b"
    expected_second = [MISS, MISS, HIT, MISS]  # after "b" it is " "
    assert [round(s, 6) for s, _ in scores] == [round(v, 6) for v in expected_first + expected_second]
    assert [g for _, g in scores] == [False, True, False, False, False, False, True, False]
    assert len(model.calls) == 1 and model.calls[0][2] == 1  # one pass, only the last position's logits


def test_multi_token_continuations_continue_from_the_context():
    model, tok = BigramModel(), CharTokenizer()
    scores = scoring.loglikelihood(model, tok, [("a", "b a"), ("a", "bx"), ("b", " ")])
    # a->b HIT, b->' ' HIT, ' '->a MISS; a->b HIT, b->x MISS; b->' ' HIT
    assert scores[0][0] == pytest.approx(2 * HIT + MISS, abs=1e-6) and scores[0][1] is False
    assert scores[1][0] == pytest.approx(HIT + MISS, abs=1e-6)
    assert scores[2] == (pytest.approx(HIT, abs=1e-6), True)
    # Contexts in one pass; the two longer continuations in one more pass that keeps only their positions.
    assert len(model.calls) == 2 and model.calls[1][:2] == (2, 2)


def test_packed_rows_score_each_continuation_from_its_own_positions():
    """A model that takes a custom mask scores a context and its longer continuations in one packed pass: the
    context's last position predicts every first token, each continuation's inputs predict its next tokens."""
    model, tok = BigramModel(), CharTokenizer()
    model.config._attn_implementation = "sdpa"
    requests = [("a", "b a"), ("a", "bx"), ("a", "a"), ("bab", " "), ("b", " x")]
    scores = scoring.loglikelihood(model, tok, requests)
    assert scores[0][0] == pytest.approx(2 * HIT + MISS, abs=1e-6) and scores[0][1] is False
    assert scores[1][0] == pytest.approx(HIT + MISS, abs=1e-6)
    assert scores[2] == (pytest.approx(MISS, abs=1e-6), False)
    assert scores[3] == (pytest.approx(HIT, abs=1e-6), True)  # one-token choices: the context alone
    assert scores[4] == (pytest.approx(2 * HIT, abs=1e-6), True)
    # "a" and "b" packed in one pass (inputs "a" + "b " + "b" + "", and "b" + " "), then "bab" with its one token
    assert [call[:2] for call in model.calls] == [(2, 4), (1, 3)]
    ids, positions, mask, tails = scoring._packed_rows(
        [scoring.Group([1], [[2, 3, 1], [2, 4]]), scoring.Group([2, 1, 2], [[3, 1]])], 0, "cpu")
    assert ids.tolist() == [[1, 2, 3, 2], [2, 1, 2, 3]] and tails == [4, 2]
    assert positions.tolist() == [[0, 1, 2, 1], [0, 1, 2, 3]]  # the second choice starts again after the context
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]


def test_packing_needs_sdpa_and_no_sliding_window():
    config = SimpleNamespace(_attn_implementation="sdpa")
    assert scoring.packs(SimpleNamespace(config=config))
    assert not scoring.packs(SimpleNamespace(config=SimpleNamespace(_attn_implementation="eager")))
    windowed = SimpleNamespace(_attn_implementation="sdpa", sliding_window=4096, use_sliding_window=True)
    assert not scoring.packs(SimpleNamespace(config=windowed))
    unused = SimpleNamespace(_attn_implementation="sdpa", sliding_window=4096, use_sliding_window=False)
    assert scoring.packs(SimpleNamespace(config=unused))


def test_results_come_back_in_request_order_whatever_the_batching():
    model, tok = BigramModel(), CharTokenizer()
    requests = [("a" * n, c) for n in (1, 7, 3, 12) for c in "ab"]
    batched = scoring.loglikelihood(model, tok, requests)
    one_by_one = [scoring.loglikelihood(model, tok, [r])[0] for r in requests]
    tiny_batches = scoring.loglikelihood(model, tok, requests, token_budget=1)
    assert batched == one_by_one == tiny_batches


def test_batches_sort_longest_first_within_budget_and_weigh_padding_against_passes():
    assert scoring.batches([20, 80, 50, 48], budget=100) == [[1], [2, 3], [0]]  # 2 x 50 fit, 3 x 50 do not
    # one pass of three costs 300 padded tokens + 10; [100, 95] then [60] 190 + 60 + 2 x 10: cheaper
    assert scoring.batches([100, 95, 60], budget=1000, pass_tokens=10) == [[0, 1], [2]]
    assert scoring.batches([100, 95, 60], budget=1000, pass_tokens=60) == [[0, 1, 2]]  # 360 against 370
    assert [len(b) for b in scoring.batches([4, 4, 4], budget=100, max_rows=2)] == [1, 2]
    assert scoring.batches([7, 900, 5, 1000], budget=10_000, pass_tokens=200) == [[3, 1], [0, 2]]
    assert scoring.batches([5, 50], budget=10) == [[1], [0]]  # a row over the budget is a pass of its own


def _cut_cost(width: list[int], cuts: tuple, budget: int, rows: int, pass_tokens: int) -> float:
    """What batches' cost model charges for cutting the sorted `width` at `cuts`."""
    import itertools

    runs = [width[a:b] for a, b in itertools.pairwise([0, *cuts, len(width)])]
    if any(len(r) > rows or (len(r) > 1 and len(r) * r[0] > budget) for r in runs):
        return float("inf")
    return sum(len(r) * r[0] + pass_tokens for r in runs)


def test_batches_are_the_cheapest_cut_of_the_sorted_lengths():
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 7))]
        budget, rows, pass_tokens = rng.randint(30, 200), rng.randint(1, 4), rng.randint(0, 40)
        width = sorted(lengths, reverse=True)
        cheapest = min(_cut_cost(width, cuts, budget, rows, pass_tokens) for k in range(len(width))
                       for cuts in itertools.combinations(range(1, len(width)), k))
        got = scoring.batches(lengths, budget, max_rows=rows, pass_tokens=pass_tokens)
        assert sorted(i for b in got for i in b) == list(range(len(lengths)))
        assert sum(len(b) * lengths[b[0]] + pass_tokens for b in got) == cheapest


def test_too_long_input_loses_context_tokens_on_the_left():
    groups = scoring.group_requests(CharTokenizer(), [("abxab", "ab")], max_length=4)
    # lm-eval: the model sees (context + continuation)[-(max_length + 1):][:-1] = "xab" + "a"
    assert groups[0].context == [4, 1, 2] and groups[0].continuations == [[1, 2]]


def test_rolling_windows_score_every_token_once():
    assert scoring.rolling_windows(5, context_length=4, stride=4) == [(0, 0, 4), (1, 4, 5)]
    assert scoring.rolling_windows(5, context_length=4, stride=2) == [(0, 0, 2), (0, 2, 4), (1, 4, 5)]
    with pytest.raises(ValueError):
        scoring.rolling_windows(5, context_length=2, stride=3)


def test_loglikelihood_rolling_matches_hand_values_for_any_window():
    model, tok = BigramModel(), CharTokenizer()
    # <s>->a HIT, a->b HIT, b->a MISS, a->b HIT; a bigram model gives the same total for any window
    for context, stride in ((8, None), (2, 1), (3, 2)):
        [(total, n)] = scoring.loglikelihood_rolling(model, tok, ["abab"], context, stride)
        assert n == 4 and total == pytest.approx(3 * HIT + MISS, abs=1e-6)


def test_contexts_that_begin_alike_share_that_run_and_score_the_same():
    model, tok = BigramModel(), CharTokenizer()
    shots = "ab x" * 20  # 80 tokens every context begins with, as a subject's few-shot examples
    requests = [(shots + question, choice) for question in ("ba", "xa b", "a") for choice in ("b", " a", "x")]
    shared = scoring.loglikelihood(model, tok, requests, max_length=200)
    unshared = scoring.loglikelihood(model, tok, requests, max_length=200, share_prefixes=False)
    assert shared == unshared
    # The 80 shared tokens (minus the last, which each context keeps) pass once; then only each question's rest.
    assert model.calls[0][:2] == (1, 80) and sum(rows * width for rows, width, _ in model.calls[1:3]) < 20


def test_runs_of_many_clusters_share_their_passes_and_score_the_same():
    model, tok = BigramModel(), CharTokenizer()
    subjects = ("ab x" * 20, "xa" * 35)  # two subjects' examples, 80 and 70 tokens
    requests = [(shots + question, choice) for shots in subjects for question in ("ba", "xa b")
                for choice in ("b", " a", "x")]
    shared = scoring.loglikelihood(model, tok, requests, max_length=200, share_prefixes=True)
    assert shared == scoring.loglikelihood(model, tok, requests, max_length=200, share_prefixes=False)
    # both runs in one left-padded pass, then the four questions' rests in one pass across the two subjects
    assert [call[:2] for call in model.calls[:2]] == [(2, 80), (4, 4)]


def test_a_prefix_is_shared_by_default_only_where_it_saves_more_than_its_passes_cost():
    cpu, gpu = scoring.Budget(), scoring.Budget(pass_tokens=1024)
    assert scoring.worth_sharing([(80, [0, 1, 2])], cpu) and not scoring.worth_sharing([(80, [0, 1, 2])], gpu)
    assert scoring.worth_sharing([(500, list(range(9)))], gpu)  # a subject's 5-shot prompt, nine questions
    assert scoring.worth_sharing([(80, [0, 1, 2])] * 20, gpu)  # twenty subjects' runs share their passes
    assert not scoring.worth_sharing([(5000, [0])], cpu)
    model, tok = BigramModel(), CharTokenizer()
    requests = [("ab x" * 20 + question, choice) for question in ("ba", "xa b", "a") for choice in ("b", " a", "x")]
    scoring.loglikelihood(model, tok, requests, max_length=200, token_budget=gpu)
    assert model.calls[0][:2] == (3, 84)  # the three whole contexts in one pass: no prefix pass
    model.calls.clear()
    forced = scoring.loglikelihood(model, tok, requests, max_length=200, token_budget=gpu, share_prefixes=True)
    assert model.calls[0][:2] == (1, 80)
    assert forced == scoring.loglikelihood(model, tok, requests, max_length=200, share_prefixes=False)


def test_shared_prefixes_need_two_contexts_and_min_shared_tokens():
    groups = [scoring.Group(list(range(70)) + [i]) for i in (100, 101)] + [scoring.Group([5] * 70)]
    assert scoring.shared_prefixes(groups) == [(70, [0, 1])]
    assert scoring.shared_prefixes(groups, min_shared=71) == []
    whole = [scoring.Group(list(range(70))), scoring.Group(list(range(80)))]  # one context is the other's beginning
    assert scoring.shared_prefixes(whole) == [(69, [0, 1])]
    # a 0-shot MMLU subject header (~17 tokens) is long enough by default; 15 tokens are not
    header = [scoring.Group(list(range(17)) + [i, i]) for i in (100, 101, 102)]
    assert scoring.shared_prefixes(header) == [(17, [0, 1, 2])]
    assert scoring.shared_prefixes([scoring.Group(list(range(15)) + [i]) for i in (100, 101)]) == []


def _config(**fields):
    shape = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 500, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 128}
    return SimpleNamespace(**{**shape, **fields})


def test_cpu_budget_is_the_fixed_one():
    assert scoring.default_budget(_config(), 4, None) == scoring.Budget(4096, 2048, 256)
    model = BigramModel()
    assert scoring.budget_for(model) == scoring.Budget(4096, 2048, 256)
    assert scoring.budget_for(model, 100) == scoring.Budget(100, 2048, 256)
    assert scoring.budget_for(model, scoring.Budget(1, 2, 3)) == scoring.Budget(1, 2, 3)


def test_gpu_budget_from_free_memory_and_the_model_shape():
    # bf16: per token 2 * (8*64 + 3*128 + 6*2*2*(2*16)) = 3,328 bytes; per kept position 500 * (2 + 8) = 5,000.
    # 200 MiB free: half planned for; tokens 52,428,800 / 3,328 = 15,753 -> 15,360; scored 26,214,400 / 5,000 = 5,242
    # -> 5,120 (whole thousands of 1,024); a shared prefix's cache 2 * 2 * 2 * 32 = 256 bytes a token and row: a
    # quarter of the planned 100 MiB holds 102,400 tokens.
    assert scoring.default_budget(_config(), 2, 200 << 20) == scoring.Budget(15360, 5120, 1024, 1024, 102400)
    # A wider key/value head (head_dim 64) doubles the cache term: 2 * (512 + 384 + 3,072) = 7,936 bytes a token.
    assert scoring.default_budget(_config(head_dim=64), 2, 200 << 20).tokens == 52428800 // 7936 // 1024 * 1024
    assert scoring.default_budget(_config(), 2, 1 << 40) == scoring.GPU_CAP
    assert scoring.default_budget(_config(), 2, 1 << 20) == scoring.Budget(4096, 2048, 1024, 1024)  # never below the CPU's


def test_gpu_budget_reads_the_text_config_of_a_composite_model():
    outer = SimpleNamespace(get_text_config=lambda: _config(), hidden_size=9999)
    assert scoring.default_budget(outer, 2, 200 << 20) == scoring.default_budget(_config(), 2, 200 << 20)


def test_scored_and_row_budgets_split_passes_without_moving_a_number():
    requests = [("a", "b a"), ("a", "bx"), ("b", " a"), ("ab", "x")]
    model = BigramModel()
    wide = scoring.loglikelihood(model, CharTokenizer(), requests)
    assert len(model.calls) == 2  # the contexts, then the three longer continuations together
    model = BigramModel()
    narrow = scoring.loglikelihood(model, CharTokenizer(), requests, token_budget=scoring.Budget(4096, 2, 1))
    assert narrow == wide
    # One context a pass (rows 1), each followed by its longer continuations one a pass (2 scored positions hold
    # one continuation of 2 or 3 tokens): "a" has two, "b" one, "ab" none.
    assert [rows for rows, _, _ in model.calls] == [1] * 6


def test_rolling_scored_budget_splits_rows_without_moving_a_number():
    texts = ["abab", "ba", "abba"]
    model = BigramModel()
    wide = scoring.loglikelihood_rolling(model, CharTokenizer(), texts, context_length=8)
    model = BigramModel()
    narrow = scoring.loglikelihood_rolling(model, CharTokenizer(), texts, context_length=8,
                                           token_budget=scoring.Budget(4096, 1, 256))
    assert [n for _, n in narrow] == [n for _, n in wide] == [4, 2, 4] and len(model.calls) == 3  # a text a pass
    assert [total for total, _ in narrow] == pytest.approx([total for total, _ in wide], abs=1e-6)


def test_continuations_of_very_different_lengths_take_passes_of_their_own_width():
    model, tok = BigramModel(), CharTokenizer()
    requests = [("a", "ba"), ("a", "b" * 50), ("a", "ab")]
    scores = scoring.loglikelihood(model, tok, requests, max_length=64)
    # The context, then the 50-token continuation alone (49 inputs), then the two short ones together (1 input each)
    assert [call[:2] for call in model.calls] == [(1, 1), (1, 49), (2, 1)]
    assert scores == [scoring.loglikelihood(BigramModel(), tok, [r], max_length=64)[0] for r in requests]
