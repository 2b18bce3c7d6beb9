"""mambavision_jax.xla_cpu: importing the package leaves XLA alone; `use_eigen_convolutions()` adds
the XLA-CPU convolution flag where it can still take effect, and only there. Each case runs in a
fresh interpreter, as XLA reads its flags once per process."""

import os
import subprocess
import sys

import jaxlib
import pytest

from mambavision_jax import xla_cpu

NEW_JAXLIB = jaxlib.__version__.startswith("0.10.")  # the jaxlibs that know the flag
CONV = (
    "y = jax.lax.conv_general_dilated(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), (1, 1), 'SAME',"
    " dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
)


def _run(code: str, **env) -> list[str]:
    """The fields of the last line `code` prints, run in a fresh interpreter with `env` added."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MAMBAVISION_JAX_XLA_CPU_FLAGS")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1].split("|")


def test_import_changes_nothing():
    flags, on = _run(
        "import os, mambavision_jax, jax\njax.devices()\n"
        "print(os.environ.get('XLA_FLAGS', '-'), mambavision_jax.xla_cpu.eigen_convolutions(), sep='|')"
    )
    assert (flags, on) == ("-", "False")


def test_the_call_adds_the_flag_and_xla_accepts_it():
    # XLA aborts on a flag it does not know: run a convolution under it.
    flags, on, centre = _run(
        "import os, mambavision_jax as mvj\nadded = mvj.xla_cpu.use_eigen_convolutions()\n"
        "import jax, jax.numpy as jnp\n"
        + CONV
        + "print(os.environ.get('XLA_FLAGS', '-'), added, float(y[0, 4, 4, 0]), sep='|')",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    want = "--xla_force_host_platform_device_count=2" + (
        " " + xla_cpu.EIGEN_CONVOLUTIONS if NEW_JAXLIB else ""
    )
    assert (flags, on) == (want, str(NEW_JAXLIB)) and float(centre) == 27.0


@pytest.mark.parametrize("case", ["users-own-choice", "opt-out", "too-late"])
def test_the_call_leaves_xla_alone(case):
    env, before = {}, ""
    if case == "users-own-choice":
        env["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    elif case == "opt-out":
        env["MAMBAVISION_JAX_XLA_CPU_FLAGS"] = "0"
    else:  # JAX's backends exist already: XLA has read its flags
        before = "jax.devices()\n"
    flags, on = _run(
        "import os, jax, mambavision_jax as mvj\n" + before + "added = mvj.xla_cpu.use_eigen_convolutions()\n"
        "print(os.environ.get('XLA_FLAGS', '-'), added, sep='|')",
        **env,
    )
    assert (flags, on) == (env.get("XLA_FLAGS", "-"), "False")
