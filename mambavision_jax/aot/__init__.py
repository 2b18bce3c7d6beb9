"""Compile the real training and eval programs for a TPU or GPU this machine does not have, with
that chip's own XLA compiler (deviceless ahead-of-time compilation), and say whether they fit and
how fast they could run: `python -m mambavision_jax.aot --target tpu:v5e:2x2 ...`.

targets: the chip table, target names, compile-only meshes. planner: the programs, their
compilation and what is read from it. fit: the largest batch / smallest fsdp or remat that fits.
"""
