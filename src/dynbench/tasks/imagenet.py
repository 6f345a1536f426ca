"""ImageNet-1k with a pretrained ViT-S/16 or ViT-B/16 converted from a timm/torchvision checkpoint.

Data: the user's ImageNet-1k (Russakovsky et al., https://arxiv.org/abs/1409.0575), an image folder
or a Hugging Face dataset saved to disk; see :mod:`dynbench.tasks.data.imagenet` for the layouts and
``bench data prepare imagenet --path DIR``. Quality = top-1 on the 50,000 validation images (the
``val`` split, the evaluation split; ImageNet's test labels are not public). Images are decoded
batch by batch (:class:`~dynbench.tasks.data.images.LazyImageSplit`).

Splits: ``val`` is evaluated on, so fits calibrate and select on ``minival``
(``Task.validation_split``), held out of the training images as the ViT paper's "minival" is: per
class, the first ``minival_per_class`` (10) images of a permutation seeded by ``split_seed`` (at
most half of a class), 10,000 images of the full set, class-balanced and the same on every machine
for the same copy. ``train`` is the other 1,271,167.
Caveat: the pretrained weights were trained on all of ImageNet's training images, minival included,
so minival is held out from dynbench's fits but not from the backbone — its shallow exits look
better on it than on ``val``. Taking the validation split from the 50,000 would keep it unseen but
change the evaluation set every published top-1 is measured on.

Model: ViT-S/16 or ViT-B/16 at 224 px (Dosovitskiy et al., https://arxiv.org/abs/2010.11929) with
the shapes of timm's and torchvision's: patch 16, d = 384 / 768, 12 blocks, 6 / 12 heads, MLP 4×,
LayerNorm ε = 1e-6, exact GELU, q/k/v biases, CLS token and learned positions. The weights come from
a local file (``weights``), e.g. timm ``vit_small_patch16_224.augreg_in21k_ft_in1k`` (its Hub
``model.safetensors``) or torchvision ``vit_b_16`` (``ViT_B_16_Weights.IMAGENET1K_V1``) saved with
``torch.save(model.state_dict(), path)``; they are converted by :mod:`dynbench.models.vit_import`,
never trained here, and are the same for every seed.

Preprocessing follows the weights' own evaluation transform unless set (``auto``), because each
model was trained with its library's normalisation and scores its published accuracy only under it:
torchvision — resize the shorter side to 256 (bilinear), centre crop 224, ImageNet mean/std;
timm ViTs (their pretrained config) — resize to 248 (crop_pct 0.9, bicubic), crop 224, mean = std =
0.5. The transform is torchvision's PIL path re-implemented with Pillow (exact with the same Pillow
build; see :mod:`dynbench.tasks.data.images` for what differs across builds). timm weights trained
with ImageNet statistics (DeiT, DINO, MAE) need ``normalize=imagenet``. Published top-1 to compare a
run
with: torchvision ``vit_b_16`` ``IMAGENET1K_V1`` 81.072 % (its weights' metadata); timm lists its
weights in ``results/results-imagenet.csv``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dynbench.models.vit import ViT, ViTConfig
from dynbench.models.vit_import import VARIANTS, WeightFormat, detect_format, read_weights, vit_from_state_dict
from dynbench.tasks.base import Split, Task, TensorSplit, TopOneAccuracy, register_task
from dynbench.tasks.data.imagenet import IMAGENET, SplitIndex
from dynbench.tasks.data.images import EvalTransform, Interpolation, LazyImageSplit, default_threads
from dynbench.types import Batch
from dynbench.validation import check_choices, check_range

logger = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
"""Per-channel statistics of ImageNet's training pixels in [0, 1] (torchvision's and most CNNs')."""
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
"""Maps [0, 1] to [-1, 1]: the JAX ViT/AugReg training pipeline's normalisation.

timm keeps it for those weights.
"""
LIBRARY_TRANSFORM: dict[str, tuple[float, Interpolation, str]] = {
    "torchvision": (0.875, "bilinear", "imagenet"),  # ImageClassification(crop_size=224): resize 256
    "timm": (0.9, "bicubic", "inception"),  # timm vision_transformer _cfg: crop_pct .9, bicubic, inception mean/std
}
"""Weight layout → (crop_pct, interpolation, normalisation) of that library's eval transform."""
MAX_IN_MEMORY = 4096
"""Most images :meth:`ImageNet.load_split` holds as one tensor (2.5 GB at 224²).

Larger splits stream.
"""
WEIGHTS_HINT = (
    "Give a local ViT checkpoint with weights=FILE, e.g. timm's (pip install timm): "
    "timm.create_model('vit_small_patch16_224.augreg_in21k_ft_in1k', pretrained=True), or torchvision's: "
    "torchvision.models.vit_b_16(weights='IMAGENET1K_V1') with variant=vit_b16; save either with "
    "torch.save(model.state_dict(), 'vit.pth') (a timm Hub model.safetensors file works as it is)."
)


