"""The method contract: a method turns a dense backbone into a dynamic model with one compute knob.

A method is one file, one class, one decorator::

    @register_method("layer_skip")
    class LayerSkip(Method):
        Config = LayerSkipConfig  # frozen dataclass, every field with a default and a reason
        def wrap(self, backbone): ...  # → DynamicModel, no training here
        def fit(self, model, task, *, seed): ...  # exit heads, routers, bandits, policies train
        def budgets(self, n_blocks): ...  # operating points of an L-block backbone, full first

Every piece of fitted state lives in the dynamic model's ``state_dict`` (parameters and buffers), so
the harness can cache and reload it. At the full budget a dynamic model must reproduce the dense
backbone's outputs (or, for a method whose fit changes the backbone's weights, the network it names
in ``reference_network``).

A plugin never imports another plugin. What several methods share (exit heads, layer sets) lives in
a private module ``methods/_<part>.py`` that declares a ``VERSION``; a method lists the parts it
uses in ``shared_parts``, and its recorded ``version`` (rows, run keys, fit-cache keys) is its own
version plus ``+<part><VERSION>`` for every part bumped past ``"1"`` (:func:`recorded_version`), so
bumping a part re-runs every method that uses it and no other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from dynbench.models.backbone import Backbone
from dynbench.registry import Registry
from dynbench.types import Batch, Budget, NoOptions, StepOutput, Trace

if TYPE_CHECKING:
    from dynbench.tasks.base import Task


class ControllerClock:
    """What the harness's controller pass calls on entering and leaving a controller span.

    The span is :meth:`DynamicModel.controller_span`.

    The object is the span's context manager too. It holds no state of its own (the harness keeps
    the nesting depth it shares with its module hooks), so spans nest and one object serves every
    span of the pass.

    Args:
        enter: called when a span is entered.
        leave: called when it is left, also when the block raised.
    """

    __slots__ = ("_enter", "_leave")

    def __init__(self, enter: Callable[[], None], leave: Callable[[], None]) -> None:
        self._enter, self._leave = enter, leave

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._leave()


# what a span is while no clock is installed: shared, so a span allocates nothing
_NO_SPAN = nullcontext()
# the installed clock; process-wide, as the harness times one model at a time
_clock: ControllerClock | None = None


@contextmanager
def controller_clock(clock: ControllerClock) -> Iterator[None]:
    """Install ``clock`` for the block: every controller span entered inside it calls the clock.

    Used by :func:`dynbench.harness.timing.time_controllers`; removed when the block ends, also on
    an exception.

    Raises:
        RuntimeError: a clock is installed already (controller passes do not nest).
    """
    global _clock
    if _clock is not None:
        raise RuntimeError(
            f"A controller clock is installed already ({_clock!r}); controller passes cannot nest. Let the running "
            "pass (timing.time_controllers) finish before starting another."
        )
    _clock = clock
    try:
        yield
    finally:
        _clock = None


class DynamicModel(nn.Module, ABC):
    """A backbone wrapped by a method: ``forward`` returns logits and the per-sample trace of it.

    Args:
        backbone: the dense model being made dynamic; its weights are shared, not copied.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    @abstractmethod
    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Run ``inputs`` at one operating point.

        Args:
            inputs: the task input batch (``Batch.inputs``); targets are never shown to a method.
            budget: the compute knob, one of the method's budgets.

        Returns:
            Logits shaped like the backbone's, and a :class:`~dynbench.types.Trace` of what actually
            ran.
        """

    def controller_modules(self) -> list[nn.Module]:
        """Modules whose FLOPs are decision overhead (exit heads, routers …), reported apart."""
        return []

    def controller_span(self) -> AbstractContextManager[None]:
        """Mark controller work outside an eager call of a controller module, for the clock.

        Wrap the *call* of a traced, scripted, compiled or CUDA-graph controller stage (predictor,
        policy step, exit-head probe) in ``with self.controller_span():``. Such a call fires no
        module hooks, so without a span its time counts as the rest of the call. Never put a span
        inside code that is traced or compiled: the graph does not keep it. Spans share one nesting
        depth with the hooks on :meth:`controller_modules`, so a hooked module inside a span, or a
        span inside one, counts once.

        Returns:
            The clock of the harness's controller pass
            (:func:`dynbench.harness.timing.time_controllers`) while that pass runs; otherwise one
            shared no-op context (a span then costs a global read and an empty `with`).
        """
        clock = _clock
        return _NO_SPAN if clock is None else clock

    def operating_modules(self, budget: Budget) -> list[nn.Module]:
        """The modules whose tensors a deployment of the one operating point ``budget`` must hold.

        Exactly what :meth:`forward` at ``budget`` reads: ``peak_mem_bytes`` counts their distinct
        storages, while ``resident_bytes`` counts the whole model. The default, the whole model, is
        right for a method whose every budget may read every tensor (per-sample paths); a method
        that keeps state per budget (one trained model per capacity) or statically skips modules at
        a budget returns only what that budget reads.

        Args:
            budget: one of the method's budgets.
        """
        return [self]

    def trace_metrics(self, trace: Trace) -> dict[str, tuple[float, str, bool]]:
        """Method-specific metrics of an eval pass: ``name → (value, unit, higher_is_better)``.

        Every name must match a pattern of the method's ``extra_metrics`` (a contract test checks).
        """
        return {}


class SharedPart(Protocol):
    """A private module several methods share (``methods/_exit_heads.py`` …): a shared part.

    Attributes:
        __name__: the module's name; its last component, less the leading underscore, names the
            part.
        VERSION: bump it when a change in the module changes any method's results.
    """

    __name__: str
    VERSION: str


def part_name(part: SharedPart) -> str:
    """The part's name in a recorded version: ``dynbench.methods._exit_heads`` → ``exit_heads``."""
    return part.__name__.rsplit(".", 1)[-1].lstrip("_")


