"""HumanEval: the model completes Python functions, their unit tests run in the sandbox (a separate, limited process
per sample), scored as pass@1 (and pass@10, pass@20 under sampling: 20 responses per problem)."""

import pytest

# HumanEval is the slowest task here (up to 256 generated tokens per response): the default suite runs a few problems
# under greedy decoding only, to stay within its 15 minutes on a 2-core CPU. With `--qb-limit N` every decoding of
# the session runs N problems (`--qb-limit 0`: all 164), which gives seed 000's precision x decoding table.
GREEDY_PROBLEMS = 4


@pytest.mark.quantbench(max_accuracy_drop=50.0)
def test_humaneval(quantbench):
    decoding = quantbench.case.decoding.name
    if decoding != "greedy" and quantbench.settings.limit is None:
        pytest.skip(f"humaneval under {decoding} runs with --qb-limit N (N problems; sampling draws 20 responses each)")
    pass_at_1 = quantbench.evaluate("humaneval", limit=GREEDY_PROBLEMS)
    assert 0.0 <= pass_at_1 <= 100.0
