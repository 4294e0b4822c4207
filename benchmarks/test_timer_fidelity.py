"""The plugin's decode ms/token against an independent timing of the same generate call (GPU only).

Each round makes one N-token generation timed by the plugin (per-step marks inside `generate`) with CUDA events
around the whole call, and one 1-token generation with CUDA events around it; the independent decode time is
(whole N-token call - whole 1-token call) / (N - 1). Rounds interleave the two, so drift in the host's speed hits
both alike; the median of the per-round ratios must lie in [0.98, 1.02].
"""

import statistics

import pytest

NEW_TOKENS = 64
ROUNDS = 15


@pytest.mark.quantbench(decodings=["greedy"], modes=["eager"])
def test_timer_fidelity(quantbench):
    if quantbench.settings.device != "cuda":
        pytest.skip("timer fidelity is checked against CUDA events: needs --qb-device cuda")
    import torch

    from pytest_quantbench.measure import timed_generation

    handle = quantbench.model
    decoding = quantbench.case.decoding
    prompt = handle.format_prompt("Explain in a few sentences why the sky is blue.")
    inputs = handle.encode([prompt] * quantbench.case.batch_size)

    def whole_call_ms(run) -> tuple[float, object]:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = run()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end), result

    timed_generation(handle, inputs, decoding, NEW_TOKENS)  # warm
    plugin, independent = [], []
    for _ in range(ROUNDS):
        full_ms, (_ttft, _latency, decode_s) = whole_call_ms(
            lambda: timed_generation(handle, inputs, decoding, NEW_TOKENS))
        one_ms, _ = whole_call_ms(lambda: handle.generate_ids(inputs, decoding, 1, exact_length=True))
        plugin.append(decode_s * 1000)
        independent.append((full_ms - one_ms) / (NEW_TOKENS - 1))
    ratio = statistics.median(p / i for p, i in zip(plugin, independent))
    quantbench.metrics.update(ms_per_token=statistics.median(plugin),
                              independent_ms_per_token=statistics.median(independent), timer_ratio=ratio)
    assert 0.98 <= ratio <= 1.02, (f"plugin {statistics.median(plugin):.3f} ms/token vs CUDA events "
                                   f"{statistics.median(independent):.3f} ms/token: median ratio {ratio:.3f}")
