"""Training UperNet segmenters on the shared training loop (`config.task = "segmentation"`): the
official mmseg recipe of semantic_segmentation/configs/mamba_vision/*.py in NVlabs/MambaVision.

- Model: `create_segmenter(config.model.name, **config.model.overrides)` (an official segmenter's
  short or full name, or any override of its SegmentationConfig / backbone / runtime), the class
  count from the data set. `config.init_from`: classification weights for the backbone, as the
  official configs' `pretrained=` ImageNet checkpoint (the heads and outnorms stay initialised).
- Loss: mmseg's CrossEntropyLoss (ignore_index 255, avg_non_ignore=False: the sum over labelled
  pixels divided by ALL pixels of the batch) on the decode logits resized (bilinear,
  align_corners=False) to the label size, + `config.seg.aux_weight` (0.4) x the same on FCNHead's.
- Optimizer: AdamW (torch's, via `train.optim.adamw`) with mmengine's paramwise custom_keys
  {'norm': decay_mult 0}: no decay for a parameter whose module path contains "norm" (the
  backbone's block norms and outnorms; not the stem's or the heads' BatchNorms, whose mmseg names
  are `conv_down.1` and `*.bn`); no gradient clipping (`optimizer.clip_grad` ignored).
- Schedule (`seg_schedule`): mmengine's LinearLR(start_factor, begin 0, end warmup) then
  PolyLR(power, eta_min, begin warmup, end total_steps), per iteration.
- BatchNorm: the heads' ConvModules are SyncBN (global statistics under jit); the backbone's BN
  follows `config.bn_stats` ("per_device": one group per device, the official per-GPU
  nn.BatchNorm2d; its batch per GPU was 1 for tiny/base/L3 and 2 for small).
- Evaluation: mmseg's whole mode (`config.seg.test_mode="slide"`: its sliding windows) on
  `config.data.eval_split`: each image resized to fit SegmentationConfig.test_scale, logits at
  that size resized back to the label's, argmax,
  `segmentation.metrics` (mIoU, mAcc, aAcc); best/ keeps the highest mIoU. Each distinct image
  size is one compile (cached); the demo's images share one size.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mambavision_jax.data.device_ops import DevicePrefetch
from mambavision_jax.data.seg_datasets import SegDatasetInfo, seg_dataset_info
from mambavision_jax.data.seg_pipeline import make_seg_eval_iterator, make_seg_train_iterator
from mambavision_jax.data.seg_transforms import SegAugConfig
from mambavision_jax.errors import UserError
from mambavision_jax.models.config import RuntimeConfig
from mambavision_jax.ops import ScanSharding
from mambavision_jax.segmentation.inference import MODES, slide_logits
from mambavision_jax.segmentation.layers import resize_bilinear
from mambavision_jax.segmentation.metrics import IGNORE_INDEX, SegMetrics, intersect_and_union_jax
from mambavision_jax.segmentation.model import create_segmenter
from mambavision_jax.train import sharding as shd
from mambavision_jax.train.multihost import CompileThenAlign
from mambavision_jax.train.optim import adamw, param_name
from mambavision_jax.train.state import init_train_state, split_model, with_weights
from mambavision_jax.train.task import Task, TrainProgram, jit_train_step

__all__ = [
    "SEGMENTATION",
    "seg_schedule",
    "seg_cross_entropy",
    "no_decay_mask",
    "make_segmenter",
    "make_seg_train_step",
    "SegEvaluator",
]


# ------------------------------------------------------------------ model
def _overrides(config) -> dict:
    o = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config.model.overrides).items()}
    if config.model.drop_path_rate >= 0:
        o["drop_path_rate"] = config.model.drop_path_rate
    return o


def _runtime(config, bn_groups: int, mesh=None) -> RuntimeConfig:
    return RuntimeConfig(
        dtype=config.model.dtype,
        scan_impl=config.model.scan_impl,
        remat=config.model.remat,
        bn_groups=bn_groups,
        scan_sharding=None if mesh is None else ScanSharding(mesh, shd.BATCH_AXES),
    )


def make_segmenter(config, num_classes: int, bn_groups: int, mesh=None, rngs=None):
    """The UperNet `config` describes (random weights, eval mode)."""
    return create_segmenter(
        config.model.name,
        num_classes=num_classes,
        runtime=_runtime(config, bn_groups, mesh),
        rngs=rngs,
        **_overrides(config),
    )


def _graphdefs(config, num_classes, bn_groups, mesh):
    abstract = nnx.eval_shape(lambda: make_segmenter(config, num_classes, bn_groups, mesh))
    abstract.train()
    train_gd = split_model(abstract)[0]
    abstract.eval()
    return train_gd, split_model(abstract)[0]


def model_config(config, num_classes: int, bn_groups: int) -> dict:
    abstract = nnx.eval_shape(lambda: make_segmenter(config, num_classes, bn_groups))
    return abstract.config.to_dict()


# ------------------------------------------------------------------ optimizer, schedule, loss
def seg_schedule(base_lr: float, total_steps: int, warmup_steps: int, warmup_factor: float, power, min_lr):
    """lr of update t (0-based): mmengine's LinearLR(start_factor=warmup_factor, begin=0,
    end=warmup_steps) chained with PolyLR(power, eta_min=min_lr, begin=warmup_steps,
    end=total_steps), by iteration. In closed form (both schedulers count end - begin - 1 steps):
    base * (f + (1 - f) min(t, W - 1) / (W - 1)) for t < W, then
    (base - eta_min) (1 - min(t - W, T) / T) ** power + eta_min with T = total - W - 1."""
    w = int(warmup_steps)
    t_poly = max(int(total_steps) - w - 1, 1)

    def lr(count):
        t = jnp.asarray(count, jnp.float32)
        warm = base_lr * (warmup_factor + (1.0 - warmup_factor) * jnp.minimum(t, w - 1) / max(w - 1, 1))
        frac = (t_poly - jnp.clip(t - w, 0.0, t_poly)) / t_poly  # exactly 0 at the end
        poly = (base_lr - min_lr) * frac**power + min_lr
        return jnp.where(t < w, warm, poly) if w > 0 else poly

    return lr


def no_decay_mask(params, keys=("norm",)):
    """True where mmengine's paramwise custom_keys leave the weight decay on: False for a
    parameter whose dotted module path contains any of `keys` (the module names mirror mmseg's)."""

    def one(path, _):
        module = param_name(path).rsplit(".", 1)[0]
        return not any(k in module for k in keys)

    return jax.tree_util.tree_map_with_path(one, params)


def _optimizer(config, total_steps: int):
    oc, s = config.optimizer, config.seg
    if oc.name.lower() != "adamw":
        raise UserError(f"config.optimizer.name: the segmentation recipe uses adamw, got {oc.name!r}")
    schedule = seg_schedule(
        float(oc.lr), total_steps, s.warmup_steps, s.warmup_factor, float(s.poly_power), float(s.min_lr)
    )
    b1, b2 = (float(b) for b in oc.betas)
    keys = tuple(s.no_decay_keys)
    tx = adamw(
        schedule,
        b1=b1,
        b2=b2,
        eps=float(oc.eps),
        weight_decay=float(oc.weight_decay),
        mask=lambda params: no_decay_mask(params, keys),
    )
    return tx, schedule


def seg_cross_entropy(logits, labels, ignore_index: int = IGNORE_INDEX):
    """mmseg CrossEntropyLoss (avg_non_ignore=False): per-pixel cross-entropy, 0 at ignored pixels,
    averaged over every pixel. logits (B, H, W, C), labels (B, H, W) int."""
    labels = labels.astype(jnp.int32)
    valid = labels != ignore_index
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(valid, labels, 0)
    )
    return jnp.sum(jnp.where(valid, ce, 0.0)) / labels.size


