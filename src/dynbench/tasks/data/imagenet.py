"""ImageNet-1k (ILSVRC 2012), read from the user's own copy.

1,281,167 training and 50,000 validation images of 1,000 classes.

Russakovsky et al., "ImageNet Large Scale Visual Recognition Challenge", IJCV 2015, https://arxiv.org/abs/1409.0575;
https://image-net.org. The images are released only to registered users who accept ImageNet's terms
of access (non-commercial research and education), so dynbench never downloads them. Two layouts are
read:

- **image folder** — ``DIR/train/<wnid>/*.JPEG`` and ``DIR/val/<wnid>/*.JPEG`` (``validation/`` is
  accepted for ``val/``), one folder per class named by its WordNet id. The class index is the
  wnid's position in sorted order, the standard ImageNet-1k index that torchvision and timm weights
  predict; samples are ordered as torchvision's ``ImageFolder`` orders them (class, then a sorted
  walk of its folder), so sample ids match it.
- **Hugging Face dataset saved to disk** —
  ``datasets.load_dataset("ILSVRC/imagenet-1k").save_to_disk(DIR)`` (splits
  ``train``/``validation``; columns ``image`` and ``label``, a ``ClassLabel`` in the same standard
  order), or one split saved on its own (read as ``val``). ``datasets`` is imported only for this
  layout.

``bench data prepare imagenet --path DIR`` checks the layout (every class folder is listed and its
images counted, the class sets of the splits agree, one image per split is decoded) and records DIR
in ``<data root>/imagenet/source.json``; nothing is copied. Without ``--path`` the recorded copy is
used, or a copy placed in ``<data root>/imagenet`` itself. ``bench data verify imagenet`` repeats
the layout check and decodes a seeded sample of ``verify_per_class`` images per class and split —
not all 1.33 M (a full decode takes hours on one core); ImageNet publishes no checksums of the
extracted images, so there are none to compare.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dynbench.cache_dirs import data_root
from dynbench.tasks.data.catalog import (
    Dataset,
    DatasetCorruptError,
    DatasetMissingError,
    DataStatus,
    FileCheck,
    Progress,
    register_dataset,
)
from dynbench.tasks.data.images import IMAGE_EXTENSIONS, ImageSource, open_image

Kind = Literal["folder", "hf"]
FOLDER_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val", "validation")}
"""Split → the sub-folder names that hold it, in the order tried."""
HF_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("validation", "val")}
"""Split → the names of the saved dataset's split, in the order tried.

