#!/usr/bin/env bash
# The GPU runs behind docs/results/h100/: `bash scripts/gpu-suite.sh STAGE OUTDIR`, run from the repository root on a
# CUDA machine where the plugin is importable (PYTHONPATH=$PWD or an install). SMOLLM2 points at the SmolLM2 GGUF
# (default: the alias, which uses the hub or the embedded GGUF); synthetic models need no download.
set -uo pipefail
stage=$1
out=$2
mkdir -p "$out/$stage"
smollm2=${SMOLLM2:-smollm2-135m}
run=(python3 -m pytest benchmarks -p pytest_quantbench.plugin -p no:cacheprovider -q -rs --tb=line --qb-device cuda
     --qb-max-time "${QB_MAX_TIME:-6}")

case $stage in
  smollm2-precisions)  # every precision on the real SmolLM2, eager: speed, memory, accuracy, fidelity, timer
    "${run[@]}" --qb-model "$smollm2" --qb-decoding greedy \
      --qb-precision bf16,fp32,fp16,int8,nf4,fp4,nf4@fp32,int8wo,int4wo,fp8,fp8dyn,offload@100MB${EXTRA_PRECISIONS:-} \
      -k "speed or memory or fidelity or timer or test_accuracy" \
      --qb-report-dir "$out/$stage" --benchmark-json "$out/$stage/pytest-benchmark.json" ;;
  smollm2-speed)  # speed only, plus the timer-fidelity check on bf16
    "${run[@]}" --qb-model "$smollm2" --qb-decoding greedy --qb-precision "${PRECISIONS:-bf16,nf4,int8wo}" \
      -k "speed or (timer and bf16)" --qb-report-dir "$out/$stage" ;;
  smollm2-compiled)  # eager vs compiled on SmolLM2
    "${run[@]}" --qb-model "$smollm2" --qb-decoding greedy --qb-mode eager,compiled \
      --qb-precision ${PRECISIONS:-bf16,int8wo,int4wo,fp8,nf4} -k "speed or compiled_matches" \
      --qb-report-dir "$out/$stage" ;;
  qwen7b)  # the Qwen2.5-7B shape with random weights, eager vs compiled, 64 new tokens; bitsandbytes eager only
    "${run[@]}" --qb-model synthetic:qwen2.5-7b --qb-decoding greedy --qb-mode eager,compiled --qb-max-new-tokens 64 \
      --qb-precision "${PRECISIONS:-bf16,int4wo,int8wo,fp8}" -k "speed or compiled_matches or (memory and eager)" \
      --qb-report-dir "$out/$stage"
    "${run[@]}" --qb-model synthetic:qwen2.5-7b --qb-decoding greedy --qb-max-new-tokens 64 \
      --qb-precision "${BNB_PRECISIONS:-int8,nf4}" -k "speed or memory" --qb-report-dir "$out/$stage-bnb" ;;
  families)  # encoder-decoder and image-text shapes with random weights
    "${run[@]}" --qb-model synthetic:flan-t5-base --qb-model synthetic:paligemma-3b --qb-decoding greedy \
      --qb-precision bf16,int8,nf4 -k "speed or memory" --qb-report-dir "$out/$stage" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
