"""Log-likelihood scoring, the two request kinds of lm-evaluation-harness that scored tasks reduce to:

    loglikelihood(requests)      (context, continuation) -> (log p(continuation | context), is_greedy)
    loglikelihood_rolling(texts) text -> (log p(text), tokens scored), in windows of a fixed context length

Tokenization follows lm-eval's HFLM, so the numbers agree with it: trailing spaces of a context move to the
continuation, the continuation's tokens are those of `context + continuation` after the context's, an empty
context is the BOS (else EOS) token, and a too-long input loses tokens on the left.

Speed, without changing a number (beyond float rounding):
- the requests that share a context (the choices of one question) form one group; the context runs once, and the
  logits of its last position score every choice's first token: one forward pass per question when every choice
  is one token (MMLU's " A".." D");
- longer choices (ARC's answer texts) go in their context's row, side by side after it, under a mask that lets
  each see the context and itself only: a question is one row of one pass (`_score_packed`); where the model's
  attention takes no such mask, they continue from the context's key/value cache instead;
- only the logits that are scored are computed (`logits_to_keep`): the vocabulary projection dominates small models;
- groups are sorted by length and batched under a token budget, left-padded with explicit position ids, so padding
  is small and does not move any position; the budget is the CPU's fixed one, or on a GPU what its free memory
  holds for the model's shape (`default_budget`);
- contexts that begin with the same long run of tokens (a subject's few-shot examples, the same for each of its
  questions) share it: the run goes through the model once, and each context's remaining tokens are scored from
  its key/value cache, so k-shot costs little more than 0-shot; the runs of many subjects go through together, and
  the rest of their contexts are batched across subjects, each row reading its own run's cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field

TOKEN_BUDGET = 4096  # padded tokens per forward pass: on a CPU larger batches gain nothing
SCORED_BUDGET = 2048  # positions whose logits one pass keeps (each is a vocabulary-sized row of floats)
MAX_ROWS = 256  # rows per forward pass
PASS_TOKENS = 32  # what a CPU forward pass costs beyond its tokens, counted in tokens (see batches)
# Tokens a run of context must hold to be computed once and shared: MMLU's ~17-token 0-shot subject header counts
# (6-11% faster 0-shot MMLU on an H100, side by side; no gain or loss on the CPU)
MIN_SHARED = 16
SHARED_BUDGET = 16384  # shared-prefix tokens held per pass (the prefix's key/value cache, repeated per row)


@dataclass(frozen=True)
class Budget:
    """What one forward pass may hold: padded input tokens, positions whose logits are kept, rows, tokens of a
    shared prefix's key/value cache (repeated per row); and what a pass costs whatever it holds, in tokens
    (`pass_tokens`: batches trades padding against passes with it)."""

    tokens: int = TOKEN_BUDGET
    scored: int = SCORED_BUDGET
    rows: int = MAX_ROWS
    pass_tokens: int = PASS_TOKENS
    shared: int = SHARED_BUDGET


# The most a GPU pass holds: 64k tokens of a 135M model are ~18 TFLOP (~35 ms on an H200) against a few ms of kernel
# launches, so a larger pass would only hold more memory. A pass of the Qwen2.5-7B shape on an H200 costs ~30 ms
# beyond its tokens (weights read, the host's kernel launches and the syncs between passes: GPU busy 47% over 19
# passes, docs/results/h200/lm-eval), ~1,000 tokens at its ~37k tokens/s; smaller models cost more tokens a pass.
GPU_CAP = Budget(tokens=65536, scored=16384, rows=1024, pass_tokens=1024, shared=262144)


def default_budget(config, dtype_bytes: int, free_bytes: int | None) -> Budget:
    """The budget for a model of `config` computing in `dtype_bytes`-wide floats, with `free_bytes` of accelerator
    memory to spend (None: the CPU, which keeps its fixed budget). Half the free memory is planned for, half of that
    for input tokens and a quarter for kept logits; never below the CPU's budget nor above GPU_CAP."""
    if free_bytes is None:
        return Budget()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers, vocab = text.hidden_size, text.num_hidden_layers, text.vocab_size
    heads = text.num_attention_heads
    kv_heads, head_dim = getattr(text, "num_key_value_heads", None) or heads, getattr(text, "head_dim", None)
    kv_width = kv_heads * (head_dim or hidden // heads)
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    # Per token: one layer's activations at a time (inference mode frees the others): the residual stream, the
    # attention's inputs and outputs, the MLP's gate, up and product; and where continuations follow a context, every
    # layer's keys and values, held for the context and again in the rows of its choices (up to five).
    per_token = dtype_bytes * (8 * hidden + 3 * intermediate + 6 * 2 * layers * kv_width)
    per_scored = vocab * (dtype_bytes + 8)  # a kept position's logits, their float copy and its log-softmax
    per_shared = dtype_bytes * 2 * layers * kv_width  # a shared prefix's keys and values, per token and row
    usable = free_bytes // 2  # the rest: the allocator's fragmentation, attention masks, the other side's batches
    tokens = min(GPU_CAP.tokens, max(TOKEN_BUDGET, usable // 2 // per_token // 1024 * 1024))
    scored = min(GPU_CAP.scored, max(SCORED_BUDGET, usable // 4 // per_scored // 1024 * 1024))
    shared = min(GPU_CAP.shared, max(SHARED_BUDGET, usable // 4 // per_shared // 1024 * 1024))
    # a row keeps one position: `scored` covers it
    return Budget(tokens, scored, GPU_CAP.rows, GPU_CAP.pass_tokens, shared)


def budget_for(model, token_budget: int | Budget | None = None) -> Budget:
    """The budget on `model`'s device (`default_budget` from the memory free now), or the caller's: a Budget, or a
    number of tokens with the device's other limits."""
    if isinstance(token_budget, Budget):
        return token_budget
    budget = Budget()
    if model.device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(model.device)
        free += torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)  # torch's own
        dtype_bytes = model.get_input_embeddings().weight.element_size()  # embeddings stay unquantized
        budget = default_budget(model.config, dtype_bytes, free)
    return budget if token_budget is None else dataclasses.replace(budget, tokens=token_budget)


@dataclass
class Group:
    """One context and the continuations scored after it; `indices` place the results in the caller's order."""

    context: list[int]
    continuations: list[list[int]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)


def prefix_token_id(tokenizer) -> int:
    """What an empty context (or a text's first window) is conditioned on: BOS, else EOS (as lm-eval)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode(tokenizer, text: str) -> list[int]:
    """lm-eval's `tok_encode`: the tokenizer's own special tokens, unless the text already starts with BOS."""
    bos = tokenizer.bos_token
    return tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))


def _move_trailing_spaces(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's split: a context's trailing spaces belong to the continuation."""
    spaces = len(context) - len(context.rstrip())
    return (context[:-spaces], context[-spaces:] + continuation) if spaces else (context, continuation)


def _after_prefix(tokenizer, tokens: list[int]) -> tuple[list[int], list[int]]:
    """An empty context's pair: the BOS (else EOS) token, then the continuation's tokens (which may begin with it)."""
    prefix = prefix_token_id(tokenizer)
    return ([prefix], tokens) if tokens[:1] != [prefix] else (tokens[:1], tokens[1:])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as lm-eval's `loglikelihood` builds them."""
    if context == "":
        return _after_prefix(tokenizer, tokenizer.encode(continuation, add_special_tokens=False))
    context, continuation = _move_trailing_spaces(context, continuation)
    whole = encode(tokenizer, context + continuation)
    context_tokens = encode(tokenizer, context)
    return context_tokens, whole[len(context_tokens):]


def encode_many(tokenizer, texts: list[str], add_special_tokens: bool) -> dict[str, list[int]]:
    """text -> tokens, in one batched call where the tokenizer takes one (a fast tokenizer splits a batch over
    threads), else text by text."""
    if not texts:
        return {}
    if callable(tokenizer):
        return dict(zip(texts, tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]))
    return {text: tokenizer.encode(text, add_special_tokens=add_special_tokens) for text in texts}


def encode_pairs(tokenizer, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` of every request, each distinct text tokenized once and in batches: the choices of a question
    share its context, and one-by-one tokenization of long few-shot contexts held a GPU idle for much of a call."""
    bos = tokenizer.bos_token
    # (context, continuation) with the context's trailing spaces moved; None for an empty context
    moved = [_move_trailing_spaces(*request) if request[0] else None for request in requests]
    texts = {text for pair in moved if pair for text in (pair[0], pair[0] + pair[1])}
    tokens = encode_many(tokenizer, sorted(t for t in texts if not (bos and t.startswith(bos))), True)
    tokens.update(encode_many(tokenizer, sorted(t for t in texts if bos and t.startswith(bos)), False))
    bare = encode_many(tokenizer, sorted({c for (_, c), pair in zip(requests, moved) if pair is None}), False)
    out = []
    for (_, continuation), pair in zip(requests, moved):
        if pair is None:
            out.append(_after_prefix(tokenizer, bare[continuation]))
        else:
            context_tokens = tokens[pair[0]]
            out.append((context_tokens, tokens[pair[0] + pair[1]][len(context_tokens):]))
    return out


def group_requests(tokenizer, requests: list[tuple[str, str]], max_length: int) -> list[Group]:
    """Tokenize and group by identical (left-truncated) context, keeping request order within a group."""
    groups: dict[tuple[int, ...], Group] = {}
    for index, ((context, continuation), (context_tokens, tokens)) in enumerate(zip(requests,
                                                                                     encode_pairs(tokenizer, requests))):
        if not tokens:
            raise ValueError(f"request {index}: the continuation {continuation!r} encodes to no tokens")
        if len(tokens) > max_length:
            raise ValueError(f"request {index}: continuation of {len(tokens)} tokens exceeds max length {max_length}")
        # As lm-eval: the model sees (context + continuation)[-(max_length + 1):][:-1].
        context_tokens = context_tokens[max(0, len(context_tokens) + len(tokens) - max_length - 1):]
        group = groups.setdefault(tuple(context_tokens), Group(list(context_tokens)))
        group.continuations.append(tokens)
        group.indices.append(index)
    return list(groups.values())


def batches(lengths: list[int], budget: int, max_rows: int = MAX_ROWS, pass_tokens: int = PASS_TOKENS) -> list[list[int]]:
    """Indices sorted longest first, cut into runs that cost the least: padded tokens (rows x longest) plus
    `pass_tokens` a pass, what every forward pass costs whatever it holds (its weights read, a 4-bit model's weights
    dequantized, its kernels launched). Each run stays within `budget` padded tokens (a longer row is a run of its
    own) and `max_rows` rows. Exact, by dynamic programming over the sorted lengths; of equal costs, fewer passes."""
    import numpy as np

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    width = np.array([lengths[i] for i in order], dtype=np.float64)
    best, start = np.zeros(len(order) + 1), np.zeros(len(order) + 1, dtype=np.int64)
    for end in range(1, len(order) + 1):  # best[end]: the least cost of the `end` longest rows
        first = np.arange(max(0, end - max_rows), end)
        padded = (end - first) * width[first]
        cost = np.where((padded <= budget) | (first == end - 1), best[first] + padded + pass_tokens, np.inf)
        pick = int(np.argmin(cost))  # the first of equal minima: the longest run
        best[end], start[end] = cost[pick], first[pick]
    out, end = [], len(order)
    while end:
        out.append(order[start[end]:end])
        end = int(start[end])
    return out[::-1]


def _left_padded(rows: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def pad_token_id(tokenizer) -> int:
    """The token padding fills rows with: the tokenizer's pad token, else EOS (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def shared_prefixes(groups: list[Group], min_shared: int = MIN_SHARED) -> list[tuple[int, list[int]]]:
    """(length of the token run shared, group indices) for every set of two or more contexts that begin with the same
    `min_shared` tokens or more; each context keeps at least one token of its own (its last position is scored)."""
    order = sorted(range(len(groups)), key=lambda i: groups[i].context)
    clusters: list[tuple[int, list[int]]] = []
    for i in order:
        context = groups[i].context
        if clusters:
            shared, members = clusters[-1]
            common = min(len(os.path.commonprefix([groups[members[0]].context[:shared], context])), len(context) - 1)
            if common >= min_shared:
                clusters[-1] = (common, [*members, i])
                continue
        clusters.append((len(context) - 1, [i]))
    return [(shared, members) for shared, members in clusters if len(members) > 1]


def worth_sharing(clusters: list[tuple[int, list[int]]], budget: Budget) -> bool:
    """Whether computing each cluster's shared run once (`shared_prefixes`) costs less than not: it saves the run in
    all but one context of each cluster, and costs a pass for the runs and at least one more for what follows them
    (the runs of many clusters share their passes)."""
    return sum((len(members) - 1) * length for length, members in clusters) > 2 * budget.pass_tokens


def _prefix_caches(model, runs: list[list[int]], pad_id: int):
    """The key/value cache of runs of tokens that several contexts each begin with, in one left-padded pass, and its
    attention mask ([runs, width]: a run's padding masked)."""
    ids, mask, positions = _left_padded(runs, pad_id, model.device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    return getattr(out, "cache", None) or out.past_key_values, mask


def _score_batch(model, groups: list[Group], pad_id: int, prefix=None,
                 budget: Budget = Budget()) -> dict[int, tuple[float, bool]]:
    """Score every continuation of `groups`: contexts in one left-padded pass, longer continuations after it.
    `prefix` (cache, mask, rows): each context follows the shared run in row `rows[i]` of `cache` (`_prefix_caches`)."""
    import torch

    device = model.device
    ids, mask, positions = _left_padded([g.context for g in groups], pad_id, device)
    longer = [(gi, ci) for gi, g in enumerate(groups) for ci, c in enumerate(g.continuations) if len(c) > 1]
    shared = {}
    if prefix is not None:  # a row's run sits before its padding: masked pads between, positions after the run
        cache, run_mask, rows = prefix
        owners = torch.tensor(rows, device=device)
        before = run_mask[owners]
        mask = torch.cat([before, mask], dim=1)
        positions = positions + before.sum(-1, keepdim=True)
        shared = {_cache_argument(model): _select_cache(cache, owners)}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=bool(longer), logits_to_keep=1,
                **shared)
    first = out.logits[:, -1, :].float().log_softmax(-1)  # [groups, vocab]: scores each continuation's first token
    pairs = [(gi, index, tokens[0]) for gi, group in enumerate(groups)
             for index, tokens in zip(group.indices, group.continuations)]
    rows_of = torch.tensor([gi for gi, _, _ in pairs], device=device)
    firsts = first[rows_of, torch.tensor([token for _, _, token in pairs], device=device)].tolist()  # one sync
    greedy_first = first.argmax(-1).tolist()
    results = {index: (score, greedy_first[gi] == token) for (gi, index, token), score in zip(pairs, firsts)}
    if not longer:
        return results
    cache = getattr(out, "cache", None) or out.past_key_values
    context_lengths = mask.sum(-1)
    # Continuations sorted by length into passes of kept positions within budget: padded to the longest of all,
    # ARC's answers (2 to 30 tokens) were 3x padding.
    widths = [len(groups[g].continuations[c]) - 1 for g, c in longer]
    for part in batches(widths, budget.scored, max_rows=budget.scored, pass_tokens=budget.pass_tokens):
        chunk = [longer[i] for i in part]
        rows = [groups[g].continuations[c] for g, c in chunk]
        owner = torch.tensor([g for g, _ in chunk], device=device)
        width = max(len(r) for r in rows) - 1  # the last token of a continuation is only predicted, never input
        inputs = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for i, row in enumerate(rows):  # right-padded: causal attention keeps pads after a row from touching it
            inputs[i, : len(row) - 1] = torch.tensor(row[:-1], dtype=torch.long)
        step = torch.arange(width, device=device)
        later = model(input_ids=inputs.to(device),
                      attention_mask=torch.cat([mask[owner], torch.ones((len(rows), width), dtype=mask.dtype,
                                                                        device=device)], dim=1),
                      position_ids=context_lengths[owner, None] + step, use_cache=False,
                      **{_cache_argument(model): _select_cache(cache, owner)})
        logprobs = later.logits.float().log_softmax(-1)  # [rows, width, vocab]
        targets = torch.tensor([row[1:] + [0] * (width + 1 - len(row)) for row in rows], device=device)
        valid = step[None, :] < torch.tensor([len(row) - 1 for row in rows], device=device)[:, None]
        picked = logprobs.gather(-1, targets[..., None]).squeeze(-1)  # [rows, width]
        sums = torch.where(valid, picked, 0.0).sum(-1).tolist()  # one sync a pass, not two a continuation
        greedy = ((logprobs.argmax(-1) == targets) | ~valid).all(-1).tolist()
        for (g, c), total, all_greedy in zip(chunk, sums, greedy):
            index = groups[g].indices[c]
            first_lp, first_greedy = results[index]
            results[index] = (first_lp + total, first_greedy and all_greedy)
    return results


def packs(model) -> bool:
    """Whether a context and its longer continuations can go through `model` as one packed row (`_score_packed`):
    its attention takes a custom boolean mask (SDPA), and no sliding window could cut it."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None) if getattr(text, "use_sliding_window", True) else None
    return getattr(config, "_attn_implementation", None) == "sdpa" and not window


def packed_length(group: Group) -> int:
    """A packed row's tokens: the context, then every continuation but its last token."""
    return len(group.context) + sum(len(c) - 1 for c in group.continuations)


def _tail(group: Group) -> int:
    """The positions of a packed row that predict a token: the context's last, then every continuation input."""
    return packed_length(group) - len(group.context) + 1


def _packed_rows(groups: list[Group], pad_id: int, device):
    """Left-padded packed rows: each context followed by its continuations' inputs, side by side. Positions restart
    after the context for every continuation, and the mask lets a continuation's tokens see the context and their
    own earlier tokens only (a padding position sees itself, so no row of the mask is empty). Returns ids,
    positions, the [rows, 1, width, width] mask, and per row its tail: the positions that predict a token (the
    context's last, then every continuation input)."""
    import torch

    width = max(packed_length(g) for g in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    segment = torch.full((len(groups), width), -1, dtype=torch.long)  # -1 padding, 0 context, j + 1 continuation j
    for row, group in enumerate(groups):
        start = width - packed_length(group)
        end = start + len(group.context)
        ids[row, start:end] = torch.tensor(group.context)
        positions[row, start:end] = torch.arange(len(group.context))
        segment[row, start:end] = 0
        for j, tokens in enumerate(group.continuations):
            inputs = tokens[:-1]
            ids[row, end:end + len(inputs)] = torch.tensor(inputs, dtype=torch.long)
            positions[row, end:end + len(inputs)] = torch.arange(len(group.context), len(group.context) + len(inputs))
            segment[row, end:end + len(inputs)] = j + 1
            end += len(inputs)
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    sees = ((key == 0) & (query >= 0)) | ((key == query) & (query > 0))
    mask = (sees & causal) | torch.eye(width, dtype=torch.bool)
    tails = [_tail(g) for g in groups]
    return ids.to(device), positions.to(device), mask[:, None].to(device), tails


def _score_packed(model, groups: list[Group], pad_id: int, budget: Budget = Budget()) -> dict[int, tuple[float, bool]]:
    """Score every continuation of `groups` in packed rows (`_packed_rows`): one forward pass for contexts and
    continuations together, where `_score_batch` runs the contexts, copies their key/value cache for each choice and
    runs the continuations after it. Only the rows' tails reach the vocabulary projection, in parts within the
    scored budget."""
    import torch

    results: dict[int, tuple[float, bool]] = {}
    per_pass = max(1, budget.scored // max(_tail(g) for g in groups))
    for first in range(0, len(groups), per_pass):
        part = groups[first:first + per_pass]
        ids, positions, mask, tails = _packed_rows(part, pad_id, model.device)
        kept = max(tails)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                       logits_to_keep=kept).logits
        logprobs = logits.float().log_softmax(-1)  # [rows, kept, vocab]
        rows, where, targets, owners = [], [], [], []  # one entry per predicted token
        for row, (group, tail) in enumerate(zip(part, tails)):
            context_last = kept - tail
            block = context_last + 1
            for index, tokens in zip(group.indices, group.continuations):
                predictors = [context_last] + list(range(block, block + len(tokens) - 1))
                rows += [row] * len(tokens)
                where += predictors
                targets += tokens
                owners += [index] * len(tokens)
                block += len(tokens) - 1
        rows_t, where_t = torch.tensor(rows, device=model.device), torch.tensor(where, device=model.device)
        targets_t = torch.tensor(targets, device=model.device)
        picked = logprobs[rows_t, where_t, targets_t].tolist()  # one sync a pass
        greedy = (logprobs.argmax(-1)[rows_t, where_t] == targets_t).tolist()
        for index, score, is_greedy in zip(owners, picked, greedy):
            total, all_greedy = results.get(index, (0.0, True))
            results[index] = (total + score, all_greedy and is_greedy)
    return results


def _cache_argument(model) -> str:
    """The forward argument that takes a key/value cache: `cache` in newer transformers, else `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _select_cache(cache, rows):
    """A copy of the key/value cache with batch rows `rows` (a context's cache repeated for each of its choices)."""
    import copy

    expanded = copy.copy(cache)
    expanded.layers = [copy.copy(layer) for layer in cache.layers]
    expanded.reorder_cache(rows)
    return expanded


def loglikelihood(model, tokenizer, requests: list[tuple[str, str]], max_length: int | None = None,
                  token_budget: int | Budget | None = None, progress=None,
                  share_prefixes: bool | None = None, stats: dict | None = None,
                  min_shared: int = MIN_SHARED) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is_greedy) per request, in request order. `token_budget`: see budget_for.
    `share_prefixes`: long runs of tokens that contexts begin with go through the model once (True), never (False),
    or by default where that saves more tokens than its extra passes cost (`worth_sharing`): on the CPU nearly
    always (3.5-4x faster on 5-shot MMLU, identical answers); on a GPU, whose passes cost more, where many contexts
    share long runs (few-shot prompts). `stats`, a dict, gets where the call's time went: `tokenize_s`, the seconds
    tokenizing took, and `passes`, the model's forward passes. `min_shared`: the shortest run worth sharing."""
    import time

    import torch

    max_length = max_length or model_max_length(model)
    budget = budget_for(model, token_budget)
    start = time.perf_counter()
    groups = group_requests(tokenizer, requests, max_length)
    if stats is not None:
        stats.update(tokenize_s=time.perf_counter() - start, passes=0)
    results: dict[int, tuple[float, bool]] = {}
    pad_id = pad_token_id(tokenizer)
    clusters = [] if share_prefixes is False else shared_prefixes(groups, min_shared)
    if share_prefixes is None and not worth_sharing(clusters, budget):
        clusters = []
    alone = sorted(set(range(len(groups))) - {i for _, members in clusters for i in members})
    # Contexts with longer continuations (ARC's answer texts) go through packed, where the model takes the mask
    packable = packs(model)
    packed = [i for i in alone if packable and any(len(c) > 1 for c in groups[i].continuations)]
    alone = sorted(set(alone) - set(packed))

    def score(part: list[Group], prefix=None, pack: bool = False) -> None:
        results.update(_score_packed(model, part, pad_id, budget) if pack else
                       _score_batch(model, part, pad_id, prefix, budget))
        if progress is not None:
            progress(sum(len(group.indices) for group in part))

    with torch.inference_mode(), _counting_passes(model, stats):
        for batch in batches([packed_length(groups[i]) for i in packed], budget.tokens, budget.rows,
                             budget.pass_tokens):
            score([groups[packed[i]] for i in batch], pack=True)
        for batch in batches([len(groups[i].context) for i in alone], budget.tokens, budget.rows, budget.pass_tokens):
            score([groups[alone[i]] for i in batch])
        # The shared runs of many clusters go through the model together, and the rest of their contexts are batched
        # across clusters, each row reading its own run's cache: few passes however many subjects there are.
        for runs in batches([length for length, _ in clusters], min(budget.tokens, budget.shared), budget.rows,
                            budget.pass_tokens):
            chosen = [clusters[c] for c in runs]
            cache, run_mask = _prefix_caches(model, [groups[members[0]].context[:length] for length, members in chosen],
                                             pad_id)
            rest = [(Group(groups[i].context[length:], groups[i].continuations, groups[i].indices), row)
                    for row, (length, members) in enumerate(chosen) for i in members]
            rows = max(1, min(budget.rows, budget.shared // run_mask.shape[1]))
            for batch in batches([len(group.context) for group, _ in rest], budget.tokens, rows, budget.pass_tokens):
                score([rest[i][0] for i in batch], (cache, run_mask, [rest[i][1] for i in batch]))
            del cache  # freed before the next runs' cache is made, not after
    return [results[i] for i in range(len(requests))]


@contextlib.contextmanager
def _counting_passes(model, stats: dict | None):
    """Count the model's forward passes into `stats["passes"]` (nothing without stats)."""
    if stats is None:
        yield
        return
    hook = model.register_forward_pre_hook(lambda *_: stats.update(passes=stats["passes"] + 1))
    try:
        yield
    finally:
        hook.remove()


def rolling_windows(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (input start, first target, end) over a text of `n_tokens` tokens preceded by a prefix token.

    In the sequence [prefix, t0, t1, ...] the window's input is seq[start:end] and it scores tokens first..end-1
    (t_i is predicted at seq position i). Each token is scored once, with up to `context_length` tokens of input;
    `stride == context_length` gives lm-eval's disjoint windows, a smaller stride gives every window
    `context_length - stride` tokens of overlap as context.
    """
    if not 0 < stride <= context_length:
        raise ValueError(f"stride {stride} must be in 1..context length {context_length}")
    windows = []
    for first in range(0, n_tokens, stride):
        end = min(first + stride, n_tokens)
        windows.append((max(0, end - context_length), first, end))
    return windows


def loglikelihood_rolling(model, tokenizer, texts: list[str], context_length: int | None = None,
                          stride: int | None = None,
                          token_budget: int | Budget | None = None) -> list[tuple[float, int]]:
    """(log p(text), tokens scored) per text: every token scored once, as lm-eval's `loglikelihood_rolling`.
    `token_budget`: see budget_for (a window longer than the budget is a pass of its own)."""
    import torch

    context_length = context_length or model_max_length(model)
    stride = stride or context_length
    budget = budget_for(model, token_budget)
    prefix, pad_id = prefix_token_id(tokenizer), pad_token_id(tokenizer)
    work = []  # (text index, input tokens, target tokens)
    counts = []
    for t, text in enumerate(texts):
        tokens = encode(tokenizer, text)
        counts.append(len(tokens))
        sequence = [prefix, *tokens]
        for start, first, end in rolling_windows(len(tokens), context_length, stride):
            work.append((t, sequence[start:end], tokens[first:end]))
    sums = [0.0] * len(texts)
    with torch.inference_mode():
        for batch in batches([len(w[1]) for w in work], max(budget.tokens, context_length), max_rows=budget.rows,
                             pass_tokens=budget.pass_tokens):
            rows = [work[i] for i in batch]
            keep = max(len(targets) for _, _, targets in rows)
            for part in _split_rows(rows, keep, budget.scored):
                ids, mask, positions = _left_padded([r[1] for r in part], pad_id, model.device)
                kept = max(len(targets) for _, _, targets in part)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                               logits_to_keep=kept).logits
                for row, (t, _, targets) in zip(logits, part):
                    scores = row[kept - len(targets):].float().log_softmax(-1)  # as lm-eval, to the last bit
                    target = torch.tensor(targets, device=scores.device)[:, None]
                    sums[t] += scores.gather(-1, target).sum().item()
    return [(total, n) for total, n in zip(sums, counts)]


def _split_rows(rows: list, keep: int, scored_budget: int = SCORED_BUDGET) -> list[list]:
    """Rows in groups small enough that their kept logits fit `scored_budget` positions (at least one row each)."""
    per_pass = max(1, scored_budget // max(1, keep))
    return [rows[i : i + per_pass] for i in range(0, len(rows), per_pass)]


def model_max_length(model) -> int:
    """The model's context length from its config (as lm-eval reads it), 2048 when the config says nothing."""
    config = model.config
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