ILSVRC/imagenet-1k says ``validation``.
"""
DATASETS_HINT = "Install it with: pip install datasets"


@dataclass(frozen=True)
class ImageNetCopy:
    """A copy of ImageNet: its layout, its root and how it was found."""

    kind: Kind  # "folder" (train/, val/ of class folders) or "hf" (a save_to_disk folder)
    root: Path  # the folder given to prepare (absolute)
    source: str  # "path" (given explicitly), "recorded" (source.json) or "cache" (in the data root itself)


@dataclass
class SplitIndex:
    """One split of a copy: labels in memory, images fetched on demand."""

    labels: np.ndarray  # (N,) int64 class index per sample
    fetch: Callable[[np.ndarray], Sequence[ImageSource]]  # sample indices → paths or encoded bytes
    name: Callable[[int], str]  # sample index → where it is, for messages
    where: Path  # the split's folder


@dataclass(frozen=True)
class Layout:
    """What a full layout check found."""

    classes: tuple[str, ...]  # class names in index order (wnids for a folder, label names for a dataset)
    splits: dict[str, SplitIndex]  # every split present ("train" optional, "val" always)
    size: int  # bytes of image files (folder) or Arrow files (dataset)

    @property
    def counts(self) -> dict[str, int]:
        """Split → images."""
        return {s: len(index.labels) for s, index in self.splits.items()}


def detect_kind(root: Path) -> Kind | None:
    """The kind of copy in ``root``, or ``None``.

    ``hf`` for a ``save_to_disk`` folder, ``folder`` for a folder with ``train/`` or ``val/``.
    """
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "hf"
    if any((root / d).is_dir() for names in FOLDER_SPLITS.values() for d in names):
        return "folder"
    return None


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(folder: Path) -> list[str]:
    """Image files under ``folder`` in ``ImageFolder``'s order.

    The walk is sorted, and so are the names in each directory.
    """
    found: list[str] = []
    for root, _, files in sorted(os.walk(folder, followlinks=True)):
        found += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    return found


class _Folder:
    """The image-folder layout."""

    def __init__(self, root: Path, how_to: str) -> None:
        self.root, self.how_to = root, how_to

    def split_dir(self, split: str) -> Path | None:
        return next((self.root / d for d in FOLDER_SPLITS[split] if (self.root / d).is_dir()), None)

    def class_dirs(self, where: Path) -> list[str]:
        """Sorted names of the class folders in a split folder.

        Raises:
            DatasetMissingError: the split holds images directly (the raw validation archive), not
                class folders.
        """
        present = sorted(e.name for e in os.scandir(where) if e.is_dir())
        if not present:
            loose = sum(1 for e in os.scandir(where) if e.is_file() and _is_image(e.name))
            raise DatasetMissingError(
                f"{where} holds {loose:,} images directly and no class folders. Sort them into one folder per "
                f"class ({where.name}/<wnid>/...), e.g. with the ILSVRC2012 devkit's validation ground truth.\n"
                f"{self.how_to}"
            )
        return present

    def classes(self) -> tuple[str, ...]:
        """Sorted class folder names of ``train/`` (else ``val/``): the standard class index."""
        base = self.split_dir("train") or self.split_dir("val")
        if base is None:
            raise DatasetMissingError(f"{self.root} has no train/ or val/ folder.\n{self.how_to}")
        return tuple(self.class_dirs(base))

    def splits(self) -> list[str]:
        return [s for s in FOLDER_SPLITS if self.split_dir(s) is not None]

    def index(self, split: str) -> SplitIndex:
        """Every image of ``split`` with its label, checked against the class list."""
        where = self.split_dir(split)
        if where is None:
            names = " or ".join(f"{d}/" for d in FOLDER_SPLITS[split])
            raise DatasetMissingError(f"ImageNet at {self.root} has no {split} split (no {names}).\n{self.how_to}")
        classes = self.classes()
        present = self.class_dirs(where)
        if present != list(classes):
            only_here, only_there = sorted(set(present) - set(classes)), sorted(set(classes) - set(present))
            raise DatasetMissingError(
                f"The class folders of {where} differ from the class list ({len(present)} vs {len(classes)}): "
                f"only here {only_here[:5]}, missing here {only_there[:5]}. Every split needs the same classes."
            )
        paths: list[str] = []
        labels: list[int] = []
        empty: list[str] = []
        for label, name in enumerate(classes):
            files = _walk_images(where / name)
            if not files:
                empty.append(name)
            paths += files
            labels += [label] * len(files)
        if empty:
            raise DatasetMissingError(
                f"{len(empty)} class folder(s) of {where} hold no images ({', '.join(empty[:5])}); "
                f"images end with one of {', '.join(IMAGE_EXTENSIONS)}. Restore them from the archives."
            )
        return SplitIndex(
            np.asarray(labels, dtype=np.int64), lambda idx: [paths[i] for i in idx], lambda i: paths[i], where
        )

    def size(self, index: SplitIndex) -> int:
        return sum(os.stat(index.name(i)).st_size for i in range(len(index.labels)))


class _HFDataset:
    """The Hugging Face ``save_to_disk`` layout."""

    def __init__(self, root: Path, how_to: str) -> None:
        self.root, self.how_to = root, how_to
        try:
            import datasets
        except ModuleNotFoundError:
            raise DatasetMissingError(
                f"{root} is a Hugging Face dataset, and reading it needs the 'datasets' package. {DATASETS_HINT}"
            ) from None
        self._lib = datasets
        loaded = datasets.load_from_disk(str(root))
        self.parts: dict[str, Any] = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"val": loaded}

    def _part(self, split: str) -> tuple[str, Any] | None:
        return next(((n, self.parts[n]) for n in HF_SPLITS[split] if n in self.parts), None)

    def _columns(self, ds: Any, name: str) -> tuple[str, str]:
        """The image column and the class-label column of one split."""
        feats = ds.features
        image = next((c for c, f in feats.items() if isinstance(f, self._lib.Image)), None)
        label = "label" if isinstance(feats.get("label"), self._lib.ClassLabel) else None
        label = label or next((c for c, f in feats.items() if isinstance(f, self._lib.ClassLabel)), None)
        if image is None or label is None:
            raise DatasetMissingError(
                f"Split '{name}' of {self.root} has no Image column and ClassLabel column (columns: "
                f"{', '.join(feats)}); it is not ILSVRC/imagenet-1k.\n{self.how_to}"
            )
        return image, label

    def classes(self) -> tuple[str, ...]:
        part = self._part("train") or self._part("val")
        if part is None:
            raise DatasetMissingError(f"{self.root} has no train or validation split.\n{self.how_to}")
        return tuple(part[1].features[self._columns(part[1], part[0])[1]].names)

    def splits(self) -> list[str]:
        return [s for s in HF_SPLITS if self._part(s) is not None]

    def index(self, split: str) -> SplitIndex:
        part = self._part(split)
        if part is None:
            raise DatasetMissingError(
                f"ImageNet at {self.root} has no {split} split (its splits: {', '.join(self.parts)}).\n{self.how_to}"
            )
        name, ds = part
        image, label = self._columns(ds, name)
        if tuple(ds.features[label].names) != self.classes():
            raise DatasetMissingError(f"Split '{name}' of {self.root} has other class names than the train split.")
        labels = np.asarray(ds.select_columns([label]).with_format("numpy")[:][label], dtype=np.int64)  # (N,)
        if len(labels) and labels.min() < 0:
            raise DatasetMissingError(f"Split '{name}' of {self.root} has unlabelled images (label -1).")
        table = ds.select_columns([image]).with_format("arrow")

        def fetch(idx: np.ndarray) -> list[ImageSource]:
            rows = table[[int(i) for i in idx]].column(image).to_pylist()  # [{"bytes": …, "path": …}, …]
            return [r["bytes"] if r.get("bytes") is not None else r["path"] for r in rows]

        where = self.root / name if (self.root / name).is_dir() else self.root  # one split saved on its own
        return SplitIndex(labels, fetch, lambda i: f"{where} row {i}", where)

    def size(self, index: SplitIndex) -> int:
        return sum(p.stat().st_size for p in index.where.glob("*.arrow"))


@dataclass(frozen=True)
class ImageNet(Dataset):
    """ImageNet-1k from the user's copy (see the module docstring)."""

    name: str = "imagenet"  # registry key and what users type: `bench data prepare imagenet`
    title: str = "ImageNet-1k (ILSVRC 2012)"  # human name in messages
    n_classes: int = 1000  # class folders (or label names) a copy must have
    verify_per_class: int = 2  # images decoded per class and split by verify: 4,000 decodes, ~35 s on one core
    homepage: str = "https://image-net.org/download.php"  # registration and terms of access
    hf_id: str = "ILSVRC/imagenet-1k"  # the Hugging Face dataset (gated: accept its terms first)

    def cache_dir(self) -> Path:
        """``<data root>/imagenet``: holds ``source.json``, or a copy itself."""
        return data_root() / self.name

    def pointer_file(self) -> Path:
        """The record of the copy ``prepare`` checked."""
        return self.cache_dir() / "source.json"

    def how_to_get(self) -> str:
        """Every way to get ImageNet-1k, with the exact commands."""
        return "\n".join(
            [
                f"{self.title} cannot be downloaded by dynbench: its images are released only to registered users "
                "who accept ImageNet's terms of access (non-commercial research and education). Do one of:",
                f"  - image folder: register at {self.homepage}, download ILSVRC2012_img_train.tar (138 GB), "
                "ILSVRC2012_img_val.tar (6.3 GB) and ILSVRC2012_devkit_t12.tar.gz into DIR and lay them out as "
                "DIR/train/<wnid>/*.JPEG and DIR/val/<wnid>/*.JPEG (1000 class folders named by WordNet id, e.g. "
                "n01440764; the 50,000 validation images sorted into class folders by the devkit's ground truth). "
                'torchvision does exactly this: python -c "import torchvision.datasets as d; '
                "[d.ImageNet('DIR', split=s) for s in ('train', 'val')]\" (needs scipy). Then run:",
                "      bench data prepare imagenet --path DIR",
                f"  - Hugging Face: accept the terms at https://huggingface.co/datasets/{self.hf_id}, log in "
                "(hf auth login), then run:",
                "      pip install datasets",
                f"      python -c \"import datasets; datasets.load_dataset('{self.hf_id}').save_to_disk('DIR')\"",
                "      bench data prepare imagenet --path DIR",
                "  - or give the folder to the task directly: bench run --tasks 'imagenet[path=DIR]' ...",
                f"  prepare checks DIR and records it in {self.pointer_file()}; nothing is copied. Only val/ is "
                "needed to evaluate; train/ is read by methods that fit something.",
            ]
        )

    def find(self, path: Path | None = None) -> ImageNetCopy:
        """The copy to use: ``path`` if given, else the recorded one, else one in :meth:`cache_dir`.

        Raises:
            DatasetMissingError: no copy (or ``path`` holds no ImageNet layout); says how to get
                one.
        """
        if path is not None:
            root = Path(path).expanduser().resolve()
            kind = detect_kind(root)
            if kind is None:
                raise DatasetMissingError(
                    f"{root} holds no ImageNet layout: no train/ or val/ folder and no Hugging Face "
                    f"dataset_dict.json or state.json.\n{self.how_to_get()}"
                )
            return ImageNetCopy(kind, root, "path")
        pointer = self.pointer_file()
        if pointer.is_file():
            root = Path(json.loads(pointer.read_text(encoding="utf-8"))["path"])
            kind = detect_kind(root)
            if kind is None:
                raise DatasetMissingError(
                    f"The {self.title} copy recorded in {pointer} is gone: {root} holds no ImageNet layout. "
                    f"Run `bench data prepare imagenet --path DIR` with its new place.\n{self.how_to_get()}"
                )
            return ImageNetCopy(kind, root, "recorded")
        kind = detect_kind(self.cache_dir())
        if kind is not None:
            return ImageNetCopy(kind, self.cache_dir(), "cache")
        raise DatasetMissingError(
            f"{self.title} ('{self.name}') is not present: no {pointer} and no copy in {self.cache_dir()}.\n"
            f"{self.how_to_get()}"
        )

    def reader(self, copy: ImageNetCopy) -> _Folder | _HFDataset:
        """The reader of a copy's layout."""
        return (
            _Folder(copy.root, self.how_to_get()) if copy.kind == "folder" else _HFDataset(copy.root, self.how_to_get())
        )

    def layout(self, copy: ImageNetCopy) -> Layout:
        """The full layout check: classes, every split's images listed and counted, and their bytes.

        Raises:
            DatasetMissingError: a split, class or image is missing, or the class count is not
                ``n_classes``.
        """
        reader = self.reader(copy)
        classes = reader.classes()
        if len(classes) != self.n_classes:
            raise DatasetMissingError(
                f"{copy.root} has {len(classes)} classes; {self.title} has {self.n_classes}. Point at the full "
                f"data set.\n{self.how_to_get()}"
            )
        if "val" not in reader.splits():
            raise DatasetMissingError(f"{copy.root} has no validation split, which is evaluated.\n{self.how_to_get()}")
        splits = {split: reader.index(split) for split in reader.splits()}
        return Layout(classes, splits, sum(reader.size(index) for index in splits.values()))

    def status(self, path: Path | None = None) -> DataStatus:
        """Where the copy is, by a cheap look; never raises for missing data.

        The look reads the recorded size and lists nothing.
        """
        try:
            copy = self.find(path)
        except DatasetMissingError as exc:
            return DataStatus(False, problem=str(exc).splitlines()[0])
        size = 0
        if copy.source == "recorded":
            size = int(json.loads(self.pointer_file().read_text(encoding="utf-8")).get("size", 0))
        return DataStatus(True, source=copy.source, where=f"{copy.root} ({copy.kind})", size=size)

    def prepare(self, path: Path | None = None, *, progress: Progress | None = None) -> DataStatus:
        """Check the copy at ``path`` (else the recorded one) and record where it is; copy nothing.

        Raises:
            DatasetMissingError: no copy, or its layout is incomplete; says how to get one.
            DatasetCorruptError: the first image of a split cannot be decoded.
        """
        copy = self.find(path)
        layout = self.layout(copy)
        for index in layout.splits.values():
            self._decode(index, 0)
        source = copy.source
        if copy.source == "path" and copy.root != self.cache_dir().resolve():
            record = {"path": str(copy.root), "kind": copy.kind, "classes": len(layout.classes), "size": layout.size}
            self._write_pointer({**record, "images": layout.counts})
            source = "recorded"
        return DataStatus(True, source=source, where=f"{copy.root} ({copy.kind})", size=layout.size)

    def verify(self, path: Path | None = None) -> list[FileCheck]:
        """The layout check, then seeded sample decodes: ``verify_per_class`` per class and split.

        Returns:
            One check per split (its folder), then one per image that failed to decode.

        Raises:
            DatasetMissingError: no copy, or its layout is incomplete.
        """
        copy = self.find(path)
        layout = self.layout(copy)
        checks: list[FileCheck] = []
        for index in layout.splits.values():
            rng = np.random.default_rng(0)
            failed = []
            for label in range(len(layout.classes)):
                members = np.flatnonzero(index.labels == label)
                for i in rng.choice(members, size=min(self.verify_per_class, len(members)), replace=False):
                    try:
                        self._decode(index, int(i))
                    except DatasetCorruptError as exc:
                        failed.append(FileCheck(Path(exc.path), exc.problem))
            note = f"{len(failed)} of the sampled images failed to decode" if failed else ""
            checks.append(FileCheck(index.where, note))
            checks += failed
        return checks

    def _decode(self, index: SplitIndex, i: int) -> None:
        """Decode sample ``i`` of a split.

        Raises:
            DatasetCorruptError: it is not a readable image.
        """
        try:
            open_image(index.fetch(np.array([i]))[0])
        except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for broken or truncated files
            raise DatasetCorruptError(
                index.name(i), f"it is not a readable image ({exc})", "Restore it from the original archive."
            ) from None

    def _write_pointer(self, record: dict[str, Any]) -> None:
        """Write ``source.json`` atomically (temp file + rename)."""
        pointer = self.pointer_file()
        pointer.parent.mkdir(parents=True, exist_ok=True)
        tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, pointer)


IMAGENET = register_dataset(ImageNet())
