"""Latency and throughput of every model x precision x decoding in the session's matrix."""


def test_speed(quantbench):
    metrics = quantbench.measure()
    assert metrics["tokens_per_s"] > 0
    assert 0 < metrics["ttft_ms"] <= metrics["latency_ms"]