class ImageNetWeightsMissingError(FileNotFoundError, ValueError):
    """No pretrained weights file is configured or it does not exist.

    A ``ValueError`` too, so the CLI exits 2.
    """


IMAGENET_CHOICE_ADVICE = {
    "variant": "Use vit_s16 (ViT-S/16) or vit_b16 (ViT-B/16).",
    "weights_format": "Use auto to read it from the key names in the file.",
    "normalize": "Use auto for the weights' library's mean and std (module docstring).",
    "interpolation": "Use auto for the weights' library's resize filter.",
}
"""What each choice of :class:`ImageNetConfig` means.

Appended to the message of a value outside them.
"""


@dataclass(frozen=True)
class ImageNetConfig:
    """Data source, model, weights and evaluation transform."""

    path: str = ""  # image folder (train/, val/) or save_to_disk folder; "" = the copy `bench data prepare` recorded
    variant: Literal["vit_s16", "vit_b16"] = "vit_s16"  # ViT-S/16: 9.2 GFLOPs per image, 3.8× fewer than ViT-B/16
    model: ViTConfig | None = None  # another ViT shape instead of `variant` (other sizes, tests); None = the variant
    weights: str = ""  # timm or torchvision ViT checkpoint (.pth/.pt/.bin or .safetensors); required for backbone()
    weights_format: Literal["auto", "timm", "torchvision"] = "auto"  # auto: from the key names in the file
    normalize: Literal["auto", "imagenet", "inception"] = "auto"  # auto: the weights' library (see module docstring)
    interpolation: Literal["auto", "bilinear", "bicubic"] = "auto"  # resize filter; auto: the weights' library
    crop_pct: float = 0.0  # crop / resized shorter side; 0 = the weights' library (torchvision 0.875, timm ViT 0.9)
    max_samples: int = 0  # per split, evenly spaced over the split (every class kept); 0 = all 50,000 val images
    minival_per_class: int = 10  # training images per class held out as `minival`, the validation split (10,000)
    split_seed: int = 0  # which training images minival takes (the same for every training seed)
    decode_threads: int = 0  # threads decoding a batch (Pillow releases the GIL); 0 = the usable CPUs, at most 8

    def __post_init__(self) -> None:
        check_choices(self, IMAGENET_CHOICE_ADVICE)
        check_range("ImageNetConfig.crop_pct", self.crop_pct, 0, 1, advice="Use 0 for the weights' own.")
        check_range("ImageNetConfig.max_samples", self.max_samples, 0, advice="Use 0 for every image.")
        check_range("ImageNetConfig.decode_threads", self.decode_threads, 0, advice="Use 0 for automatic.")
        check_range(
            "ImageNetConfig.minival_per_class",
            self.minival_per_class,
            1,
            advice="Fits calibrate and select on minival, never on val. Use e.g. 10.",
        )


