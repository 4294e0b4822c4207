"""Quantization schemes that need more than from_pretrained keyword arguments.

GPTQ and AWQ go through GPTQModel (transformers 5 loads both formats through it; auto-gptq and autoawq are archived
and do not install beside current torch). A model is quantized once from a calibration set and cached on disk
under `cache.cache_root()/quantized/<key>`; a checkpoint that is already GPTQ or AWQ is loaded as it is.
HQQ needs no calibration: it replaces the loaded model's linear layers in place.

The functions take plain arguments (a precision's options as a dict, the calibration set-up); what they report
(quantization time, the kernel that runs) they return, and the record takes it from the model handle.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .cache import cache_root
from .errors import ModelLoadError

DATA = Path(__file__).parent / "data"
INFO_FILE = "quantbench.json"
# A train split, never a test split: calibrating on evaluation text would flatter perplexity.
DATA_DIR_CALIBRATION = ("wikitext2/wikitext-2-raw/wiki.train.raw", "wikitext2/wikitext-2/train.txt")


@dataclass
class Calibration:
    """What GPTQ and AWQ calibrate on: `samples` windows of `seq_len` tokens from one text."""

    samples: int = 16
    seq_len: int = 128
    data_dir: Path | None = None  # a WikiText-2 train file there is used instead of the built-in text

    def text_file(self) -> Path:
        for name in DATA_DIR_CALIBRATION:
            if self.data_dir is not None and (self.data_dir / name).is_file():
                return self.data_dir / name
        return DATA / "calibration.txt"


_MADE_HERE: set[str] = set()  # checkpoints this process quantized (their load_s includes quantize_s)


# ---------------------------------------------------------------------------------------------------- GPTQ and AWQ


def _read_config(source: Path) -> dict:
    path = Path(source) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check_group_size(config: dict, group_size: int) -> None:
    """GPTQ/AWQ groups run along each linear layer's input: the group size must divide every input width."""
    widths = {"hidden_size": config.get("hidden_size"), "intermediate_size": config.get("intermediate_size")}
    if config.get("num_attention_heads") and config.get("head_dim"):
        widths["num_attention_heads x head_dim"] = config["num_attention_heads"] * config["head_dim"]
    widths = {k: v for k, v in widths.items() if isinstance(v, int)}
    if group_size <= 0 or all(v % group_size == 0 for v in widths.values()):
        return
    fitting = [g for g in (128, 64, 32, 16) if all(v % g == 0 for v in widths.values())]
    sizes = ", ".join(f"{k} {v}" for k, v in widths.items())
    hint = f"; use @g{fitting[0]}" if fitting else ""
    raise ModelLoadError(f"group size {group_size} does not divide the model's layer widths ({sizes}){hint}")


def check_awq_widths(config: dict) -> None:
    """GPTQModel's AWQ clip search walks each layer's outputs in blocks of 64: every output width must divide by 64."""
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // max(1, config.get("num_attention_heads", 1))
    widths = {"hidden_size": config.get("hidden_size"), "intermediate_size": config.get("intermediate_size"),
              "num_key_value_heads x head_dim": (config.get("num_key_value_heads") or 0) * head_dim or None}
    bad = {k: v for k, v in widths.items() if isinstance(v, int) and v % 64}
    if bad:
        sizes = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise ModelLoadError(f"awq (GPTQModel) needs every layer's output width divisible by 64; this model has {sizes}")


