#!/usr/bin/env bash
# Issue #28 on a lent GPU (one card, random weights of the 0.5B shape: no model upload), in calls of
# at most 10 minutes; everything lands in $OUT:
#   bash scripts/gpu_fleet.sh bench        bench/fleet_step.py --runs 1,3,9: R separate passes / decodes
#                                          against one fleet pass / decode (fleet.json, fleet.log)
#   bash scripts/gpu_fleet.sh fleet K      K vanilla runs as one fleet: `pgrpo train --fleet-seeds 1..K`
#   bash scripts/gpu_fleet.sh alone K      the same K runs as K processes at once (`--row-noise true`)
# STEPS=N sets the runs' steps (default 6).
# Each of the last two writes {fleet,alone}_K/ (every run's metrics.jsonl and config.json), its wall time
# (wall.txt) and the card's name; compare them with scripts/fleet_table.py.
set -euo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
FLAGS=(--preset smoke --model random:qwen2.5-coder-0.5b --device cuda --dtype bfloat16 --arm vanilla
       --n-problems 32 --steps "${STEPS:-6}" --prompts-per-step 8 --group-size 8 --max-new-tokens 160
       --eval-problems 8 --eval-samples 4 --eval-every 0 --train-batching sorted --micro-tokens 4096
       --grade-workers 4 --vhack-m 4 --samples-every 0 --delta-s-impl merged)
seeds() { seq -s, 1 "$1"; }
case "${1:-}" in
  bench)
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/card.txt"
    python3 bench/fleet_step.py --size 0.5b --runs 1,3,9 --steps 3 --warmup 1 --json "$OUT/fleet.json" \
      2>&1 | tee "$OUT/fleet.log" | tail -n 20 ;;
  fleet)
    K=$2; D=/root/f/fleet_$K; rm -rf "$D"; mkdir -p "$D"
    t0=$(date +%s.%N)
    python3 -m projected_grpo.cli train --fleet-seeds "$(seeds "$K")" --out "$D/s{seed}" "${FLAGS[@]}" \
      > "$D/log.txt" 2>&1 || echo "fleet exit $?"
    python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$t0" > "$D/wall.txt"
    tail -n 12 "$D/log.txt"; cat "$D/wall.txt"
    (cd /root/f && tar -czf "$OUT/fleet_$K.tar.gz" --exclude='*.pt' --exclude='*.safetensors' "fleet_$K") ;;
  alone)
    K=$2; D=/root/f/alone_$K; rm -rf "$D"; mkdir -p "$D"
    t0=$(date +%s.%N)
    for s in $(seq 1 "$K"); do
      python3 -m projected_grpo.cli train --seed "$s" --row-noise true --out "$D/s$s" "${FLAGS[@]}" \
        > "$D/log_$s.txt" 2>&1 &
    done
    wait
    python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$t0" > "$D/wall.txt"
    tail -n 5 "$D/log_1.txt"; cat "$D/wall.txt"
    (cd /root/f && tar -czf "$OUT/alone_$K.tar.gz" --exclude='*.pt' --exclude='*.safetensors' "alone_$K") ;;
  *) echo "usage: $0 bench|fleet K|alone K" >&2; exit 2 ;;
esac
