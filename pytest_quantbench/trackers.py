"""Trackers: `with` blocks (Timer, MemoryTracker) and a step clock that leave plain numbers behind, and the
model's memory footprint read from its tensors' storage."""

from __future__ import annotations

import os
import threading
import time

from typing_extensions import Self

from .memory import heap_in_use_mb, return_freed_memory

MB = 1024 * 1024


def cuda_ready(device: str) -> bool:
    if device != "cuda":
        return False
    import torch

    return torch.cuda.is_available()


class Timer:
    """Wall-clock seconds of a block; on CUDA the device is synchronized before both clock reads."""

    def __init__(self, device: str = "cpu"):
        self.cuda = cuda_ready(device)
        self.seconds = 0.0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def __enter__(self) -> Self:
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start


def process_rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / MB


class MemoryTracker:
    """Peak memory of a block.

    CPU: starting after garbage is collected and the C heap's free pages are returned, the C heap's bytes in use
    (`heap_start_mb`, `heap_peak_mb`) and the process RSS (start, end, peak), sampled every `interval` seconds.
    `peak_mem_mb` is the heap's peak, the allocator's own count as CUDA's is: what the process had allocated (model
    weights, activations, KV cache, the libraries' buffers), not the freed memory glibc keeps resident, which depends
    on what ran before. With `floor_mb` (the heap in use just before the case's model was loaded) it is the peak
    above that floor: the case's own model and work, not what the session holds from earlier cases (task results,
    fidelity summaries, libraries they imported). Without glibc's counters it is the RSS peak (`peak_mem_source`).
    CUDA: the torch allocator's peak allocated/reserved bytes, plus device-level used memory (what nvidia-smi shows,
    from cudaMemGetInfo) at start, end and its sampled peak; summed over the visible GPUs, and per GPU
    (`..._gpu<i>`) when there are several (a model spread with device_map="auto").
    """

    def __init__(self, device: str = "cpu", interval: float = 0.005, floor_mb: float | None = None):
        self.floor_mb = floor_mb
        self.cuda = cuda_ready(device)
        self.interval = interval
        self.metrics: dict[str, float] = {}
        self.gpus = 0
        if self.cuda:
            import torch

            self.gpus = torch.cuda.device_count()

    def _sample(self) -> list[float]:
        if self.cuda:
            import torch

            used = []
            for index in range(self.gpus):
                free, total = torch.cuda.mem_get_info(index)
                used.append((total - free) / MB)
            return used
        return [process_rss_mb(), heap_in_use_mb() or 0.0]

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = [max(a, b) for a, b in zip(self._peak, self._sample())]

    def __enter__(self) -> Self:
        if self.cuda:
            import torch

            for index in range(self.gpus):
                torch.cuda.synchronize(index)
                torch.cuda.reset_peak_memory_stats(index)
            self._allocated_start = sum(torch.cuda.memory_allocated(i) for i in range(self.gpus)) / MB
        else:
            return_freed_memory()
        self._start = self._peak = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if not self.cuda:
            end = self._sample()
            (rss_start, heap_start), (rss_peak, heap_peak) = self._start, [max(a, b) for a, b in zip(self._peak, end)]
            self.metrics = {"rss_start_mb": rss_start, "rss_end_mb": end[0], "rss_peak_mb": rss_peak,
                            "peak_mem_mb": rss_peak, "peak_mem_source": "rss"}
            if heap_start:
                self.metrics.update(heap_start_mb=heap_start, heap_peak_mb=heap_peak, peak_mem_mb=heap_peak,
                                    peak_mem_source="heap")
                if self.floor_mb:
                    self.metrics.update(heap_before_load_mb=self.floor_mb, peak_mem_mb=heap_peak - self.floor_mb,
                                        peak_mem_source="heap-above-load")
            return
        import torch

        for index in range(self.gpus):
            torch.cuda.synchronize(index)
        end = self._sample()
        peak = [max(a, b) for a, b in zip(self._peak, end)]
        allocated = [torch.cuda.max_memory_allocated(i) / MB for i in range(self.gpus)]
        reserved = [torch.cuda.max_memory_reserved(i) / MB for i in range(self.gpus)]
        self.metrics = {
            "vram_start_mb": sum(self._start),
            "vram_end_mb": sum(end),
            "vram_peak_mb": sum(peak),
            "allocated_start_mb": self._allocated_start,
            "peak_allocated_mb": sum(allocated),
            "peak_reserved_mb": sum(reserved),
            "peak_mem_mb": sum(allocated),
        }
        if self.gpus > 1:
            for index in range(self.gpus):
                self.metrics[f"vram_peak_mb_gpu{index}"] = peak[index]
                self.metrics[f"peak_allocated_mb_gpu{index}"] = allocated[index]


def _plain_tensors(tensor):
    """The plain tensors behind `tensor`: itself, or a tensor subclass's inner tensors (torchao packs quantized
    weights into subclasses whose own storage is not real memory)."""
    import torch

    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        for name in tensor.__tensor_flatten__()[0]:
            yield from _plain_tensors(getattr(tensor, name))
    else:
        yield tensor


def model_footprint_mb(model) -> float:
    """Bytes the model's parameters and buffers really occupy (shared storages counted once; tensors on the meta
    device, offloaded to disk, count nothing).

    Read from the tensors' storage rather than `get_memory_footprint()`, which misreports some quantized layouts.
    """
    return sum(storage_bytes(model).values()) / MB


def unquantized_parameter_count(model) -> int:
    """The parameters the model has in full precision: a quantized linear layer (bitsandbytes, GPTQ/AWQ, torchao)
    counts in_features x out_features whatever its packed storage holds; tied weights count once."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        sizes = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if all(isinstance(size, int) for size in sizes):
            if weight is not None and id(weight) in seen:
                continue
            seen.add(id(weight))
            bias = getattr(module, "bias", None)
            total += module.in_features * module.out_features + (module.out_features if bias is not None else 0)
        else:
            for parameter in module.parameters(recurse=False):
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    total += parameter.numel()
    return total


def storage_bytes(module) -> dict[tuple[str, int], int]:
    """(device, storage address) -> bytes, for the real storages behind a module's parameters and buffers."""
    storages: dict[tuple[str, int], int] = {}
    for outer in list(module.parameters()) + list(module.buffers()):
        for tensor in _plain_tensors(outer.data):
            if tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return storages


class StepClock:
    """A logits processor that marks every decoding step (it is called once per step, after the forward pass, for
    greedy, sampling and beam search alike). On CUDA a mark is a CUDA event on the current stream, so marking never
    synchronizes the device and the step times are the device's own; on CPU a mark is a perf_counter reading."""

    def __init__(self, device: str):
        self.cuda = cuda_ready(device)
        self.marks: list = []

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def __call__(self, input_ids, scores):
        self.mark()
        return scores

    def seconds(self) -> list[float]:
        """Every mark's time in seconds after the first one."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return [self.marks[0].elapsed_time(m) / 1000 for m in self.marks]
        return [m - self.marks[0] for m in self.marks]
