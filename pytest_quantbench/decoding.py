"""Decoding registry: a name -> the keyword arguments `generate` gets.

greedy; sample (temperature 0.6, top-p 0.95, 20 responses per prompt); beam2 .. beam5.
Adding a strategy is one `register(Decoding(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decoding:
    name: str
    description: str
    generate_kwargs: dict = field(default_factory=dict)
    num_responses: int = 1  # sequences returned per prompt

    def kwargs(self) -> dict:
        return {**self.generate_kwargs, "num_return_sequences": self.num_responses}


REGISTRY: dict[str, Decoding] = {}


def register(decoding: Decoding) -> Decoding:
    REGISTRY[decoding.name] = decoding
    return decoding


register(Decoding("greedy", "argmax at every step", {"do_sample": False, "num_beams": 1}))
register(Decoding("sample", "nucleus sampling, temperature 0.6, top-p 0.95, 20 responses per prompt",
                  {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 0, "num_beams": 1}, num_responses=20))
for _beams in range(2, 6):
    register(Decoding(f"beam{_beams}", f"beam search with {_beams} beams, best beam kept",
                      {"do_sample": False, "num_beams": _beams}))


def parse_decoding(name: str) -> Decoding:
    """Look a decoding up by name; ValueError listing the valid names if unknown."""
    decoding = REGISTRY.get(name.strip().lower())
    if decoding is None:
        raise ValueError(f"unknown decoding {name!r}; valid: {', '.join(REGISTRY)}")
    return decoding
