"""Fashion-MNIST: idx parsing on generated files, the missing-data error, and the real data when it
is installed."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dynbench.tasks import fashion_mnist as task_module
from dynbench.tasks.base import TASKS
from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError, get_dataset
from dynbench.tasks.data.fashion_mnist import FASHION_MNIST, load_arrays, parse_idx
from dynbench.tasks.data.integrity import FileSpec
from dynbench.tasks.data.sources import DatasetSpec, locate
from dynbench.tasks.fashion_mnist import FashionMNIST, FashionMNISTConfig


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def tiny_fashion(directory: Path, n: int = 12) -> DatasetSpec:
    """Write four small idx.gz files under Fashion-MNIST's names; return a spec with checksums."""
    rng = np.random.default_rng(0)
    arrays = {}
    for part, count in (("train", n), ("t10k", n // 2)):
        arrays[f"{part}-images-idx3-ubyte.gz"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{part}-labels-idx1-ubyte.gz"] = (np.arange(count) % 10).astype(np.uint8)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, array in arrays.items():
        payload = idx_bytes(array)
        (directory / name).write_bytes(gzip.compress(payload))
        files.append(FileSpec(name, hashlib.sha256(payload).hexdigest(), len(payload)))
    return dataclasses.replace(FASHION_MNIST, files=tuple(files), system_dirs=(str(directory),), urls=())


def test_parse_idx_reads_shape_type_and_big_endian_values():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = parse_idx(idx_bytes(images))
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8 and (out == images).all()
    assert out.flags.writeable
    ints = np.array([1, -2, 70000], dtype=">i4")
    got = parse_idx(idx_bytes(ints))
    assert got.tolist() == [1, -2, 70000] and got.dtype == np.dtype("int32")
    floats = np.array([[0.5, -1.25]], dtype=">f4")
    assert parse_idx(idx_bytes(floats)).tolist() == [[0.5, -1.25]]


def test_parse_idx_rejects_bad_headers_and_lengths():
    with pytest.raises(DatasetCorruptError, match="idx header"):
        parse_idx(b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", source="x.idx")
    with pytest.raises(DatasetCorruptError, match=r"x\.idx.*needs 13 bytes, the payload has 12"):
        parse_idx(idx_bytes(np.zeros((5,), np.uint8))[:-1], source="x.idx")


def test_load_arrays_on_a_generated_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))
    spec = tiny_fashion(tmp_path / "system")
    images, labels = load_arrays(locate(spec), "train")
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(12)]


def test_the_task_splits_a_generated_copy_and_says_where_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))
    monkeypatch.setattr(task_module, "FASHION_MNIST", tiny_fashion(tmp_path / "system", n=20))
    task = FashionMNIST(FashionMNISTConfig(val_size=5))
    assert task.data_status() == f"present (system: {tmp_path / 'system'})"
    val, train, test = task.split("val"), task.split("train"), task.split("test")
    assert (len(train), len(val), len(test)) == (15, 5, 10)
    assert train.inputs.shape == (15, 1, 28, 28) and train.inputs.dtype == torch.float32
    assert abs(float(train.inputs.mean())) < 1.0  # normalised
    logits = task.build_backbone()(test.inputs[:2])
    assert logits.shape == (2, 10)
    assert task.augment(train.inputs[:4]).shape == (4, 1, 28, 28)


def test_absent_data_raises_how_to_get_it_from_load_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))
    absent = dataclasses.replace(FASHION_MNIST, system_dirs=(str(tmp_path / "nowhere"),))
    monkeypatch.setattr(task_module, "FASHION_MNIST", absent)
    task = FashionMNIST()
    assert task.data_status().startswith("missing: apt-get install dataset-fashion-mnist")
    with pytest.raises(DatasetMissingError) as err:
        task.load_split("test")
    msg = str(err.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "https://github.com/zalandoresearch/fashion-mnist" in msg and "--path DIR" in msg
    with pytest.raises(DatasetMissingError, match="not complete in"):
        FashionMNIST(FashionMNISTConfig(path=str(tmp_path))).load_split("train")


def test_registered_as_the_default_vision_task_and_data_set():
    assert TASKS.get("fashion-mnist") is FashionMNIST and FashionMNIST.is_default
    assert FashionMNIST.modality == "vision"
    assert get_dataset("fashion-mnist") is FASHION_MNIST


def test_real_fashion_mnist_when_present():
    status = FASHION_MNIST.status()
    if not status.present:
        pytest.skip(f"Fashion-MNIST is not installed ({status.problem}); apt-get install dataset-fashion-mnist")
    task = FashionMNIST()
    test = task.split("test")
    assert test.inputs.shape == (10_000, 1, 28, 28)
    assert sorted(torch.unique(test.targets).tolist()) == list(range(10))
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    assert len(task.split("val")) == 5000
