#!/usr/bin/env bash
# Optional: the GPTQ/AWQ (GPTQModel) and HQQ precisions, into .venv beside the torch already there. Idempotent.
# Run by scripts/setup.sh when QB_WITH_GPTQ=1 (CI does). Extra arguments go to pip, e.g. offline from a wheel folder:
#   bash scripts/setup-gptq.sh --no-index --find-links .gpu/wheels-gptq
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
GPTQMODEL_VERSION=7.7.0
# GPTQModel declares torch>=2.14.1 but runs on torch 2.13: install it without dependencies, then its requirements
# minus torch, with the installed torch pinned so pip can never swap it for another build (CPU -> multi-GB CUDA).
$PY -m pip install -q --no-deps "gptqmodel==$GPTQMODEL_VERSION" "$@"
TORCH=$($PY -c "import torch; print(torch.__version__)")
REQS=$($PY - <<'PYEOF'
from importlib.metadata import requires
from packaging.requirements import Requirement
for line in requires("gptqmodel") or []:
    req = Requirement(line)
    if req.name != "torch" and "extra" not in str(req.marker or ""):
        print(line)
PYEOF
)
# optimum: transformers needs it to load GPTQ/AWQ checkpoints; hqq: the hqq precision.
mapfile -t REQS_ARRAY <<< "$REQS"
$PY -m pip install -q "${REQS_ARRAY[@]}" "optimum==2.3.0" "hqq==0.2.8.post1" "torch==$TORCH" "$@"
$PY -c "import torch; assert torch.__version__ == '$TORCH', torch.__version__"
