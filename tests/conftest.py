"""Shared fixtures: the real SmolLM2-135M (embedded GGUF, converted once) and a tiny random-weight Llama that
goes through the same loading path in milliseconds, for plugin tests that need a model but not its answers."""

from __future__ import annotations

import importlib.util
import os

import pytest

# pytester's in-process runs drop from sys.modules what was first imported inside them; bitsandbytes registers torch
# operators at import and fails when imported a second time, so import it once here, before any inner session.
if importlib.util.find_spec("bitsandbytes") is not None:
    import bitsandbytes  # noqa: F401
# The same for matplotlib: its package object would outlive submodules dropped after an inner session, and the
# re-imported submodules' classes would no longer match (plt.subplots: "Single argument to subplot ...").
if importlib.util.find_spec("matplotlib") is not None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers with torch's default two threads each oversubscribe two cores and slow every model test ~10x.
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


@pytest.fixture(scope="session")
def smollm2_dir():
    """Directory of SmolLM2-135M-Instruct as plain safetensors (converted from the embedded GGUF once)."""
    from pytest_quantbench.models import materialize, resolve_model

    path, _ = materialize(resolve_model("smollm2-135m"))
    return path


def save_tiny_llama(path, tokenizer_dir, num_key_value_heads: int = 2):
    """A 2-layer Llama (hidden 64, 4 heads) with random weights (seed 0) and the tokenizer of `tokenizer_dir`,
    saved in `path` like any local model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=num_key_value_heads, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir):
    """A 2-layer Llama with random weights and SmolLM2's tokenizer, saved like any local model."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_dir)


SLOWABLE_SPEED_TEST = """
import os, time

def test_speed(quantbench):
    delay = float(os.environ.get("QB_TEST_SLOW", "0"))
    if delay:  # a deliberately slowed case: every forward pass sleeps `delay` seconds
        model = quantbench.model.model
        forward = model.forward
        model.forward = lambda *a, **k: (time.sleep(delay), forward(*a, **k))[1]
    quantbench.measure(max_new_tokens=4)
"""


@pytest.fixture
def slowable_speed_test(pytester):
    """Writes a speed test that QB_TEST_SLOW=<seconds> slows down at every forward pass."""
    return pytester.makepyfile(SLOWABLE_SPEED_TEST)


@pytest.fixture
def check_gate(pytester, monkeypatch, slowable_speed_test):
    """Save a baseline of the slowable speed test, pass an identical rerun, fail a rerun slowed by `delay_s`."""

    def check(model_arg: str, tolerance_ms: int, delay_s: float, run) -> None:
        args = [model_arg, "--qb-precision=fp32", "--qb-decoding=greedy", "--qb-repeats=3", "--qb-warmup=1",
                "-p", "no:cacheprovider"]
        run(*args, "--qb-save-baseline=base.json").assert_outcomes(passed=1)
        gate = ("--qb-baseline=base.json", f"--qb-fail-on=ms_per_token:{tolerance_ms},footprint_mb:1%")
        run(*args, *gate).assert_outcomes(passed=1)
        monkeypatch.setenv("QB_TEST_SLOW", str(delay_s))
        slowed = run(*args, *gate)
        slowed.assert_outcomes(failed=1)
        slowed.stdout.fnmatch_lines([f"*ms_per_token * vs baseline * regression (tolerance {tolerance_ms}*"])
        # the same code, settings and libraries: nothing in the record reads as having run differently
        assert "ran differently" not in slowed.stdout.str()

    return check
