#!/usr/bin/env bash
# Issue #28 on a lent GPU (one card, random weights of the 0.5B shape: no model upload), in calls of
# at most 10 minutes; everything lands in $OUT:
#   bash scripts/gpu_fleet.sh bench        bench/fleet_step.py --runs 1,3,9: R separate passes / decodes
#                                          against one fleet pass / decode (fleet.json, fleet.log)
#   bash scripts/gpu_fleet.sh fleet K      K vanilla runs as one fleet: `pgrpo train --fleet-seeds 1..K`
#   bash scripts/gpu_fleet.sh alone K      the same K runs as K processes at once (`--row-noise true`)
#   bash scripts/gpu_fleet.sh launch K     fleet K, bench, alone K (or LIST='...') in turn, detached (setsid), on a
#                                          snapshot of src/ and bench/ (later calls re-sync the checkout)
#   bash scripts/gpu_fleet.sh wait [S]     up to S seconds (default 540) for launch's list; then collect
#   bash scripts/gpu_fleet.sh collect      everything written so far (in $RES) into $OUT
# STEPS=N sets the runs' steps (default 6).
# Each of fleet/alone writes {fleet,alone}_K/ (every run's metrics.jsonl and config.json), its wall time
# (wall.txt) and the card's name; compare them with scripts/fleet_table.py.
set -euo pipefail
RES=${RES:-/root/fleetres}; mkdir -p "$RES"
export PYTHONPATH=${SRC:-$PWD/src} PYTHONUNBUFFERED=1
FLAGS=(--preset smoke --model random:qwen2.5-coder-0.5b --device cuda --dtype bfloat16 --arm vanilla
       --n-problems 32 --steps "${STEPS:-6}" --prompts-per-step 8 --group-size 8 --max-new-tokens 160
       --eval-problems 8 --eval-samples 4 --eval-every 0 --train-batching sorted --micro-tokens 4096
       --grade-workers 4 --vhack-m 4 --samples-every 0 --delta-s-impl merged)
seeds() { seq -s, 1 "$1"; }
case "${1:-}" in
  bench)
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$RES/card.txt"
    python3 bench/fleet_step.py --size 0.5b --runs 1,3,9 --steps 3 --warmup 1 --json "$RES/fleet.json" \
      2>&1 | tee "$RES/fleet.log" | tail -n 20 ;;
  fleet)
    K=$2; D=/root/f/fleet_$K; rm -rf "$D"; mkdir -p "$D"
    t0=$(date +%s.%N)
    python3 -m projected_grpo.cli train --fleet-seeds "$(seeds "$K")" --out "$D/s{seed}" "${FLAGS[@]}" \
      > "$D/log.txt" 2>&1 || echo "fleet exit $?"
    python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$t0" > "$D/wall.txt"
    tail -n 12 "$D/log.txt"; cat "$D/wall.txt"
    (cd /root/f && tar -czf "$RES/fleet_$K.tar.gz" --exclude='*.pt' "fleet_$K") ;;
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
    (cd /root/f && tar -czf "$RES/alone_$K.tar.gz" --exclude='*.pt' "alone_$K") ;;
  launch)
    rm -rf /root/snap && mkdir -p /root/snap && cp -r src bench scripts /root/snap/
    (cd /root/snap && SRC=/root/snap/src setsid nohup bash scripts/gpu_fleet.sh run-all "$2" \
      > "$RES/progress.log" 2>&1 < /dev/null &)
    sleep 2; cat "$RES/progress.log" ;;
  run-all)
    for step in ${LIST:-fleet bench alone}; do
      [ "$step" = bench ] || step="$step $2"
      echo "=== $(date +%T) $step"
      # shellcheck disable=SC2086
      bash scripts/gpu_fleet.sh $step > "$RES/${step// /_}.out" 2>&1 && echo "    ok" || echo "    FAILED (exit $?)"
    done
    echo "=== $(date +%T) all done" ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    until grep -q "all done" "$RES/progress.log" 2>/dev/null || [ $SECONDS -ge $end ]; do sleep 10; done
    cat "$RES/progress.log"; for f in "$RES"/*.out; do echo "--- $f"; tail -n 8 "$f"; done
    bash "$0" collect ;;
  collect)
    cp "$RES"/*.tar.gz "$RES"/*.json "$RES"/*.txt "$RES"/*.log "$OUT"/ 2>/dev/null || true
    tar -czf "$OUT/outs.tar.gz" -C "$RES" $(cd "$RES" && ls *.out 2>/dev/null) 2>/dev/null || true
    ls -la "$OUT" ;;
  *) echo "usage: $0 bench|fleet K|alone K|launch K|wait [S]|collect" >&2; exit 2 ;;
esac
