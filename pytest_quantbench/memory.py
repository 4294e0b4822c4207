"""The process's CPU memory beyond what torch reports: the C heap's own counters, handing freed heap back to the
OS, and the checkpoint files a loaded model may still have mapped (Linux and glibc; elsewhere these do nothing)."""

from __future__ import annotations

import ctypes
import gc
import sys
from pathlib import Path
from typing import Any

MB = 1024 * 1024


def _glibc():
    """glibc, or None (macOS, musl): the C heap's counters and trimming are glibc's."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_in_use_mb() -> float | None:
    """Bytes the C heap has handed out and not had back (glibc's mallinfo2: arena chunks in use plus mmapped
    blocks; torch's CPU tensors are among them); None where glibc (2.33 or later) is not the allocator."""
    libc = _glibc()
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / MB


def return_freed_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc keeps freed memory for reuse, so the
    process RSS would otherwise still hold what earlier work freed)."""
    gc.collect()
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def file_mappings(directory: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps files of `directory` (Linux; elsewhere none are found). The files are
    resolved: a hub snapshot's files are links to blobs elsewhere in the cache."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    files = {str(f.resolve()) for f in Path(directory).iterdir() if f.is_file()}
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in files:
            low, high = (int(address, 16) for address in fields[0].split("-"))
            ranges.append((low, high))
    return ranges


def detach_from_checkpoint(model, directory: Path) -> None:
    """Copy into memory the tensors that are still views of the memory-mapped checkpoint. transformers maps the
    weight files; a tensor loaded as it is stays a view of the file, and that keeps the whole mapping, with every
    page quantization read through it, in the process's RSS until the model is gone. After the copy the model's
    memory is its own tensors and the mapping closes."""
    import torch

    ranges = file_mappings(directory)
    if not ranges:
        return
    copies: dict[tuple, Any] = {}  # tied weights: one copy, shared again
    for tensor in [*model.parameters(), *model.buffers()]:
        if type(tensor.data) is not torch.Tensor or tensor.device.type != "cpu":  # packed subclasses: new memory
            continue
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if any(low <= key[0] < high for low, high in ranges):
            if key not in copies:
                copies[key] = tensor.data.clone()
            tensor.data = copies[key]
