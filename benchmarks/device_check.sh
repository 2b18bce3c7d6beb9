#!/usr/bin/env bash
# Everything that needs a GPU, in one run (a lent device machine gives ~10 minutes per call):
#   1. versions and the card;
#   2. the compiled Pallas kernels against the sequential scan (values and gradients,
#      tests/test_pallas_scan.py -m gpu): Triton, and on Hopper (compute capability 9.0) the
#      Mosaic GPU one, whose values the CPU checks only in Mosaic GPU's interpreter; and
#      impl="auto" resolving to the kernel for the card;
#   3. benchmarks/scan.py at MambaVision-T stage-3 shapes (batch 128, L 196 and 784, d 160, n 8),
#      both GPU kernels on Hopper;
#   4. benchmarks/throughput.py: MambaVision-T bf16 batch 256 (eval + train) against timm's Swin-T
#      and ConvNeXt-T (PyTorch, channels_last, autocast bf16). The official PyTorch model is left
#      out here: without mamba_ssm's CUDA kernel (not installable on the machine) it would time a
#      pure-PyTorch stand-in scan, not the official code path;
#   5. the float32 parity tests with the JAX model on the GPU (kernel scan) vs the official model;
#   6. time permitting, the model with XLA's associative scan and attention instead.
# Each stage has its own time limit, so one that fails or hangs does not cost the others.
#   bash benchmarks/device_check.sh [OUTDIR]      (logs and JSON land in OUTDIR, default $OUT)
# Python packages missing on the machine may be carried as wheels in .whl/ (see README).
set -u
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/device_check}}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # pytest workers share the card
PY=${PYTHON:-python3}
T0=$(date +%s)

BUDGET=${BUDGET:-570}  # seconds for the whole script: a stage gets at most what is left

stage() {  # stage NAME SECONDS CMD...: run with a limit, log to OUTDIR/NAME.log, report status
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET - ($(date +%s) - T0) ))
    if [ "$left" -lt 20 ]; then echo "=== $name: skipped, ${left}s left"; return 0; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit}s, t=$(( $(date +%s) - T0 ))s)"
    timeout -k 10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after t=$(( $(date +%s) - T0 ))s"
    return 0
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    # Only what the image lacks (the official model's package; flax if the image's is older).
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/mambavision-*.whl \
        >/dev/null 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    if ! $PY -c "import flax, sys; v = tuple(int(x) for x in flax.__version__.split('.')[:3]); sys.exit(v < (0, 12, 8))" 2>/dev/null \
        && ls .whl/flax-*.whl >/dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_flax .whl/flax-*.whl \
            >/dev/null 2>&1 && export PYTHONPATH="/tmp/site_flax:$PYTHONPATH"
    fi
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    $PY - <<'PY'
import importlib
for m in ("jax", "jaxlib", "flax", "optax", "torch", "timm", "triton", "numpy"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING", type(e).__name__, e)
import jax
d = jax.devices()[0]
print("jax device:", d.platform, d.device_kind, "cc", getattr(d, "compute_capability", None))
from mambavision_jax.ops import default_impl
print("selective_scan auto ->", default_impl())
PY
} >"$OUTDIR/info.log" 2>&1
cat "$OUTDIR/info.log"

stage kernel_tests 150 $PY -m pytest -q -p no:cacheprovider -n 4 -m gpu tests/test_pallas_scan.py
# SCAN_BATCH / MODEL_BATCH / REPEATS shrink the run for a smoke test on a CPU.
SB=${SCAN_BATCH:-128} MB=${MODEL_BATCH:-256} R=${REPEATS:-50}
stage scan_bench 90 bash -c "$PY benchmarks/scan.py --batch $SB --length 196 784 --repeats $R && \
    $PY benchmarks/scan.py --batch $SB --length 196 --dtype bfloat16 --repeats $R"
stage throughput 280 $PY benchmarks/throughput.py --model mamba_vision_T --batch $MB --dtype bfloat16 \
    --timm --modes eval,train --warmup 5 --repeats $(( R < 30 ? R : 30 )) --timeout 150 \
    --json "$OUTDIR/throughput.json"
stage parity 150 $PY -m pytest -q -s -p no:cacheprovider "tests/test_parity.py::test_logits_match_official[T]" \
    "tests/test_parity.py::test_logits_match_official[L-head-dim-49]"
# If time is left: the model with XLA's associative scan and XLA attention (what the kernel and
# cuDNN attention add), eval only.
stage throughput_xla 150 $PY benchmarks/throughput.py --model mamba_vision_T --batch $MB --dtype bfloat16 \
    --modes eval --warmup 5 --repeats $(( R < 30 ? R : 30 )) --scan-impl associative --attn-impl xla

echo
for f in kernel_tests scan_bench throughput parity throughput_xla; do
    [ -f "$OUTDIR/$f.log" ] || continue
    echo "################ $f"
    grep -E "^\||passed|failed|rror|FAILED|stopped|device:|auto =|steps|rel err" "$OUTDIR/$f.log" | tail -30
done
echo "total $(( $(date +%s) - T0 ))s"
