#!/usr/bin/env bash
# Warm-start probe on one GPU (issue #17): SFT at several hack shares, then each model's base rates.
#   CUDA_VISIBLE_DEVICES=3 bash scripts/gpu_warm.sh SHARES...   (detached; log /root/warm/*.log)
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PATH=/tmp/bwrap/bin:/tmp/site/bin:$PATH OMP_NUM_THREADS=8
mkdir -p /root/warm
for s in "$@"; do
  ( python3 -m projected_grpo.cli warmstart --model /root/qwen05 --out /root/warm/ws_$s --hack-share $s \
      --hint aware > /root/warm/ws_$s.log 2>&1 &&
    python3 -m projected_grpo.cli baseline --model /root/warm/ws_$s --problems bundled --n-samples 4 \
      --hint aware --workers 8 --out /root/warm/base_$s >> /root/warm/ws_$s.log 2>&1 ) &
done
wait
