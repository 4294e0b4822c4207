"""Precision registry: a name -> how to load a model in it, and whether it can run here.

Adding a precision is one `register(Precision(...))` call (or an entry point in the group
`pytest_quantbench.precisions` pointing at a Precision). A name is `base[@arg][+flag...]`: what `@arg` means is the
entry's own (a compute dtype for nf4@fp16, a memory budget for offload@2GB, bits, group size and kernel for
gptq@4bit,g64,marlin), and `+flag` switches an option on (nf4+dq: double quantization; gptq+desc: act-order;
nf4+vision: an image-text model's vision tower quantized too, which families.py otherwise keeps in higher precision).

An entry loads in up to five steps; `build` is required, the others optional:
  build(precision, device) -> from_pretrained keyword arguments (dtype, quantization_config)
  prepare(precision, source_dir, device, calibration) -> (the directory to load instead, the from_pretrained
      arguments for it), e.g. GPTQ quantized once and cached on disk, loaded with a kernel its layer widths allow
  placement(precision, checkpoint, device) -> device_map and max_memory read off the checkpoint (offload)
  keep_layers(precision, device, kwargs, skeleton) -> (layers a kernel here cannot take, left out of quantization, why)
  after_load(precision, model, device) -> (the model, what ran: kernel, quantize_s), e.g. HQQ quantizing in place
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gemlite_layers

DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Precision:
    name: str
    library: str
    description: str
    build: Callable[[Precision, str], dict]  # (precision, device) -> from_pretrained kwargs
    requires: tuple[str, ...] = ()  # importable modules the precision needs
    needs_cuda: bool = False
    check: Callable[[Precision, str], str | None] | None = None  # a further reason it cannot run (e.g. GPU too old)
    arg_help: str = ""  # what '@arg' takes, shown in the list of valid names
    parse_arg: Callable[[str], dict] | None = None  # '@arg' -> option values; ValueError when invalid
    flags: tuple[str, ...] = ()  # '+flag' names this entry accepts
    options: tuple[tuple[str, Any], ...] = ()  # defaults, then what '@arg' and '+flag' set
    prepare: Callable[[Precision, Path, str, Any], tuple[Path, dict]] | None = None
    placement: Callable[[Precision, Path, str], dict] | None = None  # device_map/max_memory from the checkpoint
    after_load: Callable[[Precision, Any, str], tuple[Any, dict]] | None = None
    # (precision, device, from_pretrained kwargs, skeleton: () -> the model on the meta device) -> (layer names kept
    # out of quantization, why); it adds them to the kwargs' quantization config
    keep_layers: Callable[[Precision, str, dict, Callable[[], Any]], tuple[list[str], str]] | None = None
    compiles: bool = True  # False where the kernels break torch.compile graphs or CUDA graphs (compiled mode)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    @property
    def compute_dtype(self) -> str | None:
        """Set by the @dtype suffix; None means the device's default."""
        return self.option("compute_dtype")

    @property
    def double_quant(self) -> bool:
        return bool(self.option("dq", False))

    @property
    def accepts_compute_dtype(self) -> bool:
        return self.parse_arg is _parse_compute_dtype

    def why_unavailable(self, device: str) -> str | None:
        """A reason this precision cannot run on `device`, or None when it can."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            gpu = "a CUDA GPU and " if self.needs_cuda and device != "cuda" else ""
            return f"{self.name} needs {gpu}the python package(s) {', '.join(missing)} ({self.library}): not installed"
        if self.needs_cuda and device != "cuda":
            return f"{self.name} needs a CUDA GPU; device is {device}"
        return self.check(self, device) if self.check else None

    def load_kwargs(self, device: str) -> dict:
        return self.build(self, device)

    def params(self, device: str) -> dict:
        """What the report records about this precision beyond its name."""
        out: dict[str, Any] = {"library": self.library}
        if self.accepts_compute_dtype:
            out["compute_dtype"] = self.resolved_compute_dtype(device)
        out.update((k, v) for k, v in self.options if k != "compute_dtype")
        if "dq" in self.flags:
            out["double_quant"] = out.pop("dq", False)
        return out

    def resolved_compute_dtype(self, device: str) -> str:
        return self.compute_dtype or ("bf16" if device == "cuda" else "fp32")


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _parse_compute_dtype(arg: str) -> dict:
    if arg not in DTYPES:
        raise ValueError(f"unknown compute dtype {arg!r}; valid: {', '.join(DTYPES)}")
    return {"compute_dtype": arg}


def parse_size_mb(text: str) -> float:
    """'2GB' -> 2048.0, '512MB' -> 512.0, '1.5G' -> 1536.0 (binary units, as accelerate's max_memory)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k|m|g|t)i?b?", text.strip().lower())
    if not match:
        raise ValueError(f"not a memory size: {text!r} (examples: 512MB, 2GB)")
    return float(match[1]) * {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}[match[2]]


def _plain(dtype: str) -> Callable[[Precision, str], dict]:
    return lambda precision, device: {"dtype": torch_dtype(dtype)}


def _bnb_int8(precision: Precision, device: str) -> dict:
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True),
            "dtype": torch_dtype("fp16" if device == "cuda" else "fp32")}


