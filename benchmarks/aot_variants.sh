#!/usr/bin/env bash
# The compile-only table of benchmarks/RESULTS.md: train.py's bf16 train step of all 11 variants,
# compiled for a TPU v5e 4x4 slice, a TPU v5p 4x4x4 slice and 2 hosts of 8 H100s on a machine
# with none of them (python -m mambavision_jax.aot; needs the aot extra). One markdown file per
# target in OUT_DIR (default aot_tables/). Each compile takes minutes on a small CPU host (the L3
# variants the longest); a variant that fails to compile gets a row saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1
out="${1:-aot_tables}"
mkdir -p "$out"
for target in ${TARGETS:-tpu:v5e:4x4 tpu:v5p:4x4x4 gpu:h100:2x8}; do
  python -m mambavision_jax.aot --target "$target" --all-variants --program train --dtype bfloat16 \
    --out "$out/${target//:/_}.md"
done
