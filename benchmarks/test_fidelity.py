"""Fidelity against the baseline precision: KL divergence of next-token distributions and top-1 agreement on the
built-in prompt set (teacher-forced, so positions align). Catches damage that accuracy averages hide; it does not
depend on the decoding, so greedy only."""

import pytest


# Limits that pass working quantizations of SmolLM2-135M on the CPU (mean KL / top-1 agreement against fp32: bf16
# 0.002 / 98%, int8 0.03 / 91%, nf4 0.36 / 71%, fp4 0.55 / 59%) and fail a broken one (random weights: KL of several
# nats, agreement near zero).
@pytest.mark.quantbench(decodings=["greedy"], max_kl=1.0, min_top1_agreement=50.0)
def test_fidelity(quantbench):
    metrics = quantbench.fidelity()
    if quantbench.case.precision.name == quantbench.baseline_precision:
        assert metrics["kl_mean"] < 1e-4 and metrics["top1_agreement_pct"] >= 99.0  # itself (exactly 0 on a CPU)