def _bnb_4bit(quant_type: str) -> Callable[[Precision, str], dict]:
    def build(precision: Precision, device: str) -> dict:
        from transformers import BitsAndBytesConfig

        compute = precision.resolved_compute_dtype(device)
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_compute_dtype=torch_dtype(compute),
            bnb_4bit_use_double_quant=precision.double_quant,
        )
        # Non-quantized modules (embeddings, norms, lm_head) stay in the compute dtype.
        return {"quantization_config": config, "dtype": torch_dtype(compute)}

    return build


# bitsandbytes' 4-bit layers on a CPU with AVX-512 BF16 repack their weight at the first inference call
# (`_convert_weight_packed_for_cpu`): rows in blocks of 32, one bf16 scale per 64 inputs. A layer whose output width
# is not a multiple of 32, or whose input width is not a multiple of the quantization block (64, Params4bit's
# default), fails there ("shape '[32, 0]' is invalid" for a 32 x 32 layer). Other CPUs dequantize any shape.
BNB_CPU_ROW_BLOCK = 32
BNB_4BIT_BLOCKSIZE = 64
BNB_CPU_4BIT_REASON = (f"bitsandbytes' AVX-512 CPU 4-bit kernel takes only layers with output width a multiple of "
                       f"{BNB_CPU_ROW_BLOCK} and input width a multiple of {BNB_4BIT_BLOCKSIZE}; kept in the compute "
                       "dtype on every CPU, so results compare across CPUs")


def bnb_cpu_4bit_fits(in_features: int, out_features: int) -> bool:
    """Whether bitsandbytes' AVX-512 CPU 4-bit kernel can take a linear layer of this shape."""
    return out_features % BNB_CPU_ROW_BLOCK == 0 and in_features % BNB_4BIT_BLOCKSIZE == 0


def _bnb_4bit_after_load(precision: Precision, model, device: str) -> tuple[Any, dict]:
    """On the CPU the compute dtype is what runs. bitsandbytes' AVX-512 BF16 kernel, which its 4-bit layers switch
    to at their first inference call on such CPUs, casts the activations to bf16 whatever the compute dtype (its
    outputs are then ~2.5e-3 off float32 ones, and padding moves a choice's score by up to 0.2 nats): it runs only
    for a bf16 compute dtype; other dtypes dequantize, then multiply in their own dtype, on every CPU."""
    if device != "cpu":
        return model, {}
    fast = precision.resolved_compute_dtype(device) == "bf16"
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = layer.support_avx512bf16_for_cpu and fast
    if not layers:
        return model, {}
    used = any(layer.support_avx512bf16_for_cpu for layer in layers)
    return model, {"cpu_4bit_kernel": "AVX-512 BF16 (bf16 activations)" if used
                   else f"dequantize, then {precision.resolved_compute_dtype(device)} matmul"}


def bnb_cpu_4bit_unfit(model, skipped: list[str] | None) -> list[str]:
    """The linear layers of `model` (a meta-device skeleton will do) that transformers would replace with 4-bit ones,
    given the skip patterns `skipped`, and whose shape that kernel cannot take."""
    import torch
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    unfit = []
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear:
            shape = module.in_features, module.out_features
        elif isinstance(module, Conv1D):  # GPT-2's transposed linear
            shape = tuple(module.weight.shape)
        else:
            continue
        if should_convert_module(name, skipped) and not bnb_cpu_4bit_fits(*shape):
            unfit.append(name)
    return unfit