def minival_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of the training images held out as ``minival``.

    Per class (in class order), the first ``per_class`` images of a permutation drawn from one
    generator seeded by ``seed``, and at most half of the class, so a small copy keeps training
    images of every class.

    Args:
        labels: ``(N,)`` class index of every training image.
        per_class: images per class to hold out.
        seed: the permutations' seed.
    """
    order = np.argsort(labels, kind="stable")  # (N,) images grouped by class, in index order within a class
    classes, starts = np.unique(labels[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(order[a:b])[: min(per_class, (b - a) // 2)] for a, b in zip(starts, ends)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """``k`` of ``n`` indices spread evenly (all when ``k`` is 0 or ≥ n).

    Sorted splits keep every class.
    """
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.arange(k) * n // k  # (k,) strictly increasing


@register_task("imagenet")
class ImageNet(Task):
    """ImageNet-1k, pretrained ViT-S/16 or ViT-B/16; quality = top-1 on val.

    The weights come from a timm or torchvision file.
    """

    version = "2"  # 2: minival, the validation split, is taken out of train
    modality = "vision"
    description = "ImageNet-1k (your copy: image folder or HF save_to_disk), pretrained ViT-S/16 or ViT-B/16"
    size = (
        "1,331,167 images (1,271,167 train / 10,000 minival / 50,000 val), 1,000 classes; ViT-S/16 22 M or ViT-B/16 "
        "86 M parameters"
    )
    metric = TopOneAccuracy()
    Config = ImageNetConfig
    # quick profile: 2,000 of the 50,000 validation images (a seeded sample: top-1 within about
    # ±2 points); the pretrained weights are not retrained, so there is no recipe to shorten
    quick_eval_samples = 2000
    eval_split = "val"  # ImageNet's own validation set: the evaluation split (its test labels are not public)
    validation_split = "minival"  # carved from train (module docstring)
    splits = ("train", "minival", "val")

    def __init__(self, config: ImageNetConfig | None = None) -> None:
        super().__init__(config)
        if self.model_config.channels != 3:
            raise ValueError(f"imagenet: images are RGB; model.channels must be 3, got {self.model_config.channels}.")
        self._format: WeightFormat | None = None
        self._lazy: dict[str, LazyImageSplit] = {}
        self._index: dict[str, SplitIndex] = {}  # the copy's train / val listing: train and minival share one

    @property
    def model_config(self) -> ViTConfig:
        """The ViT shape: ``model`` when set, else the ``variant``."""
        return self.config.model or VARIANTS[self.config.variant]

    def _path(self) -> Path | None:
        return Path(self.config.path) if self.config.path else None

    # ---- weights

    def weights_file(self) -> Path:
        """The configured checkpoint file.

        Raises:
            ImageNetWeightsMissingError: none is configured, or it does not exist.
        """
        if not self.config.weights:
            raise ImageNetWeightsMissingError(f"imagenet needs pretrained ViT weights and none are set. {WEIGHTS_HINT}")
        path = Path(self.config.weights).expanduser()
        if not path.is_file():
            raise ImageNetWeightsMissingError(f"imagenet: weights={str(path)!r} is not a file. {WEIGHTS_HINT}")
        return path

    def source_files(self) -> tuple[Path, ...]:
        """The weights file (its content is part of the cache keys), when one is set."""
        return (Path(self.config.weights).expanduser(),) if self.config.weights else ()

    def weight_format(self) -> WeightFormat:
        """``weights_format``, or the layout detected from the file's keys (read once per task)."""
        if self.config.weights_format != "auto":
            return self.config.weights_format
        if self._format is None:
            self._format = detect_format(read_weights(self.weights_file()))
        return self._format

    def build_backbone(self) -> ViT:
        """An untrained ViT of the configured shape (:meth:`backbone` gives the pretrained one)."""
        return ViT(self.model_config)

    def n_blocks(self) -> int:
        """Depth from the config, without reading the weights."""
        return self.model_config.n_layers

    def backbone(self, seed: int, *, cache_dir: Path | None = None, device: torch.device | str = "cpu") -> ViT:
        """The pretrained ViT converted from ``weights``, the same for every ``seed``.

        Nothing is trained.

        Args:
            seed: ignored: pretrained weights do not depend on it.
            cache_dir: unused: converting is a rename and reshape, as fast as loading a cached copy.
            device: where the model is returned.

        Raises:
            ImageNetWeightsMissingError: no weights file.
            WeightsError: the file is unreadable or does not match the configured shape.
        """
        state = read_weights(self.weights_file())
        fmt = self.config.weights_format if self.config.weights_format != "auto" else detect_format(state)
        self._format = fmt
        model = vit_from_state_dict(state, self.model_config, fmt)
        logger.info("Loaded %s ViT weights from %s", fmt, self.config.weights)
        return model.to(device)

    # ---- data

    def transform(self) -> EvalTransform:
        """The evaluation transform: configured values, ``auto`` ones from the weights' library.

        Without a weights file ``auto`` means torchvision's transform (resize 256, crop 224,
        ImageNet statistics).
        """
        cfg = self.config
        auto = cfg.normalize == "auto" or cfg.interpolation == "auto" or cfg.crop_pct == 0.0
        library = self.weight_format() if auto and cfg.weights else "torchvision"
        crop_pct, interpolation, normalize = LIBRARY_TRANSFORM[library]
        crop_pct = cfg.crop_pct or crop_pct
        interpolation = interpolation if cfg.interpolation == "auto" else cfg.interpolation
        normalize = normalize if cfg.normalize == "auto" else cfg.normalize
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalize == "imagenet" else (INCEPTION_MEAN, INCEPTION_STD)
        crop = self.model_config.image_size
        resize = math.floor(crop / crop_pct)  # timm's rule; 224 / 0.875 = 256 exactly
        return EvalTransform(crop=crop, resize=resize, interpolation=interpolation, mean=mean, std=std)

    def check_readable(self, split: str, *, via: str = "") -> None:
        """As :meth:`Task.check_readable`, saying why there is no ``test`` split.

        Raises:
            ValueError: an unknown split (``test``: its labels are not public).
            EvalSplitAccessError: the split is sealed.
        """
        if split == "test":
            raise ValueError(
                "imagenet has no labelled test split (ImageNet's test labels are not public); quality is "
                "reported on 'val', and fits calibrate and select on 'minival' (carved from train)."
            )
        super().check_readable(split, via=via)

    def source_rows(self, labels: np.ndarray, split: Split) -> np.ndarray:
        """Indices of ``split``'s images in the copy's split they come from, before ``max_samples``.

        ``val``: all of the copy's val; ``train`` and ``minival``: complementary parts of its train
        (:func:`minival_rows`).

        Args:
            labels: ``(N,)`` labels of the copy's val (for ``val``) or train (for ``train`` and
                ``minival``).
            split: the task's split.
        """
        if split == "val":
            return np.arange(len(labels))
        held = minival_rows(labels, self.config.minival_per_class, self.config.split_seed)
        return held if split == "minival" else np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)

    def lazy_split(self, split: Split) -> LazyImageSplit:
        """The split as labels plus image references (listed once per task), decoded per batch.

        Raises:
            DatasetMissingError: no ImageNet copy, or it lacks the split (``train`` for
                ``minival``); says how to get it.
            ValueError: an unknown split (``test``), or the copy's class count differs from the
                model's outputs.
            EvalSplitAccessError: the split is sealed (a fit reading ``val``).
        """
        self.check_readable(split, via=f"ImageNet.lazy_split({split!r})")
        if split not in self._lazy:
            copy = IMAGENET.find(self._path())
            reader = IMAGENET.reader(copy)
            classes = reader.classes()
            if len(classes) != self.model_config.n_classes:
                raise ValueError(
                    f"imagenet: the data at {copy.root} has {len(classes)} classes, the model has "
                    f"{self.model_config.n_classes} outputs. Use the full data set or a model with that many classes."
                )
            source = "val" if split == "val" else "train"
            if source not in self._index:
                self._index[source] = reader.index(source)
            index = self._index[source]
            rows = self.source_rows(index.labels, split)  # (N,)
            keep = rows[evenly_spaced(len(rows), self.config.max_samples)]
            self._lazy[split] = LazyImageSplit(
                index.labels[keep],
                lambda idx, keep=keep, fetch=index.fetch: fetch(keep[idx]),
                self.transform(),
                self.config.decode_threads or default_threads(),
                lambda i, keep=keep, name=index.name: name(int(keep[i])),
            )
        return self._lazy[split]

    def batches(
        self, split: Split, *, batch_size: int, seed: int = 0, shuffle: bool = False, limit: int | None = None
    ) -> Iterator[Batch]:
        """Decoded batches of ``split`` in a fixed order, at most ``limit`` samples.

        The order is seeded when shuffled.
        """
        return self.lazy_split(split).batches(batch_size=batch_size, seed=seed, shuffle=shuffle, limit=limit)

    def n_samples(self, split: Split) -> int:
        """Images in ``split`` (after ``max_samples``), counted without decoding any."""
        return len(self.lazy_split(split))

    def load_split(self, split: Split) -> TensorSplit:
        """The whole split decoded into memory: only for small splits (tests, ``max_samples``).

        Raises:
            ValueError: the split has more than ``MAX_IN_MEMORY`` images; use :meth:`batches`, which
                streams.
        """
        lazy = self.lazy_split(split)
        if len(lazy) > MAX_IN_MEMORY:
            raise ValueError(
                f"imagenet: the {split} split has {len(lazy):,} images, too many to hold decoded in memory (at most "
                f"{MAX_IN_MEMORY:,}). Iterate task.batches(...) instead, or set max_samples."
            )
        batch = next(lazy.batches(batch_size=max(1, len(lazy)), seed=0, shuffle=False, limit=None))
        return TensorSplit(batch.inputs, batch.targets)

    def data_problem(self) -> str | None:
        """The problem and every way to get ImageNet, when no usable copy is found (cheap)."""
        status = IMAGENET.status(self._path())
        if status.present:
            return None
        return f"Task 'imagenet' has no data: {status.problem}\n{IMAGENET.how_to_get()}"

    def problems(self) -> list[str]:
        """A weights file that is not set or not a file, found before anything runs."""
        try:
            self.weights_file()
        except ImageNetWeightsMissingError as exc:
            return [str(exc)]
        return []

    def data_status(self) -> str:
        """Where the data is (cheap: no listing) and whether a weights file is set."""
        status = IMAGENET.status(self._path())
        if not status.present and self.config.path:
            return f"missing: {status.problem}"
        if not status.present:
            return "missing: no copy recorded; bench data prepare imagenet --path DIR (says how to get ImageNet)"
        weights = "weights set" if self.config.weights else "no weights (set weights=FILE)"
        return f"present ({status.source}: {status.where}); {weights}"
