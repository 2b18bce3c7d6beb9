"""Export a MambaVision classifier as a serialized `jax.export` artifact and / or an ONNX file.

    python -m mambavision_jax.export --weights mambavision_tiny_1k.pth.tar --out export_T/
    python -m mambavision_jax.export --weights W --out DIR --dynamic-batch --onnx

Both artifacts take float32 NHWC images (batch, H, W, 3), already preprocessed and normalised
(see `mambavision_jax.preprocessing.Preprocessing`; the values are in DIR/export_config.json), and
return float32 logits (batch, num_classes). The weights are baked in as constants.

- `model.jax_export` (`jax.export.Exported.serialize()`): load with
  `exp = jax.export.deserialize(bytearray(open(p, "rb").read()))`, run `exp.call(images)`, also
  from another JAX program with no mambavision_jax installed. `--platforms cpu,cuda,tpu` lowers
  for several platforms at once.
- `model.onnx` through jax2onnx, checked with onnxruntime on the CPU against the JAX logits.
  The selective scan runs as `lax.scan` (scan_impl 'sequential'), which becomes an ONNX `Loop`;
  whatever scan the model was built with (Pallas kernels cannot be converted, and jax2onnx cannot
  convert lax.associative_scan's interior padding) is switched to it for the export.

With `--dynamic-batch` the batch dimension is symbolic ("batch") in both; otherwise it is `--batch`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mambavision_jax import cli
from mambavision_jax.paths import atomic_dir, atomic_write_bytes, check_output, path_of

__all__ = ["check_onnx", "export_jax", "export_onnx", "load_jax_export", "main"]

JAX_FILE, ONNX_FILE, CONFIG_FILE = "model.jax_export", "model.onnx", "export_config.json"
PORTABLE_SCAN_IMPLS = ("sequential", "associative")  # plain XLA: any platform, jax.export
ONNX_SCAN_IMPLS = ("sequential",)  # lax.scan -> ONNX Loop
EXTERNAL_DATA_BYTES = int(1.8 * 2**30)  # larger weights go to an external .onnx.data file


def _inference_copy(model, scan_impl: str | None):
    """An eval-mode copy sharing the arrays, with its scan implementation set (`set_runtime`)."""
    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, state)
    m.eval()
    if scan_impl is not None:
        m.set_runtime(scan_impl=scan_impl)
    return m


def _forward(model, scan_impl: str | None):
    m = _inference_copy(model, scan_impl)
    graphdef, state = nnx.split(m)

    def forward(images):
        return nnx.merge(graphdef, state)(images).astype(jnp.float32)

    return forward


def _input_spec(batch_size: int | None, image_size: int | Sequence[int], in_chans: int = 3):
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if batch_size is None:
        (b,) = jax.export.symbolic_shape("batch")
    else:
        b = int(batch_size)
    return jax.ShapeDtypeStruct((b, h, w, in_chans), jnp.float32)


# ----------------------------------------------------------------------------- jax.export
def export_jax(
    model,
    path: str | os.PathLike,
    *,
    batch_size: int | None = 1,
    image_size: int | Sequence[int] = 224,
    platforms: Sequence[str] | None = None,
    scan_impl: str | None = None,
) -> Path:
    """Write `jax.export.export(jax.jit(model))(images).serialize()` to `path`.

    batch_size: a fixed batch, or None for a symbolic batch dimension (any batch size at call
    time). platforms: lowering platforms (default: the current backend), e.g. ("cpu", "cuda",
    "tpu"). scan_impl: override the selective-scan implementation; by default the model's own
    ("auto" resolves for the current backend) for a single platform, "sequential" (plain XLA)
    when lowering for several.
    """
    platforms = tuple(platforms) if platforms else None
    if scan_impl is None and platforms and len(platforms) > 1:
        scan_impl = "sequential"
    fn = jax.jit(_forward(model, scan_impl))
    exported = jax.export.export(fn, platforms=platforms)(
        _input_spec(batch_size, image_size, getattr(model, "in_chans", 3))
    )
    return Path(atomic_write_bytes(path, exported.serialize()))


def load_jax_export(path: str | os.PathLike) -> jax.export.Exported:
    """The `jax.export.Exported` written by `export_jax`; call it with `.call(images)`."""
    return jax.export.deserialize(bytearray(path_of(path).read_bytes()))


# ----------------------------------------------------------------------------- ONNX
def _quiet_jax2onnx():
    # jax2onnx imports optional example plugins (equinox, dm_pix) and logs a traceback for each one
    # that is not installed; none of them is needed here.
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
    logging.getLogger("onnx_ir.serde").setLevel(logging.ERROR)


def _save_onnx(ir_model, path: Path) -> None:
    """One self-contained file when the weights fit protobuf's 2 GB limit, else the weights in
    `<name>.data` beside it (ONNX external data; keep the two files together)."""
    import onnx_ir

    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    weight_bytes = sum(getattr(v.const_value, "nbytes", 0) or 0 for v in ir_model.graph.initializers.values())
    if weight_bytes > EXTERNAL_DATA_BYTES:
        onnx_ir.save(ir_model, os.fspath(path), external_data=data.name)
    else:
        onnx_ir.save(ir_model, os.fspath(path))


def export_onnx(
    model,
    path: str | os.PathLike,
    *,
    batch_size: int | None = 1,
    image_size: int | Sequence[int] = 224,
    scan_impl: str = "sequential",
    opset: int = 23,
    nchw: bool = False,
    check: bool = True,
    rtol: float = 1e-4,
) -> Path:
    """Convert the model with jax2onnx and write an ONNX file (input "images", output "logits").

    batch_size: a fixed batch, or None for a dynamic batch dimension ("batch"). scan_impl:
    'sequential' (lax.scan, exported as an ONNX Loop over the tokens; the only one jax2onnx can
    convert: the associative scan's interior padding has no ONNX equivalent). nchw: the ONNX
    input is NCHW (transposed inside the graph), as PyTorch-style runtimes expect. check: run the
    file in onnxruntime (CPU) on random images and raise if the largest error relative to the
    largest JAX logit exceeds rtol. Weights over 2 GB go to a `.onnx.data` file beside it.
    """
    if scan_impl not in ONNX_SCAN_IMPLS:
        raise ValueError(
            f"ONNX export supports scan_impl {ONNX_SCAN_IMPLS}, got {scan_impl!r} (jax2onnx "
            f"cannot convert lax.associative_scan: its interior padding has no ONNX Pad "
            f"equivalent; Pallas kernels cannot be converted at all)"
        )
    _quiet_jax2onnx()
    from jax2onnx import to_onnx

    spec = _input_spec(batch_size, image_size, getattr(model, "in_chans", 3))
    dims = ("batch" if batch_size is None else int(batch_size),) + tuple(spec.shape[1:])
    ir_model = to_onnx(
        _forward(model, scan_impl),
        [dims],
        model_name=getattr(model, "name", None) or "mambavision",
        opset=opset,
        return_mode="ir",
        input_names=["images"],
        output_names=["logits"],
        inputs_as_nchw=[0] if nchw else None,
    )
    path = Path(path)
    _save_onnx(ir_model, path)
    if check:
        err = check_onnx(
            path, model, batch_size=batch_size or 2, image_size=image_size, nchw=nchw, scan_impl=scan_impl
        )
        if err > rtol:
            raise RuntimeError(
                f"{path}: onnxruntime logits differ from JAX by {err:.3g} (relative "
                f"to the largest logit), above {rtol:g}"
            )
    return path


def check_onnx(
    path: str | os.PathLike,
    model,
    *,
    batch_size: int = 2,
    image_size: int | Sequence[int] = 224,
    nchw: bool = False,
    seed: int = 0,
    scan_impl: str | None = "sequential",
    images: np.ndarray | None = None,
) -> float:
    """Max |onnxruntime - JAX| / max |JAX| of the logits on random (or given NHWC) images."""
    import onnxruntime as ort

    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    x = (
        images
        if images is not None
        else np.random.default_rng(seed).standard_normal(
            (batch_size, h, w, getattr(model, "in_chans", 3)), dtype=np.float32
        )
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no warnings about unused initializers
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    feed = x.transpose(0, 3, 1, 2) if nchw else x
    out = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(feed)})[0]
    with jax.default_matmul_precision("highest"):
        ref = np.asarray(jax.jit(_forward(model, scan_impl))(x))
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


# ----------------------------------------------------------------------------- CLI
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's lowering platforms
JAX2ONNX_HINT = "pip install --no-deps jax2onnx==0.17.1 (and the [export] extra: onnx, onnx-ir, onnxruntime)"


def _platforms(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated lowering platforms."""
    names = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in PLATFORMS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(PLATFORMS)}, got {text!r}"
        )
    return tuple(dict.fromkeys(names))