def _bnb_4bit_keep(precision: Precision, device: str, kwargs: dict, skeleton) -> tuple[list[str], str]:
    """On the CPU: the layers the AVX-512 kernel cannot take join the quantization config's skip list (matched
    exactly; an unset list first gets transformers' defaults, which an explicit list replaces)."""
    if device != "cpu":
        return [], ""
    import re

    from transformers.quantizers.base import get_keys_to_not_convert

    config = kwargs["quantization_config"]
    model = skeleton()
    skipped = list(config.llm_int8_skip_modules if config.llm_int8_skip_modules is not None
                   else get_keys_to_not_convert(model))
    unfit = bnb_cpu_4bit_unfit(model, [*skipped, *(getattr(model, "_keep_in_fp32_modules", None) or ())])
    if unfit:
        config.llm_int8_skip_modules = [*skipped, *(re.escape(name) + "$" for name in unfit)]
    return unfit, BNB_CPU_4BIT_REASON


def _torchao(kind: str) -> Callable[[Precision, str], dict]:
    """torchao weight-only int8/int4 and fp8 through transformers' TorchAoConfig."""

    def build(precision: Precision, device: str) -> dict:
        import torchao.quantization as ao
        from transformers import TorchAoConfig

        # set_inductor_config=False: torchao would otherwise switch Inductor's exhaustive kernel tuning on for the
        # whole process (coordinate_descent_check_all_directions and more); compiled mode sets its own (compiled.py)
        group = precision.option("group_size")
        if kind == "int8wo":
            config = ao.Int8WeightOnlyConfig(set_inductor_config=False)
        elif kind == "int4wo":
            if device == "cuda":  # the default packing needs the `mslk` kernels (not installable); tinygemm's does not
                config = ao.Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d",
                                                 set_inductor_config=False)
            else:  # torchao's CUDA int4 layouts do not run on a CPU; its CPU config stores int4 values one per byte
                import torch
                from torchao.quantization.granularity import PerGroup

                config = ao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group))
        elif kind == "fp8":
            config = ao.Float8WeightOnlyConfig(set_inductor_config=False)
        else:
            config = ao.Float8DynamicActivationFloat8WeightConfig(granularity=ao.PerRow(), set_inductor_config=False)
        return {"quantization_config": TorchAoConfig(quant_type=config),
                "dtype": torch_dtype(precision.resolved_compute_dtype(device))}

    return build


def _needs_compute_capability(major: int, minor: int) -> Callable[[Precision, str], str | None]:
    def check(precision: Precision, device: str) -> str | None:
        import torch

        if not torch.cuda.is_available():
            return f"{precision.name} needs a CUDA GPU; none is visible"
        capability = torch.cuda.get_device_capability()
        if capability < (major, minor):
            return (f"{precision.name} needs CUDA compute capability >= {major}.{minor} (Ada/Hopper); this GPU has "
                    f"{capability[0]}.{capability[1]}")
        return None

    return check


def _parse_offload(arg: str) -> dict:
    return {"budget_mb": parse_size_mb(arg)}


def _offload(precision: Precision, device: str) -> dict:
    import tempfile

    return {"offload_folder": tempfile.mkdtemp(prefix="quantbench-offload-"),
            "dtype": torch_dtype(precision.resolved_compute_dtype(device))}


def _offload_placement(precision: Precision, checkpoint: Path, device: str) -> dict:
    """Big-model placement, done in order: embeddings, norms and head on the device (`generate` takes the model's
    device from its first parameter, which must not be offloaded), then decoder blocks while `budget_mb` lasts,
    the rest on the next tier (GPU -> CPU RAM; CPU, or GPU with +disk -> disk)."""
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoConfig, AutoModelForCausalLM

    main = 0 if device == "cuda" else "cpu"
    overflow = "disk" if device != "cuda" or precision.option("disk") else "cpu"
    dtype = torch_dtype(precision.resolved_compute_dtype(device))
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint), dtype=dtype)
    model.tie_weights()
    sizes = compute_module_sizes(model, dtype=dtype)
    block_types = set(model._no_split_modules or ())
    blocks = [name for name, module in model.named_modules() if type(module).__name__ in block_types]
    device_map: dict = {}
    for name, module in model.named_modules():
        inside = any(name == b or name.startswith(b + ".") for b in blocks)
        owns = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        if name and owns and not inside:
            device_map[name] = main
    used = sum(sizes[name] for name in device_map)
    budget = precision.option("budget_mb") * 2**20
    for name in blocks:
        fits = used + sizes[name] <= budget
        device_map[name] = main if fits else overflow
        used += sizes[name] if fits else 0
    return {"device_map": device_map}