def recorded_version(own: str, parts: Sequence[SharedPart]) -> str:
    """A method's recorded version: ``own``, plus ``+<part><VERSION>`` for each part past "1".

    Parts at their first version add nothing, so a method's recorded version stays what it was until
    one of its parts is bumped:
    ``recorded_version("2", [exit_heads at "2", layer_sets at "1"]) == "2+exit_heads2"``.
    """
    return own + "".join(f"+{part_name(p)}{p.VERSION}" for p in parts if p.VERSION != "1")


class RecordedVersion:
    """What ``Method.version`` reads as: :func:`recorded_version` of own version and shared parts.

    Computed on every read (from the class or an instance), so it follows a part's ``VERSION`` as it
    stands.
    """

    def __get__(self, obj: object, owner: type[Method]) -> str:
        return recorded_version(owner.own_version, owner.shared_parts)


class Method(ABC):
    """A dynamic-compute method: subclasses set the class variables and implement the hooks.

    Class variables:
        name: registry key, set by ``@register_method``.
        version: a plugin writes its own version here (``version = "2"``); bump it to invalidate
            stored results when behaviour changes. It is kept as ``own_version``, and ``version``
            then reads as the recorded version: own plus every bumped shared part
            (:func:`recorded_version`).
        shared_parts: the private shared modules (:class:`SharedPart`) whose code the method runs,
            e.g. ``(_exit_heads, _layer_sets)``; a test holds it equal to the versioned modules the
            plugin imports.
        paper: arXiv link of the method's paper, or ``None`` for baselines.
        reconstructed: True when the paper leaves the mechanism open and dynbench reconstructs it.
        Config: frozen dataclass of options; every field has a default.
        budget_range: inclusive range a budget must lie in.
        full_budget: the budget at which outputs equal the dense backbone's.
        full_budget_atol: how close (absolute, on logits) the full budget's outputs are to the
            reference network's: float rounding (the contract test refuses more than 1e-5). A method
            whose full-compute mechanism only approximates dense (ACM's distilled learners) runs the
            dense network itself at the full budget.
        reference_network: which network the full budget reproduces. ``"dense"`` (the default): the
            backbone as it was wrapped; :meth:`fit` must leave every backbone tensor bit-identical.
            Any other value names the network a method whose fit changes the backbone's weights
            reproduces instead, e.g. DHT's ``"fine-tuned backbone"``: the plain dense backbone
            loaded with the fitted model's backbone weights. Such a method's dense twin in rows and
            reports is that network, not the pretrained dense model.
        budget_doc: what a budget means, for ``bench ls methods``.
        sees_eval_labels: True for an upper bound that is fitted on the evaluation samples
            themselves (the oracle): the harness calls :meth:`fit_eval` with exactly the batches it
            measures; rows say ``upper_bound``.
        controls: the control baselines a learned per-sample controller must beat, as
            ``kind → options`` that turn this method's spec into that control: ``"static"`` (the
            best fixed configuration at matched mean FLOPs, chosen on validation data) and
            ``"random"`` (random allocation at matched mean FLOPs). The report pairs every learned
            run with its controls through this table (``tinv`` with ``tinv[policy=static]`` and
            ``tinv[policy=random]``); a method without a learned controller has none.
        control_only_options: options that configure a control only (MoD's ``random_scale``),
            dropped when a control's label is matched to its learned twin.
        quick_options: the quick profile's values of ``Config`` options (shorter fits, fewer
            fitted budgets), applied under ``--profile quick`` to every option the user did not
            set; the full profile ignores them. Each value says why it is enough for a quick look.
        quick_budgets: under the quick profile, sweep at most this many of the default budgets
            (evenly spread over the list, the full budget and the lowest kept:
            :func:`thin_budgets`); ``None`` = all. ``--budgets`` always wins.
        extra_metrics: the row metrics its model's ``trace_metrics`` may add, as ``fnmatch``
            patterns (``learner_share_k*``): what paper tables and claims may name.
        in_default_suite: False for a study that paper suites name but the default ``bench run``
            leaves out (its fit would add minutes to the main job); ``bench ls methods`` says so.
    """

    name: ClassVar[str] = ""
    own_version: ClassVar[str] = "1"
    version: ClassVar[str] = RecordedVersion()  # type: ignore[assignment]  # a descriptor that
    # reads as str
    shared_parts: ClassVar[tuple[SharedPart, ...]] = ()
    paper: ClassVar[str | None] = None
    reconstructed: ClassVar[bool] = False
    Config: ClassVar[type] = NoOptions
    budget_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    full_budget: ClassVar[Budget] = 1.0
    full_budget_atol: ClassVar[float] = 1e-6
    reference_network: ClassVar[str] = "dense"
    budget_doc: ClassVar[str] = ""
    sees_eval_labels: ClassVar[bool] = False
    controls: ClassVar[Mapping[str, Mapping[str, str]]] = {}
    extra_metrics: ClassVar[tuple[str, ...]] = ()
    in_default_suite: ClassVar[bool] = True
    control_only_options: ClassVar[tuple[str, ...]] = ()
    quick_options: ClassVar[Mapping[str, Any]] = {}
    quick_budgets: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Keep a subclass's ``version = "…"`` as ``own_version``; reads give the recorded one."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("version")
        if isinstance(own, str):
            cls.own_version = own
            del cls.version  # reads fall through to RecordedVersion

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def wrap(self, backbone: Backbone) -> DynamicModel:
        """Build the (untrained) dynamic model around ``backbone``. No training here."""

    def fit(self, model: DynamicModel, task: Task, *, seed: int) -> None:  # noqa: B027 — optional hook
        """Train whatever the method learns (exit heads, routers, statistics) on ``task``'s data.

        Weights train on the ``train`` split; anything that ranks, calibrates, thresholds or selects
        reads ``task.validation_split``. The harness runs this with the evaluation split sealed
        (:meth:`~dynbench.tasks.base.Task.sealed`): reading it raises ``EvalSplitAccessError``. The
        default learns nothing. Must be deterministic given ``seed``.
        """

    def fit_eval(  # noqa: B027 — optional hook
        self, model: DynamicModel, task: Task, batches: Sequence[Batch], *, budgets: Sequence[Budget], seed: int
    ) -> None:
        """Fit on the evaluation samples themselves; only for methods that ``sees_eval_labels``.

        The harness calls it after :meth:`fit` with exactly the evaluation batches (and budgets) it
        will measure, and caches the result per evaluation set. Such a method is an upper bound, not
        deployable. The default does nothing.

        Args:
            model: the wrapped (and fitted) model.
            task: the task, for its metric.
            batches: the evaluation batches, in measurement order.
            budgets: the budgets that will be swept.
            seed: the run seed.
        """

    @abstractmethod
    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """Default operating points swept for the Pareto curve, the full budget first.

        Args:
            n_blocks: depth L of the backbone the method will wrap (budgets such as k/L depend on
                it).
        """

    def fit_identity(self) -> Any:
        """What the fit depends on, for the fit cache: the config less evaluation-only options.

        A method with evaluation-only options (an inference routing rule …) returns its config with
        those options reset, so sweeping them reuses one fit instead of training again.
        """
        return self.config

    @classmethod
    def learned_twin(cls, options: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
        """The learned configuration a spec with ``options`` controls: ``(options, kind)`` or None.

        A spec is a control when its options contain every option of one of :attr:`controls`
        (compared as lower-case strings); its learned twin keeps the other options, less
        :attr:`control_only_options`. The harness records the answer on every row (``control_of``,
        ``control_kind``), so the report pairs a learned run with its controls without knowing any
        method.
        """
        given = {k: str(v).lower() for k, v in options.items()}
        for kind, control in cls.controls.items():
            if control and all(given.get(k) == str(v).lower() for k, v in control.items()):
                drop = {*control, *cls.control_only_options}
                return {k: v for k, v in options.items() if k not in drop}, kind
        return None

    @classmethod
    def learns(cls) -> bool:
        """Whether :meth:`fit` is overridden (and its result worth caching)."""
        return cls.fit is not Method.fit

    def shape_problems(self, task: Task) -> list[str]:
        """Problems of this method's options on ``task``'s backbone, found before anything trains.

        The planner asks for every run, so an option that the backbone's shape rules out
        (``layer_skip[min_layers=10]`` on a 2-block backbone) is a usage error, not a failure after
        training. Read shapes through ``task.n_blocks()`` or ``task.meta_backbone()`` (meta device:
        nothing is allocated, loaded or trained).

        Returns:
            One message per problem, in the project's error shape (the planner prefixes the task's
            name); empty when the options fit.
        """
        return []

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """The budgets to sweep on an ``n_blocks``-deep backbone, descending, without duplicates.

        ``override`` (validated) when given, else the defaults.

        Raises:
            ValueError: a budget outside ``budget_range``.
        """
        defaults = tuple(self.budgets(n_blocks))
        budgets = tuple(float(b) for b in (override if override is not None else defaults))
        lo, hi = self.budget_range
        bad = [b for b in budgets if not lo <= b <= hi]
        if bad:
            raise ValueError(
                f"Budget(s) {bad} out of range for method '{self.name}': budgets must lie in [{lo}, {hi}] "
                f"(full budget {self.full_budget}). Defaults: {[round(b, 4) for b in defaults]}."
            )
        return tuple(sorted(set(budgets), reverse=True))


def budgets_not_among(
    budgets: Sequence[Budget], fitted: Sequence[Budget], key: Callable[[Budget], str]
) -> list[Budget]:
    """The ``budgets`` that ``fitted`` lacks, matched by ``key`` (a method's own budget key).

    For methods that fit or calibrate per budget (ACM's targets, token_skip's biases): their
    ``resolve_budgets`` refuses what was never fitted, before any run starts.
    """
    known = {key(b) for b in fitted}
    return [b for b in budgets if key(b) not in known]


def thin_budgets(budgets: Sequence[Budget], keep: int | None) -> tuple[Budget, ...]:
    """At most ``keep`` of ``budgets`` (descending), evenly spread, the first and last kept.

    ``thin_budgets((1, .999, .99, .95, .9, .8, .6, .4), 4) == (1, .99, .8, .4)``; ``None`` or a
    list no longer than ``keep`` comes back whole.
    """
    budgets = tuple(budgets)
    if keep is None or len(budgets) <= keep:
        return budgets
    if keep <= 1:
        return budgets[:1]
    picks = sorted({round(i * (len(budgets) - 1) / (keep - 1)) for i in range(keep)})
    return tuple(budgets[i] for i in picks)


METHODS: Registry[type[Method]] = Registry("method", Method, "dynbench.methods", "dynbench.methods")
register_method = METHODS.register


def freeze(module: nn.Module) -> None:
    """Stop gradients into ``module`` (a frozen backbone)."""
    for p in module.parameters():
        p.requires_grad_(False)


def no_controller_flops(batch_size: int, device: torch.device | None = None) -> Tensor:
    """``(B,)`` zeros, for methods without a controller."""
    return torch.zeros(batch_size, dtype=torch.float64, device=device)
