#!/usr/bin/env bash
# Issue 18's measurements on a lent GPU machine (one card), in calls of at most 10 minutes:
#   bash scripts/gpu_bench.sh setup     TRL's wheels (.whl_trl, carried) and ours (.whl) -> /tmp/site
#   bash scripts/gpu_bench.sh launch    every measurement below (or ONLY="name ..." in that order), one after
#                                       another, detached (setsid);
#                                       each writes /root/bench/NAME.jsonl and NAME.log
#   bash scripts/gpu_bench.sh wait [S]  up to S seconds (default 540) for the list to finish; the logs' tails
#   bash scripts/gpu_bench.sh collect   the JSON lines, logs and nvidia-smi's card name into $OUT
# The first call carries [".whl_trl", ".whl"] and runs `setup && launch && wait`; later calls
# `wait` (and `collect` at the end). Each measurement has ours and TRL in one process on one card,
# so every ratio is taken within one run (3 timed steps after 1 warm-up; the bench reports medians).
set -euo pipefail
DIR=${BENCH_DIR:-/root/bench}
env_on() { export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1; }

# name | bench/grpo_step.py arguments
MEASUREMENTS=(
  "hook|--sizes 0.5b,7b --trl-sizes 0.5b,7b --delta-s-impl hook"
  "merged|--sizes 0.5b,7b --trl-sizes 0.5b,7b --delta-s-impl merged"
  "parts|--sizes 0.5b,7b --trl-sizes '' --train-parts --delta-s-impl merged"
  "beta|--sizes 7b --trl-sizes 7b --delta-s-impl merged --beta 1e-3"
  "cpubase|--sizes 0.5b,7b --trl-sizes '' --delta-s-impl merged --base-on-cpu"
  "cpubase_beta|--sizes 7b --trl-sizes '' --delta-s-impl merged --base-on-cpu --beta 1e-3"
  "ariahw|--sizes 4b --trl-sizes '' --ckpt-sizes 4b --prompts 16 --group 16 --new-tokens 1024 --beta 1e-3 --delta-s-impl merged"
  "ariahw_cpubase|--sizes 4b --trl-sizes '' --ckpt-sizes 4b --prompts 16 --group 16 --new-tokens 1024 --beta 1e-3 --delta-s-impl merged --base-on-cpu"
)

run_all() {
  env_on
  local list=()                  # ONLY="name name ...": those measurements, in that order (default: all)
  if [ -n "${ONLY:-}" ]; then
    for want in $ONLY; do
      for m in "${MEASUREMENTS[@]}"; do [ "${m%%|*}" = "$want" ] && list+=("$m"); done
    done
  else list=("${MEASUREMENTS[@]}"); fi
  for m in "${list[@]}"; do
    name=${m%%|*} args=${m#*|}
    echo "=== $(date +%T) $name: $args"
    eval "python3 bench/grpo_step.py $args --json $DIR/$name.jsonl" > "$DIR/$name.log" 2>&1 \
      && echo "    ok" || echo "    FAILED (exit $?): see $DIR/$name.log"
  done
  echo "=== $(date +%T) all done"
}

case "${1:-}" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl_trl/*.whl .whl/*.whl
    env_on
    python3 -c "import trl, datasets, peft, torch; print('trl', trl.__version__, 'datasets', datasets.__version__, \
'torch', torch.__version__, torch.cuda.get_device_name())" ;;
  launch)
    mkdir -p "$DIR"
    ONLY="${ONLY:-}" setsid nohup bash "$0" run-all > "$DIR/progress.log" 2>&1 < /dev/null &
    sleep 2; cat "$DIR/progress.log" ;;
  run-all)
    run_all ;;
  wait)
    end=$((SECONDS + ${2:-540}))
    until grep -q "all done" "$DIR/progress.log" 2>/dev/null || [ $SECONDS -ge $end ]; do sleep 10; done
    cat "$DIR/progress.log"
    for f in "$DIR"/*.log; do [ "$f" = "$DIR/progress.log" ] || { echo "--- $f"; tail -n 4 "$f"; }; done ;;
  collect)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/card.txt"
    tar -czf "$OUT/bench.tar.gz" -C "$DIR" .
    ls -la "$OUT" ;;
  *) echo "usage: $0 setup|launch|wait [SECONDS]|collect" >&2; exit 2 ;;
esac
