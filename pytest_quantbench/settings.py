"""Command-line options and ini keys -> one frozen Settings object, plus the small parsers they need."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .decoding import Decoding, parse_decoding
from .models import ModelSpec, resolve_models
from .precisions import Precision, parse_precision
from .quantize import Calibration
from .regression import Baseline, load_baseline, parse_tolerances
from .results import DEFAULT_FAIL_ON
from .thresholds import Thresholds, non_negative_number, threshold_value

DEFAULT_MODEL = "smollm2-135m"
# The CPU's default suite must finish within ten minutes on two cores: there bitsandbytes int8 (LLM.int8) took half
# of it (306 of 622 s) and fp4 decodes and weighs what nf4 does; both are one option away
# (--qb-precision fp32,bf16,int8,nf4,fp4).
DEFAULT_PRECISIONS = {"cpu": "fp32,bf16,nf4", "cuda": "bf16,fp16,int8,nf4,fp4"}
DEFAULT_BASELINE = {"cpu": "fp32", "cuda": "bf16"}

# (option name, ini key, help, default). Every option is also an ini key, so a project can pin its matrix in
# [tool.pytest.ini_options] and a command line can still override it.
OPTIONS = [
    ("--qb-model", "qb_model", ("model: hub id, local dir, .gguf file or alias (smollm2-135m); repeatable; "
     "NAME=SOURCE sets the name used in test ids"), DEFAULT_MODEL),
    ("--qb-precision", "qb_precision", ("comma list of precisions, e.g. fp32,bf16,int8,nf4,nf4@fp16+dq "
     "(default: fp32,bf16,nf4 on cpu; bf16,fp16,int8,nf4,fp4 on cuda)"), None),
    ("--qb-decoding", "qb_decoding", "comma list of decodings: greedy, sample, beam2..beam5", "greedy,sample,beam4"),
    ("--qb-device", "qb_device", "auto, cpu or cuda", "auto"),
    ("--qb-mode", "qb_mode", ("comma list of decode modes: eager (Hugging Face generate) and/or compiled (static KV "
     "cache, decode step under torch.compile with CUDA graphs)"), "eager"),
    ("--qb-batch-size", "qb_batch_size", ("comma list of batch sizes: prompts decoded at once by measure() (each "
     "with its decoding's own sequences: 20 for sample, the beams for beamN); more than one, or one other than 1, "
     "joins the test id as -bs<N>"), "1"),
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
    ("--qb-fail-on", "qb_fail_on", ("regression tolerances against the baseline run; a change fails only beyond its "
     "tolerance and the measured noise of both runs"), DEFAULT_FAIL_ON),
    ("--qb-force-baseline", "qb_force_baseline", "compare with a baseline measured on another device model", None),
    ("--qb-gpus-per-worker", "qb_gpus_per_worker", ("GPUs each pytest-xdist worker owns (CUDA_VISIBLE_DEVICES); "
     "with more than one, models spread over them with device_map=auto"), "1"),
    ("--qb-calibration-samples", "qb_calibration_samples", ("GPTQ/AWQ calibration samples (windows of the built-in "
     "calibration text, or of wikitext2/wikitext-2-raw/wiki.train.raw in --qb-data-dir)"), "16"),
    ("--qb-calibration-seq-len", "qb_calibration_seq_len", "tokens per GPTQ/AWQ calibration sample", "128"),
    ("--qb-shard", "qb_shard", ("K/N: run only the K-th of N disjoint parts of the matrix (one CI job each), split "
     "by (model, precision) so each model loads in one shard; `quantbench merge` joins their reports"), None),
    ("--qb-trust-remote-code", "qb_trust_remote_code", ("let a model's own Python code from its repository or "
     "directory run (transformers' trust_remote_code): only for models whose code you trust"), None),
    ("--qb-sandbox", "qb_sandbox", ("where HumanEval's generated code runs: bwrap (bubblewrap namespaces; code tasks "
     "skip where it is missing) or guard (the weaker in-process guard, not a security boundary)"), "bwrap"),
]


# Ini keys that hold a number or a switch are typed, so pytest's --help names the type and a TOML file may write
# `qb_warmup = 2`; an empty value still means the default. Untyped (strings) before pytest 9.2's type expressions.
INI_TYPES = {
    **dict.fromkeys(("qb_max_new_tokens", "qb_limit", "qb_ppl_context", "qb_ppl_stride", "qb_warmup", "qb_repeats",
                     "qb_max_repeats", "qb_gpus_per_worker", "qb_calibration_samples", "qb_calibration_seq_len"), int),
    **dict.fromkeys(("qb_target_cv", "qb_max_time", "qb_max_accuracy_drop", "qb_max_memory_mb", "qb_max_footprint_mb",
                     "qb_min_tokens_per_s", "qb_max_ms_per_token", "qb_max_kl", "qb_min_top1_agreement",
                     "qb_max_perplexity_increase"), float),
    **dict.fromkeys(("qb_force_baseline", "qb_trust_remote_code"), bool),
}


def _typed_ini() -> bool:
    import pytest

    return tuple(int(part) for part in re.findall(r"\d+", pytest.__version__)[:2]) >= (9, 2)


def add_options(addoption, addini) -> None:
    """Register every option and its ini key (used by the plugin and by tests)."""
    typed = _typed_ini()
    for flag, ini, help_text, default in OPTIONS:
        if default is not None and "default" not in help_text:  # as pytest-benchmark's options say theirs
            help_text = f"{help_text}. Default: {default}"
        option_help = help_text.replace("%", "%%")  # argparse formats help strings
        if flag == "--qb-model":
            addoption(flag, action="append", dest=ini, default=None, help=option_help)
        elif flag in ("--qb-force-baseline", "--qb-trust-remote-code"):
            addoption(flag, action="store_const", const="true", dest=ini, default=None, help=option_help)
        else:
            addoption(flag, dest=ini, default=None, help=option_help)
        kind = INI_TYPES.get(ini) if typed else None
        addini(ini, help=help_text, default=default, **({"type": kind | Literal[""]} if kind else {}))


@dataclass(frozen=True)
class Settings:
    """Every option parsed once, in pytest_configure: names resolved to models, precisions and decodings, the
    device resolved, the baseline file read."""

    models: tuple[ModelSpec, ...]
    precisions: tuple[Precision, ...]
    decodings: tuple[Decoding, ...]
    device: str
    max_new_tokens: int
    limit: int | None
    data_dir: Path | None
    report_dir: Path
    warmup: int
    repeats: int
    baseline_precision: Precision
    thresholds: Thresholds
    baseline_file: Path | None = None
    baseline: Baseline | None = None  # what --qb-baseline holds, read at start
    save_baseline_file: Path | None = None
    fail_on: dict = dataclasses.field(default_factory=dict)  # metric -> regression.Tolerance
    force_baseline: bool = False
    gpus_per_worker: int = 1
    ppl_context: int | None = None  # perplexity window length in tokens (None: the model's maximum)
    ppl_stride: int | None = None  # perplexity window step (None: the window length)
    max_repeats: int = 20
    modes: tuple[str, ...] = ("eager",)
    batch_sizes: tuple[int, ...] = (1,)
    target_cv: float = 0.03
    max_time_s: float = 10.0
    calibration: Calibration = dataclasses.field(default_factory=Calibration)  # GPTQ/AWQ (quantize.py)
    sandbox: str = "bwrap"  # the code tasks' boundary: bwrap or guard
    shard: tuple[int, int] | None = None  # (K, N): the K-th of N parts of the matrix


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
    """auto -> cuda when a GPU is visible, else cpu. torch is imported only where a GPU may be present."""
    name = name.strip().lower()
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name != "auto":
        return name
    from .gpus import no_gpu_here

    if no_gpu_here():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# The smallest value each integer option takes, and why where it is not obvious; below it is a usage error.
INT_MINIMUMS = {
    "qb_max_new_tokens": (2, "decode ms/token is timed over the tokens after the first"),
    "qb_limit": (0, "0 means all items"),
    "qb_warmup": (0, ""),
    "qb_repeats": (1, ""),
    "qb_max_repeats": (1, ""),
    "qb_gpus_per_worker": (1, ""),
    "qb_ppl_context": (1, ""),
    "qb_ppl_stride": (1, ""),
    "qb_calibration_samples": (1, ""),
    "qb_calibration_seq_len": (8, ""),
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _int_at_least(name: str, value, minimum: int = 0, why: str = "") -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}{f' ({why})' if why else ''}, got {number}")
    return number


def _int_option(get, key: str) -> int | None:
    """An integer option checked against its minimum in INT_MINIMUMS; None when unset."""
    value = get(key)
    if value is None:  # an empty ini line means the default
        value = next(default for _, ini, _, default in OPTIONS if ini == key)
    return None if value is None else _int_at_least(_flag(key), value, *INT_MINIMUMS[key])


def _getter(config):
    def get(ini: str):
        value = config.getoption(ini)
        if value is None or value == []:
            value = config.getini(ini)
        return value if value not in ("", []) else None

    return get


def parse_sandbox(value) -> str:
    """'bwrap' (the default) or 'guard'."""
    from .sandbox import BOUNDARIES

    name = str(value or "bwrap").strip().lower()
    if name not in BOUNDARIES:
        raise ValueError(f"unknown sandbox {value!r}; valid: {', '.join(BOUNDARIES)}")
    return name


def check_modes(modes: list[str]) -> list[str]:
    from .compiled import MODES, capture_step, compile_tuning, decode_attention
    from .fusion import compile_fuse

    modes = [m.lower() for m in modes]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; valid: {', '.join(MODES)}")
    if "compiled" in modes:
        compile_tuning()  # a mistyped setting would otherwise compile as "auto" without a word
        compile_fuse()
        decode_attention()
        capture_step()
    return modes


def parse_batch_sizes(value) -> tuple[int, ...]:
    """'1,8,32' -> (1, 8, 32), duplicates dropped; ValueError naming --qb-batch-size for anything but positive
    integers."""
    sizes = split_list(str(value or "1"))
    if not sizes:
        raise ValueError("--qb-batch-size is empty: give positive integers, e.g. 1,8,32")
    return tuple(dict.fromkeys(_int_at_least("--qb-batch-size", size, 1) for size in sizes))


def _thresholds(get) -> Thresholds:
    names = (f.name for f in dataclasses.fields(Thresholds))
    return Thresholds(**{key: threshold_value(key, get(f"qb_{key}"), _flag(f"qb_{key}")) for key in names})


def _marker_names(key: str, value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}= takes a name or a list of names, got {value!r}")
    return split_list(list(value))


def marker_keywords(narrowing: tuple[str, ...]) -> list[str]:
    """Every keyword a quantbench marker takes: the matrix it narrows, the baseline precision, the thresholds."""
    return [*narrowing, "baseline", *(f.name for f in dataclasses.fields(Thresholds))]


def check_marker(kwargs: dict, narrowing: tuple[str, ...]) -> None:
    """A quantbench marker's keywords: names (models, precisions, decodings, modes, baseline) and thresholds;
    ValueError naming the bad one. Checked at collection, so a typo costs no model load."""
    thresholds = [f.name for f in dataclasses.fields(Thresholds)]
    valid = marker_keywords(narrowing)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown keyword(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    names = {key: _marker_names(key, kwargs.get(key)) for key in narrowing}
    baseline = kwargs.get("baseline")
    if baseline is not None and not isinstance(baseline, str):
        raise ValueError(f"baseline= takes one precision name, got {baseline!r}")
    for name in names["precisions"] + ([baseline] if baseline else []):
        parse_precision(name)
    for name in names["decodings"]:
        parse_decoding(name)
    check_modes(names["modes"])
    Thresholds().updated(**{k: v for k, v in kwargs.items() if k in thresholds})


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """'2/3' -> (2, 3); None when not sharding; ValueError for anything but 1 <= K <= N."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"--qb-shard {value!r}: expected K/N with 1 <= K <= N, e.g. 1/2")
    return int(match[1]), int(match[2])


