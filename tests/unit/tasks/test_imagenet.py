"""The imagenet task on a tiny generated folder of JPEGs: layout, labels, transform, data-set
records, errors, a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynbench.models.vit import ViTConfig
from dynbench.models.vit_import import vit_from_file
from dynbench.tasks.base import TASKS
from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError, get_dataset
from dynbench.tasks.data.imagenet import IMAGENET
from dynbench.tasks.data.imagenet import ImageNet as ImageNetData
from dynbench.tasks.data.images import EvalTransform, resize_center_crop
from dynbench.tasks.imagenet import ImageNet, ImageNetConfig, ImageNetWeightsMissingError

Image = pytest.importorskip("PIL.Image", reason="the imagenet task reads images with Pillow")
torch.set_num_threads(1)

FIXTURES = Path(__file__).parents[2] / "fixtures" / "vit_import"
WNIDS = ("n01484850", "n01440764", "n01443537")  # written unsorted: the class index is the sorted order
TINY = ViTConfig(
    image_size=16, patch_size=4, channels=3, n_classes=3, d_model=32, n_layers=2, n_heads=2, norm_eps=1e-6
)  # the shape of the fixture weights
TINY_OPTIONS = "model.image_size=16,model.patch_size=4,model.channels=3,model.n_classes=3,model.d_model=32,"
TINY_OPTIONS += "model.n_layers=2,model.n_heads=2,model.norm_eps=1e-6"


def write_folder(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG``: random-noise JPEGs of random sizes, 3 classes."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for wnid in WNIDS:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for j in range(per_class):
                w, h = (int(v) for v in rng.integers(17, 60, size=2))
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{j:02d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("imagenet"))


def tiny_task(path: Path, **options) -> ImageNet:
    return ImageNet(ImageNetConfig(path=str(path), model=TINY, decode_threads=2, **options))


def test_registered_as_a_vision_task_that_is_not_default():
    cls = TASKS.get("imagenet")
    assert cls is ImageNet and cls.modality == "vision" and not cls.is_default and cls.eval_split == "val"
    assert get_dataset("imagenet") is IMAGENET
    assert ImageNet().n_blocks() == 12 and ImageNet(ImageNetConfig(variant="vit_b16")).model_config.d_model == 768


def test_folder_labels_are_sorted_wnids_in_imagefolder_order(folder: Path):
    task = tiny_task(folder)
    assert task.n_samples("val") == 12 and task.n_samples("train") + task.n_samples("minival") == 12
    batches = list(task.batches("val", batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert all(b.inputs.shape[1:] == (3, 16, 16) and b.inputs.dtype == torch.float32 for b in batches)
    targets = torch.cat([b.targets for b in batches])
    assert targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # n01440764 < n01443537 < n01484850
    assert torch.cat([b.sample_ids for b in batches]).tolist() == list(range(12))
    shuffled = torch.cat([b.sample_ids for b in task.batches("val", batch_size=4, seed=0, shuffle=True, limit=7)])
    assert shuffled.tolist() == torch.randperm(12, generator=torch.Generator().manual_seed(0))[:7].tolist()
    first = next(task.batches("val", batch_size=12))
    again = next(task.batches("val", batch_size=12, seed=0, shuffle=True))
    torch.testing.assert_close(again.inputs, first.inputs[again.sample_ids])  # same image for the same id
    assert torch.equal(again.targets, first.targets[again.sample_ids])


def test_max_samples_keeps_every_class_and_load_split_holds_small_splits(folder: Path, monkeypatch):
    task = tiny_task(folder, max_samples=3)
    assert next(task.batches("val", batch_size=8)).targets.tolist() == [0, 1, 2]
    split = tiny_task(folder).load_split("val")
    assert split.inputs.shape == (12, 3, 16, 16) and split.targets.tolist()[::4] == [0, 1, 2]
    monkeypatch.setattr("dynbench.tasks.imagenet.MAX_IN_MEMORY", 5)
    with pytest.raises(ValueError, match="too many to hold decoded in memory"):
        tiny_task(folder).load_split("val")
    with pytest.raises(ValueError, match="no labelled test split"):
        tiny_task(folder).n_samples("test")
    with pytest.raises(ValueError, match="has 3 classes, the model has 1000 outputs"):
        ImageNet(ImageNetConfig(path=str(folder))).n_samples("val")


def test_minival_is_a_seeded_class_balanced_part_of_train_and_val_stays_the_evaluation_split(folder: Path):
    """Fits select on minival, carved from train (half of each 4-image class here); val is evaluated
    on, whole."""
    task = tiny_task(folder)
    assert (task.eval_split, task.validation_split, task.splits) == ("val", "minival", ("train", "minival", "val"))
    labels = np.repeat(np.arange(3), 4)  # the copy's train labels, as the folder lists them
    held = task.source_rows(labels, "minival")
    rest = task.source_rows(labels, "train")
    assert len(held) == 6 and np.bincount(labels[held]).tolist() == [2, 2, 2]  # min(10, 4 // 2) per class
    assert sorted(np.concatenate([held, rest]).tolist()) == list(range(12)) and not set(held) & set(rest)
    assert np.array_equal(held, tiny_task(folder).source_rows(labels, "minival"))  # deterministic
    other = tiny_task(folder, split_seed=1).source_rows(np.repeat(np.arange(3), 40), "minival")
    assert not np.array_equal(other, task.source_rows(np.repeat(np.arange(3), 40), "minival"))
    assert np.bincount(np.repeat(np.arange(3), 40)[other]).tolist() == [10, 10, 10]
    names = {s: {task.lazy_split(s).name(i) for i in range(task.n_samples(s))} for s in task.splits}
    assert len(names["minival"]) == 6 and len(names["train"]) == 6 and len(names["val"]) == 12
    assert not names["minival"] & names["train"] and not (names["minival"] | names["train"]) & names["val"]
    assert sorted(next(task.batches("minival", batch_size=6)).targets.tolist()) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="minival_per_class must be >= 1, got 0"):
        tiny_task(folder, minival_per_class=0)


def test_224_crop_geometry_and_normalisation_are_torchvisions(tmp_path: Path):
    """A 300×256 PNG needs no resize at 256, so the crop is exact pixels: rows 16:240, columns
    38:262."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(256, 300, 3), dtype=np.uint8)
    for wnid, img in zip(WNIDS, (pixels, np.full((40, 50, 3), 200, np.uint8), np.zeros((30, 30, 3), np.uint8))):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "val" / wnid / "a.png")
    model = ViTConfig(image_size=224, patch_size=16, channels=3, n_classes=3, d_model=32, n_layers=1, n_heads=2)
    task = ImageNet(ImageNetConfig(path=str(tmp_path), model=model))
    assert task.transform() == EvalTransform(224, 256, "bilinear")  # no weights: torchvision's transform
    batch = next(task.batches("val", batch_size=3))
    assert batch.inputs.shape == (3, 3, 224, 224)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (pixels[16:240, 38:262] / 255.0 - mean) / std  # (224, 224, 3)
    got = batch.inputs[2].permute(1, 2, 0).double().numpy()  # n01484850 sorts last
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(
        batch.inputs[1].double().numpy(), ((0.0 - mean) / std)[:, None, None] * np.ones((1, 224, 224)), atol=1e-6
    )
    half = ImageNet(ImageNetConfig(path=str(tmp_path), model=model, normalize="inception"))
    torch.testing.assert_close(
        next(half.batches("val", batch_size=3)).inputs[0], torch.full((3, 224, 224), 200 / 127.5 - 1)
    )


