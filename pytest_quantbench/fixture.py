"""The `quantbench` fixture: one matrix cell (model, precision, decoding) that a test measures and evaluates."""

from __future__ import annotations

import os

import pytest

from . import thresholds as threshold_checks
from .models import ModelHandle
from .results import Record
from .session import Case, QuantbenchSession
from .settings import Thresholds


def _device_counts(model) -> dict[str, int]:
    """How many modules went to each device (a model spread with device_map="auto" has several)."""
    counts: dict[str, int] = {}
    for place in (getattr(model, "hf_device_map", None) or {"": str(model.device)}).values():
        counts[str(place)] = counts.get(str(place), 0) + 1
    return counts


DEFAULT_PROMPT = "Explain in a few sentences why the sky is blue."


class QuantBenchmark:
    """Handed to a benchmark test: `measure()` for speed and memory, `evaluate(task)` for accuracy.

    What they return also lands in the session report; thresholds (ini, options or the test's marker) are checked
    after the test body and fail the test with the numbers.
    """

    def __init__(self, session: QuantbenchSession, case: Case, nodeid: str, thresholds: Thresholds, baseline: str):
        self.session = session
        self.case = case
        self.settings = session.settings
        self.thresholds = thresholds
        self.baseline_precision = baseline
        self.record = Record(test=nodeid, model=case.model.name, precision=case.precision.name,
                             decoding=case.decoding.name, device=self.settings.device, worker=session.worker,
                             device_name=session.device_name, mode=case.mode)
        self.baseline_accuracy_pct: dict[str, float] = {}
        self.task_metrics: dict[str, dict] = {}  # task -> its result's metrics (stderr, chance level, perplexity)
        self.baseline_task_metrics: dict[str, dict] = {}
        self.paired: dict[str, object] = {}  # task -> stats.PairedComparison against the baseline's result
        self._handle: ModelHandle | None = None

    @property
    def model(self) -> ModelHandle:
        """The loaded model (loaded once per (model, precision) for the whole session)."""
        if self._handle is None:
            self._handle = self.session.cache.get(self.case.model, self.case.precision)
            self.record.metrics.setdefault("load_s", self._handle.load_s)
            self.record.metrics.setdefault("footprint_mb", self._handle.footprint_mb)
            self.record.model_info = {"source": self._handle.source, "family": self._handle.family,
                                      "precision_params": self.case.precision.params(self.settings.device),
                                      "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                      "device_map": _device_counts(self._handle.model),
                                      "high_precision": self._handle.high_precision}
            extra = dict(self._handle.extra)  # GPTQ/AWQ/HQQ (quantize.py): quantization time, kernel, settings
            if "quantize_s" in extra:
                self.record.metrics.setdefault("quantize_s", extra.pop("quantize_s"))
            if extra:
                self.record.model_info["quantization"] = extra
        return self._handle

    def release(self) -> None:
        self._handle = None

    def generate(self, prompt: str, max_new_tokens: int | None = None) -> list[str]:
        """Responses to one prompt under this case's decoding (chat template applied)."""
        return self.model.generate([prompt], self.case.decoding, max_new_tokens or self.settings.max_new_tokens)[0]

    def measure(self, prompt: str = DEFAULT_PROMPT, max_new_tokens: int | None = None) -> dict:
        """Latency (TTFT, end-to-end, decode ms/token), tokens/s and memory for one prompt; returns the metrics."""
        import torch

        from .measure import measure_generation

        handle = self.model
        torch.manual_seed(0)
        settings = self.settings
        metrics = measure_generation(handle, handle.format_prompt(prompt), self.case.decoding,
                                     max_new_tokens or settings.max_new_tokens, settings.warmup, settings.repeats,
                                     settings.max_repeats, settings.target_cv, settings.max_time_s,
                                     on_results=self._to_pytest_benchmark, mode=self.case.mode)
        self.record.metrics.update(metrics)
        if settings.device == "cuda":  # which physical GPUs ran this case, and what the driver saw on them
            from .gpus import nvml_gpus

            self.record.model_info["gpus"] = nvml_gpus()
        return metrics

    def _to_pytest_benchmark(self, latencies: list[float]) -> None:
        """Hand the timed generations' end-to-end seconds to pytest-benchmark, as one round each (pedantic-style:
        one iteration per round), so `--benchmark-json` and `--benchmark-compare` cover quantbench tests."""
        request = getattr(self, "request", None)
        if request is None or not request.config.pluginmanager.hasplugin("benchmark"):
            return
        benchmark = request.getfixturevalue("benchmark")
        if benchmark.disabled or benchmark._mode:  # disabled (e.g. under xdist) or already used by the test
            return
        benchmark._mode = "quantbench.measure(...)"
        stats = benchmark._make_stats(1)
        for seconds in latencies:
            stats.update(seconds)
        benchmark.extra_info.update(model=self.case.model.name, precision=self.case.precision.name,
                                    decoding=self.case.decoding.name)

    def evaluate(self, task_name: str, limit: int | None = None) -> float:
        """Accuracy (percent) on a registered task, or for a task without accuracy its main metric (word perplexity);
        with an accuracy-drop (perplexity-increase) threshold, the baseline's too. No data: the test is skipped."""
        from .precisions import parse_precision
        from .tasks import DataUnavailable, get_task

        task = get_task(task_name)
        if self.case.model.kind == "synthetic" and getattr(task, "needs_real_weights", True):
            pytest.skip(f"{task.name}: {self.case.model.name} has random weights (synthetic model), so accuracy "
                        "would be meaningless; speed, memory and fidelity still run")
        families = getattr(task, "families", None)  # a task for some model families only (images: image-text)
        if families and self.model.family not in families:
            pytest.skip(f"{task.name}: for {' or '.join(families)} models only; {self.case.model.name} is "
                        f"{self.model.family}")
        if self.settings.limit is not None:  # the command line wins over the test's own choice; 0 means all
            limit = self.settings.limit or None
        # A task with its own budget (`new_tokens`, e.g. HumanEval) keeps it; the others cap at --qb-max-new-tokens.
        tokens = getattr(task, "new_tokens", None) or min(self.settings.max_new_tokens,
                                                          getattr(task, "max_new_tokens", self.settings.max_new_tokens))
        try:
            result = self.session.task_result(self.case.model, self.case.precision, task, self.case.decoding, limit,
                                              tokens, handle=self.model)
        except DataUnavailable as error:
            # The message only: the exception's traceback holds the frames, and with them this case's model, for the
            # rest of the session (each later precision's too, as it is raised again).
            self.session.unavailable[task.name] = str(error)
            pytest.skip(f"{task.name}: {error}")
        if result.accuracy is not None:  # a perplexity task has none: its metrics carry it
            self.record.accuracy_pct[task.name] = result.accuracy * 100
        self.task_metrics[task.name] = result.metrics
        self.record.task_details[task.name] = {"n": result.n, "metrics": result.metrics,
                                               "by_category_pct": {k: v * 100 for k, v in result.by_category.items()},
                                               "examples": result.examples, **result.details}
        if result.correct:  # per item, so that a later run's regression gate compares the same items paired
            self.record.task_details[task.name]["outcomes"] = "".join("1" if c else "0" for c in result.correct)
            if result.scores:
                self.record.task_details[task.name]["scores"] = [round(float(x), 4) for x in result.scores]
        gate = self.thresholds.max_accuracy_drop if result.accuracy is not None else \
            self.thresholds.max_perplexity_increase
        if gate is not None and self.case.precision.name != self.baseline_precision:
            self._handle = None  # let the cache free this model if the baseline must be loaded
            baseline = self.session.task_result(self.case.model, parse_precision(self.baseline_precision), task,
                                                self.case.decoding, limit, tokens)
            if baseline.accuracy is not None:
                self.baseline_accuracy_pct[task.name] = baseline.accuracy * 100
            self.baseline_task_metrics[task.name] = baseline.metrics
            self._compare_with_baseline(task.name, result, baseline)
        return result.accuracy * 100 if result.accuracy is not None else result.metrics[result.main_metric]

    def _compare_with_baseline(self, name: str, result, baseline) -> None:
        """Paired statistics and answer flips (same items, both precisions) and the drift of output length."""
        from .stats import compare_paired
        from .tasks.fidelity import length_ratio

        details: dict = {}
        if result.correct and len(result.correct) == len(baseline.correct):
            paired = compare_paired(baseline.correct, result.correct, baseline.scores or None, result.scores or None)
            self.paired[name] = paired
            details.update(paired.as_dict())
        ratio = length_ratio(baseline.metrics, result.metrics)
        if ratio is not None:
            details["length_ratio"] = ratio
        if details:
            self.record.task_details[name]["vs_baseline"] = {"precision": self.baseline_precision, **details}

    def fidelity(self, prompts: list[str] | None = None) -> dict:
        """KL divergence (mean and p99 over positions, nats) and top-1 agreement (%) of this case's next-token
        distributions against the baseline precision's, teacher-forced on `prompts` (default: the built-in set);
        recorded as metrics and held to max_kl / min_top1_agreement. The baseline's side is computed once and cached."""
        from .precisions import parse_precision
        from .tasks import fidelity

        if self.model.family == "encoder-decoder":
            pytest.skip("fidelity: teacher-forcing an encoder-decoder model is not supported yet (decoder-only)")
        source = self.model.source
        self._handle = None  # let the cache swap in the baseline if its summary must be computed
        summary = self.session.fidelity_summary(self.case.model, parse_precision(self.baseline_precision), source,
                                                prompts)
        metrics = fidelity.compare(summary, fidelity.HandleLogits(self.model))
        self.record.metrics.update(metrics)
        self.record.task_details["fidelity"] = {"baseline": self.baseline_precision, "prompts": len(summary.tokens),
                                                "prompt_set": fidelity.PROMPT_SET_VERSION if prompts is None else "custom",
                                                "top_k": int(summary.top_ids.shape[1])}
        return metrics

    def enforce_thresholds(self) -> None:
        """Check every applicable threshold; fail the test listing each one crossed."""
        checks = threshold_checks.evaluate(
            self.thresholds, self.record.metrics, self.case.precision.name,
            {t: v / 100 for t, v in self.record.accuracy_pct.items()}, self.baseline_precision,
            {t: v / 100 for t, v in self.baseline_accuracy_pct.items()},
            task_metrics=self.task_metrics, baseline_task_metrics=self.baseline_task_metrics, paired=self.paired,
        )
        try:
            checks += self.session.regression_checks(self.record)
        except ValueError as error:  # a baseline from another device model, or a malformed baseline file
            pytest.fail(str(error), pytrace=False)
        self.record.checks = [c.as_dict() for c in checks]
        failed = [c.message for c in checks if not c.passed]
        if failed:
            pytest.fail("threshold failed: " + "; ".join(failed), pytrace=False)
