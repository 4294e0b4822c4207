"""Fused projections for the compiled decode step: sibling linear layers that read the same input (an attention's
q/k/v projections, an MLP's gate/up projections) run as one matmul, as gpt-fast's `wqkv` and `w1w3` do.

At one row per sequence a matmul reads its weight and little else, and a small one (a key/value projection of a
grouped-query model: 3584x512 at the 7B shape) cannot reach the memory bandwidth a large one does; one launch over
the concatenated weight reads it at the large one's speed. The fused weight is one tensor whose row blocks are the
members' weights (views, no second copy), so eager mode, the prefill and the memory figures see the same layers and
values as before. Only inside torch.compile's trace does the first member of a group run the fused matmul; the
others take their slice of its output.

A quantized layer cannot be concatenated after the fact, so `fuse_quantized` fuses before quantization: the group's
weights are concatenated and quantized as one layer, and each member becomes a `FusedSlice` of its output, in eager
mode as in the compiled step. Quantizers that work per output row (round-to-nearest groups along the input, per-channel
scales) give the same codes either way. QB_COMPILE_FUSE=0 turns both off.
"""

from __future__ import annotations

import functools
import os

# Sibling projections fused where all are plain nn.Linear layers of one module reading one input.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# A cross-attention's key/value projections read the encoder's states, not the query's input: never fused.
CROSS_ATTENTION = frozenset(("encoder_attn", "EncDecAttention", "crossattention", "cross_attn"))
ON_OFF = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}


def env_switch(name: str) -> bool:
    """An on/off environment setting of the compiled mode (default on), checked: ValueError naming the accepted
    values for any other."""
    setting = os.environ.get(name, "1").strip().lower() or "1"
    if setting not in ON_OFF:
        raise ValueError(f"{name}={setting!r} is not a setting: give 1 (or on) or 0 (or off)")
    return ON_OFF[setting]


def compile_fuse() -> bool:
    """QB_COMPILE_FUSE (default on): sibling projections fused in the compiled step."""
    return env_switch("QB_COMPILE_FUSE")


class FusedLinear:
    """One matmul over the concatenated weights of `members` (in order); each member's weight and bias become views
    of the fused ones. Has what bound.py and kernels.py read of a linear layer (in/out features, weight, a call)."""

    def __init__(self, members: list, names: tuple[str, ...]):
        import torch

        self.names = names
        self.members = members
        self.in_features = members[0].in_features
        self.out_features = sum(member.out_features for member in members)
        with torch.no_grad():
            self.weight = torch.cat([member.weight for member in members])
            self.bias = None if members[0].bias is None else torch.cat([member.bias for member in members])
            start = 0
            for member in members:  # the members' own tensors are freed: the fused one holds their values
                end = start + member.out_features
                member.weight.data = self.weight[start:end]
                if self.bias is not None:
                    member.bias.data = self.bias[start:end]
                member.forward = self._member_forward(member.forward, start, end)
                start = end
        self._input = self._output = None

    def __call__(self, x):
        import torch.nn.functional as F

        return F.linear(x, self.weight, self.bias)

    def _member_forward(self, original, start: int, end: int):
        import torch

        def forward(x):
            if not torch.compiler.is_compiling():
                return original(x)
            if self._input is not x:  # the first member called on this input runs the group's matmul
                self._input, self._output = x, self(x)
            return self._output[..., start:end]

        return forward

    def clear(self) -> None:
        """Forget the last output (called at the end of each traced step, so that it is not an output of the graph)."""
        self._input = self._output = None


def sibling_groups(model) -> list[tuple[str, tuple[str, ...], list]]:
    """(module name, member names, members) of each group of GROUPS that a module of `model` outside cross-attention
    holds in full."""
    out = []
    for name, module in model.named_modules():
        if CROSS_ATTENTION.intersection(name.split(".")):
            continue
        for names in GROUPS:
            members = [getattr(module, member, None) for member in names]
            if all(member is not None for member in members):
                out.append((name, names, members))
    return out


def fuse_projections(model) -> list[FusedLinear]:
    """Fuse every group of sibling projections in `model` whose members are plain, unhooked nn.Linear layers with
    ordinary weights of one dtype and device and one input size; the groups made."""
    import torch

    return [FusedLinear(members, names) for _, names, members in sibling_groups(model) if _fusable(members, torch)]


