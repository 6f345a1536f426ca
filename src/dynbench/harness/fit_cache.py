"""The method-fit cache: wrap the backbone, fit the method once, and reuse the fit across runs.

A fit is cached under the backbone's key, the method's name and version, and the digest of
:meth:`Method.fit_identity` (the options that change what the fit makes), so every run that measures
the same fitted model (another hardware target, batch size or budget list) loads it instead of
fitting again. The cache holds what the fit made or changed, not the backbone it started from: a
layer ranking is a few bytes even on a 135 M-parameter model, while a method that retrains or
fine-tunes the backbone keeps those weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from dynbench.harness.planning import RunPlan
from dynbench.methods.base import DynamicModel
from dynbench.models.backbone import Backbone
from dynbench.models.training import atomic_torch_save, config_digest
from dynbench.tasks.base import backbone_key
from dynbench.types import Batch


def fitted_model(plan: RunPlan, backbone: Backbone, cache_dir: Path | None) -> DynamicModel:
    """Wrap the backbone and fit the method, reusing a cached fit of the same backbone and config.

    The fit runs with the task's evaluation split sealed (:meth:`Task.sealed`): it may read
    ``train`` and the validation split only, so nothing it chooses is chosen on the samples it is
    scored on. Only :func:`fitted_eval` (an upper bound's ``fit_eval``) sees the evaluation samples.

    Raises:
        EvalSplitAccessError: the method's fit read the evaluation split.
    """
    model = plan.method.wrap(backbone)
    if plan.method.learns():
        seed, task = plan.spec.seed, plan.task
        with task.sealed(task.eval_split, reader=f"the fit of method '{plan.method.name}'"):
            cached_fit(plan, model, "", cache_dir, lambda: plan.method.fit(model, task, seed=seed))
    return model.eval()


def fitted_eval(plan: RunPlan, model: DynamicModel, batches: list[Batch], cache_dir: Path | None) -> None:
    """Fit a method that sees the evaluation labels (an upper bound) on exactly ``batches``, cached.

    Nothing happens for other methods. The cache key adds to :func:`fitted_model`'s the evaluation
    set (split, ``--limit``, eval batch size) and the budgets, so a cached solution is only reused
    for the same samples.
    """
    method, spec = plan.method, plan.spec
    if not method.sees_eval_labels:
        return
    evaluation = {
        "split": plan.task.eval_split,
        "limit": spec.eval_limit,  # --limit and the quick profile's sample: the samples fitted on
        "batch_size": spec.measure.eval_batch_size,
        "budgets": list(plan.budgets),
    }
    cached_fit(
        plan,
        model,
        f"__eval-{config_digest(evaluation)}",
        cache_dir,
        lambda: method.fit_eval(model, plan.task, batches, budgets=plan.budgets, seed=spec.seed),
    )


def cached_fit(
    plan: RunPlan, model: DynamicModel, suffix: str, cache_dir: Path | None, fit: Callable[[], None]
) -> None:
    """Load ``model``'s fitted state from the cache, or run ``fit`` (seeded) and store what it made.

    The key: backbone key, method name, version and the digest of :meth:`Method.fit_identity`, plus
    ``suffix``. What is stored is what the fit made or changed (:func:`fitted_state`).
    """
    path = fit_path(plan, cache_dir, suffix)
    if path is not None and path.exists():
        load_fitted_state(model, torch.load(path, map_location="cpu", weights_only=True), path)
        return
    before = tensor_versions(model)
    torch.manual_seed(plan.spec.seed)
    fit()
    if path is not None:
        atomic_torch_save(fitted_state(model, before), path)


def fit_path(plan: RunPlan, cache_dir: Path | None, suffix: str = "") -> Path | None:
    """Where :func:`cached_fit` keeps the fit of ``plan`` (``None`` without a cache).

    The key: backbone key, method name, version and the digest of :meth:`Method.fit_identity`, plus
    ``suffix``. The progress estimate asks whether it exists (a fit to come, or one to load).
    """
    method = plan.method
    key = (
        f"{backbone_key(plan.task, plan.spec.seed)}__{method.name}-v{method.version}-"
        f"{config_digest(method.fit_identity())}{suffix}"
    )
    return None if cache_dir is None else Path(cache_dir) / "methods" / f"{key}.pt"


def tensor_versions(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``name → (identity, in-place version)`` of every backbone tensor in the model's state."""
    return {k: (id(v), v._version) for k, v in model.state_dict(keep_vars=True).items() if k.startswith("backbone.")}


def fitted_state(model: nn.Module, before: dict[str, tuple[int, int]]) -> dict[str, Tensor]:
    """The state dict without the backbone tensors the fit left untouched (same tensor, version)."""
    state = model.state_dict(keep_vars=True)
    kept = {k: v for k, v in state.items() if before.get(k) != (id(v), v._version)}
    return {k: v.detach() for k, v in kept.items()}


def load_fitted_state(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Load a cached fit onto a freshly wrapped model; only backbone tensors may be absent from it.

    Raises:
        ValueError: the cached file holds keys the model lacks or misses method state (a stale
            cache file).
    """
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"Cached fit {path} does not match the method's model (unexpected {result.unexpected_keys[:3]}, "
            f"missing {missing[:3]}). Delete it and run again."
        )
