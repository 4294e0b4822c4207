"""The `quantbench` fixture: one matrix cell (model, precision, decoding) that a test measures and evaluates."""

from __future__ import annotations

import os

import pytest

from .bound import measured_bound
from .handle import ModelHandle
from .kernels import decode_step, kernel_counts, kernel_label
from .precisions import Precision
from .results import Record
from .session import Case, QuantbenchSession
from .thresholds import Check, TaskOutcome, Thresholds, evaluate

DEFAULT_PROMPT = "Explain in a few sentences why the sky is blue."


def _device_counts(model) -> dict[str, int]:
    """How many modules went to each device (a model spread with device_map="auto" has several)."""
    counts: dict[str, int] = {}
    for place in (getattr(model, "hf_device_map", None) or {"": str(model.device)}).values():
        counts[str(place)] = counts.get(str(place), 0) + 1
    return counts


class QuantBenchmark:
    """Handed to a benchmark test: `measure()` for speed and memory, `evaluate(task)` for accuracy.

    What they return also lands in the session report; thresholds (ini, options or the test's marker) are checked
    after the test body and fail the test with the numbers. `metrics` holds what the test measured (a test may add
    its own values there); the test's Record is assembled from it and the task outcomes in one place,
    `build_record()`.
    """

    def __init__(self, session: QuantbenchSession, case: Case, nodeid: str, thresholds: Thresholds,
                 baseline: Precision, request=None):
        self.session = session
        self.case = case
        self.nodeid = nodeid
        self.settings = session.settings
        self.thresholds = thresholds
        self.baseline = baseline
        self.request = request
        self.metrics: dict = {}  # unit in every key: load_s, ms_per_token, peak_mem_mb, kl_mean, ...
        self.model_info: dict = {}
        self.outcomes: dict[str, TaskOutcome] = {}  # task -> its result (and the baseline precision's)
        self.fidelity_details: dict | None = None
        self.checks: list[Check] = []
        self._handle: ModelHandle | None = None

    @property
    def model(self) -> ModelHandle:
        """The loaded model (loaded once per (model, precision) for the whole session)."""
        if self._handle is None:
            self._handle = handle = self.session.cache.get(self.case.model, self.case.precision)
            quantization = dict(handle.extra)  # GPTQ/AWQ/HQQ (quantize.py): quantization time, kernel, settings
            self.metrics.setdefault("load_s", handle.load_s)
            self.metrics.setdefault("footprint_mb", handle.footprint_mb)
            if "quantize_s" in quantization:
                self.metrics.setdefault("quantize_s", quantization.pop("quantize_s"))
            self.model_info.update(source=handle.source, family=handle.family,
                                   precision_params=self.case.precision.params(self.settings.device),
                                   cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                                   device_map=_device_counts(handle.model), high_precision=handle.high_precision)
            if quantization:
                self.model_info["quantization"] = quantization
            decoding = self.case.decoding  # what the linear layers run under eager generate (measure() may refine it)
            self._note_kernels(decode_step(handle, decoding, self.case.batch_size * decoding.num_responses, "eager"))
        return self._handle

    def _note_kernels(self, step) -> None:
        from .families import decode_idle_modules

        handle = self._handle
        counts = kernel_counts(handle.model, step, decode_idle_modules(handle.model, handle.family))
        self.metrics["kernel"] = kernel_label(counts)
        self.model_info["kernels"] = counts

    def release(self) -> None:
        self._handle = None

    @property
    def baseline_precision(self) -> str:
        """The name of the precision accuracy drops and fidelity are measured against."""
        return self.baseline.name

    @property
    def record(self) -> Record:
        """The Record as it stands; its `metrics` is this test's own dict, so a value added there is reported."""
        return self.build_record()

    def build_record(self, outcome: str = "passed", reason: str | None = None) -> Record:
        """This test's Record: what ran, what it measured, what it was held to."""
        case, details = self.case, {name: self._task_details(name, o) for name, o in self.outcomes.items()}
        if self.fidelity_details is not None:
            details["fidelity"] = self.fidelity_details
        return Record(test=self.nodeid, model=case.model.name, precision=case.precision.name,
                      decoding=case.decoding.name, device=self.settings.device, outcome=outcome, reason=reason,
                      metrics=self.metrics, task_details=details, checks=[c.as_dict() for c in self.checks],
                      accuracy_pct={name: o.result.accuracy * 100 for name, o in self.outcomes.items()
                                    if o.result.accuracy is not None},
                      model_info=dict(self.model_info), worker=self.session.worker,
                      device_name=self.session.device_name, mode=case.mode, batch_size=case.batch_size)

    def _task_details(self, name: str, outcome: TaskOutcome) -> dict:
        """A task's entry in the record: size, metrics, categories, examples, per-item outcomes (so that a later
        run's regression gate compares the same items paired) and how it compares with the baseline precision."""
        from .tasks.fidelity import length_ratio

        result = outcome.result
        details = {"n": result.n, "metrics": result.metrics,
                   "by_category_pct": {k: v * 100 for k, v in result.by_category.items()},
                   "examples": result.examples, **result.details}
        if result.correct:
            details["outcomes"] = "".join("1" if c else "0" for c in result.correct)
            if result.scores:
                details["scores"] = [round(float(x), 4) for x in result.scores]
        versus = outcome.paired.as_dict() if outcome.paired is not None else {}
        ratio = length_ratio(outcome.baseline.metrics, result.metrics) if outcome.baseline is not None else None
        if ratio is not None:
            versus["length_ratio"] = ratio
        if versus:
            details["vs_baseline"] = {"precision": outcome.baseline_precision, **versus}
        return details

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
                                     on_results=self._to_pytest_benchmark, mode=self.case.mode,
                                     batch_size=self.case.batch_size)
        step = decode_step(handle, self.case.decoding, metrics["sequences"], self.case.mode)
        self._note_kernels(step)
        metrics["kernel"] = self.metrics["kernel"]
        try:
            bound, layers = measured_bound(handle, step, metrics, self.case.mode, self.session.bounds)
        except Exception as error:  # noqa: BLE001  a kernel that cannot be called alone: the speed still counts
            bound, layers = {"bound_note": f"not measured: {type(error).__name__}: {error}"[:300]}, []
        metrics.update(bound)
        self.model_info["bound_layers"] = layers
        self.metrics.update(metrics)
        if settings.device == "cuda":  # which physical GPUs ran this case, and what the driver saw on them
            from .gpus import nvml_gpus

            self.model_info["gpus"] = nvml_gpus()
        return metrics

    def _to_pytest_benchmark(self, run, rounds: int) -> None:
        """Where the session saves pytest-benchmark results (--benchmark-json, --benchmark-save, --benchmark-autosave),
        time `rounds` more generations through its `benchmark.pedantic` (one iteration a round), so its files and
        `--benchmark-compare` cover quantbench tests. Extra runs, because its public API times a call itself; a test
        that used the `benchmark` fixture already keeps its own timing."""
        config = self.request.config if self.request is not None else None
        if config is None or not config.pluginmanager.hasplugin("benchmark") or not any(
                config.getoption(name, None) for name in ("benchmark_json", "benchmark_save", "benchmark_autosave")):
            return
        benchmark = self.request.getfixturevalue("benchmark")
        if benchmark.disabled or benchmark.stats is not None:  # --benchmark-disable or xdist; or used by the test
            return
        benchmark.extra_info.update(model=self.case.model.name, precision=self.case.precision.name,
                                    decoding=self.case.decoding.name)
        benchmark.pedantic(run, rounds=rounds, iterations=1)

    def evaluate(self, task_name: str, limit: int | None = None) -> float:
        """Accuracy (percent) on a registered task, or for a task without accuracy its main metric (word perplexity);
        with an accuracy-drop (perplexity-increase) threshold, the baseline's too. No data: the test is skipped."""
        from .tasks import DataUnavailable, get_task

        task = get_task(task_name)
        if self.case.model.kind == "synthetic" and task.needs_real_weights:
            pytest.skip(f"{task.name}: {self.case.model.name} has random weights (synthetic model), so accuracy "
                        "would be meaningless; speed, memory and fidelity still run")
        if task.families and self.model.family not in task.families:
            pytest.skip(f"{task.name}: for {' or '.join(task.families)} models only; {self.case.model.name} is "
                        f"{self.model.family}")
        if self.settings.limit is not None:  # the command line wins over the test's own choice; 0 means all
            limit = self.settings.limit or None
        tokens = task.new_token_budget(self.settings.max_new_tokens)
        try:
            result = self.session.task_result(self.case.model, self.case.precision, task, self.case.decoding, limit,
                                              tokens, handle=self.model)
        except DataUnavailable as error:
            # The message only: the exception's traceback holds the frames, and with them this case's model, for the
            # rest of the session (each later precision's too, as it is raised again).
            self.session.unavailable[task.name] = str(error)
            pytest.skip(f"{task.name}: {error}")
        outcome = self.outcomes[task.name] = TaskOutcome(result)
        gate = self.thresholds.max_accuracy_drop if result.accuracy is not None else \
            self.thresholds.max_perplexity_increase
        if gate is not None and self.case.precision.name != self.baseline.name:
            self._handle = None  # let the cache free this model if the baseline must be loaded
            outcome.baseline = self.session.task_result(self.case.model, self.baseline, task, self.case.decoding,
                                                        limit, tokens)
            outcome.baseline_precision = self.baseline.name
            if result.correct and len(result.correct) == len(outcome.baseline.correct):  # the same items, paired
                from .stats import compare_paired

                outcome.paired = compare_paired(outcome.baseline.correct, result.correct,
                                                outcome.baseline.scores or None, result.scores or None)
        return result.accuracy * 100 if result.accuracy is not None else result.metrics[result.main_metric]

    def fidelity(self, prompts: list[str] | None = None) -> dict:
        """KL divergence (mean and p99 over positions, nats) and top-1 agreement (%) of this case's next-token
        distributions against the baseline precision's, teacher-forced on `prompts` (default: the built-in set);
        recorded as metrics and held to max_kl / min_top1_agreement. The baseline's side is computed once and cached."""
        from .tasks import fidelity

        if self.model.family == "encoder-decoder":
            pytest.skip("fidelity: teacher-forcing an encoder-decoder model is not supported yet (decoder-only)")
        source = self.model.source
        self._handle = None  # let the cache swap in the baseline if its summary must be computed
        summary = self.session.fidelity_summary(self.case.model, self.baseline, source, prompts)
        metrics = fidelity.compare(summary, fidelity.HandleLogits(self.model))
        self.metrics.update(metrics)
        self.fidelity_details = {"baseline": self.baseline.name, "prompts": len(summary.tokens),
                                 "prompt_set": fidelity.PROMPT_SET_VERSION if prompts is None else "custom",
                                 "top_k": int(summary.top_ids.shape[1])}
        return metrics

    def enforce_thresholds(self) -> None:
        """Check every applicable threshold; fail the test listing each one crossed."""
        checks = evaluate(self.thresholds, self.case.precision.name, self.metrics, self.outcomes)
        try:
            checks += self.session.regression_checks(self.build_record())
        except ValueError as error:  # a baseline from another device model, or a malformed baseline file
            pytest.fail(str(error), pytrace=False)
        self.checks = checks
        failed = [c.message for c in checks if not c.passed]
        if failed:
            pytest.fail("threshold failed: " + "; ".join(failed), pytrace=False)
