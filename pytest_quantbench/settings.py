"""Command-line options and ini keys -> one frozen Settings object, plus the small parsers they need."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_PRECISIONS = {"cpu": "fp32,bf16,int8,nf4,fp4", "cuda": "bf16,fp16,int8,nf4,fp4"}
DEFAULT_BASELINE = {"cpu": "fp32", "cuda": "bf16"}

# (option name, ini key, help, default). Every option is also an ini key, so a project can pin its matrix in
# [tool.pytest.ini_options] and a command line can still override it.
OPTIONS = [
    ("--qb-model", "qb_model", ("model: hub id, local dir, .gguf file or alias (smollm2-135m); repeatable; "
     "NAME=SOURCE sets the name used in test ids"), DEFAULT_MODEL),
    ("--qb-precision", "qb_precision", ("comma list of precisions, e.g. fp32,bf16,int8,nf4,nf4@fp16+dq "
     "(default: fp32,bf16,int8,nf4,fp4 on cpu; bf16,fp16,int8,nf4,fp4 on cuda)"), None),
    ("--qb-decoding", "qb_decoding", "comma list of decodings: greedy, sample, beam2..beam5", "greedy,sample,beam4"),
    ("--qb-device", "qb_device", "auto, cpu or cuda", "auto"),
    ("--qb-mode", "qb_mode", ("comma list of decode modes: eager (Hugging Face generate) and/or compiled (static KV "
     "cache, decode step under torch.compile with CUDA graphs)"), "eager"),
    ("--qb-max-new-tokens", "qb_max_new_tokens", "new tokens per timed generation", "16"),
    ("--qb-limit", "qb_limit", "items per accuracy task (default: all, or what the test asks; 0: all)", None),
    ("--qb-data-dir", "qb_data_dir", "directory with local dataset files", None),
    ("--qb-ppl-context", "qb_ppl_context", "tokens of context per perplexity window (default: the model's maximum)",
     None),
    ("--qb-ppl-stride", "qb_ppl_stride", ("tokens a perplexity window moves by (default: the context length, "
     "disjoint windows as in lm-evaluation-harness)"), None),
    ("--qb-report-dir", "qb_report_dir", "where quantbench.json and quantbench.md are written", ".quantbench"),
    ("--qb-warmup", "qb_warmup", "warm-up generations before timing", "1"),
    ("--qb-repeats", "qb_repeats", "timed generations per measurement, at least", "3"),
    ("--qb-max-repeats", "qb_max_repeats", ("timed generations per measurement, at most: repeats continue until "
     "the coefficient of variation of decode ms/token reaches --qb-target-cv"), "20"),
    ("--qb-target-cv", "qb_target_cv", "stop repeating once decode ms/token varies less than this (0.03 = 3%)",
     "0.03"),
    ("--qb-max-time", "qb_max_time", "seconds of timed generations per measurement before repeats stop anyway",
     "10"),
    ("--qb-baseline-precision", "qb_baseline_precision",
     "precision accuracy drops are measured against (default: fp32 on cpu, bf16 on cuda)", None),
    ("--qb-max-accuracy-drop", "qb_max_accuracy_drop", "fail when accuracy drops more points than this", None),
    ("--qb-max-memory-mb", "qb_max_memory_mb", "fail when peak memory during measurement exceeds this", None),
    ("--qb-max-footprint-mb", "qb_max_footprint_mb", "fail when the model footprint exceeds this", None),
    ("--qb-min-tokens-per-s", "qb_min_tokens_per_s", "fail when throughput is below this", None),
    ("--qb-max-ms-per-token", "qb_max_ms_per_token", "fail when decode ms/token is above this", None),
    ("--qb-max-kl", "qb_max_kl", "fail when the mean KL divergence (nats) from the baseline precision exceeds this",
     None),
    ("--qb-min-top1-agreement", "qb_min_top1_agreement",
     "fail when fewer next tokens than this percentage agree with the baseline precision's", None),
    ("--qb-drop-test", "qb_drop_test", ("point: an accuracy drop above --qb-max-accuracy-drop fails (default); "
     "significant: only when its paired 95% bootstrap interval also excludes zero"), None),
    ("--qb-max-perplexity-increase", "qb_max_perplexity_increase",
     "fail when a perplexity task's word perplexity rises more than this many percent over the baseline's", None),
    ("--qb-save-baseline", "qb_save_baseline", "store this run's results in FILE for later comparison", None),
    ("--qb-baseline", "qb_baseline", "compare with the results stored in FILE; regressions fail their test", None),
    ("--qb-fail-on", "qb_fail_on", "regression tolerances, e.g. ms_per_token:5%,tokens_per_s:5%,peak_mem_mb:2%,accuracy:1pt",
     "ms_per_token:5%,tokens_per_s:5%,peak_mem_mb:2%,accuracy:1pt"),
    ("--qb-force-baseline", "qb_force_baseline", "compare with a baseline measured on another device model", None),
    ("--qb-gpus-per-worker", "qb_gpus_per_worker", ("GPUs each pytest-xdist worker owns (CUDA_VISIBLE_DEVICES); "
     "with more than one, models spread over them with device_map=auto"), "1"),
    ("--qb-calibration-samples", "qb_calibration_samples", ("GPTQ/AWQ calibration samples (windows of the built-in "
     "calibration text, or of wikitext2/wikitext-2-raw/wiki.train.raw in --qb-data-dir)"), "16"),
    ("--qb-calibration-seq-len", "qb_calibration_seq_len", "tokens per GPTQ/AWQ calibration sample", "128"),
    ("--qb-sandbox", "qb_sandbox", ("where HumanEval's generated code runs: bwrap (bubblewrap namespaces; code tasks "
     "skip where it is missing) or guard (the weaker in-process guard, not a security boundary)"), "bwrap"),
]


def add_options(addoption, addini) -> None:
    """Register every option and its ini key (used by the plugin and by tests)."""
    for flag, ini, help_text, default in OPTIONS:
        option_help = help_text.replace("%", "%%")  # argparse formats help strings
        if flag == "--qb-model":
            addoption(flag, action="append", dest=ini, default=None, help=option_help)
        elif flag == "--qb-force-baseline":
            addoption(flag, action="store_const", const="true", dest=ini, default=None, help=option_help)
        else:
            addoption(flag, dest=ini, default=None, help=option_help)
        addini(ini, help=help_text, default=default)


@dataclass(frozen=True)
class Thresholds:
    """Limits a test is held to; None means unchecked."""

    max_accuracy_drop: float | None = None
    max_memory_mb: float | None = None
    max_footprint_mb: float | None = None
    min_tokens_per_s: float | None = None
    max_ms_per_token: float | None = None
    max_perplexity_increase: float | None = None  # percent, for tasks without accuracy (perplexity)
    max_kl: float | None = None  # mean KL divergence from the baseline precision, nats
    min_top1_agreement: float | None = None  # percent of positions whose top token matches the baseline's
    drop_test: str | None = None  # "point" (None) or "significant": when an accuracy drop fails

    def updated(self, **overrides) -> Thresholds:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown threshold(s) {sorted(unknown)}; valid: {sorted(known)}")
        return dataclasses.replace(self, **{k: _threshold_value(k, v) for k, v in overrides.items()})


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    precisions: tuple[str, ...]
    decodings: tuple[str, ...]
    device: str
    max_new_tokens: int
    limit: int | None
    data_dir: Path | None
    report_dir: Path
    warmup: int
    repeats: int
    baseline_precision: str
    thresholds: Thresholds
    baseline_file: Path | None = None
    save_baseline_file: Path | None = None
    fail_on: dict = dataclasses.field(default_factory=dict)  # metric -> regression.Tolerance
    force_baseline: bool = False
    gpus_per_worker: int = 1
    ppl_context: int | None = None  # perplexity window length in tokens (None: the model's maximum)
    ppl_stride: int | None = None  # perplexity window step (None: the window length)
    max_repeats: int = 20
    modes: tuple[str, ...] = ("eager",)
    target_cv: float = 0.03
    max_time_s: float = 10.0
    calibration_samples: int = 16  # GPTQ/AWQ (quantize.py)
    calibration_seq_len: int = 128
    sandbox: str = "bwrap"  # the code tasks' boundary: bwrap or guard


def split_list(value: str | list[str] | None) -> list[str]:
    """'a, b,c' or ['a,b', 'c'] -> ['a', 'b', 'c']."""
    if value is None:
        return []
    parts = value if isinstance(value, list) else [value]
    return [p.strip() for part in parts for p in part.replace("\n", ",").split(",") if p.strip()]


def split_models(value: str | list[str] | None) -> list[str]:
    """Models come one per option or ini line; a comma is part of a source (synthetic:preset:a=1,b=2)."""
    parts = value if isinstance(value, list) else [value or ""]
    return [line.strip() for part in parts for line in part.splitlines() if line.strip()]


def resolve_device(name: str) -> str:
    """auto -> cuda when a GPU is visible, else cpu."""
    name = name.strip().lower()
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def _float_or_none(name: str, value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _getter(config):
    def get(ini: str):
        value = config.getoption(ini)
        if value is None or value == []:
            value = config.getini(ini)
        return value if value not in ("", []) else None

    return get


DROP_TESTS = ("point", "significant")


def parse_drop_test(value) -> str | None:
    """'point' (the drop's point estimate is held to the limit) or 'significant' (it fails only when the paired
    interval excludes zero too); None when unset."""
    if value in (None, ""):
        return None
    name = str(value).strip().lower()
    if name not in DROP_TESTS:
        raise ValueError(f"unknown drop test {value!r}; valid: {', '.join(DROP_TESTS)}")
    return name


def parse_sandbox(value) -> str:
    """'bwrap' (the default) or 'guard'."""
    from .sandbox import BOUNDARIES

    name = str(value or "bwrap").strip().lower()
    if name not in BOUNDARIES:
        raise ValueError(f"unknown sandbox {value!r}; valid: {', '.join(BOUNDARIES)}")
    return name


def _threshold_value(name: str, value):
    return parse_drop_test(value) if name == "drop_test" else _float_or_none(name, value)


def check_modes(modes: list[str]) -> list[str]:
    from .compiled import MODES

    modes = [m.lower() for m in modes]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; valid: {', '.join(MODES)}")
    return modes


def check_names(config) -> None:
    """Validate precision and decoding names early (no torch import): raises ValueError listing valid names."""
    from .decoding import parse_decoding
    from .precisions import parse_precision

    get = _getter(config)
    for name in split_list(get("qb_precision")) + split_list(get("qb_baseline_precision")):
        parse_precision(name)
    for name in split_list(get("qb_decoding")):
        parse_decoding(name)
    check_modes(split_list(get("qb_mode") or "eager"))
    parse_drop_test(get("qb_drop_test"))
    parse_sandbox(get("qb_sandbox"))
    from .regression import load_baseline, parse_tolerances

    parse_tolerances(get("qb_fail_on") or "")
    if get("qb_baseline"):
        load_baseline(Path(get("qb_baseline")))
    resolve_device_name = (get("qb_device") or "auto").strip().lower()
    if resolve_device_name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {resolve_device_name!r}; valid: auto, cpu, cuda")


def read_settings(config) -> Settings:
    """Build Settings from a pytest config: command line first, then ini, then defaults."""
    from .decoding import parse_decoding
    from .precisions import parse_precision
    from .regression import parse_tolerances

    get = _getter(config)
    device = resolve_device(get("qb_device") or "auto")
    precisions = split_list(get("qb_precision") or DEFAULT_PRECISIONS[device])
    decodings = split_list(get("qb_decoding"))
    for name in precisions:
        parse_precision(name)
    for name in decodings:
        parse_decoding(name)
    baseline = get("qb_baseline_precision") or DEFAULT_BASELINE[device]
    parse_precision(baseline)
    limit = get("qb_limit")
    data_dir = get("qb_data_dir")
    thresholds = Thresholds(
        **{key: _threshold_value(key, get(f"qb_{key}")) for key in (f.name for f in dataclasses.fields(Thresholds))}
    )
    return Settings(
        models=tuple(split_models(get("qb_model"))),
        precisions=tuple(dict.fromkeys(precisions)),
        decodings=tuple(dict.fromkeys(decodings)),
        device=device,
        max_new_tokens=max(2, _positive_int("--qb-max-new-tokens", get("qb_max_new_tokens"))),
        limit=_positive_int("--qb-limit", limit) if limit is not None else None,
        data_dir=Path(os.path.expanduser(data_dir)) if data_dir else None,
        report_dir=Path(get("qb_report_dir")),
        warmup=_positive_int("--qb-warmup", get("qb_warmup")),
        repeats=max(1, _positive_int("--qb-repeats", get("qb_repeats"))),
        baseline_precision=baseline,
        thresholds=thresholds,
        baseline_file=Path(get("qb_baseline")) if get("qb_baseline") else None,
        save_baseline_file=Path(get("qb_save_baseline")) if get("qb_save_baseline") else None,
        fail_on=parse_tolerances(get("qb_fail_on") or ""),
        force_baseline=str(get("qb_force_baseline") or "").lower() in ("1", "true", "yes"),
        gpus_per_worker=max(1, _positive_int("--qb-gpus-per-worker", get("qb_gpus_per_worker"))),
        ppl_context=_positive_int("--qb-ppl-context", get("qb_ppl_context")) or None if get("qb_ppl_context") else None,
        ppl_stride=_positive_int("--qb-ppl-stride", get("qb_ppl_stride")) or None if get("qb_ppl_stride") else None,
        max_repeats=max(1, _positive_int("--qb-max-repeats", get("qb_max_repeats"))),
        modes=tuple(dict.fromkeys(check_modes(split_list(get("qb_mode") or "eager")))),
        target_cv=_float_or_none("--qb-target-cv", get("qb_target_cv")) or 0.0,
        max_time_s=_float_or_none("--qb-max-time", get("qb_max_time")) or 0.0,
        calibration_samples=max(1, _positive_int("--qb-calibration-samples", get("qb_calibration_samples"))),
        calibration_seq_len=max(8, _positive_int("--qb-calibration-seq-len", get("qb_calibration_seq_len"))),
        sandbox=parse_sandbox(get("qb_sandbox")),
    )