def fuse_quantized(model, names: list[str], quantize) -> tuple[list, list[str], str]:
    """Quantize each fusable group of sibling projections whose members are all in `names` as one layer,
    `quantize(linear)` of an nn.Linear holding their concatenated weights (and biases), and make each member a
    FusedSlice of it. Returns the layers made, the names left to quantize one by one, and the groups' label."""
    import torch

    wanted, fused, groups = set(names), set(), []
    for parent, group, members in sibling_groups(model):
        paths = [f"{parent}.{member}" if parent else member for member in group]
        if not wanted.issuperset(paths) or not _fusable(members, torch):
            continue
        linear = torch.nn.Linear(members[0].in_features, sum(m.out_features for m in members),
                                 bias=members[0].bias is not None, device="meta")
        with torch.no_grad():
            linear.weight = torch.nn.Parameter(torch.cat([m.weight for m in members]), requires_grad=False)
            if linear.bias is not None:
                linear.bias = torch.nn.Parameter(torch.cat([m.bias for m in members]), requires_grad=False)
        shared = SharedOutput(quantize(linear), group)
        del linear
        start, module = 0, model.get_submodule(parent)
        for index, (member_name, member) in enumerate(zip(group, members)):
            end = start + member.out_features
            setattr(module, member_name, _slice_class()(shared, start, end, owner=index == 0))
            start = end
        fused.update(paths)
        groups.append(shared)
    return [shared.layer for shared in groups], [name for name in names if name not in fused], fused_label(groups)


class SharedOutput:
    """The output of a fused group's layer for its last input, until each member has taken its slice."""

    def __init__(self, layer, names: tuple[str, ...]):
        self.layer, self.names = layer, names
        self.input = self.output = None
        self.served = 0

    def slice(self, x, start: int, end: int):
        if self.input is not x:  # the first member called on this input runs the group's layer
            self.input, self.output, self.served = x, self.layer(x), 0
        out = self.output[..., start:end]
        self.served += 1
        if self.served == len(self.names):  # not kept past the step (nor made an output of a compiled graph)
            self.input = self.output = None
        return out


@functools.cache
def _slice_class():
    import torch

    class FusedSlice(torch.nn.Module):
        """A fused group's member: its columns [start, end) of the group layer's output. The first member holds the
        layer as its child, so that the model's modules, its memory and kernels.py see it once."""

        def __init__(self, shared: SharedOutput, start: int, end: int, owner: bool):
            super().__init__()
            self.shared, self.start, self.end = shared, start, end
            if owner:
                self.fused = shared.layer

        def forward(self, x):
            return self.shared.slice(x, self.start, self.end)

        def extra_repr(self) -> str:
            return f"columns {self.start}:{self.end} of a fused layer"

    return FusedSlice


def _fusable(members: list, torch) -> bool:
    if any(type(member) is not torch.nn.Linear for member in members):
        return False  # absent, or a quantized layer class
    weights = [member.weight for member in members]
    if any(type(weight) is not torch.nn.Parameter or weight.device.type == "meta" for weight in weights):
        return False  # torchao's tensor subclasses, offloaded weights
    if any(hasattr(member, "_hf_hook") or member._forward_hooks or member._forward_pre_hooks for member in members):
        return False
    if len({member.bias is None for member in members}) > 1:
        return False
    return (len({(w.dtype, w.device, w.shape[1]) for w in weights}) == 1
            and "forward" not in vars(members[0]))  # not fused already


def fused_label(fused: list) -> str:
    """'q_proj+k_proj+v_proj ×28, gate_proj+up_proj ×28', or '' when nothing was fused."""
    from collections import Counter

    counts = Counter("+".join(group.names) for group in fused)
    return ", ".join(f"{names} ×{count}" for names, count in counts.items())


def decode_linears(linears: list, fused: list[FusedLinear]) -> list:
    """The linear layers one decode step runs: each fused group once in place of its members."""
    members = {id(member): group for group in fused for member in group.members}
    out, seen = [], set()
    for module in linears:
        group = members.get(id(module))
        if group is None:
            out.append(module)
        elif id(group) not in seen:
            seen.add(id(group))
            out.append(group)
    return out
