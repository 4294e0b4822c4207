"""Which GPUs a pytest-xdist worker owns: worker gwN gets the N-th block of `gpus_per_worker` visible GPUs."""

from __future__ import annotations

import glob
import os
import sys


def visible_gpus() -> list[str]:
    """The GPUs this process may use, read without initializing CUDA (CUDA_VISIBLE_DEVICES, else NVML)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    try:
        import pynvml

        pynvml.nvmlInit()
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001  no NVML library or no driver: no GPUs to hand out
        return []


def no_gpu_here() -> bool:
    """True when this process certainly has no NVIDIA GPU to use, told without importing torch: CUDA_VISIBLE_DEVICES
    hides every GPU, or (on Linux) the driver created no device file."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return True
    return sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*")


def worker_gpus(worker_id: str, gpus_per_worker: int, gpus: list[str]) -> list[str]:
    """'gw1', 2, ['0','1','2','3'] -> ['2','3']; ValueError when there are too few GPUs for this worker."""
    index = int(worker_id.removeprefix("gw"))
    block = gpus[index * gpus_per_worker : (index + 1) * gpus_per_worker]
    if len(block) < gpus_per_worker:
        raise ValueError(f"worker {worker_id} needs GPUs {index * gpus_per_worker}..{(index + 1) * gpus_per_worker - 1} "
                         f"({gpus_per_worker} per worker) but only {len(gpus)} are visible ({','.join(gpus) or 'none'}): "
                         f"use fewer workers (-n) or --qb-gpus-per-worker")
    return block


def nvml_gpus() -> list[dict]:
    """What NVML (the driver, as nvidia-smi) says of each GPU this process sees, in CUDA order: the physical index,
    name, UUID, memory used and total (MB, every process on that GPU) and utilization. [] without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
    except Exception:  # noqa: BLE001  no NVML library or no driver
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = []
    for entry in ([g.strip() for g in listed.split(",") if g.strip()] if listed is not None else map(str, range(count))):
        if entry.isdigit() and int(entry) < count:
            physical.append(int(entry))
        else:  # a UUID (or its prefix), as CUDA accepts
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith((entry, f"GPU-{entry}"))]
            if matches:
                physical.append(matches[0])
    gpus = []
    for index in physical:
        handle = handles[index]
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # noqa: BLE001  not supported on every GPU (MIG)
            utilization = None
        gpus.append({"index": index, "name": _text(pynvml.nvmlDeviceGetName(handle)), "uuid": uuids[index],
                     "nvml_used_mb": memory.used / 2**20, "nvml_total_mb": memory.total / 2**20,
                     "utilization_pct": utilization})
    return gpus


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
