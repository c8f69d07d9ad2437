#!/usr/bin/env bash
# One GPU check, under 8 minutes on one H100/H200: everything only a GPU can show, one table + a JSON.
#
#   bash bench/gpu_check.sh                          # CUDA: base / base-moe, bf16 + torch.compile
#   bash bench/gpu_check.sh --device cpu --quick     # CPU smoke test of every part (tiny settings)
#   PYTHON=/path/to/python bash bench/gpu_check.sh --out /tmp/gpu-check
#
# Rows: train tokens/s and MFU of base and base-moe (peak FLOP/s from training/flops.py, "unknown" for
# a GPU not in its table), the trainer's AdamW fused and its step cost, MoE grouped_mm vs the
# per-expert loop (fwd+bwd), the data-wait fraction of a 50-step training run on real shards under
# torchrun, a 1-GPU torchrun nccl start, and HF export logits equal on the GPU.
#
# Needs torch (+ numpy, pyarrow, sentencepiece, safetensors for the trainer, transformers for the
# export row); never prefect or the ptgpt CLI. The data-wait row reads a corpus folder (default
# data/bench-recipe/corpus-8k, built by bench/bench_recipe.py or `ptgpt corpus build`; pass --corpus);
# on a remote box, bring one along (a corpus of a few dozen books is enough). Any other flag goes to
# bench/gpu_check.py (--parts, --batch, --seq, --steps, --timeout; --help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.draw --format=csv,noheader || true
fi
exec "$PYTHON" bench/gpu_check.py "$@"
