"""Session-wide state: settings, the model cache, accuracy results shared between tests, and the records."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .decoding import Decoding, parse_decoding
from .models import ModelCache, ModelSpec, resolve_models
from .precisions import Precision, parse_precision
from .results import Record
from .settings import Settings, read_settings, split_list


def k_safe(text: str) -> str:
    """`text` in the characters a `-k` expression can name: anything else becomes `-`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


@dataclass(frozen=True)
class Case:
    """One cell of the matrix; its id is `<model>-<precision>-<decoding>`, in characters `-k` can name (a precision's
    `@arg` and `+flag` become `-arg`, `-flag`: `nf4@fp16+dq` is `nf4-fp16-dq` in the id)."""

    model: ModelSpec
    precision: Precision
    decoding: Decoding
    mode: str = "eager"
    show_mode: bool = False  # in the id only when the session selects more than one mode

    @property
    def id(self) -> str:
        suffix = f"-{self.mode}" if self.show_mode else ""
        return k_safe(f"{self.model.name}-{self.precision.name}-{self.decoding.name}{suffix}")


class QuantbenchSession:
    def __init__(self, config):
        self.config = config
        self._settings: Settings | None = None
        self._cache: ModelCache | None = None
        self.records: list[Record] = []
        self.task_results: dict[tuple, object] = {}  # (model, precision, task, decoding, limit, tokens) -> TaskResult
        self.unavailable: dict[str, str] = {}  # task -> why its data is missing (looked for once per session)
        self.worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self._baseline: dict | None = None
        self._device_name: str | None = None
        self._summaries = None  # fidelity.SummaryCache: the baseline's next-token summaries

    @property
    def device_name(self) -> str:
        if self._device_name is None:
            from .results import device_name

            self._device_name = device_name(self.settings.device)
        return self._device_name

    def regression_checks(self, record) -> list:
        """Checks of `record` against the same test in the --qb-baseline file (none without one)."""
        from .regression import gate, load_baseline

        path = self.settings.baseline_file
        if path is None:
            return []
        if self._baseline is None:
            self._baseline = load_baseline(path)
        return gate(self._baseline, record, self.settings.fail_on, self.settings.force_baseline)

    @property
    def settings(self) -> Settings:
        """Built on first use, so pytest runs that use no quantbench fixture never import torch."""
        if self._settings is None:
            self._settings = read_settings(self.config)
            from .quantize import configure  # GPTQ/AWQ read their calibration set-up from there

            configure(self._settings.calibration_samples, self._settings.calibration_seq_len, self._settings.data_dir)
        return self._settings

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            several_gpus = self.settings.device == "cuda" and self.settings.gpus_per_worker > 1
            self._cache = ModelCache(self.settings.device, "auto" if several_gpus else None)
        return self._cache

    def cases(self, models=None, precisions=None, decodings=None, modes=None) -> list[Case]:
        """The session's matrix, narrowed to the names a test's marker allows (None: no narrowing)."""
        settings = self.settings
        specs = resolve_models(list(settings.models))

        def narrow(selected, allowed):
            if allowed is None:
                return list(selected)
            allowed = [a.lower() for a in split_list(list(allowed))]
            return [s for s in selected if s.lower() in allowed]

        for name in split_list(list(precisions or [])):
            parse_precision(name)
        for name in split_list(list(decodings or [])):
            parse_decoding(name)
        show_mode = len(settings.modes) > 1
        return [
            Case(spec, parse_precision(p), parse_decoding(d), mode, show_mode)
            for spec in specs
            if models is None or spec.name in models
            for p in narrow(settings.precisions, precisions)
            for d in narrow(settings.decodings, decodings)
            for mode in narrow(settings.modes, modes)
        ]

    def task_result(self, spec: ModelSpec, precision: Precision, task, decoding: Decoding, limit: int | None,
                    max_new_tokens: int, handle=None):
        """A task's result for one (model, precision, decoding), computed once per session."""
        key = (spec.name, precision.name, task.name, decoding.name, limit, max_new_tokens)
        if key not in self.task_results:
            import torch

            if task.name in self.unavailable:  # its data was looked for and is missing: do not look again
                from .tasks import DataUnavailable

                raise DataUnavailable(self.unavailable[task.name])
            handle = handle or self.cache.get(spec, precision)
            torch.manual_seed(0)
            generated = len(getattr(handle, "new_token_counts", ()))
            result = task.evaluate(handle, decoding, limit, max_new_tokens, **self.task_options(task))
            counts = list(getattr(handle, "new_token_counts", ()))[generated:]
            if counts:  # what the output-length drift against the baseline is computed from
                result.metrics.setdefault("mean_new_tokens", sum(counts) / len(counts))
            self.task_results[key] = result
        return self.task_results[key]

    def fidelity_summary(self, spec: ModelSpec, precision: Precision, source: dict, prompts: list[str] | None = None):
        """The baseline's next-token summary on the fidelity prompts (None: the built-in set): kept from earlier in the
        session, read from the disk cache, or computed (loading `precision`). `source` describes the weights."""
        from .models import cache_root
        from .tasks import fidelity

        if self._summaries is None:
            self._summaries = fidelity.SummaryCache(cache_root() / "fidelity")
        device = self.settings.device
        key, persistent = fidelity.summary_key(source, spec.name, precision.name, precision.params(device), device,
                                               prompts=prompts)

        def compute():
            handle = self.cache.get(spec, precision)
            return fidelity.summarize(fidelity.HandleLogits(handle), prompts or fidelity.load_prompts())

        return self._summaries.get(key, persistent, compute)

    def task_options(self, task) -> dict:
        """The settings a task's `evaluate` asks for by name (data_dir, context_length, stride, sandbox)."""
        import inspect

        settings = self.settings
        offered = {"data_dir": settings.data_dir, "context_length": settings.ppl_context, "stride": settings.ppl_stride,
                   "sandbox": settings.sandbox}
        accepted = inspect.signature(task.evaluate).parameters
        return {name: value for name, value in offered.items() if name in accepted}
