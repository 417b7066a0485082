#!/usr/bin/env bash
# The GPU figures in one go, on a machine with one NVIDIA GPU that is offline and bare, in at most ~9.5 minutes:
#   1. installs what it brings (.whl/*.whl, see --fetch-wheels) into a private folder, nothing else;
#   2. runs the GPU-only tests (pytest -m gpu);
#   3. measures in bf16: DeiT-S, DeiT-B and ResNet-50 training steps (img/s, model TFLOP/s, MFU; ResNet channels-last;
#      DeiT-B and ResNet-50 also compiled), the 64-px Imagenette study's ViT-mini packed 1/2/4/8 runs to the GPU,
#      forward throughput and the on-GPU data pipeline, each with the same-precision GEMM rate of the same run;
#      where the time goes per width (DeiT-Ti/S/B: the profiled split) and a level's parts batched vs separate;
#      last, DiffusionBlocks' peak CUDA memory against its number of blocks B (benchmarks/diffusionblocks_memory.py);
#   4. writes under $OUT: bench/<device>.json, bench/costmodel-<device>.json (the GPU's cost model, fitted on the
#      per-width table) and bench/diffusionblocks-memory-<device>.json (the committed formats: copy them to
#      reports/bench/), perf.md and its figures perf-*.png (the report with the committed CPU figures and the new
#      ones: copy them to reports/), env.txt, gpu-tests.xml and device_check.log.
# Steps run in that order, each under its share of the time left; one that runs out of time loses only its figures.
#
#   bash benchmarks/device_check.sh --fetch-wheels   # here, once, with network: the wheels it brings, into .whl/
#   bash benchmarks/device_check.sh                  # there (OUT=... or ./device-out)
#   bash benchmarks/device_check.sh --dry-run        # any CPU machine: the same steps at toy size, in about a minute
#
# Environment: PYTHON (default python3), OUT, RBDC_WHEELS (default .whl), RBDC_DEVICE_BUDGET_S (default 570).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS=${RBDC_WHEELS:-$REPO/.whl}
DRY=0
FETCH=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        --fetch-wheels) FETCH=1 ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "device_check.sh: unknown argument '$arg'; use --dry-run, --fetch-wheels or --help" >&2; exit 2 ;;
    esac
done

if [ $FETCH = 1 ]; then
    # timm at this checkout's version (the GPU image has its own timm, of unknown version; rbdc pins timm < 1.1).
    # Pure-Python wheel: any CPython 3 takes it. Everything else rbdc needs is in that image (see KINDS.md).
    version=$("$PY" -c "import timm; print(timm.__version__)") || exit 1
    mkdir -p "$WHEELS"
    "$PY" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "timm==$version" || exit 1
    ls -l "$WHEELS"
    exit 0
fi

OUT=${OUT:-$REPO/device-out}
mkdir -p "$OUT/bench"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
exec > >(tee -a "$OUT/device_check.log") 2>&1
START=$(date +%s)
BUDGET=${RBDC_DEVICE_BUDGET_S:-570}
FAILED=()

left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME SECONDS CMD...: run CMD under min(SECONDS, time left); a failure is recorded, the next step still runs.
step() {
    local name=$1 limit=$2 t0 rc
    shift 2
    local remain
    remain=$(left)
    [ "$limit" -gt "$remain" ] && limit=$remain
    if [ "$limit" -lt 15 ]; then
        echo "== $name: skipped, ${remain}s left"
        FAILED+=("$name (no time left)")
        return
    fi
    echo "== $name (at most ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - t0))s ($(left)s left)"
    if [ $rc -ne 0 ]; then FAILED+=("$name (exit $rc)"); fi
}

cd "$REPO" || exit 1
export PYTHONUNBUFFERED=1 PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$REPO
if [ $DRY = 1 ]; then
    export RBDC_BENCH_TOY=1
    echo "device_check: dry run: every step at toy size on the CPU"
fi

# 1. What it brings, into a private folder ahead of the image's own packages.
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    step install 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$WHEELS"/*.whl
    export PYTHONPATH=$WORK/site:$REPO
else
    echo "== install: no wheels in $WHEELS (bash benchmarks/device_check.sh --fetch-wheels brings them); using the" \
        "installed packages"
fi

