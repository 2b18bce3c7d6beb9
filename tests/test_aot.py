"""Deviceless compilation (`mambavision_jax.aot`): train.py's train step and the eval step of
MambaVision-T built for a TPU v5e 2x2 slice and 8 H100s by their own XLA compilers (libtpu and the
CUDA plugin of the `aot` extra), in bfloat16 with the Pallas scans the targets pick, on this
CPU-only machine. What the compilers report is checked against the model: the programs fit, the
FLOPs are those of a forward, its backward and the mesa teacher, the gradients are summed over the
devices, and the eval step gathers no activations (each device scans its own sequences)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest
from cli_run import assert_user_error, run_cli
from flax import nnx

from mambavision_jax import zoo
from mambavision_jax.aot import planner
from mambavision_jax.aot import targets as tg
from mambavision_jax.models.registry import create_model

T = "mamba_vision_T"
# (target, global batch) as README shows them: 64 per v5e chip, 128 per H100 (the official per-GPU batch).
TARGETS = {"tpu:v5e:2x2": 256, "gpu:h100x8": 1024}
# The fast suite's train steps: the same program at 4 / 8 images per chip, which XLA's TPU compiler
# builds in about 60% of the time (272 s against 455 s on this host, loaded).
SMALL_BATCH = {"tpu:v5e:2x2": 16, "gpu:h100x8": 64}


@pytest.fixture(scope="module")
def reports():
    """Each (target, program, batch) compiled once for the module."""
    cache = {}

    def get(target: str, program: str, batch: int | None = None):
        batch = batch or TARGETS[target]
        if (target, program, batch) not in cache:
            req = planner.Request(target=target, model=T, batch=batch, dtype="bfloat16", program=program)
            cache[target, program, batch] = planner.plan(req)
        return cache[target, program, batch]

    return get


def _forward(image_size=224):
    """(XLA flops, jaxpr conv + matmul FLOPs) of T's bf16 forward of one image, on this CPU."""
    model = nnx.eval_shape(lambda: create_model(T, dtype=jnp.bfloat16, scan_impl="associative"))
    model.eval()
    forward, args = zoo._forward_and_args(model, 1, image_size)
    xla = zoo.xla_cost(model, compile=False)["flops"]
    return xla, 2.0 * zoo.jaxpr_macs_of(jax.make_jaxpr(forward)(*args).jaxpr)


# The train steps compile for minutes (XLA's TPU compiler: 4.5 minutes at 4 images per chip, 7.5 at
# 64 on this host): the fast suite compiles them at the small batch, the slow one at README's.
@pytest.mark.parametrize(
    "target, batch",
    [pytest.param(t, SMALL_BATCH[t], id=f"{t}-{SMALL_BATCH[t]}") for t in TARGETS]
    + [pytest.param(t, b, id=f"{t}-{b}", marks=pytest.mark.slow) for t, b in TARGETS.items()],
)
def test_train_step_compiles_and_fits(reports, target, batch):
    r = reports(target, "train", batch)
    assert r["batch"] == batch
    # the whole train state lives on each device (fsdp 1): the parameters, their EMA and LAMB's
    # two moments in float32, at least
    n_params = zoo.count_params(nnx.eval_shape(lambda: create_model(T)))
    assert r["memory_per_device"]["argument"] >= 4 * 4 * n_params, r["memory_per_device"]
    t = tg.parse_target(target)
    assert r["devices"] == t.num_devices and r["platform"] == t.platform
    assert r["scan_impl"].startswith("pallas"), r["scan_impl"]  # "auto" resolved for the target
    assert r["scan_impl"] != "pallas_tpu" or t.platform == "tpu"
    assert r["attn_impl"] == "auto" and r["conv_impl"] == "xla"  # resolved for the target while tracing
    if t.platform == "tpu":
        assert r["attention_calls"]["cudnn"] == 0
    assert r["mesa"] and r["ema"]  # the whole recipe of configs/tiny.py
    m = r["memory_per_device"]
    assert r["fits"], m
    # The compiler's peak of live bytes (the verdict) is at most every buffer added up.
    assert 0 < m["peak"] <= m["total"] < t.chip.hbm_bytes, m
    # FLOPs: forward + backward (2x: input and weight gradients) + the mesa teacher's forward.
    xla_fwd, jaxpr_fwd = _forward()
    fwd = xla_fwd if r["flops_source"] == "xla_cost_analysis" else jaxpr_fwd
    expected = 4 * fwd * r["batch"]
    assert abs(r["flops_per_step"] / expected - 1) < 0.10, (r["flops_per_step"], expected)
    # The gradients of the replicated parameters are summed over the devices every step (in
    # bfloat16 at least): all-reduced, or reduce-scattered (then all-gathered).
    c = r["collectives"]
    summed = c.get("all-reduce", {}).get("bytes", 0) + r["devices"] * c.get("reduce-scatter", {}).get(
        "bytes", 0
    )
    assert summed >= 2 * n_params, c
    rf = r["roofline"]
    assert rf["images_per_s_at_peak"] == pytest.approx(
        r["batch"] * t.chip.peak_bf16_flops / r["flops_per_device"], rel=1e-6
    )