# GPTQModel kernels a gptq/awq name may ask for (@4bit,g64,marlin); left out, GPTQModel picks one for the device.
GPTQMODEL_KERNELS = {
    "gptq": ("triton", "marlin", "machete", "exllama_v2", "torch"),
    "awq": ("gemm", "gemm_triton", "gemv", "gemv_fast", "marlin", "machete", "exllama_v2", "torch"),
}


def _parse_bits_group(kernels: tuple[str, ...] = ()) -> Callable[[str], dict]:
    """A parser of '4bit,g64' / '8bit' / 'g32' (and one of `kernels`, e.g. 'marlin') -> bits, group size, kernel."""

    def parse(arg: str) -> dict:
        out: dict = {}
        for token in arg.split(","):
            if match := re.fullmatch(r"(\d)bit", token):
                out["bits"] = int(match[1])
            elif match := re.fullmatch(r"g(\d+)", token):
                out["group_size"] = int(match[1])
            elif token in kernels:
                out["kernel"] = token
            else:
                also = f" and/or a kernel ({', '.join(kernels)})" if kernels else ""
                raise ValueError(f"unknown option {token!r}; expected <n>bit and/or g<group size>{also}, "
                                 "e.g. @4bit,g64")
        if out.get("bits", 4) not in (2, 3, 4, 8):
            raise ValueError(f"bits must be 2, 3, 4 or 8, not {out['bits']}")
        return out

    return parse


def _parse_group(arg: str) -> dict:
    match = re.fullmatch(r"g(\d+)", arg)
    if not match:
        raise ValueError(f"expected a group size like @g64, not @{arg}")
    return {"group_size": int(match[1])}


def _hqq_after_load(precision: Precision, model, device: str) -> tuple[Any, dict]:
    from .quantize import hqq_quantize

    dtype = precision.resolved_compute_dtype(device)
    info = hqq_quantize(model, precision.option("bits", 4), precision.option("group_size", 64), torch_dtype(dtype),
                        device)
    return model, {**info, "compute_dtype": dtype}


def _gptqmodel(method: str) -> dict:
    """Registry fields shared by GPTQ and AWQ: quantized once through GPTQModel, cached, loaded by transformers."""

    def prepare(precision: Precision, source: Path, device: str, calibration) -> tuple[Path, dict]:
        from .quantize import gptqmodel_checkpoint, gptqmodel_load_kwargs

        options = dict(precision.options)
        checkpoint = gptqmodel_checkpoint(method, precision.name, options, source, device, calibration)
        return checkpoint, gptqmodel_load_kwargs(method, options, device, checkpoint)

    def build(precision: Precision, device: str) -> dict:
        from .quantize import gptqmodel_load_kwargs

        return gptqmodel_load_kwargs(method, dict(precision.options), device)

    def after_load(precision: Precision, model, device: str) -> tuple[Any, dict]:
        from .quantize import gptqmodel_info

        return model, gptqmodel_info(model, device)

    return {"prepare": prepare, "build": build, "after_load": after_load,
            "requires": ("gptqmodel", "optimum"), "library": "GPTQModel",
            "parse_arg": _parse_bits_group(GPTQMODEL_KERNELS[method]), "arg_help": "[@<bits>bit,g<group>,<kernel>]",
            "compiles": False}


REGISTRY: dict[str, Precision] = {}


def register(precision: Precision) -> Precision:
    REGISTRY[precision.name] = precision
    return precision


for _dtype, _text in (("fp32", "32-bit float"), ("fp16", "16-bit float"), ("bf16", "bfloat16")):
    register(Precision(_dtype, "torch", _text, _plain(_dtype)))
register(Precision("int8", "bitsandbytes", "LLM.int8(): 8-bit weights with fp16 outlier decomposition",
                   _bnb_int8, requires=("bitsandbytes",), flags=("vision",), compiles=False))
for _quant in ("nf4", "fp4"):
    register(Precision(_quant, "bitsandbytes", f"4-bit {_quant.upper()} weights (QLoRA-style), dequantized per matmul",
                       _bnb_4bit(_quant), requires=("bitsandbytes",), parse_arg=_parse_compute_dtype,
                       arg_help="[@fp32|@fp16|@bf16]", flags=("dq", "vision"), keep_layers=_bnb_4bit_keep,
                       after_load=_bnb_4bit_after_load))