def test_resize_follows_torchvisions_size_and_rounding_rules():
    rng = np.random.default_rng(2)
    tall = Image.fromarray(rng.integers(0, 256, size=(500, 333, 3), dtype=np.uint8))  # W 333, H 500
    out = resize_center_crop(tall, EvalTransform(224, 256, "bicubic"))
    resized = np.asarray(tall.resize((256, int(256 * 500 / 333)), Image.Resampling.BICUBIC))  # 256 × 384, truncated
    np.testing.assert_array_equal(out, resized[80:304, 16:240])
    odd = rng.integers(0, 256, size=(21, 18, 3), dtype=np.uint8)  # short side 18 = resize: no resampling
    out = resize_center_crop(Image.fromarray(odd), EvalTransform(16, 18, "bilinear"))
    np.testing.assert_array_equal(out, odd[2:18, 1:17])  # top = round(2.5) = 2 (half to even), left = 1


def test_auto_transform_follows_the_weights_library(folder: Path):
    timm = tiny_task(folder, weights=str(FIXTURES / "timm_tiny.safetensors"))
    assert timm.weight_format() == "timm"
    assert timm.transform() == EvalTransform(16, 17, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # crop_pct 0.9
    tv = tiny_task(folder, weights=str(FIXTURES / "torchvision_tiny.pth"))
    assert tv.weight_format() == "torchvision" and tv.transform() == EvalTransform(16, 18, "bilinear")
    forced = tiny_task(folder, weights=str(FIXTURES / "timm_tiny.safetensors"), normalize="imagenet", crop_pct=0.5)
    assert forced.transform() == EvalTransform(16, 32, "bicubic")


def test_backbone_is_the_converted_file_for_every_seed(folder: Path):
    path = FIXTURES / "torchvision_tiny.pth"
    task = tiny_task(folder, weights=str(path))
    x = next(task.batches("val", batch_size=4)).inputs
    with torch.no_grad():
        a, b = task.backbone(0)(x), task.backbone(5)(x)
        torch.testing.assert_close(a, vit_from_file(path, TINY)(x))
    assert torch.equal(a, b)


def test_hf_dataset_saved_to_disk_gives_the_same_batches(folder: Path, tmp_path: Path):
    datasets = pytest.importorskip("datasets", reason="the Hugging Face layout needs the 'datasets' package")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(WNIDS))})
    parts = {}
    for split, name in (("train", "train"), ("val", "validation")):
        files = sorted((folder / split).glob("*/*.JPEG"))
        rows = {"image": [{"bytes": f.read_bytes(), "path": None} for f in files]}
        rows["label"] = [sorted(WNIDS).index(f.parent.name) for f in files]
        parts[name] = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "hf"))
    hf, ref = tiny_task(tmp_path / "hf"), tiny_task(folder)
    assert hf.n_samples("val") == 12
    for a, b in zip(hf.batches("val", batch_size=5, shuffle=True), ref.batches("val", batch_size=5, shuffle=True)):
        assert torch.equal(a.targets, b.targets) and torch.equal(a.inputs, b.inputs)
    assert ImageNetData(n_classes=3).layout(ImageNetData().find(tmp_path / "hf")).counts == {"train": 12, "val": 12}
    parts["validation"].save_to_disk(str(tmp_path / "val-only"))  # one split saved on its own is read as val
    layout = ImageNetData(n_classes=3).layout(ImageNetData().find(tmp_path / "val-only"))
    assert layout.counts == {"val": 12} and layout.size > 0