@pytest.mark.parametrize("target", list(TARGETS))
def test_eval_step_compiles_fits_and_keeps_sequences_local(reports, target):
    r = reports(target, "eval")
    assert r["fits"] and r["scan_impl"].startswith("pallas")
    # Attention "auto" on the target: cuDNN's fused kernel on the H100 in bf16 inference, XLA on TPU.
    assert (r["attention_calls"]["cudnn"] > 0) == (r["platform"] == "gpu"), r["attention_calls"]
    # No activation crosses devices: the Pallas scans run per device (ScanSharding), the batch
    # stays split; only the metric sums are reduced (a few scalars).
    c = r["collectives"]
    assert c.get("all-gather", {}).get("bytes", 0) == 0, c
    assert sum(v["bytes"] for v in c.values()) < 2**16, c


def test_cli_bad_target_is_one_line():
    result = run_cli("mambavision_jax.aot", "--target", "tpu:v9z:2x2", timeout=600)
    line = assert_user_error(result, "--target", "tpu:v9z:2x2")
    assert "v5e" in line  # names the known chips
    result = run_cli("mambavision_jax.aot", "--target", "gpu:h100x8", "--batch", "100", timeout=600)
    assert_user_error(result, "--batch 100", "multiple of 8")


def test_cli_json(tmp_path):
    """--json prints the report as one JSON object (the eval step of a small model from the tests'
    config: the cheapest compile)."""
    result = run_cli(
        "mambavision_jax.aot",
        "--target",
        "gpu:a100x8",
        "--config",
        "tests/small_train_config.py",
        "--batch",
        "16",
        "--program",
        "eval",
        "--json",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(result.stdout)
    assert r["target"] == "gpu:a100x8" and r["devices"] == 8 and r["image_size"] == 32
    assert r["program"] == "eval" and r["model"] == "mamba_vision_T"
    assert r["scan_impl"].startswith("pallas") and r["fits"]
    assert r["flops_source"] == "jaxpr_conv_matmul" and r["flops_per_step"] > 0


def test_collectives_parser():
    hlo = """
  %all-reduce.1 = f32[1024,80]{1,0} all-reduce(f32[1024,80]{1,0} %p), replica_groups={}
  %ags = (bf16[8,16]{1,0}, bf16[64,16]{1,0}) all-gather-start(bf16[8,16]{1,0} %x), dimensions={0}
  %agd = bf16[64,16]{1,0} all-gather-done((bf16[8,16]{1,0}, bf16[64,16]{1,0}) %ags)
  %rs = (f32[10]{0}, f32[6]{0}) reduce-scatter(f32[80]{0} %a, f32[48]{0} %b), dimensions={0}
  %fusion = f32[4]{0} fusion(f32[4]{0} %all-reduce.1), kind=kLoop
"""
    c = planner.collectives(hlo)
    assert c == {
        "all-reduce": {"count": 1, "bytes": 1024 * 80 * 4},
        "all-gather": {"count": 1, "bytes": 64 * 16 * 2},
        "reduce-scatter": {"count": 1, "bytes": 16 * 4},
    }


def _hbm_hog(mesh, rows_per_device, copies=80):
    """A jitted program whose temporaries grow with its input: `copies` float32 copies of a
    (rows_per_device, 8192) shard (20 GiB per device at 8192 rows; 16 GiB of HBM on a v5e)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n = mesh.devices.size
    x = jax.ShapeDtypeStruct(
        (n * rows_per_device, 8192), jnp.float32, sharding=NamedSharding(mesh, P(mesh.axis_names))
    )

    def f(x):
        ys = [jnp.sin(jnp.exp(x) * i) for i in range(copies)]
        tiny_matmul = (x[:8, :8] @ x[:8, :8]).sum()  # FLOPs for the roofline (the jaxpr count)
        return sum(y.sum() for y in ys) + jnp.stack(ys).std() + tiny_matmul

    return jax.jit(f), (x,)


def test_a_program_too_big_for_tpu_hbm_is_reported_short(monkeypatch):
    """libtpu refuses to compile a program over the chip's HBM (the CUDA compiler builds it and says
    by how much): the planner reads the program's need from that refusal and reports it as not
    fitting, short by (need - HBM), so the table gets a row and --fit goes on. The real compiler on a
    stand-in program whose buffers are known: a 256 MiB argument shard and 80 x 256 MiB stacked
    temporaries (20.25 GiB per device)."""
    from mambavision_jax.aot import table

    config = planner.recipe_config(T, "tests/small_train_config.py")

    copies = [80]

    def fake_build(req, target, mesh):  # the batch sets the rows
        fn, args = _hbm_hog(mesh, req.batch // mesh.devices.size, copies[0])
        return fn, args, config, {"scan_impl": "pallas_tpu", "attn_impl": "auto", "conv_impl": "xla"}

    monkeypatch.setattr(planner, "build", fake_build)
    r = planner.plan(planner.Request(target="tpu:v5e:2x2", model=T, batch=4 * 8192))
    mem = r["memory_per_device"]
    assert r["memory_source"] == "hbm_oom_error" and not r["fits"], r
    assert (
        mem["argument"] == 2**28 and mem["temp"] == 80 * 2**28 and mem["total"] == mem["peak"] == 81 * 2**28
    )
    assert r["headroom_bytes"] == 16 * 2**30 - mem["peak"] and r["collectives"] is None
    assert "| no, short 4.25 GiB (refused) |" in table.row(r) and "| - | - | - |" in table.row(r)
    assert "short by 4.25 GiB (the compiler refused" in planner.format_table(r)
    # A smaller one fits (the compiler builds it in seconds with 2 copies, minutes with 80): the
    # compiler's own memory analysis, whose argument bytes are the shards counted in a refusal.
    copies[0] = 2
    r = planner.plan(planner.Request(target="tpu:v5e:2x2", model=T, batch=4 * 2048))
    assert r["memory_source"] == "memory_analysis" and r["fits"], r
    assert 0 < r["memory_per_device"]["peak"] <= r["memory_per_device"]["total"], r
    fn, args = _hbm_hog(tg.mesh(tg.parse_target("tpu:v5e:2x2")), 2048, copies=2)
    assert r["memory_per_device"]["argument"] == planner.argument_bytes_per_device(args) == 2**26
    # The train state holds typed PRNG keys (dropout, mixup): 8 bytes each, their key data.
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 3))
    assert planner.argument_bytes_per_device({"x": args, "rngs": keys}) == 2**26 + 3 * 8


def test_other_compile_errors_are_not_read_as_out_of_memory():
    assert planner.hbm_oom_need_bytes(RuntimeError("INTERNAL: Mosaic failed to compile")) is None
    oom = "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries"
    assert planner.hbm_oom_need_bytes(
        RuntimeError(oom + " (17.07G) exceeds available HBM (15.75G).")
    ) == round(17.07 * 2**30)
    assert (
        planner.hbm_oom_need_bytes(RuntimeError(oom + " (512.00M) exceeds available HBM (15.75G).")) == 2**29
    )


@pytest.mark.slow
def test_all_variants_compile_for_v5e_4x4():
    """The v5e column of benchmarks/RESULTS.md: every variant's bf16 train step compiles for a
    4x4 slice, or is refused by libtpu for want of HBM (the two 512-pixel variants at 32 per chip),
    which the row says with the shortfall."""
    from mambavision_jax.aot import table

    base = planner.Request(target="tpu:v5e:4x4", dtype="bfloat16", program="train")
    text = table.variants_table(base, 32)
    rows = [ln for ln in text.splitlines() if ln.startswith("| mamba_vision")]
    assert len(rows) == 11 and not any("failed" in ln for ln in rows), text
    assert "| mamba_vision_T | 224 | 512 |" in text and "| yes |" in rows[0], text
    short = [ln.split(" | ")[0][2:] for ln in rows if "(refused) |" in ln]
    assert short == ["mamba_vision_L2_512_21k", "mamba_vision_L3_512_21k"], text


@pytest.mark.parametrize(("start", "limit"), [(64, 300), (64, 64), (512, 37), (8, 1)])
def test_fit_batch_search(monkeypatch, start, limit):
    """--fit batch: the largest per-device batch that fits, by doubling / halving then bisection
    (a stand-in compiler: a program fits while its per-device batch is <= limit)."""
    from mambavision_jax.aot import fit

    calls = []

    def fake_plan(req, compile_only_devices=None):
        calls.append(req.batch)
        return {
            "fits": req.batch // 4 <= limit,
            "batch": req.batch,
            "memory_per_device": {"peak": req.batch},
        }

    monkeypatch.setattr(planner, "plan", fake_plan)
    monkeypatch.setattr(tg, "compile_only_devices", lambda target: [object()] * 4)
    result = fit.fit(planner.Request(target="tpu:v5e:2x2", batch=4 * start), "batch", log=lambda s: None)
    assert result["value"] == limit and result["report"]["batch"] == 4 * limit
    assert result["compiles"] == len(set(calls)) <= 2 * (limit.bit_length() + start.bit_length()) + 2


def test_fit_fsdp_and_remat_search(monkeypatch):
    from mambavision_jax.aot import fit

    def fake_plan(req, compile_only_devices=None):
        return {"fits": req.fsdp >= 4 or req.remat, "memory_per_device": {"peak": 1}}

    monkeypatch.setattr(planner, "plan", fake_plan)
    monkeypatch.setattr(tg, "compile_only_devices", lambda target: [object()] * 16)
    r = fit.fit(planner.Request(target="tpu:v5p:4x4x1"), "fsdp", log=lambda s: None)
    assert r["value"] == 4 and r["compiles"] <= 4  # of 1, 2, 4, 8, 16
    r = fit.fit(planner.Request(target="tpu:v5p:4x4x1"), "remat", log=lambda s: None)
    assert r["value"] is True and r["compiles"] == 2
