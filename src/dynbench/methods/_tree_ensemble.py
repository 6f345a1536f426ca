"""A fitted gradient-boosted tree ensemble held in buffers and evaluated with tensor ops.

Part of the Transformer^-1 reconstruction (Ji et al., "Transformer^-1: Input-Adaptive Computation
for Resource-Constrained Deployment", https://arxiv.org/abs/2501.16394;
:mod:`dynbench.methods.transformer_inverse`): its *complexity predictor* is a gradient-boosted tree
classifier. We fit scikit-learn's ``HistGradientBoostingClassifier`` (a LightGBM stand-in) and copy
its trees into flat node arrays, so the fitted predictor lives in the model's state dict (the
harness caches fits through it) and runs on the model's device without sklearn at inference; 2-fold
cross-fitting gives out-of-sample predictions on the fit samples. Kept apart from the plugin because
it knows nothing about transformers: features in, labels out.

Cost: a traversal is comparisons and additions only, which the harness's FLOP convention (matmuls
and attention) counts as 0; :meth:`TreeEnsemble.ops_per_sample` reports the count instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynbench.methods._host_copy import HostCopy

__all__ = ["TreeEnsemble", "traverse"]


def traverse(
    features: Tensor,
    feature: Tensor,
    threshold: Tensor,
    left: Tensor,
    right: Tensor,
    leaf: Tensor,
    missing_left: Tensor,
    roots: Tensor,
    steps: int,
) -> Tensor:
    """``(B, n_trees)`` leaf of every tree per sample (sklearn: go left when ``x <= threshold``)."""
    node = roots.expand(features.shape[0], -1)  # (B, n_trees)
    for _ in range(steps):
        x = features.gather(1, feature[node])  # (B, n_trees) the value each node tests
        go_left = (x <= threshold[node]) | (torch.isnan(x) & missing_left[node])
        node = torch.where(leaf[node], node, torch.where(go_left, left[node], right[node]))
    return node


class TreeEnsemble(nn.Module):
    """A fitted ``HistGradientBoostingClassifier`` as node arrays (buffers) run by tensor ops.

    The buffers' sizes depend on the fitted trees, so loading a state dict resizes them first.

    Buffers:
        feature, threshold, left, right, leaf, missing_left, value: ``(M,)`` per node of all trees
            (child indices global); roots: ``(n_trees,)`` root of each tree, iteration-major, one
            tree per raw output;
        baseline: ``(n_out,)`` initial raw score (1 output for two classes, else one per class);
        classes: ``(n_classes,)`` label of each class; steps: ``(1,)`` traversal steps (the deepest
            leaf's depth). Before a fit every buffer is empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("feature", torch.zeros(0, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("left", torch.zeros(0, dtype=torch.long))
        self.register_buffer("right", torch.zeros(0, dtype=torch.long))
        self.register_buffer("leaf", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("missing_left", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("value", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("roots", torch.zeros(0, dtype=torch.long))
        # every buffer's size comes from the fit: empty placeholders until then, so a cached fit's
        # shapes are not compared against them (models.cached_state.state_mismatch)
        self.register_buffer("baseline", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("classes", torch.zeros(0, dtype=torch.long))
        self.register_buffer("steps", torch.zeros(0, dtype=torch.long))
        self._host_steps = HostCopy()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """Resize each buffer to the incoming one's shape: the trees' size is known once fitted."""
        for name, buf in self._buffers.items():
            incoming = state_dict.get(prefix + name)
            if buf is not None and incoming is not None and incoming.shape != buf.shape:
                self._buffers[name] = torch.empty(incoming.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def n_trees(self) -> int:
        """Trees in the ensemble (0 for a constant predictor)."""
        return int(self.roots.numel())

    def ops_per_sample(self) -> float:
        """Comparisons and additions one prediction costs: ``n_trees · (steps + 1)``."""
        return float(self.n_trees * (self.traversal_steps() + 1))

    def traversal_steps(self) -> int:
        """The traversal's loop count on the host, read once per fit (:class:`HostCopy`)."""
        return int(sum(self._host_steps(self.steps)))  # (1,) once fitted, (0,) before: 0 steps

    def fit(self, features: Tensor, labels: Tensor, *, iterations: int, leaves: int, depth: int, seed: int) -> None:
        """Fit a ``HistGradientBoostingClassifier`` and load its trees.

        One distinct label gives a constant predictor (sklearn refuses to fit a single class).
        sklearn is imported here, not at module import: only fitting needs it.

        Args:
            features: ``(N, F)`` float64 features (CPU).
            labels: ``(N,)`` long class labels.
            iterations: boosting rounds (trees per class).
            leaves: maximum leaves per tree.
            depth: maximum tree depth (bounds the traversal steps).
            seed: sklearn's ``random_state``.
        """
        from sklearn.ensemble import HistGradientBoostingClassifier

        if len(torch.unique(labels)) == 1:
            self.load_constant(int(labels[0]))
            return
        clf = HistGradientBoostingClassifier(
            max_iter=iterations,
            max_leaf_nodes=leaves,
            max_depth=depth,
            early_stopping=False,
            random_state=seed,
        )
        clf.fit(features.numpy(), labels.numpy())
        self.load_sklearn(clf)

    def cross_fitted_predictions(
        self, features: Tensor, labels: Tensor, *, iterations: int, leaves: int, depth: int, seed: int
    ) -> Tensor:
        """``(N,)`` labels predicted by trees fitted on the other half (2-fold cross-fitting).

        A learner downstream of the trees must see the predictions it will get at deployment, which
        are out-of-sample; predicting the trees' own training samples would be optimistic.
        Cross-fitting gives every sample an out-of-sample prediction, so none is held back. The
        ensemble is scratch here: it ends fitted on one half, so :meth:`fit` it on all samples
        after. Arguments as :meth:`fit`; ``seed`` also draws the halves.
        """
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        halves = (order[: len(order) // 2], order[len(order) // 2 :])
        predicted = torch.zeros(len(labels), dtype=torch.long)
        for fit_idx, out_idx in (halves, halves[::-1]):
            self.fit(features[fit_idx], labels[fit_idx], iterations=iterations, leaves=leaves, depth=depth, seed=seed)
            with torch.no_grad():
                predicted[out_idx] = self(features[out_idx]).cpu()
        return predicted

    def load_sklearn(self, clf: Any) -> None:
        """Copy in a fitted sklearn classifier's trees (private sklearn attributes; tests check)."""
        trees = [tree.nodes for iteration in clf._predictors for tree in iteration]  # structured node arrays
        if any(t["is_categorical"].any() for t in trees):
            raise ValueError("TreeEnsemble supports numerical splits only; got a categorical split.")
        sizes = np.array([len(t) for t in trees], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes  # first node of each tree in the flat arrays
        nodes = np.concatenate(trees)
        shift = np.repeat(starts, sizes)  # child indices are per tree: make them global

        def column(values: np.ndarray, dtype: torch.dtype) -> Tensor:
            np_type = np.float64 if dtype == torch.float64 else np.int64
            return torch.from_numpy(np.ascontiguousarray(values, dtype=np_type)).to(self.baseline.device, dtype)

        self.feature = column(nodes["feature_idx"], torch.long)
        self.threshold = column(nodes["num_threshold"], torch.float64)
        self.left = column(nodes["left"].astype(np.int64) + shift, torch.long)
        self.right = column(nodes["right"].astype(np.int64) + shift, torch.long)
        self.leaf = column(nodes["is_leaf"], torch.bool)
        self.missing_left = column(nodes["missing_go_to_left"], torch.bool)
        self.value = column(nodes["value"], torch.float64)
        self.roots = column(starts, torch.long)
        self.baseline = column(np.asarray(clf._baseline_prediction).reshape(-1), torch.float64)
        self.classes = column(np.asarray(clf.classes_), torch.long)
        self.steps = column(np.asarray(nodes["depth"].max()), torch.long)

    def load_constant(self, label: int) -> None:
        """A predictor without trees that always answers ``label`` (all training labels equal)."""
        device = self.baseline.device
        for name in ("feature", "left", "right", "roots"):
            setattr(self, name, torch.zeros(0, dtype=torch.long, device=device))
        for name in ("threshold", "value"):
            setattr(self, name, torch.zeros(0, dtype=torch.float64, device=device))
        self.leaf = torch.zeros(0, dtype=torch.bool, device=device)
        self.missing_left = torch.zeros(0, dtype=torch.bool, device=device)
        self.baseline = torch.zeros(1, dtype=torch.float64, device=device)
        self.classes = torch.tensor([label], dtype=torch.long, device=device)
        self.steps = torch.zeros(1, dtype=torch.long, device=device)

    def raw(self, features: Tensor) -> Tensor:
        """``(B, n_out)`` float64 raw scores: baseline + leaves (sklearn's ``_raw_predict``)."""
        x = features.double()  # (B, F)
        B, n_out = x.shape[0], self.baseline.numel()
        if self.n_trees == 0:
            return self.baseline.expand(B, n_out).clone()
        node = traverse(
            x,
            self.feature,
            self.threshold,
            self.left,
            self.right,
            self.leaf,
            self.missing_left,
            self.roots,
            self.traversal_steps(),
        )  # (B, n_trees)
        leaves = self.value[node].view(B, -1, n_out)  # (B, iterations, n_out)
        return self.baseline + leaves.sum(dim=1)  # (B, n_out) additions only

    def forward(self, features: Tensor) -> Tensor:
        """``(B, F)`` features → ``(B,)`` long predicted labels (sklearn's ``predict``)."""
        raw = self.raw(features)  # (B, n_out)
        index = (raw[:, 0] > 0).long() if raw.shape[1] == 1 else raw.argmax(dim=1)  # (B,)
        return self.classes[index.clamp(max=self.classes.numel() - 1)]