def test_prepare_records_the_copy_and_verify_decodes_a_sample(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "data"))
    root = write_folder(tmp_path / "inet")
    data = ImageNetData(n_classes=3, verify_per_class=4)  # every image of this folder
    status = data.prepare(root)
    assert status.present and status.source == "recorded" and status.where == f"{root} (folder)"
    record = json.loads(data.pointer_file().read_text())
    assert record["path"] == str(root) and record["images"] == {"train": 12, "val": 12} and record["size"] > 0
    assert data.status().source == "recorded" and data.status().size == record["size"]
    assert data.find().root == root
    checks = data.verify()
    assert [c.path for c in checks] == [root / "train", root / "val"] and not any(c.problem for c in checks)
    task = ImageNet(ImageNetConfig(model=TINY))  # path="" → the recorded copy
    assert task.n_samples("val") == 12 and task.data_status().startswith("present (recorded")
    bad = root / "val" / WNIDS[0] / f"{WNIDS[0]}_01.JPEG"
    bad.write_bytes(b"not a jpeg")
    checks = data.verify()
    assert [(c.path, "readable" in c.problem) for c in checks if c.problem][-1] == (bad, True)
    with pytest.raises(DatasetCorruptError, match=f"Data file {bad} is corrupt: it is not a readable image"):
        list(ImageNet(ImageNetConfig(model=TINY, decode_threads=2)).batches("val", batch_size=4))
    with pytest.raises(DatasetMissingError, match=r"has 3 classes; ImageNet-1k \(ILSVRC 2012\) has 1000"):
        IMAGENET.prepare(root)


