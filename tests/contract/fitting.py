"""Methods fitted once per test session for the contract tests, as the harness fits them.

Every (method, fit identity, toy task) is fitted once, with seed 0 and the task's evaluation split
sealed — so every contract test's fit is also a check that no fit reads the evaluation split — and
shared by all the contract test files (`from fitting import fitted`); a configuration that shares a
fit identity (a control such as ``tinv[policy=static]``, an execution option such as ``compiled``)
reuses the fit, as the harness's fit cache does.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch

from dynbench.config import build_dataclass
from dynbench.methods.base import METHODS, DynamicModel, Method
from dynbench.models.backbone import Backbone
from dynbench.models.training import config_digest
from dynbench.types import Batch

TOY_TASKS = ("toy-vision", "toy-text")  # 2 blocks, d=32, seeded synthetic data
N_EVAL = 16  # evaluation samples the contract tests run


class Fitted(NamedTuple):
    """A fitted method and the dense backbone it wrapped, copied before the wrap and the fit."""

    method: Method
    model: DynamicModel
    pristine: Backbone


def method_with(name: str, options: dict | None = None) -> Method:
    """The registered method ``name`` with ``options`` (strings or values, validated as the CLI
    validates them)."""
    cls = METHODS.get(name)
    if not options:
        return cls()
    config, errors = build_dataclass(cls.Config, options, f"method '{name}'")
    if errors:
        raise ValueError("; ".join(errors))
    return cls(config)


def eval_batch(toy, task_name: str, n: int = N_EVAL) -> Batch:
    """The first ``n`` samples of the toy task's evaluation split."""
    task, _ = toy(task_name)
    return next(task.batches(task.eval_split, batch_size=n))


def fit(toy, method: Method, task_name: str) -> Fitted:
    """Wrap a copy of the toy backbone and fit ``method`` (seed 0) with the evaluation split sealed.

    A method that sees the evaluation labels (an upper bound) is then fitted on the evaluation batch
    the tests use.
    """
    task, backbone = toy(task_name)
    pristine = copy.deepcopy(backbone).eval()
    model = method.wrap(copy.deepcopy(backbone))
    torch.manual_seed(0)
    with task.sealed(task.eval_split, reader=f"the fit of method '{method.name}'"):
        method.fit(model, task, seed=0)
    if method.sees_eval_labels:
        budgets = method.resolve_budgets(None, model.backbone.n_blocks)
        method.fit_eval(model.eval(), task, [eval_batch(toy, task_name)], budgets=budgets, seed=0)
    return Fitted(method, model.eval(), pristine)


_fits: dict[tuple, Fitted] = {}  # (name, version, fit digest, task) → the fit
_made: dict[tuple, Fitted] = {}  # (name, options, task) → that configuration on its fit


def fitted(toy, name: str, task_name: str, options: dict | None = None) -> Fitted:
    """``name[options]`` fitted once per session on a toy task; configurations with one fit identity
    share it."""
    key = (name, tuple(sorted((options or {}).items())), task_name)
    if key not in _made:
        method = method_with(name, options)
        fit_key = (name, method.version, config_digest(method.fit_identity()), task_name)
        if fit_key not in _fits:
            _fits[fit_key] = fit(toy, method, task_name)
        base = _fits[fit_key]
        if base.method.config == method.config:
            _made[key] = base
        else:  # the fitted state, loaded into this configuration's own wrap (the harness's fit cache does the same)
            model = method.wrap(copy.deepcopy(base.pristine))
            model.load_state_dict(base.model.state_dict())
            _made[key] = Fitted(method, model.eval(), base.pristine)
    return _made[key]