def _fingerprint(source: Path) -> str:
    """sha256 over the config and the weight files (a changed checkpoint gets a new cache entry)."""
    digest = hashlib.sha256((Path(source) / "config.json").read_bytes())
    for weights in sorted(Path(source).glob("*.safetensors")) + sorted(Path(source).glob("*.bin")):
        digest.update(weights.name.encode())
        with open(weights, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def quant_settings(options: dict) -> dict:
    """What GPTQModel is asked for, from the precision's options (@4bit,g64, +desc, +asym)."""
    return {"bits": options.get("bits", 4), "group_size": options.get("group_size", 64),
            "desc_act": bool(options.get("desc", False)), "sym": not options.get("asym", False)}


def calibration_samples(tokenizer, calibration: Calibration) -> list[dict]:
    """Consecutive windows of `seq_len` tokens from the calibration text (deterministic)."""
    text = calibration.text_file().read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    size = calibration.seq_len
    if calibration.samples * size > len(ids):
        raise ModelLoadError(f"calibration text {calibration.text_file()} has {len(ids)} tokens: too few for "
                             f"{calibration.samples} samples of {size}; lower --qb-calibration-samples or "
                             "--qb-calibration-seq-len")
    return [{"input_ids": ids[i * size:(i + 1) * size], "attention_mask": [1] * size}
            for i in range(calibration.samples)]


def _cache_key(method: str, settings: dict, source: Path, calibration: Calibration) -> tuple[str, dict]:
    text = calibration.text_file().read_bytes()
    parts = {"source": _fingerprint(source), "method": method, **settings,
             "calibration": hashlib.sha256(text).hexdigest()[:16], "samples": calibration.samples,
             "seq_len": calibration.seq_len, "gptqmodel": version("gptqmodel")}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{method}-{settings['bits']}b-g{settings['group_size']}-{key}", parts


@contextlib.contextmanager
def _removing_gptqmodel_tmp():
    """GPTQModel leaves /tmp/gptqmodel_* folders (offload scratch) behind; remove the ones made meanwhile."""
    pattern = os.path.join(tempfile.gettempdir(), "gptqmodel_*")
    before = set(glob.glob(pattern))
    try:
        yield
    finally:
        for path in set(glob.glob(pattern)) - before:
            shutil.rmtree(path, ignore_errors=True)


def _worker_env() -> dict:
    # GPTQModel's default CPU pool is (cores+1)//2 workers, but its model loader asks for 2: on a 2-core machine
    # the pool cannot be built. It must be set before gptqmodel is imported (it reads the variable once).
    return {"GPTQMODEL_CPU_WORKERS": os.environ.get("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))}


def _set_cpu_workers() -> None:
    os.environ.update(_worker_env())


def gptqmodel_checkpoint(method: str, name: str, options: dict, source_dir: Path, device: str,
                         calibration: Calibration) -> Path:
    """The directory to load for the precision `name`: `source_dir` itself when it is already a GPTQ/AWQ
    checkpoint, else the cached quantization of it (made now, once, when missing)."""
    config = _read_config(source_dir)
    existing = (config.get("quantization_config") or {}).get("quant_method")
    if existing:
        if existing != method:
            raise ModelLoadError(f"{source_dir} is already quantized with {existing}; it cannot be loaded as "
                                 f"{name} (use --qb-precision {existing} for it)")
        return Path(source_dir)
    settings = quant_settings(options)
    check_group_size(config, settings["group_size"])
    if method == "awq":
        check_awq_widths(config)
    key, parts = _cache_key(method, settings, source_dir, calibration)
    target = cache_root() / "quantized" / key
    if (target / INFO_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        seconds = _quantize(method, settings, Path(source_dir), staging, device, calibration)
        info = {"quantize_s": round(seconds, 2), "device": device, "key": parts,
                "calibration_file": calibration.text_file().name}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=1))
        try:
            staging.rename(target)
            _MADE_HERE.add(str(target))
        except OSError:  # another process (an xdist worker) finished first: use its copy
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _quantize(method: str, settings: dict, source: Path, target: Path, device: str, calibration: Calibration) -> float:
    """Quantize `source` into `target` in a child process; return the seconds quantization took (not load, save).

    A child process, because GPTQModel's worker pool ends the whole interpreter (os._exit) when a quantization step
    raises, which would take the pytest session down with it; the child also takes GPTQModel's environment changes,
    threads and quantization-time memory with it when it ends."""
    job = {"method": method, "settings": settings, "source": str(source), "target": str(target), "device": device,
           "samples": calibration.samples, "seq_len": calibration.seq_len,
           "data_dir": str(calibration.data_dir) if calibration.data_dir else None}
    with _removing_gptqmodel_tmp():
        done = subprocess.run([sys.executable, "-m", "pytest_quantbench.quantize", json.dumps(job)],
                              check=False, capture_output=True, text=True,
                              env={**os.environ, **_worker_env()})
    seconds_file = target / ".quantize_s"
    if done.returncode != 0 or not seconds_file.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise ModelLoadError(f"GPTQModel could not quantize {source} ({method}, {settings}); exit code "
                             f"{done.returncode}:\n{tail}")
    seconds = float(seconds_file.read_text())
    seconds_file.unlink()
    return seconds


def _quantize_in_this_process(job: dict) -> None:
    """The child's side of _quantize: load, quantize with the calibration windows, save, write the seconds."""
    from gptqmodel import AWQConfig, GPTQConfig, GPTQModel
    from transformers import AutoTokenizer

    calibration = Calibration(job["samples"], job["seq_len"], Path(job["data_dir"]) if job["data_dir"] else None)
    samples = calibration_samples(AutoTokenizer.from_pretrained(job["source"]), calibration)
    settings = job["settings"]
    config_class = GPTQConfig if job["method"] == "gptq" else AWQConfig
    # offload_to_disk off: it saves RAM on large models but costs time here, and it would be written into the
    # checkpoint's config, making every later load create a scratch folder.
    config = config_class(bits=settings["bits"], group_size=settings["group_size"], desc_act=settings["desc_act"],
                          sym=settings["sym"], offload_to_disk=False)
    model = GPTQModel.load(job["source"], config, device=job["device"])
    start = time.perf_counter()
    model.quantize(samples, batch_size=len(samples))
    seconds = time.perf_counter() - start
    model.save(job["target"])
    (Path(job["target"]) / ".quantize_s").write_text(f"{seconds:.3f}")


def gptqmodel_load_kwargs(method: str, options: dict, device: str, checkpoint: Path | None = None) -> dict:
    """from_pretrained arguments for a GPTQ/AWQ checkpoint (its quantization_config comes from its config.json).

    The compute dtype: bf16 on the CPU (GPTQModel's CPU kernels are int4 x bf16; in fp32 they fall back to a path
    about 10x slower), fp16 on CUDA (the dtype every GPTQ/AWQ CUDA kernel supports). The kernel: the one the name
    asks for (gptq@marlin), else GPTQModel's own choice, except on CUDA where a layer is too narrow for the
    Hopper/Ampere kernels (see `cuda_backend`)."""
    import torch

    _set_cpu_workers()
    kwargs = {"dtype": torch.float16 if compute_dtype(device) == "fp16" else torch.bfloat16}
    backend = kernel_backend(method, options.get("kernel"))
    if backend is None and device == "cuda" and checkpoint is not None:
        backend = cuda_backend(method, checkpoint)
    if backend:
        from transformers import AwqConfig, GPTQConfig

        bits = (json.loads((checkpoint / "config.json").read_text())["quantization_config"].get("bits", 4)
                if checkpoint is not None else options.get("bits", 4))
        kwargs["quantization_config"] = (GPTQConfig if method == "gptq" else AwqConfig)(bits=bits, backend=backend)
    return kwargs


TRITON_KERNEL = {"gptq": "triton", "awq": "gemm_triton"}  # builds with no download and takes any layer width


def offline_kernel_hint(method: str) -> str:
    """What to say when a GPTQ/AWQ load failed on a download: the kernel to name instead."""
    return ("GPTQModel's automatic kernel choice fetched sources to build a kernel at first use (on Hopper its "
            "Machete kernel downloads CUTLASS). Offline, name a kernel that builds without a download: "
            f"{method}@marlin or {method}@{TRITON_KERNEL[method]}")


def kernel_backend(method: str, kernel: str | None) -> str | None:
    """The backend name transformers hands GPTQModel for a kernel asked for by name (gptq@marlin, awq@gemv)."""
    if kernel is None:
        return None
    if method == "gptq":
        return f"gptq_{kernel}"
    return "torch_awq" if kernel == "torch" else kernel


def cuda_backend(method: str, checkpoint: Path) -> str | None:
    """None (GPTQModel's automatic choice) when every linear layer's width is a multiple of 128; else the Triton
    kernel. GPTQModel's automatic choice on Hopper is Machete, which rejects narrower layers when it builds them
    (SmolLM2's k/v projections are 3 x 64 = 192 wide: "`out_features`: 192 must be divisible by [128]")."""
    config = json.loads((checkpoint / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config.get("num_attention_heads") or 1
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
    widths = [config.get("hidden_size", 0), config.get("intermediate_size", 0), heads * head_dim,
              (config.get("num_key_value_heads") or heads) * head_dim]
    if all(width % 128 == 0 for width in widths):
        return None
    return kernel_backend(method, TRITON_KERNEL[method])


def compute_dtype(device: str) -> str:
    return "fp16" if device == "cuda" else "bf16"


def quantized_kernels(model) -> list[str]:
    """Class names of the quantized linear layers that run (e.g. TorchAtenLinear, MarlinLinear, HQQLinear)."""
    names = {type(m).__name__ for m in model.modules()
             if "qlinear" in type(m).__module__ or type(m).__name__ == "HQQLinear"}
    return sorted(names)


def gptqmodel_info(model, device: str) -> dict:
    """What ran: quantization time and settings from the checkpoint's quantbench.json (none for a pre-quantized
    checkpoint), and the GPTQModel kernel class the loaded layers use."""
    checkpoint = Path(model.name_or_path)
    made_now = str(checkpoint) in _MADE_HERE
    _MADE_HERE.discard(str(checkpoint))  # a later load in this process reads it from the cache
    info_file = checkpoint / INFO_FILE
    info: dict[str, Any] = json.loads(info_file.read_text()) if info_file.is_file() else {}
    config = getattr(model.config, "quantization_config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    return {
        "kernel": ",".join(quantized_kernels(model)) or "unknown",
        "checkpoint": ("quantized now" if made_now else "cached") if info else "pre-quantized",
        "checkpoint_dir": str(checkpoint),
        "bits": config.get("bits"), "group_size": config.get("group_size"),
        "desc_act": config.get("desc_act"), "sym": config.get("sym"),
        "compute_dtype": compute_dtype(device),
        **({"quantize_s": info["quantize_s"], "calibration_samples": info["key"]["samples"],
            "calibration_seq_len": info["key"]["seq_len"]} if info else {}),
    }


# ------------------------------------------------------------------------------------------------------------ HQQ


def hqq_quantize(model, bits: int, group: int, dtype, device: str) -> dict:
    """Replace the decoder's nn.Linear layers (not lm_head) in place with HQQ's HQQLinear: half-quadratic
    quantization of the weights to `bits` in groups of `group`, no calibration, computing in `dtype` (a torch
    dtype). Returns what ran: the kernel and the seconds it took."""
    import torch
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    config = BaseQuantizeConfig(nbits=bits, group_size=group)
    start = time.perf_counter()
    for parent in list(model.get_decoder().modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            if child.in_features % group:
                raise ModelLoadError(f"hqq group size {group} does not divide the input width {child.in_features} "
                                     f"of {name}; pick a group size that divides it (e.g. @g32)")
            layer = HQQLinear(child, config, compute_dtype=dtype, device=device)
            # HQQ keeps scales and zero points in a plain dict: register them (not saved) so that the footprint,
            # which counts parameters and buffers, includes them.
            for key in ("scale", "zero"):
                if isinstance(layer.meta.get(key), torch.Tensor):
                    layer.register_buffer(f"meta_{key}", layer.meta[key], persistent=False)
            setattr(parent, name, layer)
    return {"kernel": f"HQQLinear ({HQQLinear.backend.name.lower()})", "quantize_s": round(time.perf_counter() - start, 2)}


if __name__ == "__main__":  # the child process of _quantize
    _quantize_in_this_process(json.loads(sys.argv[1]))
