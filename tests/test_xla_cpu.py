"""mambavision_jax.xla_cpu: the XLA-CPU convolution flag added at import, and when it is not."""
import os
import subprocess
import sys

import pytest

from mambavision_jax import xla_cpu


@pytest.fixture
def fresh(monkeypatch):
    """A clean slate: no user option, not opted out, backends not created yet."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.delenv("MAMBAVISION_JAX_XLA_CPU_FLAGS", raising=False)
    monkeypatch.setattr(xla_cpu, "_flag_can_apply", lambda: True)
    monkeypatch.setitem(xla_cpu._state, "eigen_convolutions", False)


def test_adds_the_flag_to_the_users_flags(fresh):
    assert xla_cpu.apply() and xla_cpu.eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                       + xla_cpu.EIGEN_CONVOLUTIONS)


def test_the_users_own_choice_stands(fresh, monkeypatch):
    mine = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert not xla_cpu.apply()
    assert os.environ["XLA_FLAGS"] == mine


@pytest.mark.parametrize("why", ["opt-out", "too-late"])
def test_leaves_xla_alone(fresh, monkeypatch, why):
    if why == "opt-out":
        monkeypatch.setenv("MAMBAVISION_JAX_XLA_CPU_FLAGS", "0")
    else:  # JAX's backends exist already (or the jaxlib lacks the flag): it could not apply
        monkeypatch.setattr(xla_cpu, "_flag_can_apply", lambda: False)
    assert not xla_cpu.apply() and not xla_cpu.eigen_convolutions()
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"


def test_a_fresh_process_gets_the_flag_and_xla_accepts_it():
    # XLA aborts on a flag it does not know: run a convolution under it in a new interpreter.
    code = ("import os, mambavision_jax, jax, jax.numpy as jnp\n"
            "y = jax.lax.conv_general_dilated(jnp.ones((1, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), (1, 1),"
            " 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
            "print(os.environ.get('XLA_FLAGS', '-'), mambavision_jax.xla_cpu.eigen_convolutions(), float(y[0, 4, 4, 0]))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MAMBAVISION_JAX_XLA_CPU_FLAGS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    flags, on, centre = out.stdout.split()[-3:]
    import jaxlib
    expected = jaxlib.__version__.startswith("0.10.")
    assert (flags == xla_cpu.EIGEN_CONVOLUTIONS) == expected and on == str(expected)
    assert float(centre) == 27.0
