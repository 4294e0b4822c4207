"""A loaded model in one precision: the small interface tasks and measurements use (generate, complete,
log-likelihoods, prompt formatting), batched and cached below the tasks."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelHandle:
    """A loaded model in one precision; the only thing tasks and measurements touch."""

    spec: Any  # the models.ModelSpec it was loaded from
    precision: Any
    device: str
    model: Any
    tokenizer: Any
    family: str
    load_s: float
    footprint_mb: float
    source: dict = field(default_factory=dict)
    compiled: Any = None  # the compiled decoder (compiled.py), made on first use in compiled mode
    processor: Any = None  # image-text models: the AutoProcessor (image processor + tokenizer)
    high_precision: dict = field(default_factory=dict)  # modules kept out of the quantized format (families.py)
    extra: dict = field(default_factory=dict)  # what a precision's after_load reports (quantize.py: kernel, quantize_s)
    heap_before_load_mb: float | None = None  # CPU: the C heap in use just before loading (earlier cases freed)
    _new_token_log: list[int] | None = field(default=None, repr=False)

    @contextmanager
    def counting_new_tokens(self):
        """A list that collects, for every sequence generated inside the block, its new tokens up to its end."""
        self._new_token_log = counts = []
        try:
            yield counts
        finally:
            self._new_token_log = None

    def format_prompt(self, text: str) -> str:
        """A user message as the model's family expects it: the chat template when the tokenizer has one (decoder
        models), plain text for a seq2seq model (families.py)."""
        from .families import format_prompt

        return format_prompt(self, text)

    def encode(self, texts: list[str], images: list | None = None):
        """Inputs for formatted prompts (and for an image-text model one image each; a plain one if none given)."""
        from .families import encode

        return encode(self, texts, images).to(self.input_device)

    @property
    def accepts_images(self) -> bool:
        return self.processor is not None

    @property
    def input_device(self) -> str:
        """Where inputs go: the model's device, or for a model spread by accelerate (offload, several GPUs) its
        first execution device (offloaded weights sit on `meta` and stream in from CPU RAM or disk)."""
        if getattr(self.model, "hf_device_map", None) and len(set(self.model.hf_device_map.values())) > 1:
            return "cuda:0" if self.device == "cuda" else "cpu"
        return str(self.model.device)

    def generate_ids(self, inputs, decoding, max_new_tokens: int, exact_length: bool = False, logits_processor=None,
                     stop: list[str] | None = None):
        import torch
        from transformers import LogitsProcessorList

        kwargs = decoding.kwargs()
        if logits_processor:
            kwargs["logits_processor"] = LogitsProcessorList(logits_processor)
        if stop:  # a sequence ends once it has produced one of these strings
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        if exact_length:
            kwargs["min_new_tokens"] = max_new_tokens
        with torch.inference_mode():
            return self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **kwargs
            )

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """Per (context, continuation): (log p(continuation | context), is_greedy), batched (scoring.py); cached
        on disk per model file, precision and library versions (cache.py)."""
        from . import scoring
        from .cache import cached

        compute = lambda: scoring.loglikelihood(self.model, self.tokenizer, requests)
        return [(float(lp), bool(greedy)) for lp, greedy in cached(self, "loglikelihood", requests, compute)]

    def loglikelihood_rolling(self, texts: list[str], context_length: int | None = None,
                              stride: int | None = None) -> list[tuple[float, int]]:
        """Per text: (log p(text), tokens scored), windows of `context_length` tokens moving by `stride`."""
        from . import scoring
        from .cache import cached

        compute = lambda: scoring.loglikelihood_rolling(self.model, self.tokenizer, texts, context_length, stride)
        payload = {"texts": texts, "context_length": context_length, "stride": stride}
        return [(float(lp), int(n)) for lp, n in cached(self, "loglikelihood_rolling", payload, compute)]

    def generate(self, prompts: list[str], decoding, max_new_tokens: int, batch_size: int = 40) -> list[list[str]]:
        """Responses per prompt (one, or `decoding.num_responses`), prompts wrapped in the chat template."""
        return self._responses([self.format_prompt(p) for p in prompts], decoding, max_new_tokens, batch_size)

    def generate_with_images(self, prompts: list[str], images: list, decoding, max_new_tokens: int,
                             batch_size: int = 8) -> list[list[str]]:
        """Responses per (prompt, image) pair, for image-text models (`accepts_images`)."""
        if not self.accepts_images:
            raise ValueError(f"{self.spec.name} is a {self.family} model: it takes no images")
        return self._responses([self.format_prompt(p) for p in prompts], decoding, max_new_tokens, batch_size,
                               images=images)

    def complete(self, texts: list[str], decoding, max_new_tokens: int, stop: list[str] | None = None,
                 batch_size: int = 40) -> list[list[str]]:
        """Continuations of raw texts (no chat template), each cut before its first stop string; generation ends
        early once every sequence of a batch has produced one."""
        responses = self._responses(texts, decoding, max_new_tokens, batch_size, stop)

        def cut(text: str) -> str:
            return text[: min([text.find(s) for s in stop or () if s in text] + [len(text)])]

        return [[cut(text) for text in answers] for answers in responses]

    def _responses(self, texts: list[str], decoding, max_new_tokens: int, batch_size: int,
                   stop: list[str] | None = None, images: list | None = None) -> list[list[str]]:
        from tqdm import tqdm

        from .families import new_tokens

        per_batch = max(1, batch_size // decoding.num_responses)
        responses: list[list[str]] = []
        # Progress goes to the real terminal (pytest captures sys.stderr), and only when it is one.
        starts = tqdm(range(0, len(texts), per_batch), desc=f"{self.spec.name} {self.precision.name} "
                      f"{decoding.name}", unit="batch", leave=False, file=sys.__stderr__,
                      disable=not (sys.__stderr__ and sys.__stderr__.isatty()))
        ends = {self.tokenizer.pad_token_id, *_as_list(getattr(self.model.generation_config, "eos_token_id", None))}
        for start in starts:
            chunk = texts[start : start + per_batch]
            inputs = self.encode(chunk, images[start : start + per_batch] if images else None)
            new = new_tokens(self, self.generate_ids(inputs, decoding, max_new_tokens, stop=stop), inputs)
            if self._new_token_log is not None:  # tokens per sequence up to its end (the length-drift metric)
                self._new_token_log.extend(next((i for i, t in enumerate(row) if t in ends), len(row))
                                           for row in new.tolist())
            texts_out = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            n = decoding.num_responses
            responses.extend(texts_out[i * n : (i + 1) * n] for i in range(len(chunk)))
        return responses


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
