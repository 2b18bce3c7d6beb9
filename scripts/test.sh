#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run the fast test suite.
# Extra pytest arguments pass through (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[dev,torch,export,aot,seg-test]" "torch==2.13.0"
# The official PyTorch MambaVision is the parity reference. Its pip metadata pulls a CUDA torch
# (and mamba_ssm, CUDA-only), so it and timm/torchvision are installed without dependencies;
# tests/official.py supplies a pure-PyTorch selective scan in place of mamba_ssm.
python -m pip install -q --no-deps "mambavision==1.2.0" "timm==1.0.31" "torchvision==0.28.0"
# The official segmentation reference (mmseg's UPerHead / FCNHead / EncoderDecoder, pure Python
# here): their metadata pins mmcv builds with compiled ops, so they are installed without dependencies.
python -m pip install -q --no-deps "mmsegmentation==1.2.2" "mmdet==3.3.0"
# ONNX export: jax2onnx's metadata pins an old orbax-checkpoint it never imports.
python -m pip install -q --no-deps "jax2onnx==0.17.1"
# The aot extra installs libtpu and the CUDA plugin: JAX would try both at start-up (and print a
# CUDA plugin traceback); the tests run on the CPU (the aot tests compile for TPU / GPU without one).
# No TPU VM metadata server to ask, and no chip for libtpu's lockfile to guard (it would refuse the
# second pytest worker that compiles for a TPU).
export JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 ALLOW_MULTIPLE_LIBTPU_LOAD=1
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=8"
python -m pytest -n 2 -q "$@"
