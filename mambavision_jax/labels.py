"""Class names: the ImageNet-1k synsets and names shipped with the package, label files, and the
names that go with a model's outputs (`class_names_for`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from mambavision_jax.errors import UserError

__all__ = ["class_names_for", "imagenet_class_names", "imagenet_synsets", "read_labels_file"]


@functools.cache
def _imagenet_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("mambavision_jax").joinpath("imagenet_classes.txt").read_text("utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines() if line.strip()]
    if len(rows) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(rows)} rows, expected 1000")
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (sorted: n01440764 ... n15075141)."""
    return list(_imagenet_table()[0])


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (WordNet lemmas, as timm's
    imagenet_synset_to_lemma.txt: 0 'tench, Tinca tinca', 281 'tabby, tabby cat', ...)."""
    return list(_imagenet_table()[1])


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One class name per line (blank lines ignored); a 'synset<TAB>name' line gives the name."""
    try:
        text = Path(path).read_text("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"labels file {path} is not UTF-8 text (expected one class name per line)") from None
    return [line.split("\t", 1)[-1].strip() for line in text.splitlines() if line.strip()]


def class_names_for(
    num_classes: int,
    *,
    labels: Sequence[str] | str | os.PathLike | None = None,
    hf_config: dict[str, Any] | None = None,
) -> list[str] | None:
    """Names for the model's outputs: an explicit list / labels file, else a Hugging Face config's
    id2label, else the ImageNet names for 1000 classes, else None (print indices)."""
    if labels is not None:
        is_file = isinstance(labels, (str, os.PathLike))
        names = read_labels_file(labels) if is_file else list(labels)
        if len(names) != num_classes:
            where = f" in {os.fspath(labels)}" if is_file else ""
            raise UserError(
                f"{len(names)} labels given{where} for a model with {num_classes} classes "
                f"(one name per line, in class-index order)"
            )
        return names
    id2label = (hf_config or {}).get("id2label")
    if isinstance(id2label, dict) and len(id2label) == num_classes:
        try:
            return [str(id2label.get(str(i), id2label.get(i))) for i in range(num_classes)]
        except (TypeError, ValueError):
            pass
    if num_classes == 1000:
        return imagenet_class_names()
    return None