def normalize_and_pad(images, valid, mean, std):
    """uint8 (B, S, S, 3) -> (x - mean) / std in float32 (mmseg's 0-255 mean / std), 0 outside
    each image's unpadded (h, w) (SegDataPreProcessor pads the normalised image with 0)."""
    x = (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    rows = jnp.arange(x.shape[1])[None, :, None] < valid[:, 0, None, None]
    cols = jnp.arange(x.shape[2])[None, None, :] < valid[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, 0.0)


def make_seg_train_step(config, train_gd, tx, schedule, mean, std):
    """batch: {"image" uint8 (B, S, S, 3), "label" uint8 (B, S, S), "valid" int32 (B, 2)}."""
    aux_weight = float(config.seg.aux_weight)

    def train_step(state, batch):
        images = normalize_and_pad(batch["image"], batch["valid"], mean, std)
        labels = batch["label"]

        def loss_fn(params):
            model = nnx.merge(train_gd, params, state.batch_stats, state.rngs, copy=True)
            out = model.forward_heads(images)
            size = labels.shape[1:3]
            decode = resize_bilinear(out.decode, size)
            decode_ce = seg_cross_entropy(decode, labels)
            aux_ce = jnp.zeros((), jnp.float32)
            if out.aux is not None:
                aux_ce = seg_cross_entropy(resize_bilinear(out.aux, size), labels)
            valid = labels != IGNORE_INDEX
            hits = jnp.sum((jnp.argmax(decode, -1) == labels) & valid)
            acc = 100.0 * hits / jnp.maximum(jnp.sum(valid), 1)
            _, _, stats, rngs = split_model(model)
            return decode_ce + aux_weight * aux_ce, (decode_ce, aux_ce, acc, stats, rngs)

        (loss, (decode_ce, aux_ce, acc, stats, rngs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(
            step=state.step + 1, params=params, batch_stats=stats, rngs=rngs, opt_state=opt_state
        )
        metrics = {
            "loss": loss,
            "decode_ce": decode_ce,
            "aux_ce": aux_ce,
            "acc_seg": acc,
            "lr": schedule(state.step),
            "grad_norm": optax.global_norm(grads),
        }
        return new, metrics

    return train_step


def _bn_groups(config, mesh) -> int:
    return mesh.size if config.bn_stats == "per_device" else 1


def build_program(config, mesh, num_classes: int, steps_per_epoch: int) -> TrainProgram:
    if config.ema.enabled or config.mesa.weight > 0:
        raise UserError(
            "config.ema.enabled / config.mesa.weight: the segmentation recipe keeps no EMA; "
            "set ema.enabled=False and mesa.weight=0"
        )
    if config.total_steps <= 0:
        raise UserError("config.total_steps: the segmentation schedule is by iteration; set total_steps > 0")
    del steps_per_epoch
    bn_groups = _bn_groups(config, mesh)
    tx, schedule = _optimizer(config, config.total_steps)
    train_gd, eval_gd = _graphdefs(config, num_classes, bn_groups, mesh)
    make = functools.partial(make_segmenter, config, num_classes, bn_groups)
    state, shardings = init_train_state(lambda rngs: make(rngs=rngs), config, tx, mesh)
    seg = nnx.eval_shape(lambda: make()).config
    step = make_seg_train_step(config, train_gd, tx, schedule, seg.mean, seg.std)
    return TrainProgram(jit_train_step(step, shardings, mesh), state, shardings, eval_gd)


# ------------------------------------------------------------------ data
def dataset_info(config) -> SegDatasetInfo:
    if config.data.name == "mv_seg_digits":
        from mambavision_jax.data.seg_demo import build_seg_digits

        build_seg_digits(config.data.dir)
    return seg_dataset_info(config.data.name, config.data.dir)


def augment_config(config) -> SegAugConfig:
    s = config.seg
    return SegAugConfig(
        scale=tuple(s.scale),
        ratio_range=tuple(s.ratio_range),
        crop_size=tuple(s.crop_size),
        cat_max_ratio=float(s.cat_max_ratio),
        flip_prob=float(s.flip_prob),
        photometric=bool(s.photometric),
    )


def train_iterator(config, mesh, num_examples: int) -> DevicePrefetch:
    del num_examples
    info = seg_dataset_info(config.data.name, config.data.dir)
    it = make_seg_train_iterator(
        config.data.name,
        global_batch_size=config.batch_size,
        augment=augment_config(config),
        reduce_zero_label=info.reduce_zero_label,
        data_dir=config.data.dir,
        split=config.data.train_split,
        seed=config.seed,
        num_workers=config.data.num_workers,
        num_threads=config.data.num_threads,
    )
    return DevicePrefetch(it, lambda local: shd.global_batch(local, mesh), config.data.device_prefetch)


# ------------------------------------------------------------------ evaluation
def make_seg_forward(eval_gd, mode: str = "whole"):
    """(params, batch_stats, rngs, images normalised (B, h, w, 3)) -> logits (B, h, w, C) float32;
    mode "slide": mmseg's sliding-window inference (`segmentation.inference.slide_logits`: the
    config's crop_size / stride, crops averaged where they overlap), traced with the image's shape."""
    if mode not in MODES:
        raise UserError(f"test mode must be one of {MODES}, got {mode!r}")

    def forward(params, batch_stats, rngs, images):
        model = nnx.merge(eval_gd, params, batch_stats, rngs)
        logits = model(images) if mode == "whole" else slide_logits(model, images)
        return logits.astype(jnp.float32)

    return forward


def logits_to_areas(logits, label, num_classes: int):
    """Whole mode's last steps: logits (1, h', w', C) resized bilinearly to the label's (h, w),
    argmax, and the per-class areas against `label` (h, w) (mmseg's postprocess + IoUMetric)."""
    pred = jnp.argmax(resize_bilinear(logits, label.shape), axis=-1)[0]
    return intersect_and_union_jax(pred, label, num_classes)


class SegEvaluator:
    """mIoU / mAcc / aAcc (see the module doc; `mode` "whole" or "slide") of the weights of an eval graphdef:
    `run(state)` on a segmentation data set's split (the training run's evaluator), `areas(params,
    batch_stats, rngs, examples)` on any examples of `data.seg_pipeline.seg_eval_examples`
    (evaluate_seg). Images go one at a time, replicated over `mesh`."""

    def __init__(
        self,
        eval_gd,
        mesh,
        *,
        num_classes: int,
        seg_config,
        info: SegDatasetInfo | None = None,
        split="",
        data_dir=None,
        max_images=0,
        mode="whole",
    ):
        self.mesh, self.num_classes, self.seg_config = mesh, num_classes, seg_config
        self.info, self.split, self.data_dir, self.max_images = info, split, data_dir, max_images
        self._replicated = shd.replicated(mesh)
        self._forward = jax.jit(make_seg_forward(eval_gd, mode), out_shardings=self._replicated)
        self._post = jax.jit(
            functools.partial(logits_to_areas, num_classes=num_classes), out_shardings=self._replicated
        )
        self._aligned = {}
        mean = np.asarray(seg_config.mean, np.float32)
        std = np.asarray(seg_config.std, np.float32)
        self._normalize = lambda img: ((img.astype(np.float32) - mean) / std)[None]

    def _call(self, fn, name, *args):
        if jax.process_count() == 1:
            return fn(*args)
        # Each new shape compiles; processes align after compiling, before the collectives run.
        key = (name, *(getattr(a, "shape", None) for a in args[-2:]))
        if key not in self._aligned:
            self._aligned[key] = CompileThenAlign(fn, f"seg_{name}_{len(self._aligned)}")
        return self._aligned[key](*args)

    def _put(self, x):
        return jax.make_array_from_process_local_data(self._replicated, np.asarray(x))

    def areas(self, params, batch_stats, rngs, examples, progress=None) -> SegMetrics:
        """Summed per-class areas of `examples` ({"image": resized uint8, "label"}); progress(ex,
        areas) is called after each image."""
        sums = SegMetrics(self.num_classes)
        for ex in examples:
            image = self._put(self._normalize(ex["image"]))
            logits = self._call(self._forward, "forward", params, batch_stats, rngs, image)
            areas = jax.device_get(self._call(self._post, "post", logits, self._put(ex["label"])))
            sums.add(areas)
            if progress is not None:
                progress(ex, areas)
        return sums

    def run(self, state) -> dict[str, float]:
        examples = make_seg_eval_iterator(
            self.info.name,
            test_scale=self.seg_config.test_scale,
            reduce_zero_label=self.info.reduce_zero_label,
            data_dir=self.data_dir,
            split=self.split,
            max_examples=self.max_images,
        )
        sums = self.areas(state.params, state.batch_stats, state.rngs, examples)
        if not sums.areas["label"].sum():
            raise UserError(
                f"config.data.eval_split={self.split!r}: {self.info.name} gave no labelled eval pixels"
            )
        return sums.summary()


def evaluator(config, eval_gd, mesh, eval_batch: int) -> SegEvaluator:
    del eval_batch  # one image at a time, at its own size
    info = seg_dataset_info(config.data.name, config.data.dir)
    split = config.data.eval_split or ("validation" if "validation" in info.splits else "test")
    seg = nnx.eval_shape(lambda: make_segmenter(config, info.num_classes, 1)).config
    return SegEvaluator(
        eval_gd,
        mesh,
        num_classes=info.num_classes,
        info=info,
        seg_config=seg,
        split=split,
        data_dir=config.data.dir,
        max_images=config.seg.eval_max_images,
        mode=config.seg.test_mode,
    )


# ------------------------------------------------------------------ fine-tuning start
def init_from(config, state, shardings, num_classes, bn_groups, writer):
    """The backbone's weights from the classification checkpoint `config.init_from` (a training
    run of this package, or any weights `weights.resolve` takes, a hub id included), as the
    official configs' `pretrained=` ImageNet weights; the heads and outnorms keep their
    initialisation. Every backbone weight of the checkpoint must fit (names and shapes)."""
    from mambavision_jax import weights

    del num_classes, bn_groups
    source = weights.resolve(
        config.init_from,
        ema=True if config.init_from_ema else None,
        task="classification",
        needed_by="init_from (the backbone's classification weights)",
    )
    cls_model = weights.load(source).model
    _, cls_params, cls_stats, _ = split_model(cls_model)
    params = _graft(state.params, cls_params, "params", config.init_from)
    stats = _graft(state.batch_stats, cls_stats, "batch statistics", config.init_from)
    writer.log(f"initialised the backbone from {config.init_from}")
    return with_weights(state, params, stats, shardings)


def _graft(seg_state, cls_state, what, source):
    """seg_state with `backbone.X` replaced by the classification model's `X` for every X the
    backbone has; every classification leaf but the classifier's norm / head must be used."""
    flat = dict(nnx.to_flat_state(seg_state))
    cls_flat = dict(nnx.to_flat_state(cls_state))
    used = set()
    for path, var in cls_flat.items():
        target = ("backbone", *path)
        if target in flat:
            if tuple(flat[target].value.shape) != tuple(var.value.shape):
                raise UserError(
                    f"init_from {source}: {'.'.join(map(str, path))} has shape {var.value.shape}, the "
                    f"segmenter's backbone {flat[target].value.shape}"
                )
            flat[target] = flat[target].replace(value=jnp.asarray(var.value))
            used.add(path)
        elif path[0] not in ("norm", "head"):
            raise UserError(
                f"init_from {source}: {what} {'.'.join(map(str, path))} has no place in the backbone"
            )
    if not used:
        raise UserError(f"init_from {source}: no {what} fit the segmenter's backbone")
    return nnx.from_flat_state(flat)


SEGMENTATION = Task(
    dataset_info=dataset_info,
    build_program=build_program,
    model_config=model_config,
    init_from=init_from,
    evaluator=evaluator,
    train_iterator=train_iterator,
    score=lambda last_eval: last_eval["mIoU"],
)
