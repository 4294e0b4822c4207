#!/usr/bin/env bash
# The GPU runs behind docs/results/h100/: `bash scripts/gpu-suite.sh STAGE OUTDIR`, run from the repository root on a
# CUDA machine where the plugin is importable (PYTHONPATH=$PWD or an install). SMOLLM2 points at the SmolLM2 GGUF
# (default: the alias, which uses the hub or the embedded GGUF); synthetic models need no download.
set -uo pipefail
# Several GPUs: NVLink multicast stays off in every process (the machines' rule; harmless elsewhere).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
stage=$1
out=$2
mkdir -p "$out/$stage"
smollm2=${SMOLLM2:-smollm2-135m}
# Load the plugin by module where it is importable but not installed (the GPU machine: PYTHONPATH=$PWD).
plugin=(-p pytest_quantbench.plugin)
python3 -c "import importlib.metadata as m, sys; sys.exit(any(e.value.startswith('pytest_quantbench') for e in m.entry_points(group='pytest11')))" || plugin=()
run=(python3 -m pytest benchmarks "${plugin[@]}" -p no:cacheprovider -q -rs --tb=line --qb-device "${DEVICE:-cuda}"
     --qb-max-time "${QB_MAX_TIME:-6}")

case $stage in
  smollm2-precisions)  # every precision on the real SmolLM2, eager: speed, memory, accuracy, fidelity, timer
    "${run[@]}" --qb-model "$smollm2" --qb-decoding greedy \
      --qb-precision "${PRECISIONS:-bf16,fp32,fp16,int8,nf4,fp4,nf4@fp32,int8wo,int4wo,fp8,fp8dyn,offload@100MB,gptq,awq}" \
      -k "speed or memory or fidelity or timer or test_accuracy" \
      --qb-report-dir "$out/$stage" --benchmark-json "$out/$stage/pytest-benchmark.json" ;;
  smollm2-speed)  # speed only, plus the timer-fidelity check on bf16
    "${run[@]}" --qb-model "$smollm2" --qb-decoding greedy --qb-precision "${PRECISIONS:-bf16,nf4,int8wo}" \
      -k "speed or (timer and bf16)" --qb-report-dir "$out/$stage" ;;
  smollm2-compiled)  # eager vs compiled on SmolLM2
    "${run[@]}" --qb-model "$smollm2" --qb-decoding greedy --qb-mode eager,compiled \
      --qb-precision ${PRECISIONS:-bf16,int8wo,int4wo,fp8,nf4} -k "speed or compiled_matches" \
      --qb-report-dir "$out/$stage" ;;
  qwen7b)  # a decoder shape with random weights (MODEL, default the Qwen2.5-7B shape), 64 new tokens: PRECISIONS in
    # MODES (eager and compiled) at BATCH_SIZES (default 1), then EAGER_PRECISIONS in eager mode only (kernels that do
    # not compile: LLM.int8, GPTQModel)
    model=${MODEL:-synthetic:qwen2.5-7b}
    if [ -n "${PRECISIONS-bf16,int4wo,int8wo,fp8,nf4}" ]; then
      "${run[@]}" --qb-model "$model" --qb-decoding greedy --qb-mode "${MODES:-eager,compiled}" --qb-max-new-tokens 64 \
        --qb-batch-size "${BATCH_SIZES:-1}" \
        --qb-precision "${PRECISIONS-bf16,int4wo,int8wo,fp8,nf4}" -k "speed or compiled_matches or (memory and eager)" \
        --qb-report-dir "$out/$stage"
    fi
    if [ -n "${EAGER_PRECISIONS-int8}" ]; then
      "${run[@]}" --qb-model "$model" --qb-decoding greedy --qb-max-new-tokens 64 \
        --qb-precision "${EAGER_PRECISIONS-int8}" -k "speed or memory" --qb-report-dir "$out/$stage-eager"
    fi ;;
  decode-attention)  # decode attention kernels side by side at MODEL's shape (scripts/decode_attention.py), then the
    # compiled step of each of PRECISIONS with each of ATTENTIONS (QB_DECODE_ATTENTION), one process each
    python3 scripts/decode_attention.py --shape "${SHAPE:-28,28,4,128}" --rows 1,8,32 --length 256 \
      --out "$out/$stage/attention.json"
    for precision in ${PRECISIONS:-bf16}; do
      for attention in ${ATTENTIONS:-grouped flex math}; do
        QB_DECODE_ATTENTION=$attention python3 -m pytest benchmarks/test_speed.py "${plugin[@]}" -p no:cacheprovider -q \
          -rs --tb=line --qb-device cuda --qb-max-time 3 --qb-model "${MODEL:-synthetic:qwen2.5-7b}" --qb-mode compiled \
          --qb-decoding greedy --qb-max-new-tokens 64 --qb-batch-size "${BATCH_SIZES:-1}" --qb-precision "$precision" \
          --qb-report-dir "$out/$stage/$precision-$attention"
      done
    done ;;
  captured)  # the uncompiled decode step as one CUDA graph: its GPU test, then the compiled mode of PRECISIONS whose
    # kernels Inductor does not compile (default LLM.int8) at MODEL's shape, captured and in Python side by side
    python3 -m pytest tests/test_measurement.py -p no:cacheprovider -q -rs --tb=short -k "cuda_graph or falls_back" \
      > "$out/$stage/tests.txt" 2>&1
    for capture in 1 0; do
      QB_CAPTURE_STEP=$capture python3 -m pytest benchmarks/test_speed.py "${plugin[@]}" -p no:cacheprovider -q -rs \
        --tb=line --qb-device cuda --qb-max-time 3 --qb-model "${MODEL:-synthetic:qwen2.5-7b}" --qb-mode compiled \
        --qb-decoding greedy --qb-max-new-tokens 64 --qb-batch-size "${BATCH_SIZES:-1}" \
        --qb-precision "${PRECISIONS:-int8}" --qb-report-dir "$out/$stage/capture-$capture"
    done ;;
  families)  # encoder-decoder and image-text shapes with random weights
    "${run[@]}" --qb-model synthetic:flan-t5-base --qb-model synthetic:paligemma-3b --qb-decoding greedy \
      --qb-precision bf16,int8,nf4 -k "speed or memory" --qb-report-dir "$out/$stage" ;;
  workers)  # one pytest-xdist worker per GPU; each (model, precision) loads on one worker only
    # shellcheck disable=SC2086
    "${run[@]}" -n "${WORKERS:-2}" ${MODELS:---qb-model synthetic:qwen2.5-7b --qb-model synthetic:qwen2.5-14b} \
      --qb-precision "${PRECISIONS:-bf16,int8,nf4}" --qb-decoding greedy --qb-max-new-tokens 64 -k "speed or memory" \
      --qb-report-dir "$out/$stage" ;;
  split)  # a model too big for one worker's GPU in bf16, split over two GPUs with device_map="auto"
    # shellcheck disable=SC2086
    "${run[@]}" --qb-gpus-per-worker 2 ${MODELS:---qb-model synthetic:qwen2.5-32b} --qb-precision "${PRECISIONS:-bf16}" \
      --qb-decoding greedy --qb-max-new-tokens 64 -k "speed or memory" --qb-report-dir "$out/$stage" ;;
  one-gpu)  # the same model in nf4 on one GPU (CUDA_VISIBLE_DEVICES picks which), to compare with the split
    # shellcheck disable=SC2086
    "${run[@]}" ${MODELS:---qb-model synthetic:qwen2.5-32b} --qb-precision "${PRECISIONS:-nf4}" \
      --qb-decoding greedy --qb-max-new-tokens 64 -k "speed or memory" --qb-report-dir "$out/$stage" ;;
  synthetic)  # write the synthetic checkpoints of PRESETS (e.g. "qwen2.5-7b qwen2.5-14b") ahead, one GPU each
    index=0
    for preset in ${PRESETS:?}; do
      CUDA_VISIBLE_DEVICES=$index python3 -c "import sys; from pytest_quantbench.cache import cache_root; \
from pytest_quantbench.synthetic import materialize_synthetic; print(materialize_synthetic(sys.argv[1], cache_root())[0])" \
        "$preset" &
      index=$(( (index + 1) % ${GPUS:-1} ))
    done
    wait ;;
  gate)  # the regression gate: PAIRS same-commit pairs of sessions (false alarms), then SLOWED runs for each of
    # SLOWDOWNS (burn-gpu, burn-cpu, patch:FILE; BURN=cpu|gpu is burn-cpu|burn-gpu)
    slowdowns=()
    for slowdown in ${SLOWDOWNS:-burn-${BURN:-gpu}}; do slowdowns+=(--slowdown "$slowdown"); done
    # shellcheck disable=SC2086
    python3 benchmarks/gate_false_alarms.py --pairs "${PAIRS:-4}" --slowed "${SLOWED:-2}" "${slowdowns[@]}" --out "$out/$stage" \
      -- benchmarks/test_speed.py "${plugin[@]}" --qb-device cuda --qb-model "${MODEL:-synthetic:smollm2-135m}" \
      --qb-precision "${PRECISIONS:-bf16,nf4}" --qb-decoding greedy --qb-mode "${MODES:-eager}" ${EXTRA:-} ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