def _parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m mambavision_jax.export",
        description="Export a MambaVision checkpoint as a serialized jax.export artifact "
        f"({JAX_FILE}) and an ONNX file ({ONNX_FILE}, via jax2onnx, checked with "
        "onnxruntime). Inputs: float32 NHWC images, preprocessed and normalised "
        f"(the transform is written to {CONFIG_FILE}); outputs: logits. The output "
        "folder is written whole or not at all.",
        epilog="example: python -m mambavision_jax.export --weights mambavision_tiny_1k.pth.tar "
        "--out export_T --dynamic-batch",
    )
    cli.add_weights_arguments(p)
    p.add_argument(
        "--out", required=True, help="output folder (created; an existing non-empty one needs --overwrite)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder (only once the new export has succeeded)",
    )
    b = p.add_mutually_exclusive_group()
    b.add_argument("--batch", type=cli.positive_int, default=1, help="fixed batch size (default 1)")
    b.add_argument(
        "--dynamic-batch",
        "--dynamic_batch",
        dest="dynamic_batch",
        action="store_true",
        help="symbolic batch dimension: one artifact for any batch size",
    )
    p.add_argument(
        "--image_size",
        type=cli.positive_int,
        default=None,
        help="input height = width (default: the variant's, e.g. 224)",
    )
    p.add_argument("--onnx", action="store_true", help=f"write {ONNX_FILE} (default: both formats)")
    p.add_argument("--jax", action="store_true", help=f"write {JAX_FILE} (default: both formats)")
    p.add_argument(
        "--scan_impl",
        choices=PORTABLE_SCAN_IMPLS,
        default=None,
        help="selective scan in the jax.export artifact: sequential (lax.scan) or "
        "associative (parallel; faster on accelerators); default: the model's own "
        "for one platform, sequential for several. ONNX always uses sequential "
        "(an ONNX Loop)",
    )
    p.add_argument(
        "--platforms",
        type=_platforms,
        default=None,
        help=f"jax.export lowering platforms, comma-separated, of {','.join(PLATFORMS)} "
        "(default: the current backend)",
    )
    p.add_argument("--opset", type=cli.int_range(13, None), default=23, help="ONNX opset (default 23)")
    p.add_argument(
        "--nchw", action="store_true", help="ONNX input in NCHW layout (transposed inside the graph)"
    )
    p.add_argument(
        "--no_check",
        action="store_true",
        help="skip running the ONNX file in onnxruntime against the JAX logits",
    )
    return p


