#!/usr/bin/env bash
# train.py on a GPU host, the real thing, in one call of at most 8 minutes:
#   bash benchmarks/gpu_train.sh [OUTDIR [train_report.py options]]   (OUTDIR: default $OUT, else /tmp/gpu_train)
# 3000 ImageNet-size JPEGs -> a TFDS data set -> `python train.py --config configs/tiny.py` with
# bfloat16, global batch 256, 300 steps and the official recipe (LAMB, EMA, mesa, mixup / cutmix,
# RandAugment, random erasing), beside the bare step and the input pipeline alone; which one bounds
# the run, and a profile when the loop falls short (benchmarks/train_report.py does the work).
#
# A host without the data packages gets them as wheels in .whl/ (made where pip works, in the repo
# root; the Python version is the GPU host's):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       grain tensorflow-datasets array-record ml-collections
# (then delete from .whl what the host already has in a version that works: jax, numpy, protobuf, ...)
set -u
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then OUTDIR=$1; shift; else OUTDIR=${OUT:-/tmp/gpu_train}; fi
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
# The JPEGs, data set and run stay on the host's local disk; only the logs and report come back.
WORK=${WORK:-/tmp/gpu_train_work}
timeout -k 10 ${BUDGET:-470} $PY benchmarks/train_report.py --out "$WORK" --profile "$@"
rc=$?
cp "$WORK"/report.json "$WORK"/train.log "$OUTDIR"/ 2>/dev/null
[ -d "$WORK/profile" ] && tar -C "$WORK" -czf "$OUTDIR/profile.tgz" profile
echo "exit $rc"
exit $rc
