#!/usr/bin/env bash
# GPU benchmark of kitsmsan at the paper's size (issue #6), for a session that has a GPU.
#
# Runs, each stage under its own time limit so that one slow stage cannot eat the others
# (about 8 minutes in all on one H100):
#   1. step       the five networks at batch 2 x 1 x 4 x 512 x 512 (MSAN paper, §3.1):
#                 fp32 eager, bf16 autocast, + channels_last_3d, and + torch.compile for
#                 $COMPILE_VARIANTS (compilation is slow; default msan_v2_ds,unet3d)     <= 270 s
#   2. inference  one 300 x 512 x 512 case, one network and the five-network vote        <=  90 s
#   3. data       cache vs .nii.gz windows, DataLoader with 0/1/2/4/8 workers           <= 110 s
#   4. memory     torch.cuda.max_memory_allocated of a real training step of each network
#                 (fp32, bf16, fp16) beside the count made without a GPU (bench memory)   <= 150 s
# and merges them into $OUT/bench_gpu.json (copy it to book/data/bench_gpu.json: the book's
# Performance page renders every book/data/bench_*.json). Each stage rewrites its JSON after every
# row, so a stage stopped by its limit keeps what it measured. Every row names the device, the
# torch version and the commit.
#
# Needs: python3 with torch (CUDA), numpy, scipy, tqdm -- and nibabel for stages 2 and 3
# (kitsmsan.data imports it). The device machines have everything but nibabel. Carry it as a wheel
# (pure Python, any platform); /.whl/ is already in .gitignore:
#
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl nibabel==5.4.2
#
# then call the device tool's `run` with carry [".whl"] and a command like
#
#     KITSMSAN_COMMIT=$(git rev-parse --short HEAD) bash scripts/gpu_bench.sh
#
# with the commit filled in here before the call (the device's copy of the tree has no .git, so
# the rows would otherwise say "unknown"). Without the wheel, stages 2 and 3 are skipped with a
# message and stage 1 still runs. Output: $OUT (default ./bench_out): bench_gpu.json,
# bench_gpu_{step,inference,data,memory}.json, gpu_bench.log, nvidia-smi.txt.
#
# Knobs (environment): OUT, PYTHON (default python3), DEVICE (default cuda; DEVICE=cpu with tiny
# *_ARGS is a dry run of this script's plumbing, not a measurement), COMPILE_VARIANTS, STEP_LIMIT, INFER_LIMIT,
# DATA_LIMIT, MEM_LIMIT (seconds), STEP_ARGS / INFER_ARGS / DATA_ARGS / MEM_ARGS (extra `kitsmsan bench`
# options, e.g. STEP_ARGS="--iters 5" for a quicker run). Never edit the numbers this writes: re-run instead.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
COMPILE_VARIANTS=${COMPILE_VARIANTS:-msan_v2_ds,unet3d}
STEP_LIMIT=${STEP_LIMIT:-270}
INFER_LIMIT=${INFER_LIMIT:-90}
DATA_LIMIT=${DATA_LIMIT:-110}
MEM_LIMIT=${MEM_LIMIT:-150}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/gpu_bench.log"
: >"$LOG"
say() { echo "[gpu_bench $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# carried wheels (see the header), then the repository itself on the path
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$LOG" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${KITSMSAN_COMMIT:-}" ]; then
    KITSMSAN_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    export KITSMSAN_COMMIT
fi

[ "$DEVICE" = cpu ] || nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || say "nvidia-smi failed (see nvidia-smi.txt)"
if [ "$DEVICE" != cpu ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device visible to $PY: nothing to measure (never fill the GPU row by hand)"
    exit 1
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee -a "$LOG"
HAVE_NIBABEL=1
"$PY" -c "import nibabel" 2>/dev/null || HAVE_NIBABEL=0

bench() {  # bench LIMIT NAME ARGS...: one stage under a time limit
    local limit=$1 name=$2; shift 2
    say "stage $name (limit ${limit}s): kitsmsan bench $*"
    timeout --kill-after=10 "$limit" "$PY" -m kitsmsan bench "$@" >>"$LOG" 2>&1
    local rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        say "stage $name stopped at its limit; its JSON keeps the rows measured so far"
    elif [ $rc -ne 0 ]; then
        say "stage $name failed (exit $rc; see $LOG)"
    fi
}

# shellcheck disable=SC2086  # *_ARGS are word lists on purpose
bench "$STEP_LIMIT" step step --device "$DEVICE" --iters 15 --warmup 3 --compile-variants "$COMPILE_VARIANTS" \
    --json "$OUT/bench_gpu_step.json" ${STEP_ARGS:-}
if [ $HAVE_NIBABEL = 1 ]; then
    # shellcheck disable=SC2086
    bench "$INFER_LIMIT" inference inference --device "$DEVICE" --json "$OUT/bench_gpu_inference.json" ${INFER_ARGS:-}
    # shellcheck disable=SC2086
    bench "$DATA_LIMIT" data data --device "$DEVICE" --source synthetic --workers 0,1,2,4,8 \
        --json "$OUT/bench_gpu_data.json" ${DATA_ARGS:-}
else
    say "nibabel missing: inference and data skipped (carry the wheel, see this script's header)"
fi

# shellcheck disable=SC2086
bench "$MEM_LIMIT" memory memory --counts-only --measured --json "$OUT/bench_gpu_memory.json" ${MEM_ARGS:-}

inputs=()
for f in "$OUT"/bench_gpu_step.json "$OUT"/bench_gpu_inference.json "$OUT"/bench_gpu_data.json \
        "$OUT"/bench_gpu_memory.json; do
    [ -s "$f" ] && inputs+=("$f")
done
if [ ${#inputs[@]} -gt 0 ]; then
    "$PY" -m kitsmsan bench merge --device "$DEVICE" --inputs "${inputs[@]}" --json "$OUT/bench_gpu.json" | tee -a "$LOG"
    say "wrote $OUT/bench_gpu.json"
else
    say "no stage produced results"
    exit 1
fi
