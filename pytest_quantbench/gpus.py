"""Which GPUs a pytest-xdist worker owns: worker gwN gets the N-th block of `gpus_per_worker` visible GPUs."""

from __future__ import annotations

import os


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


def worker_gpus(worker_id: str, gpus_per_worker: int, gpus: list[str]) -> list[str]:
    """'gw1', 2, ['0','1','2','3'] -> ['2','3']; ValueError when there are too few GPUs for this worker."""
    index = int(worker_id.removeprefix("gw"))
    block = gpus[index * gpus_per_worker : (index + 1) * gpus_per_worker]
    if len(block) < gpus_per_worker:
        raise ValueError(f"worker {worker_id} needs GPUs {index * gpus_per_worker}..{(index + 1) * gpus_per_worker - 1} "
                         f"({gpus_per_worker} per worker) but only {len(gpus)} are visible ({','.join(gpus) or 'none'}): "
                         f"use fewer workers (-n) or --qb-gpus-per-worker")
    return block
