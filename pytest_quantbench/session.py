"""Session-wide state: the matrix of cases, the model cache, task results shared between tests, and the records."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .decoding import Decoding
from .models import ModelCache, ModelSpec
from .precisions import Precision
from .results import Record
from .settings import Settings, split_list


def k_safe(text: str) -> str:
    """`text` in the characters a `-k` expression can name: anything else becomes `-`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)


@dataclass(frozen=True)
class Case:
    """One cell of the matrix; its id is `<model>-<precision>-<decoding>`, in characters `-k` can name (a precision's
    `@arg` and `+flag` become `-arg`, `-flag`: `nf4@fp16+dq` is `nf4-fp16-dq` in the id), then the mode and the batch
    size where the session makes them part of it (`-compiled-bs8`)."""

    model: ModelSpec
    precision: Precision
    decoding: Decoding
    mode: str = "eager"
    show_mode: bool = False  # in the id only when the session selects more than one mode
    batch_size: int = 1  # prompts measure() decodes at once
    show_batch: bool = False  # in the id when the session selects several batch sizes, or one other than 1

    @property
    def id(self) -> str:
        suffix = (f"-{self.mode}" if self.show_mode else "") + (f"-bs{self.batch_size}" if self.show_batch else "")
        return k_safe(f"{self.model.name}-{self.precision.name}-{self.decoding.name}{suffix}")


class QuantbenchSession:
    """The state of one pytest session: its settings, the model cache, task results shared between tests, and the
    records every finished test leaves."""

    def __init__(self, config, settings: Settings):
        self.config = config
        self.settings = settings
        self._cache: ModelCache | None = None
        self.records: list[Record] = []
        self.report_paths: list = []
        self.task_results: dict[tuple, object] = {}  # (model, precision, task, decoding, limit, tokens) -> TaskResult
        self.unavailable: dict[str, str] = {}  # task -> why its data is missing (looked for once per session)
        self.worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self._device_name: str | None = None
        self._versions: dict | None = None  # library versions, for the regression gate
        self._summaries = None  # fidelity.SummaryCache: the baseline's next-token summaries
        self.bounds: dict[tuple, tuple] = {}  # (model, precision, decode step, cache length, ...) -> bound.py's bound

    @property
    def device_name(self) -> str:
        if self._device_name is None:
            from .results import device_name

            self._device_name = device_name(self.settings.device)
        return self._device_name

    def regression_checks(self, record) -> list:
        """Checks of `record` against the same test in the --qb-baseline file (none without one)."""
        from .regression import gate

        if self.settings.baseline is None:
            return []
        if self._versions is None:
            from .results import library_versions

            self._versions = library_versions()
        return gate(self.settings.baseline, record, self.settings.fail_on, self.settings.force_baseline,
                    self._versions)

    @property
    def cache(self) -> ModelCache:
        if self._cache is None:
            settings = self.settings
            several_gpus = settings.device == "cuda" and settings.gpus_per_worker > 1
            self._cache = ModelCache(settings.device, "auto" if several_gpus else None, settings.calibration)
        return self._cache

    def cases(self, models=None, precisions=None, decodings=None, modes=None) -> list[Case]:
        """The session's matrix, narrowed to the names a test's marker allows (None: no narrowing; the marker's
        names were checked at collection)."""
        settings = self.settings

        def narrow(selected, allowed, name=lambda entry: entry.name):
            if allowed is None:
                return list(selected)
            allowed = [a.lower() for a in split_list(list(allowed))]
            return [s for s in selected if name(s).lower() in allowed]

        show_mode = len(settings.modes) > 1
        show_batch = settings.batch_sizes != (1,)  # today's ids stay as they are at the default batch of one
        return [
            Case(spec, precision, decoding, mode, show_mode, batch, show_batch)
            for spec in settings.models
            if models is None or spec.name in models
            for precision in narrow(settings.precisions, precisions)
            for decoding in narrow(settings.decodings, decodings)
            for mode in narrow(settings.modes, modes, name=str)
            for batch in settings.batch_sizes
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
            with handle.counting_new_tokens() as counts:
                result = task.evaluate(handle, decoding, limit, max_new_tokens, **self.task_options(task))
            if counts:  # what the output-length drift against the baseline is computed from
                result.metrics.setdefault("mean_new_tokens", sum(counts) / len(counts))
            self.task_results[key] = result
        return self.task_results[key]

    def fidelity_summary(self, spec: ModelSpec, precision: Precision, source: dict, prompts: list[str] | None = None):
        """The baseline's next-token summary on the fidelity prompts (None: the built-in set): kept from earlier in the
        session, read from the disk cache, or computed (loading `precision`). `source` describes the weights."""
        from .cache import cache_root
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
        """The settings a task declares in its `options` (from data_dir, context_length, stride, sandbox)."""
        settings = self.settings
        offered = {"data_dir": settings.data_dir, "context_length": settings.ppl_context, "stride": settings.ppl_stride,
                   "sandbox": settings.sandbox}
        unknown = [name for name in task.options if name not in offered]
        if unknown:
            raise ValueError(f"task {task.name!r} asks for unknown options {unknown}; offered: {', '.join(offered)}")
        return {name: offered[name] for name in task.options}