def test_layout_problems_say_what_to_do(tmp_path: Path):
    data = ImageNetData(n_classes=3)
    flat = tmp_path / "flat"
    (flat / "val").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetMissingError, match="holds 1 images directly and no class folders"):
        data.prepare(flat)
    root = write_folder(tmp_path / "inet", per_class=1)
    (root / "val" / WNIDS[0] / f"{WNIDS[0]}_00.JPEG").unlink()
    with pytest.raises(DatasetMissingError, match="hold no images"):
        data.prepare(root)
    (root / "val" / WNIDS[0]).rmdir()
    with pytest.raises(DatasetMissingError, match=r"differ from the class list.*missing here \['n01484850'\]"):
        data.prepare(root)
    with pytest.raises(DatasetMissingError, match="holds no ImageNet layout"):
        data.prepare(tmp_path)


def test_missing_data_and_weights_say_exactly_how_to_get_them(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetMissingError) as err:
        IMAGENET.prepare()
    text = str(err.value)
    for needle in (
        "is not present",
        "https://image-net.org/download.php",
        "DIR/val/<wnid>/*.JPEG",
        "ILSVRC2012_devkit_t12.tar.gz",
        "datasets.load_dataset('ILSVRC/imagenet-1k').save_to_disk('DIR')",
        "bench data prepare imagenet --path DIR",
    ):
        assert needle in text
    assert not IMAGENET.status().present and ImageNet().data_status().startswith(
        "missing: no copy recorded; bench data prepare imagenet"
    )
    from dynbench.cli import main

    assert main(["data", "prepare", "imagenet"]) == 2
    assert "bench data prepare imagenet --path DIR" in capsys.readouterr().err
    with pytest.raises(DatasetMissingError, match="image-net.org"):
        ImageNet().n_samples("val")
    with pytest.raises(ImageNetWeightsMissingError, match=r"vit_small_patch16_224\.augreg_in21k_ft_in1k.*torch\.save"):
        ImageNet().backbone(0)
    with pytest.raises(ImageNetWeightsMissingError, match="is not a file"):
        ImageNet(ImageNetConfig(weights=str(tmp_path / "none.pth"))).backbone(0)
    with pytest.raises(ValueError, match="crop_pct"):
        ImageNet(ImageNetConfig(crop_pct=1.5))
    with pytest.raises(ValueError, match="variant must be one of .* Did you mean: vit_s16"):
        ImageNetConfig(variant="vit_s61")


@pytest.mark.slow
def test_bench_run_dense_on_the_tiny_folder_writes_rows(folder: Path, tmp_path: Path):
    from dynbench.api import load_results, plugin_table
    from dynbench.cli import main

    weights = FIXTURES / "timm_tiny.safetensors"
    spec = f"imagenet[path={folder},weights={weights},{TINY_OPTIONS}]"
    fast = ["--set", "measure.min_time_s=0.01", "--set", "measure.min_iters=2", "--set", "measure.timing_inputs=2"]
    fast += ["--set", "measure.memory_inputs=1", "--batch-sizes", "1,4", "--executor", "inline"]
    args = ["run", "--methods", "dense", "--tasks", spec, "--limit", "6", "--out", str(tmp_path / "res"), *fast]
    assert main(args) == 0
    rows, samples = load_results(tmp_path / "res")
    quality = rows[rows.metric == "quality"]
    assert len(quality) == 1 and quality.unit.iloc[0] == "top1" and 0.0 <= quality.value.iloc[0] <= 1.0
    assert int(quality.n.iloc[0]) == 6 and len(samples) == 6
    assert (rows[rows.metric == "flops_count_gap"].value.abs() < 1e-9).all()
    info = next(r for r in plugin_table("tasks") if r["name"] == "imagenet")
    assert info["modality"] == "vision" and info["data"].startswith(("missing", "present"))
