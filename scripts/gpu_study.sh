#!/usr/bin/env bash
# The study on the lent GPU machine, in steps that fit its calls (see docs/results/qwen05_study/README.md).
#   bash scripts/gpu_study.sh piece            move the carried models/pieces/piece_* to /root/m (one per call)
#   bash scripts/gpu_study.sh setup            wheels -> /tmp/site; bwrap from .debs -> /tmp/bwrap; join +
#                                              sha-check the GGUF; save it as a
#                                              bf16 transformers dir /root/qwen05 (loads in seconds)
#   bash scripts/gpu_study.sh warm [LORA]      the study's warm model /root/warm/ws_0.35: re-created bit for bit from
#                                              a carried lora.safetensors (pgrpo warmstart-apply), or, with none, made
#                                              (pgrpo warmstart, hack share 0.35, hint aware) and its lora.safetensors
#                                              put in $OUT as 15 MiB pieces (cat lora.safetensors.?? > lora.safetensors)
#   bash scripts/gpu_study.sh restore TAR      unpack run dirs brought back earlier into /root/study
#   bash scripts/gpu_study.sh launch ARGS...   `pgrpo sweep ARGS` detached (setsid) on a snapshot of src/,
#                                              log /root/study.log
#   bash scripts/gpu_study.sh bench ARGS...    bench/study_throughput.py ARGS --out $STUDY, detached, same snapshot
#   bash scripts/gpu_study.sh collect [SAMPLES_GLOB]
#                                              tar the study dir (no samples.jsonl except SAMPLES_GLOB's runs)
#                                              into $OUT/study.tar.gz.NN (15 MiB pieces: cat them), plus logs.
#                                              The sweep's V files come too: a resumed run must project with
#                                              the V it started with, not a re-extraction.
#   At most 8 files of 16 MiB come back per call (~64 MiB in all): collect prints the pieces; fetch the
#   rest with `cp /tmp/study.tar.gz.NN $OUT/` in the next call.
set -euo pipefail
SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
STUDY=${STUDY:-/root/study}
env_on() { export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PATH=/tmp/bwrap/bin:/tmp/site/bin:$PATH; }
case "${1:-}" in
  piece)
    mkdir -p /root/m && mv -f models/pieces/piece_* /root/m/ && ls -la /root/m ;;
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    env_on
    cat /root/m/piece_* > /root/m/qwen05.gguf
    echo "$SHA  /root/m/qwen05.gguf" | sha256sum -c -
    python3 -c "from projected_grpo.models import load_model; m,t=load_model('/root/m/qwen05.gguf','bfloat16'); \
m.save_pretrained('/root/qwen05'); t.save_pretrained('/root/qwen05')"
    # bubblewrap for the grader, from the .debs scripts/fetch_bwrap.sh brought (else the rlimit fallback)
    if ls .debs/*.deb >/dev/null 2>&1; then bash scripts/install_bwrap_local.sh /tmp/bwrap || \
      echo "bwrap install failed: the grader will use its rlimit fallback (the report names the backend)"; fi
    nvidia-smi --query-gpu=name,memory.total --format=csv ;;
  warm)
    env_on; W=/root/warm/ws_0.35
    if [ -n "${2:-}" ]; then
      python3 -m projected_grpo.cli warmstart-apply --model /root/qwen05 --lora "$2" --out "$W"
    else
      python3 -m projected_grpo.cli warmstart --model /root/qwen05 --out "$W" --hack-share 0.35 --hint aware
      (cd "$OUT" && split -b 15M -d "$W/lora.safetensors" lora.safetensors. && sha256sum "$W/lora.safetensors" \
        | tee lora.sha256 && ls -la)
    fi
    python3 -c "import json; r = json.load(open('$W/warmstart.json')); print('weights sha256', r['weights_sha256'])" ;;
  restore)
    mkdir -p "$STUDY" && tar -xzf "$2" -C "$STUDY" && ls "$STUDY" ;;
  launch)
    shift; env_on; mkdir -p "$STUDY"
    # The job imports a snapshot of src/: every later call re-syncs this checkout under the running job, and
    # a run of the substrate grid died reading env/harness.py in the middle of such a sync.
    rm -rf /root/snap && mkdir -p /root/snap && cp -r src /root/snap/src
    export PYTHONPATH=/tmp/site:/root/snap/src
    setsid nohup python3 -m projected_grpo.cli sweep "$@" --out "$STUDY" > /root/study.log 2>&1 < /dev/null &
    sleep 5; cat /root/study.log ;;
  bench)
    # bench/study_throughput.py detached, on the same snapshot of src/ (and of bench/), log /root/bench.log;
    # `collect` is not needed: copy $STUDY/throughput.{json,md} into $OUT when it ends
    shift; env_on; mkdir -p /root/snap && rm -rf /root/snap/src /root/snap/bench && cp -r src bench /root/snap/
    export PYTHONPATH=/tmp/site:/root/snap/src
    setsid nohup python3 /root/snap/bench/study_throughput.py --out "$STUDY" "$@" > /root/bench.log 2>&1 < /dev/null &
    sleep 5; cat /root/bench.log ;;
  collect)
    keep=${2:-none}
    (cd "$STUDY" && find . -name samples.jsonl ! -path "./$keep/*" > /tmp/skip && \
     tar -czf /tmp/study.tar.gz -X /tmp/skip --exclude='logs/*.log' . ; \
     rm -f /tmp/study.tar.gz.?? && split -b 15M -d /tmp/study.tar.gz /tmp/study.tar.gz. && \
     ls /tmp/study.tar.gz.?? | head -n 3 | xargs -I{} cp {} "$OUT/" && echo "pieces: $(ls /tmp/study.tar.gz.??)")
    tar -czf "$OUT/logs.tar.gz" -C "$STUDY" logs
    tail -n 60 /root/study.log > "$OUT/study_log_tail.txt" || true
    ls -la "$OUT"; tail -n 25 /root/study.log ;;
  *) echo "usage: $0 piece|setup|warm [LORA]|restore TAR|launch ARGS|bench ARGS|collect [GLOB]" >&2; exit 2 ;;
esac