# 2. The machine, the versions, the GPU's state.
{
    date -u
    "$PY" -c "import sys, torch, timm; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA',
torch.version.cuda, '| timm', timm.__version__, '| GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available()
else None)"
    command -v nvidia-smi > /dev/null && nvidia-smi
    "$PY" -m pip list 2> /dev/null | grep -iE '^(torch|torchvision|timm|numpy|pytest|pytest-benchmark|safetensors) '
} > "$OUT/env.txt" 2>&1
head -1 "$OUT/env.txt" && sed -n 2p "$OUT/env.txt"

# 3. The GPU-only tests.
step gpu-tests 90 "$PY" -m pytest -m gpu tests -q -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"

# 4. The benchmarks, most wanted first, each part into its own JSON (pytest-benchmark writes at the end of a run).
BENCH=("$PY" -m pytest --bench-device=cuda -q -p no:cacheprovider --benchmark-columns=min,median,iqr,rounds)
step bench-train-step 180 "${BENCH[@]}" benchmarks/test_bench_train_step.py -k "not compile" \
    --benchmark-json="$WORK/1-train-step.json"
step bench-packed 120 "${BENCH[@]}" benchmarks/test_bench_train_paths.py --benchmark-json="$WORK/2-packed.json"
step bench-forward-data 60 "${BENCH[@]}" benchmarks/test_bench_forward.py benchmarks/test_bench_data.py \
    --benchmark-json="$WORK/3-forward-data.json"
# where the time goes per width (DeiT-Ti/S/B: img/s, TFLOP/s, GEMM fraction, the profiled split) and a level's parts
# batched vs separate (DeiT-Ti x 4, DeiT-S x 2): what the cost model is fitted on
step bench-time-split 150 "${BENCH[@]}" benchmarks/test_bench_time_split.py benchmarks/test_bench_levers.py \
    --benchmark-json="$WORK/4-time-split.json"
step bench-compile-resnet50 120 "${BENCH[@]}" benchmarks/test_bench_train_step.py -k "compile and resnet50" \
    --benchmark-json="$WORK/5-compile-resnet50.json"
step bench-compile-deit-base 120 "${BENCH[@]}" benchmarks/test_bench_train_step.py -k "compile and deit_base" \
    --benchmark-json="$WORK/6-compile-deit-base.json"

if [ $DRY = 1 ]; then
    slug=dry-run
    MEMORY=(--dry-run --device cpu)
else
    slug=$("$PY" -c "from benchmarks.perf_report import device_slug; print(device_slug('cuda'))") || slug=gpu
    MEMORY=(--device cuda --amp bf16)
fi
# DiffusionBlocks' memory against B: a fresh process per configuration, CUDA max_memory_allocated (not a timing)
step diffusionblocks-memory 90 "$PY" -m benchmarks.diffusionblocks_memory "${MEMORY[@]}" \
    --out "$OUT/bench/diffusionblocks-memory-$slug.json"

# 5. One JSON for the device, and the report over it and the committed ones.
"$PY" -m benchmarks.perf_report merge "$OUT/bench/$slug.json" "$WORK"/[0-9]-*.json || FAILED+=("merge")
if [ -f "$OUT/bench/$slug.json" ] && [ -f "$WORK/4-time-split.json" ]; then
    # the device's cost model (seconds per image from FLOPs, activations, parameters) -> bench/costmodel-<device>.json
    "$PY" -m rbdc.cost.costmodel "$OUT/bench/$slug.json" --out "$OUT/bench" || FAILED+=("costmodel")
fi
if [ -f "$OUT/bench/$slug.json" ]; then
    mkdir -p "$WORK/report"
    cp "$REPO"/reports/bench/*.json "$REPO"/rbdc/cost/fitted/costmodel-*.json "$WORK/report/" 2> /dev/null
    cp "$OUT/bench/$slug.json" "$WORK/report/"
    cp "$OUT"/bench/diffusionblocks-memory-*.json "$OUT"/bench/costmodel-*.json "$WORK/report/" 2> /dev/null
    "$PY" -m benchmarks.perf_report --bench-dir "$WORK/report" -o "$OUT/perf.md" || FAILED+=("report")
fi

echo "device_check: $(($(date +%s) - START))s in all; results in $OUT: $(cd "$OUT" && find . -type f | sort | xargs)"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'device_check: not complete: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "device_check: every step passed"