def gpus_per_worker(config) -> int:
    """--qb-gpus-per-worker, read before the settings: the GPUs are pinned before anything initializes CUDA."""
    return _int_option(_getter(config), "qb_gpus_per_worker")


def _models(get) -> tuple[ModelSpec, ...]:
    models = get("qb_model")
    if isinstance(models, list) and not all(m.strip() for m in models):  # `--qb-model "$UNSET"` beside others
        models = []
    return tuple(resolve_models(split_models(models)))


def _true(value) -> bool:
    """A switch given on the command line, or in an ini file as 1, true or yes."""
    return str(value or "").strip().lower() in ("1", "true", "yes")


def read_settings(config) -> Settings:
    """Build Settings from a pytest config: command line first, then ini, then defaults. ValueError (or
    ModelLoadError for a model source) naming the option and what it accepts; no model is loaded."""
    get = _getter(config)
    context, stride = _int_option(get, "qb_ppl_context"), _int_option(get, "qb_ppl_stride")
    if context and stride and stride > context:
        raise ValueError(f"--qb-ppl-stride {stride} is longer than --qb-ppl-context {context}: a window scores "
                         "`stride` new tokens within its context")
    data_dir = get("qb_data_dir")
    data_dir = Path(os.path.expanduser(data_dir)) if data_dir else None
    if data_dir and not data_dir.is_dir():
        raise ValueError(f"--qb-data-dir {get('qb_data_dir')!r} is not a directory")
    models = _models(get)
    if _true(get("qb_trust_remote_code")):
        models = tuple(dataclasses.replace(spec, trust_remote_code=True) for spec in models)
    device = resolve_device(get("qb_device") or "auto")
    precisions = [parse_precision(n) for n in split_list(get("qb_precision") or DEFAULT_PRECISIONS[device])]
    baseline_file = Path(get("qb_baseline")) if get("qb_baseline") else None
    return Settings(
        models=models,
        precisions=tuple({p.name: p for p in precisions}.values()),
        decodings=tuple({d.name: d for d in map(parse_decoding, split_list(get("qb_decoding")))}.values()),
        device=device,
        max_new_tokens=_int_option(get, "qb_max_new_tokens"),
        limit=_int_option(get, "qb_limit"),
        data_dir=data_dir,
        report_dir=Path(get("qb_report_dir")),
        warmup=_int_option(get, "qb_warmup"),
        repeats=_int_option(get, "qb_repeats"),
        baseline_precision=parse_precision(get("qb_baseline_precision") or DEFAULT_BASELINE[device]),
        thresholds=_thresholds(get),
        baseline_file=baseline_file,
        baseline=load_baseline(baseline_file) if baseline_file else None,
        save_baseline_file=Path(get("qb_save_baseline")) if get("qb_save_baseline") else None,
        fail_on=parse_tolerances(get("qb_fail_on") or ""),
        force_baseline=_true(get("qb_force_baseline")),
        gpus_per_worker=_int_option(get, "qb_gpus_per_worker"),
        ppl_context=context,
        ppl_stride=stride,
        max_repeats=_int_option(get, "qb_max_repeats"),
        modes=tuple(dict.fromkeys(check_modes(split_list(get("qb_mode") or "eager")))),
        batch_sizes=parse_batch_sizes(get("qb_batch_size")),
        target_cv=non_negative_number("--qb-target-cv", get("qb_target_cv")) or 0.0,
        max_time_s=non_negative_number("--qb-max-time", get("qb_max_time")) or 0.0,
        calibration=Calibration(_int_option(get, "qb_calibration_samples"), _int_option(get, "qb_calibration_seq_len"),
                                data_dir),
        sandbox=parse_sandbox(get("qb_sandbox")),
        shard=parse_shard(get("qb_shard")),
    )
