"""The method-fit cache: wrap the backbone, fit the method once, and reuse the fit across runs.

A fit is cached under the backbone's key, the method's name and version, and the digest of
:meth:`Method.fit_identity` (the options that change what the fit makes), so every run that measures
the same fitted model (another hardware target, batch size or budget list) loads it instead of
fitting again. The cache holds what the fit made or changed, not the backbone it started from: a
layer ranking is a few bytes even on a 135 M-parameter model, while a method that retrains or
fine-tunes the backbone keeps those weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from dynbench.harness.planning import RunPlan
from dynbench.methods.base import DynamicModel
from dynbench.models.backbone import Backbone
from dynbench.models.cached_state import read_state, set_aside, state_mismatch
from dynbench.models.training import NonFiniteError, atomic_torch_save, config_digest
from dynbench.tasks.base import backbone_key
from dynbench.types import Batch


def fitted_model(plan: RunPlan, backbone: Backbone, cache_dir: Path | None) -> DynamicModel:
    """Wrap the backbone and fit the method, reusing a cached fit of the same backbone and config.

    The fit runs on the run's device (a GPU target fits on its GPU, a modeled target on the host);
    what it made is cached as host tensors, so a fit made on one device is reused on every other
    (the key holds no device). The fit runs with the task's evaluation split sealed
    (:meth:`Task.sealed`): it may read ``train`` and the validation split only, so nothing it
    chooses is chosen on the samples it is scored on. Only :func:`fitted_eval` (an upper bound's
    ``fit_eval``) sees the evaluation samples.

    Raises:
        EvalSplitAccessError: the method's fit read the evaluation split.
    """
    model = plan.method.wrap(backbone).to(plan.hardware.device)  # fits run on the target's device
    if plan.method.learns():
        seed, task = plan.spec.seed, plan.task
        with task.sealed(task.eval_split, reader=f"the fit of method '{plan.method.name}'"):
            cached_fit(plan, model, "", cache_dir, lambda: plan.method.fit(model, task, seed=seed))
    return model.eval()


def fitted_eval(plan: RunPlan, model: DynamicModel, batches: Sequence[Batch], cache_dir: Path | None) -> None:
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
        nan_marks_absent=True,
    )


def cached_fit(
    plan: RunPlan,
    model: DynamicModel,
    suffix: str,
    cache_dir: Path | None,
    fit: Callable[[], None],
    *,
    nan_marks_absent: bool = False,
) -> None:
    """Load ``model``'s fitted state from the cache, or run ``fit`` (seeded) and store what it made.

    The key: backbone key, method name, version and the digest of :meth:`Method.fit_identity`, plus
    ``suffix``. What is stored is what the fit made or changed (:func:`fitted_state`). A cached file
    that cannot be used (:func:`load_cached_fit`) is moved aside and the method is fitted again. A
    fit that puts NaN into a tensor that held none fails and caches nothing, unless
    ``nan_marks_absent`` (the oracle's evaluation fit writes NaN where a held-out figure does not
    exist); a NaN placeholder the fit leaves alone is no error.

    Raises:
        ValueError: a cached file passed the checks but its model refused it while loading, so the
            model may be half loaded: the file is moved aside and the run fails; run it again.
        NonFiniteError: the fit left NaN in the model's state.
    """
    path = fit_path(plan, cache_dir, suffix)
    if path is not None and path.exists() and load_cached_fit(model, path):
        return
    before = tensor_versions(model)
    had_nan = _holding_nan(model.state_dict())  # placeholders: layer_skip's importance before a ranking
    torch.manual_seed(plan.spec.seed)
    fit()
    state = fitted_state(model, before)
    nan = sorted(_holding_nan(state) - had_nan)
    if nan and not nan_marks_absent:  # a NaN the fit made is never a fitted value (Inf may be one)
        raise NonFiniteError(
            f"The fit of method '{plan.method.name}' left NaN in {len(nan)} tensor(s) ({', '.join(nan[:3])}"
            f"{' …' if len(nan) > 3 else ''}); nothing was cached. Check the method's options and the task's data."
        )
    if path is not None:
        atomic_torch_save(state, path)


def _holding_nan(state: dict[str, Tensor]) -> set[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN."""
    return {k for k, v in state.items() if v.is_floating_point() and bool(torch.isnan(v).any())}


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
    return {k: v.detach().cpu() for k, v in kept.items()}  # host tensors: one cache file for every device


def load_cached_fit(model: nn.Module, path: Path) -> bool:
    """Load the fit cached at ``path`` onto a freshly wrapped model; ``False``: it cannot be used.

    A file that cannot be read, or whose keys or shapes do not fit the model, is checked before
    anything is loaded, moved aside to ``<name>.corrupt`` with a warning naming it
    (:mod:`dynbench.models.cached_state`), and ``False`` asks for a new fit.

    Raises:
        ValueError: the model refused the state while loading it (it may be half loaded); the
            file has been moved aside, so running again fits anew.
    """
    what, redo = "cached method fit", "fitting the method again"
    state = read_state(path, what, redo)
    if state is None:
        return False
    mismatch = state_mismatch(model.state_dict(), state, may_lack=lambda key: key.startswith("backbone."))
    if mismatch is not None:
        set_aside(path, what, f"it does not fit the method's model ({mismatch})", redo)
        return False
    if (problem := _load(model, state)) is not None:
        moved = set_aside(path, what, f"the method's model refused it while loading ({problem})", "the run fails")
        raise ValueError(
            f"Cached fit {path} was refused by the method's model while loading ({problem})"
            f"{f'; it was moved to {moved.name}' if moved is not None else ''}. Run again: the method is fitted anew."
        )
    return True


def load_fitted_state(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Load a cached fit onto a freshly wrapped model; only backbone tensors may be absent from it.

    Raises:
        ValueError: the cached file holds keys the model lacks or misses method state (a stale
            cache file), or a tensor the model cannot take.
    """
    if (problem := _load(model, state)) is not None:
        raise ValueError(f"Cached fit {path} does not match the method's model ({problem}). Delete it and run again.")


def _load(model: nn.Module, state: dict[str, Tensor]) -> str | None:
    """Load ``state`` (backbone tensors may be absent); what went wrong, or ``None``."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a size mismatch, reported after the tensors that fit were copied
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return lines[-1] if lines else type(exc).__name__
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if result.unexpected_keys or missing:
        return f"unexpected {result.unexpected_keys[:3]}, missing {missing[:3]}"
    return None