_DTYPE_ARG = {"parse_arg": _parse_compute_dtype, "arg_help": "[@fp32|@fp16|@bf16]"}
register(Precision("int8wo", "torchao", "int8 weight-only (per-channel scales), activations in the compute dtype",
                   _torchao("int8wo"), requires=("torchao",), **_DTYPE_ARG))
register(Precision("int4wo", "torchao", "int4 weight-only, grouped scales (tinygemm layout on CUDA; on CPU unpacked, one value per byte)",
                   _torchao("int4wo"), requires=("torchao",), parse_arg=_parse_group, arg_help="[@g<group>]",
                   options=(("group_size", 64),)))
register(Precision("fp8", "torchao", "float8 (e4m3) weight-only, per-channel scales", _torchao("fp8"),
                   requires=("torchao",), needs_cuda=True, check=_needs_compute_capability(8, 9), **_DTYPE_ARG))
register(Precision("fp8dyn", "torchao", "float8 weights and dynamically quantized float8 activations (row-wise)",
                   _torchao("fp8dyn"), requires=("torchao",), needs_cuda=True, check=_needs_compute_capability(8, 9),
                   **_DTYPE_ARG))
register(Precision("offload", "accelerate", "weights beyond a memory budget kept off the device (GPU -> CPU RAM, "
                   "CPU -> disk; +disk sends a GPU run's overflow to disk)", _offload, parse_arg=_parse_offload,
                   placement=_offload_placement,
                   arg_help="@<size> (e.g. offload@2GB)", flags=("disk",), compiles=False))
register(Precision("gptq", description="GPTQ (Frantar et al.): error-compensating int4 weight rounding, calibrated",
                   flags=("desc", "asym"), options=(("bits", 4), ("group_size", 64)), **_gptqmodel("gptq")))
register(Precision("awq", description="AWQ (Lin et al.): activation-aware int4 weight scaling, calibrated",
                   options=(("bits", 4), ("group_size", 64)), **_gptqmodel("awq")))
register(Precision("hqq", "hqq", "HQQ (Badri & Shaji): half-quadratic weight quantization at load time, no calibration",
                   lambda precision, device: {"dtype": torch_dtype(precision.resolved_compute_dtype(device))},
                   requires=("hqq",), parse_arg=_parse_bits_group(), arg_help="[@<bits>bit,g<group>]",
                   options=(("bits", 4), ("group_size", 64)), after_load=_hqq_after_load, compiles=False))
for _bits in (4, 8):  # gemlite's Triton kernels: gemlite_layers.py
    register(Precision(f"gemlite{_bits}", **gemlite_layers.fields(_bits)))

_entry_points_loaded = False


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group="pytest_quantbench.precisions"):
        register(entry.load())


NAME_PATTERN = re.compile(r"^(?P<base>[a-z0-9_.]+?)(?:@(?P<arg>[a-z0-9_.,]+))?(?P<flags>(?:\+[a-z0-9_]+)*)$")


def parse_precision(name: str) -> Precision:
    """'nf4@fp16+dq' -> the nf4 entry with compute dtype fp16 and double quantization. ValueError if unknown."""
    _load_entry_points()
    match = NAME_PATTERN.match(name.strip().lower())
    entry = REGISTRY.get(match["base"]) if match else None
    if entry is None:
        raise ValueError(f"unknown precision {name!r}; valid: {', '.join(valid_names())}")
    options = dict(entry.options)
    if match["arg"]:
        if entry.parse_arg is None:
            raise ValueError(f"precision {entry.name!r} takes no @ argument (@{match['arg']})")
        try:
            options.update(entry.parse_arg(match["arg"]))
        except ValueError as error:
            raise ValueError(f"{name!r}: {error}") from None
    elif entry.arg_help.startswith("@"):  # required argument
        raise ValueError(f"precision {entry.name!r} needs an argument: {entry.name}{entry.arg_help}")
    for flag in filter(None, match["flags"].split("+")):
        if flag not in entry.flags:
            accepted = ", ".join(f"+{f}" for f in entry.flags) or "none"
            raise ValueError(f"precision {entry.name!r} has no +{flag} (accepted: {accepted})")
        options[flag] = True
    return dataclasses.replace(entry, name=name.strip().lower(), options=tuple(sorted(options.items())))


def valid_names() -> list[str]:
    _load_entry_points()
    return [entry.name + entry.arg_help + "".join(f"[+{f}]" for f in entry.flags) for entry in REGISTRY.values()]


__all__ = ["REGISTRY", "Precision", "parse_precision", "parse_size_mb", "register", "torch_dtype", "valid_names"]
