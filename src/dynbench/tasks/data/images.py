"""Vision task images: decoding, the standard evaluation transform, a split decoded batch by batch.

The transform is the one torchvision's ``ImageClassification`` preset and timm's eval pipeline apply
to a PIL image: convert to RGB; resize so the shorter side is ``resize`` pixels (the longer side
becomes ``int(resize · long / short)``, truncated) with PIL's antialiased bilinear or bicubic
filter; take the centred ``crop × crop`` square (offsets ``int(round((side - crop) / 2))``); scale
to [0, 1]; subtract the mean and divide by the standard deviation per channel. Written here with
Pillow and torch (no torchvision, which does not import beside every torch build).

What is exact and what is not: each step is the same operation those libraries run on PIL images, so
with the same Pillow build the pixels are identical. Different Pillow or libjpeg builds
(Pillow-SIMD, another libjpeg-turbo version) decode and resample a few pixel values differently,
which moves ImageNet top-1 by hundredths of a point; torchvision's *tensor* path (``antialias=True``
on tensors) is a different resampler and is not reproduced.

A :class:`LazyImageSplit` keeps only labels and image references in memory and decodes one batch at
a time in a thread pool (Pillow releases the GIL while it decodes and resamples): the 50,000
ImageNet validation images at 224² would need 30 GB as one float tensor.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from dynbench.tasks.data.catalog import DatasetCorruptError
from dynbench.types import Batch

if TYPE_CHECKING:  # Pillow is imported when an image is decoded, so importing this module needs no Pillow
    from PIL.Image import Image

Interpolation = Literal["bilinear", "bicubic"]
ImageSource = str | Path | bytes
"""A file path or the encoded bytes of one image (JPEG, PNG, …)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File endings read as images (case-insensitive): those torchvision's ``ImageFolder`` accepts."""

PILLOW_HINT = "Install Pillow: pip install pillow (or pip install 'dynbench[imagenet]')."


def pillow() -> Any:
    """The ``PIL.Image`` module.

    Raises:
        ModuleNotFoundError: Pillow is not installed; the message says how to install it.
    """
    try:
        from PIL import Image
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"Reading images needs Pillow, which is not installed. {PILLOW_HINT}") from None
    return Image


@dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side, centre-crop, normalise (see the module docstring)."""

    crop: int = 224  # output side in pixels: the model's input size
    resize: int = 256  # shorter side before the crop (224 / 256 = 0.875, the usual ImageNet evaluation)
    interpolation: Interpolation = "bilinear"  # PIL filter: torchvision's default; timm's ViTs use bicubic
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel mean of [0, 1] pixels (ImageNet)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # per-channel standard deviation (ImageNet)

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(
                f"EvalTransform needs 0 < crop <= resize, got crop={self.crop}, resize={self.resize}. "
                "Resize the shorter side to at least the crop size."
            )
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}.")


def open_image(source: ImageSource) -> Image:
    """Decode a path or encoded bytes into an RGB PIL image, as ``ImageFolder``'s loader does.

    Raises:
        OSError: not a readable image (``PIL.UnidentifiedImageError`` is an ``OSError``), or
            truncated.
    """
    Image = pillow()
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        return img.convert("RGB")  # decodes fully (CMYK and grey JPEGs become RGB)


def resize_center_crop(img: Image, transform: EvalTransform) -> np.ndarray:
    """The resize and centre crop of the module docstring → ``(crop, crop, 3)`` uint8."""
    Image = pillow()
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(transform.resize * long / short)  # truncated, as torchvision computes it
    size = (transform.resize, new_long) if w <= h else (new_long, transform.resize)  # (W, H)
    filt = Image.Resampling.BILINEAR if transform.interpolation == "bilinear" else Image.Resampling.BICUBIC
    img = img.resize(size, filt)  # Pillow returns a copy when the size is unchanged
    W, H = img.size
    top, left = int(round((H - transform.crop) / 2.0)), int(round((W - transform.crop) / 2.0))
    img = img.crop((left, top, left + transform.crop, top + transform.crop))
    return np.asarray(img, dtype=np.uint8)  # (crop, crop, 3)


def normalise(pixels: np.ndarray, transform: EvalTransform) -> Tensor:
    """``(B, H, W, 3)`` uint8 → ``(B, 3, H, W)`` float32, normalised per channel.

    Pixels are scaled to [0, 1] before normalising.
    """
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
    mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std  # (B, 3, H, W)


def preprocess(source: ImageSource, transform: EvalTransform) -> np.ndarray:
    """Decode, resize and crop one image → ``(crop, crop, 3)`` uint8."""
    return resize_center_crop(open_image(source), transform)


def default_threads() -> int:
    """Decoding threads when none are configured: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


class LazyImageSplit:
    """A split held as labels plus image references; images are decoded per batch.

    Batches come in the same order as :meth:`dynbench.tasks.base.TensorSplit.batches` (the split
    order, or the same seeded permutation), so a task can swap one for the other without changing
    which samples run.

    Args:
        labels: ``(N,)`` class index per sample.
        fetch: sample indices → one :data:`ImageSource` per index (paths, or bytes read from a
            table).
        transform: the evaluation transform.
        threads: decoding threads (1 = decode in the calling thread).
        name: sample index → where the image is, for the error about an unreadable one.
    """

    def __init__(
        self,
        labels: np.ndarray,
        fetch: Callable[[np.ndarray], Sequence[ImageSource]],
        transform: EvalTransform,
        threads: int = 1,
        name: Callable[[int], str] = lambda i: f"sample {i}",
    ) -> None:
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))  # (N,)
        self.fetch = fetch
        self.transform = transform
        self.threads = max(1, threads)
        self.name = name

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def images(self, idx: np.ndarray, pool: ThreadPoolExecutor | None = None) -> Tensor:
        """``(B, 3, crop, crop)`` normalised images of the samples ``idx``.

        Raises:
            DatasetCorruptError: an image cannot be decoded; the message names it.
        """
        sources = self.fetch(idx)

        def one(k: int) -> np.ndarray:
            try:
                return preprocess(sources[k], self.transform)
            except (OSError, SyntaxError, ValueError) as exc:  # what Pillow raises for broken or truncated files
                where = self.name(int(idx[k]))
                raise DatasetCorruptError(where, f"it is not a readable image ({exc})", "Restore it.") from None

        arrays = list(pool.map(one, range(len(sources)))) if pool is not None else [one(k) for k in range(len(sources))]
        return normalise(np.stack(arrays), self.transform)  # (B, 3, crop, crop)

    def batches(self, *, batch_size: int, seed: int, shuffle: bool, limit: int | None) -> Iterator[Batch]:
        """Yield decoded batches in the split's order, or a seeded permutation when ``shuffle``."""
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        if limit is not None:
            order = order[:limit]
        pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        try:
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                yield Batch(self.images(idx.numpy(), pool), self.labels[idx], idx.clone())
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
