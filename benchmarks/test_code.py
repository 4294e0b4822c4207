"""HumanEval: the model completes Python functions, their unit tests run in the sandbox (a separate, limited process
per sample), scored as pass@1 (and pass@10, pass@20 under sampling: 20 responses per problem)."""

import pytest

# HumanEval is the slowest task here (up to 256 generated tokens per response; on the 2-core CPU 4 problems take
# ~30 s in fp32 and ~65 s in nf4, which rambles to the cap): the default suite runs 4 problems, greedy, on the
# baseline precision and nf4 only, and the paired comparison judges the drop by significance (4 problems are
# noise). `--qb-limit N` runs N problems on every precision and decoding of the session (`0`: all 164): the full
# precision x decoding table.
PROBLEMS = 4


@pytest.mark.quantbench(max_accuracy_drop=25.0, drop_test="significant")
def test_humaneval(quantbench):
    case = quantbench.case
    default_case = case.decoding.name == "greedy" and case.precision.name in (quantbench.baseline_precision, "nf4")
    if not default_case and quantbench.settings.limit is None:
        pytest.skip(f"humaneval on {case.precision.name} x {case.decoding.name} runs with --qb-limit N "
                    "(the default suite runs the baseline and nf4, greedy)")
    pass_at_1 = quantbench.evaluate("humaneval", limit=PROBLEMS)
    assert 0.0 <= pass_at_1 <= 100.0
