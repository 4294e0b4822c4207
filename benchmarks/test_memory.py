"""Model footprint and peak memory while generating; memory does not depend on the decoding, so greedy only."""

import pytest

from pytest_quantbench.trackers import unquantized_parameter_count


@pytest.mark.quantbench(decodings=["greedy"])
def test_memory(quantbench):
    metrics = quantbench.measure(max_new_tokens=8)
    model = quantbench.model.model
    full_precision_mb = unquantized_parameter_count(model) * 4 / 2**20
    # A quantized or half-precision model that is not smaller than its fp32 size was not quantized.
    if quantbench.case.precision.name != "fp32":
        assert metrics["peak_mem_mb"] > 0
        assert quantbench.metrics["footprint_mb"] < full_precision_mb
