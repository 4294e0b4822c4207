"""The plugin's decode ms/token against an independent timing of the same generate calls (GPU: CUDA events around
whole calls, no per-step marks): (time for N tokens - time for 1 token) / (N - 1). The ratio must lie in
[0.98, 1.02]."""

import statistics

import pytest

NEW_TOKENS = 64
ROUNDS = 10


@pytest.mark.quantbench(decodings=["greedy"], modes=["eager"])
def test_timer_fidelity(quantbench):
    if quantbench.settings.device != "cuda":
        pytest.skip("timer fidelity is checked against CUDA events: needs --qb-device cuda")
    import torch

    metrics = quantbench.measure(max_new_tokens=NEW_TOKENS)
    handle = quantbench.model
    inputs = handle.encode([handle.format_prompt("Explain in a few sentences why the sky is blue.")])

    def call_ms(new_tokens: int) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        handle.generate_ids(inputs, quantbench.case.decoding, new_tokens, exact_length=True)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    call_ms(NEW_TOKENS)  # warm
    full = statistics.median(call_ms(NEW_TOKENS) for _ in range(ROUNDS))
    first = statistics.median(call_ms(1) for _ in range(ROUNDS))
    independent = (full - first) / (NEW_TOKENS - 1)
    ratio = metrics["ms_per_token"] / independent
    quantbench.record.metrics.update(independent_ms_per_token=independent, timer_ratio=ratio)
    assert 0.98 <= ratio <= 1.02, (f"plugin {metrics['ms_per_token']:.3f} ms/token vs CUDA events "
                                   f"{independent:.3f} ms/token: ratio {ratio:.3f}")
