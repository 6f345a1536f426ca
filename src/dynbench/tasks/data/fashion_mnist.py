"""Fashion-MNIST (Zalando, 2017): 70,000 real 28×28 grey images of clothing, 10 classes, idx format.

Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", https://arxiv.org/abs/1708.07747; https://github.com/zalandoresearch/fashion-mnist (MIT
licence).

Four gzip-compressed idx files: 60,000 training and 10,000 test images with their labels. Copies
come from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) or
the canonical download. The Debian copies are re-compressed (the gzip header lost the file name,
23–24 bytes), so the files' own hashes differ from upstream's; the checksums below are of the
decompressed payloads, which are byte-identical in both (the SHA-256 values match those published
for the decompressed upstream files, and upstream's README lists the MD5 of its .gz
files: train images 8d4fb7e6…, train labels 25c81989…, test images bef4ecab…, test labels
bb300cfd…).

The idx format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number of
dimensions, each dimension as a big-endian uint32, then the values in C order, big-endian.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from dynbench.tasks.data.catalog import DatasetCorruptError, register_dataset
from dynbench.tasks.data.integrity import FileSpec
from dynbench.tasks.data.sources import DatasetSpec, Located

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

FASHION_MNIST = register_dataset(
    DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        files=(
            FileSpec(
                "train-images-idx3-ubyte.gz",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                47_040_016,
            ),
            FileSpec(
                "train-labels-idx1-ubyte.gz",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                60_008,
            ),
            FileSpec(
                "t10k-images-idx3-ubyte.gz",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                7_840_016,
            ),
            FileSpec(
                "t10k-labels-idx1-ubyte.gz",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                10_008,
            ),
        ),
        urls=(
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        ),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        debian_package="dataset-fashion-mnist",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )
)

IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
"""idx type code → numpy dtype (big-endian where it matters)."""


def parse_idx(data: bytes, *, source: Path | str = "idx data") -> np.ndarray:
    """Decode one idx payload into a writable array of its shape and type.

    Args:
        data: the decompressed file contents.
        source: where it came from, for error messages.

    Raises:
        DatasetCorruptError: not an idx payload, or its length disagrees with its header.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DatasetCorruptError(source, "it does not start with an idx header (0, 0, type, ndim)", "Replace it.")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetCorruptError(
            source, f"its idx header {dims} needs {expected:,} bytes, the payload has {len(data):,}", "Replace it."
        )
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="), copy=True)  # native order, writable (torch needs both)


def load_arrays(found: Located, part: Literal["train", "t10k"]) -> tuple[np.ndarray, np.ndarray]:
    """One part's images and labels, checksum-verified.

    Args:
        found: a located copy of Fashion-MNIST.
        part: ``train`` (60,000) or ``t10k`` (10,000, the test set).

    Returns:
        ``(N, 28, 28)`` uint8 images and ``(N,)`` int64 labels in 0–9.

    Raises:
        DatasetCorruptError: a file fails its checksum or the images and labels disagree.
    """
    images_name, labels_name = f"{part}-images-idx3-ubyte.gz", f"{part}-labels-idx1-ubyte.gz"
    images = parse_idx(found.read(images_name), source=found.path(images_name))  # (N, 28, 28) uint8
    labels = parse_idx(found.read(labels_name), source=found.path(labels_name)).astype(np.int64)  # (N,)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DatasetCorruptError(
            found.path(images_name),
            f"images {images.shape} do not match labels {labels.shape}",
            "Replace both files with good copies.",
        )
    return images, labels
