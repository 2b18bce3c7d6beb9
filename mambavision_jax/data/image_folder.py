"""A folder of class sub-folders of images, as a data source: the walk that finds each real file
once (links followed, loops and duplicates not), and `folder_examples` (paths and labels, for
`evaluate --folder`). No TFDS here: `data.folder` builds TFDS data sets on the same walk.

Symbolic links are followed, but every real file is taken once: a folder reached a second time
(a link back to an ancestor such as `ln -s .. loop`, or two links to one folder) is not entered
again, and hidden folders (.git, .ipynb_checkpoints) are not entered at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from mambavision_jax.errors import UserError

__all__ = ["class_dirs", "file_id", "folder_examples", "list_files", "walk_files"]


def file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of what `path` points to, or None for a broken link (listed, then skipped
    as unreadable, so the report names it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def walk_files(root: str) -> list[tuple[str, tuple[int, int] | None]]:
    """(path, file id) of every regular file under root, each real file once; see the module doc."""
    # Folders already seen: root's ancestors (a link back up would re-list everything, forever
    # with followlinks) and every folder entered so far (a second link to one folder).
    seen_dirs = set()
    head = os.path.realpath(root)
    while True:
        seen_dirs.add(file_id(head))
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    seen_files, out = set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            key = file_id(os.path.join(dirpath, d))
            if not d.startswith(".") and key is not None and key not in seen_dirs:
                seen_dirs.add(key)
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            path = os.path.join(dirpath, f)
            key = file_id(path)
            if key is None or key not in seen_files:
                seen_files.add(key)
                out.append((path, key))
    return sorted(out, key=lambda item: item[0])


def list_files(root: str) -> list[str]:
    """Every regular file under root (recursively), sorted, each real file once; hidden folders
    (.git, .ipynb_checkpoints) are not entered since they hold copies or metadata, not samples."""
    return [path for path, _ in walk_files(root)]


def class_dirs(root: str) -> list[str]:
    """The class folders of root: its sub-folders, sorted, hidden ones left out."""
    return sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )


def folder_examples(
    root: str | os.PathLike, *, num_classes: int | None = None, label_map: str = "auto"
) -> tuple[list[str], list[int], list[str]]:
    """(image paths, labels, class names) of ROOT/<class>/**/<image>, each file once (the same walk
    as `build_folder_dataset`): the folder data source of `evaluate --folder`.

    label_map: 'sorted': the sorted class-folder names are labels 0..K-1 (torchvision's
    ImageFolder); 'imagenet': the folders are ImageNet-1k synset ids (n01440764, ...) and each gets
    its ImageNet index, so a subset of the 1000 classes is scored against the right logits; 'auto'
    (default): 'imagenet' when num_classes == 1000 and every folder is an ImageNet synset, else
    'sorted'. (For the full ImageNet val folder both give the same labels.)
    """
    from mambavision_jax.images import is_image_file

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--folder {root} is not a folder")
    if label_map not in ("auto", "sorted", "imagenet"):
        raise UserError(f"label_map must be 'auto', 'sorted' or 'imagenet', got {label_map!r}")
    classes = class_dirs(os.fspath(root))
    if not classes:
        raise UserError(f"{root} has no class sub-folders (expected ROOT/<class>/<images>)")
    if label_map != "sorted":
        from mambavision_jax.labels import imagenet_synsets

        index = {s: i for i, s in enumerate(imagenet_synsets())}
        all_synsets = all(c in index for c in classes)
        if label_map == "imagenet" and not all_synsets:
            bad = [c for c in classes if c not in index][:5]
            raise UserError(f"label_map='imagenet' but these folders are not ImageNet-1k synsets: {bad}")
        label_map = (
            "imagenet" if (all_synsets and (label_map == "imagenet" or num_classes == 1000)) else "sorted"
        )
    label_of = (
        {c: index[c] for c in classes} if label_map == "imagenet" else {c: i for i, c in enumerate(classes)}
    )
    paths, labels = [], []
    for c in classes:
        for path in list_files(os.path.join(root, c)):
            if is_image_file(path) and not os.path.basename(path).startswith("."):
                paths.append(path)
                labels.append(label_of[c])
    if not paths:
        raise UserError(f"no image files under {root}/<class>/ (extensions: jpg, png, ...)")
    if num_classes and max(labels) >= num_classes:
        raise UserError(f"{root} has {len(classes)} classes but the model has {num_classes} outputs")
    return paths, labels, classes