def _check_onnx_tools(check: bool) -> None:
    """Import what the ONNX export needs now, before any work, so a missing package is one line."""
    import importlib

    _quiet_jax2onnx()
    missing = []
    for module in ("jax2onnx", "onnx_ir") + (("onnxruntime",) if check else ()):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise cli.UserError(
            f"ONNX export needs {', '.join(missing)}, which cannot be imported: "
            f"{JAX2ONNX_HINT}; or pass --jax to write only {JAX_FILE}"
        )


class ExportCheckError(RuntimeError):
    """The exported file does not compute what the model computes (a bug of a converter)."""


def main(argv: Sequence[str] | None = None) -> int:
    from mambavision_jax.paths import atomic_write_text

    args = _parser().parse_args(argv)
    cli.check_weights_argument(args.weights)
    do_onnx, do_jax = (args.onnx, args.jax) if (args.onnx or args.jax) else (True, True)
    check_output(args.out, kind="dir", flag="--out", overwrite=args.overwrite, empty_dir_ok=True)
    out = path_of(args.out)
    if do_onnx:
        _check_onnx_tools(not args.no_check)

    _, (model, pre) = cli.load_weights(args, command="export")
    batch = None if args.dynamic_batch else args.batch
    config: dict[str, Any] = {
        "model": getattr(model, "name", None),
        "weights": os.fspath(args.weights),
        "num_classes": model.num_classes,
        "config": model.config.to_dict(),  # the whole architecture: MambaVisionConfig.from_dict
        "input": {
            "name": "images",
            "layout": "NHWC",
            "dtype": "float32",
            "shape": ["batch" if batch is None else batch, pre.image_size, pre.image_size, 3],
        },
        "output": {
            "name": "logits",
            "dtype": "float32",
            "shape": ["batch" if batch is None else batch, model.num_classes],
        },
        "preprocessing": dataclasses.asdict(pre),
        "files": {},
    }
    if hasattr(model, "checkpoint_info"):
        config["checkpoint"] = model.checkpoint_info
    # Everything is written into a temporary folder and put in place at the end (`atomic_dir`): a
    # failed or interrupted export leaves --out as it was; on an object store the folder is built
    # locally and uploaded once complete, export_config.json last.
    with atomic_dir(args.out, replace=True, last=CONFIG_FILE) as tmp:
        if do_jax:
            t = time.perf_counter()
            path = export_jax(
                model,
                tmp / JAX_FILE,
                batch_size=batch,
                image_size=pre.image_size,
                platforms=args.platforms,
                scan_impl=args.scan_impl,
            )
            exp = load_jax_export(path)
            config["files"]["jax_export"] = {
                "file": JAX_FILE,
                "platforms": list(exp.platforms),
                "bytes": path.stat().st_size,
            }
            print(
                f"{JAX_FILE}: {path.stat().st_size / 2**20:.1f} MiB, platforms "
                f"{','.join(exp.platforms)}, {time.perf_counter() - t:.1f} s"
            )
        if do_onnx:
            t = time.perf_counter()
            scan_impl = "sequential"
            path = export_onnx(
                model,
                tmp / ONNX_FILE,
                batch_size=batch,
                image_size=pre.image_size,
                scan_impl=scan_impl,
                opset=args.opset,
                nchw=args.nchw,
                check=False,
            )
            info: dict[str, Any] = {
                "file": ONNX_FILE,
                "opset": args.opset,
                "scan_impl": scan_impl,
                "layout": "NCHW" if args.nchw else "NHWC",
            }
            msg = f"{ONNX_FILE}: {path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - t:.1f} s"
            if not args.no_check:
                err = check_onnx(
                    path,
                    model,
                    batch_size=batch or 2,
                    image_size=pre.image_size,
                    nchw=args.nchw,
                    scan_impl=scan_impl,
                )
                info["onnxruntime_max_rel_err"] = err
                msg += f"; onnxruntime vs JAX: max relative error {err:.2e}"
                if err > 1e-4:  # raised, so that atomic_dir writes nothing
                    raise ExportCheckError(
                        f"the ONNX logits differ from JAX by {err:.3g} > 1e-4; nothing written"
                    )
            config["files"]["onnx"] = info
            if args.nchw:
                config["input"]["layout"] = "NHWC (jax_export), NCHW (onnx)"
            print(msg)
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    print(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
