"""Run and suite specifications: frozen dataclasses, strict parsing, every error reported at once.

A plugin is named with optional options in brackets — ``layer_skip[pattern=uniform]``,
``cpu[threads=2]`` — on the command line, or as a mapping in YAML
(``{name: layer_skip, pattern: uniform}``). Options are checked against the plugin's own ``Config``
dataclass: unknown keys get a did-you-mean, values are coerced to the declared types, and
``__post_init__`` validation messages are collected, not raised one by one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dynbench.registry import suggest
from dynbench.validation import check_choices, check_range, choice_message


class ConfigError(ValueError):
    """One or more problems with a suite or plugin configuration, reported together."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"Invalid configuration ({len(self.errors)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class PluginSpec:
    """A plugin by registry name plus raw options (validated later against the plugin's ``Config``).

    Attributes:
        name: registry name (or alias).
        options: sorted ``(key, value)`` pairs; dotted keys reach nested dataclasses
            (``train.steps``).
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, name: str, options: Mapping[str, Any] | None = None) -> PluginSpec:
        """Build with options sorted, so equal specs hash equally."""
        frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()}
        return cls(name.strip(), tuple(sorted(frozen.items())))

    @property
    def label(self) -> str:
        """``name`` or ``name[k=v,…]``: how rows and plots name this configuration."""
        if not self.options:
            return self.name
        return f"{self.name}[{','.join(f'{k}={_fmt(v)}' for k, v in self.options)}]"

    def options_dict(self) -> dict[str, Any]:
        """Options as a dict."""
        return dict(self.options)


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ";".join(_fmt(x) for x in v)
    return str(v).lower() if isinstance(v, bool) else str(v)


def split_top_level(text: str) -> list[str]:
    """Split on commas and whitespace that are not inside brackets."""
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if depth == 0 and (ch == "," or ch.isspace()):
            if cur:
                parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def parse_plugin(text: str) -> PluginSpec:
    """``name`` or ``name[key=value,key=value]`` → :class:`PluginSpec`.

    Raises:
        ConfigError: unbalanced brackets or an option without ``=``.
    """
    text = text.strip()
    if "[" not in text:
        if "]" in text:
            raise ConfigError([f"Unbalanced ']' in plugin spec '{text}'. Write name[key=value,...]."])
        return PluginSpec.make(text)
    if not text.endswith("]") or text.count("[") != text.count("]"):
        raise ConfigError([f"Unbalanced brackets in plugin spec '{text}'. Write name[key=value,...]."])
    name, body = text[:-1].split("[", 1)
    options: dict[str, Any] = {}
    errors = []
    for item in split_top_level(body):
        if "=" not in item:
            errors.append(f"Option '{item}' in '{text}' has no '='. Write key=value.")
            continue
        key, value = item.split("=", 1)
        options[key.strip()] = value.strip()
    if errors:
        raise ConfigError(errors)
    return PluginSpec.make(name, options)


def parse_plugin_list(text: str | Sequence[str]) -> tuple[PluginSpec, ...]:
    """A comma/space separated list (or several such strings) of plugin specs."""
    items = [text] if isinstance(text, str) else list(text)
    return tuple(parse_plugin(p) for item in items for p in split_top_level(item))


# --------------------------------------------------------------------------------------------------
# Strict dataclass construction


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Coerce ``value`` (possibly a CLI string) to type ``hint``.

    Raises:
        ValueError: ``value`` does not fit ``hint`` (with a clear message).
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: cannot interpret {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(choice_message(where, value, args))
    if origin in (tuple, list, Sequence) or hint in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace(";", ",").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}.")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{where} must have {len(args)} items, got {len(value)}: {value!r}.")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or hint is tuple else out
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping of {hint.__name__} fields, got {value!r}.")
        obj, errors = build_dataclass(hint, value, where)
        if errors:
            raise ValueError("; ".join(errors))
        return obj
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{where} must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{where} must be an integer, got {value!r}.")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be an integer, got {value!r}.") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{where} must be a number, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where} must be a number, got {value!r}.") from None
    if hint is str:
        return str(value)
    if hint is Path:
        return Path(value)
    return value


def _nest(options: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.steps": 5}`` → ``{"train": {"steps": 5}}``."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        head, _, rest = key.partition(".")
        if rest:
            sub = out.setdefault(head, {})
            if isinstance(sub, Mapping):
                sub = dict(sub)
                sub.update(_nest({rest: value}))
                out[head] = sub
        else:
            out[key] = value
    return out


def build_dataclass(cls: type, data: Mapping[str, Any], where: str) -> tuple[Any, list[str]]:
    """Construct ``cls`` from ``data`` strictly.

    Unknown keys, uncoercible values and ``__post_init__`` failures all become messages in the
    returned list; nothing is raised. Fields left out keep their defaults (nested dataclasses are
    updated field by field).

    Returns:
        ``(instance or None, errors)``.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    data = _nest(data)
    errors: list[str] = []
    kwargs: dict[str, Any] = {}
    defaults = _defaults(cls)
    for key, value in data.items():
        if key not in names:
            close = suggest(key, names)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            errors.append(f"Unknown option '{key}' for {where}.{hint} Available: {', '.join(names) or '(none)'}")
            continue
        hint_t = hints[key]
        try:
            if dataclasses.is_dataclass(hint_t) and isinstance(value, Mapping) and key in defaults:
                base = dataclasses.asdict(defaults[key])
                base.update(_nest(value))
                value = base
            kwargs[key] = _coerce(value, hint_t, f"{where}.{key}")
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        return None, errors
    try:
        return cls(**kwargs), []
    except (ValueError, TypeError) as exc:
        return None, [f"{where}: {exc}"]


def _defaults(cls: type) -> dict[str, Any]:
    try:
        inst = cls()
    except TypeError:
        return {}
    return {f.name: getattr(inst, f.name) for f in dataclasses.fields(cls)}


# --------------------------------------------------------------------------------------------------
# Measurement, run and suite specifications


MAX_TIME_S = 3600.0
"""Longest ``measure.max_time_s`` accepted: an hour of timing per model and operating point."""


@dataclass(frozen=True)
class MeasureConfig:
    """How each run measures (README § What is measured); every pass can be switched off."""

    eval_batch_size: int = 128  # batch size of the quality and FLOPs passes (results don't depend on it)
    flops: bool = True  # run the FlopCounterMode pass
    timing: bool = True  # run the latency/throughput pass
    memory: bool = True  # run the memory pass
    timing_inputs: int = 64  # distinct real eval inputs the timing loop cycles through, per batch size
    warmup_max: int = 16  # warm-up calls (per model) beyond one per distinct execution path
    min_iters: int = 20  # timed calls per model, at least …
    min_time_s: float = 0.5  # … and at least this long (both must be met)
    max_time_s: float = 20.0  # stop a slow model here even if min_iters is not reached
    memory_inputs: int = 4  # inputs (the costliest paths first) whose peak memory is measured
    # an eval split up to this size stays in memory between passes (decoded once); a larger one
    # streams from the task a batch at a time (ImageNet's 50k images would take ~30 GB). Results do
    # not depend on it, so run keys leave it out.
    eval_memory_mb: int = 1024

    def __post_init__(self) -> None:
        for name in ("eval_batch_size", "timing_inputs", "min_iters", "memory_inputs"):
            default = MeasureConfig.__dataclass_fields__[name].default
            check_range(f"measure.{name}", getattr(self, name), 1, advice=f"Use e.g. {name}={default}.")
        check_range("measure.warmup_max", self.warmup_max, 0, advice="Use 0 for one warm-up call per path.")
        check_range("measure.eval_memory_mb", self.eval_memory_mb, 0, advice="Use 0 to always stream the eval split.")
        # NaN passes every comparison and inf never ends the timing loop, so both are refused here.
        check_range(
            "measure.max_time_s", self.max_time_s, 0, MAX_TIME_S, low_open=True, advice="Use e.g. max_time_s=20."
        )
        check_range(
            "measure.min_time_s", self.min_time_s, 0, self.max_time_s, advice="Use e.g. min_time_s=0.5 <= max_time_s."
        )


SEED_MAX = 2**32 - 1
"""Largest seed: NumPy's generators take 32-bit seeds, and training seeds derive from it."""

_EXAMPLES = {"methods": "dense", "tasks": "toy-vision", "seeds": "0", "hardware": "cpu"}


Profile = Literal["quick", "full"]
"""How much work a run does. ``full``: every plugin's own recipe — the paper-faithful suite.
``quick``: the shorter fits, backbone training, budget lists and evaluation sample that each plugin
declares (``Method.quick_options``, ``Method.quick_budgets``, ``Task.quick_options``,
``Task.quick_eval_samples``) and :data:`QUICK_MEASURE`'s lighter timing, each applied only where the
user did not choose the value. Rows and run keys record the profile; reports never average a quick
run with a full one."""

QUICK_MEASURE: Mapping[str, Any] = {
    "min_iters": 6,  # 6 call pairs: batch-32 calls of a text model take 0.2 s each, 20 pairs cost 8 s
    "min_time_s": 0.2,  # the minimum time per timed loop is what dominates a small model's timing
    "max_time_s": 5.0,  # a slow operating point stops after 5 s instead of 20
    "warmup_max": 4,  # warm-up beyond one call per execution path
    "timing_inputs": 16,  # distinct inputs cycled (10 calls read at most 10 of them anyway)
    "memory_inputs": 2,  # the two costliest paths: the peak is a max, and the costliest path sets it
}
"""The quick profile's lighter measurement: timing fields a suite left at their defaults."""


def profile_measure(measure: MeasureConfig, profile: Profile) -> MeasureConfig:
    """``measure`` under ``profile``: quick sets each :data:`QUICK_MEASURE` field at its default.

    A field the user set (any value but MeasureConfig's default) is kept, so
    ``--set measure.min_time_s=1`` holds under either profile.
    """
    if profile != "quick":
        return measure
    default = MeasureConfig()
    lighter = {k: v for k, v in QUICK_MEASURE.items() if getattr(measure, k) == getattr(default, k)}
    return dataclasses.replace(measure, **lighter)


@dataclass(frozen=True)
class RunSpec:
    """One (task, method, seed, hardware) cell, swept over the method's budgets."""

    task: PluginSpec
    method: PluginSpec
    seed: int = 0
    hardware: PluginSpec = PluginSpec("cpu")
    budgets: tuple[float, ...] | None = None  # None = the method's defaults
    batch_sizes: tuple[int, ...] = (1, 32)  # batch-1 latency and batch-N throughput
    limit: int | None = None  # evaluate on at most this many samples (smoke runs)
    measure: MeasureConfig = MeasureConfig()
    suite: str = "default"  # suite name recorded in rows; not part of the run's identity
    # "full" for a run made by hand (lm-eval's model, scripts): one run gets its plugins' own
    # recipes; suites pass their profile ("quick" by default)
    profile: Profile = "full"
    eval_samples: int | None = None  # the profile's sample of the eval split (the planner sets it
    # from Task.quick_eval_samples); None = the whole split

    def __post_init__(self) -> None:
        check_choices(self, {"profile": "Use quick (minutes) or full (the plugins' own recipes)."})

    @property
    def eval_limit(self) -> int | None:
        """The evaluation samples measured: the smaller of ``limit`` and ``eval_samples``."""
        caps = [n for n in (self.limit, self.eval_samples) if n is not None]
        return min(caps) if caps else None

    def identity(self) -> dict[str, Any]:
        """What defines the run's results (everything but the suite name).

        A full run on the whole split leaves the profile fields out, so its key is the one it had
        before profiles existed and stored full results stay valid.
        """
        d = dataclasses.asdict(self)
        d.pop("suite")
        d["measure"].pop("eval_memory_mb")  # kept or streamed, the passes see the same batches
        if self.profile == "full" and self.eval_samples is None:
            d.pop("profile")
            d.pop("eval_samples")
        return d

    def problems(self) -> list[str]:
        """What is wrong with the seed, budgets, batch sizes and limit; one message each.

        The plugins' own options and the budgets' range are checked by the planner
        (:func:`dynbench.harness.planning.plan_run`), which builds the plugins.
        """
        out: list[str] = []
        if not 0 <= self.seed <= SEED_MAX:
            out.append(f"Seed {self.seed} is out of range: seeds must lie in [0, {SEED_MAX}]. Use e.g. --seeds 0,1,2.")
        if self.budgets is not None and not self.budgets:
            out.append("--budgets is empty. Give budgets such as --budgets 1,0.5, or leave it out for the defaults.")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            out.append(f"Batch sizes must be positive integers, got {list(self.batch_sizes)}. Use e.g. 1,32.")
        if self.limit is not None and self.limit < 1:
            out.append(f"--limit must be >= 1, got {self.limit}. Leave it out to evaluate every sample.")
        return out


@dataclass(frozen=True)
class SuiteSpec:
    """A grid of runs: every task × method × seed × hardware."""

    methods: tuple[PluginSpec, ...]
    tasks: tuple[PluginSpec, ...]
    name: str = "default"  # recorded in every row's ``suite`` column
    seeds: tuple[int, ...] = (0,)  # training/evaluation seeds
    hardware: tuple[PluginSpec, ...] = (PluginSpec("cpu"),)  # where time and memory are measured
    budgets: tuple[float, ...] | None = None  # override every dynamic method's budgets
    batch_sizes: tuple[int, ...] = (1, 32)  # batch sizes timed
    limit: int | None = None  # at most this many eval samples per run
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    profile: Profile = "quick"  # the main job finishes in minutes; "full" = the plugins' own recipes

    def __post_init__(self) -> None:
        check_choices(self, {"profile": "Use quick (minutes) or full (the plugins' own recipes)."})

    def problems(self) -> list[str]:
        """Empty lists that leave the grid without runs; one message each.

        Each run's own values are checked by :meth:`RunSpec.problems`.
        """
        lists = {"methods": self.methods, "tasks": self.tasks, "seeds": self.seeds, "hardware": self.hardware}
        return [
            f"--{key} is empty, so the suite has no runs. Give at least one, e.g. --{key} {_EXAMPLES[key]}."
            for key, value in lists.items()
            if not value
        ]

    def runs(self) -> list[RunSpec]:
        """Every run of the grid, task-major so one task's backbone is reused while it is warm.

        Each run carries the suite's profile, and its measure config under that profile
        (:func:`profile_measure`); the plugins' quick options are applied by the planner, which
        builds them.
        """
        measure = profile_measure(self.measure, self.profile)
        return [
            RunSpec(t, m, s, h, self.budgets, self.batch_sizes, self.limit, measure, self.name, self.profile)
            for t in self.tasks
            for s in self.seeds
            for h in self.hardware
            for m in self.methods
        ]


_SUITE_KEYS = (
    "name", "methods", "tasks", "seeds", "hardware", "budgets", "batch_sizes", "limit", "measure", "profile", "gate",
)  # fmt: skip
"""Keys of a suite file. ``gate`` holds bench compare's rules (:mod:`dynbench.analysis.compare`):
``bench compare --suite`` reads it; a suite checks it and does not run it."""


def _plugins_from_yaml(value: Any, where: str, errors: list[str]) -> tuple[PluginSpec, ...]:
    if isinstance(value, str):
        return parse_plugin_list(value)
    if isinstance(value, Mapping):  # {layer_skip: {pattern: uniform}, dense: {}}
        return tuple(PluginSpec.make(str(k), dict(v or {})) for k, v in value.items())
    if not isinstance(value, Iterable):
        errors.append(f"{where} must be a list of names or mappings, got {value!r}.")
        return ()
    out: list[PluginSpec] = []
    for item in value:
        if isinstance(item, str):
            out.extend(parse_plugin_list(item))
        elif isinstance(item, Mapping) and "name" in item:
            opts = {k: v for k, v in item.items() if k != "name"}
            out.append(PluginSpec.make(str(item["name"]), opts))
        else:
            errors.append(f"{where}: each entry needs a name, e.g. 'layer_skip' or {{name: layer_skip}}; got {item!r}.")
    return tuple(out)


def suite_from_mapping(data: Mapping[str, Any], where: str = "suite") -> SuiteSpec:
    """Build a :class:`SuiteSpec` from parsed YAML, reporting every problem at once.

    Raises:
        ConfigError: unknown keys, missing methods/tasks or bad values.
    """
    errors: list[str] = []
    for key in data:
        if key not in _SUITE_KEYS:
            close = suggest(str(key), _SUITE_KEYS)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            errors.append(f"Unknown key '{key}' in {where}.{hint} Allowed: {', '.join(_SUITE_KEYS)}")
    kwargs: dict[str, Any] = {}
    for key in ("methods", "tasks", "hardware"):
        if key in data:
            kwargs[key] = _plugins_from_yaml(data[key], f"{where}.{key}", errors)
    for key in ("methods", "tasks"):
        if not kwargs.get(key):
            errors.append(f"{where}.{key} is missing or empty. List at least one, e.g. {key}: [dense].")
    hints = typing.get_type_hints(SuiteSpec)
    for key in ("name", "seeds", "budgets", "batch_sizes", "limit", "profile"):
        if key in data:
            try:
                kwargs[key] = _coerce(data[key], hints[key], f"{where}.{key}")
            except ValueError as exc:
                errors.append(str(exc))
    if "gate" in data:
        from dynbench.analysis.compare import gate_from_mapping

        try:
            gate_from_mapping(data["gate"], f"{where}.gate")
        except ValueError as exc:
            errors.append(str(exc))
    if "measure" in data:
        measure, errs = build_dataclass(MeasureConfig, data["measure"] or {}, f"{where}.measure")
        errors.extend(errs)
        kwargs["measure"] = measure
    if errors:
        raise ConfigError(errors)
    return SuiteSpec(**kwargs)


def load_suite(path: Path) -> SuiteSpec:
    """Read a suite YAML file strictly.

    Raises:
        ConfigError: the file is missing, not YAML, or has problems (all listed).
    """
    import yaml

    if not path.exists():
        raise ConfigError([f"Suite file {path} does not exist. Pass an existing YAML file to --config."])
    if not path.is_file():
        raise ConfigError([f"Suite file {path} is a folder, not a file. Pass a YAML file, e.g. --config suite.yaml."])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path} is not valid YAML: {exc}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"Suite file {path} cannot be read ({exc}). Pass a readable YAML text file."]) from None
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path} must hold a mapping (methods:, tasks:, …), got {type(data).__name__}."])
    return suite_from_mapping(data, where=str(path))


def apply_overrides(suite: SuiteSpec, overrides: Sequence[str]) -> SuiteSpec:
    """Apply ``key=value`` overrides (``measure.min_time_s=0.2``, ``seeds=0,1``) to a suite.

    Raises:
        ConfigError: malformed or unknown keys, or bad values.
    """
    data: dict[str, Any] = {}
    errors: list[str] = []
    for item in overrides:
        if "=" not in item:
            errors.append(f"Override '{item}' has no '='. Write key=value, e.g. measure.min_time_s=0.2.")
            continue
        key, value = item.split("=", 1)
        data[key.strip()] = value.strip()
    nested = _nest(data)
    if "measure" in nested and not isinstance(nested["measure"], Mapping):
        fields_ = ", ".join(f.name for f in dataclasses.fields(MeasureConfig))
        errors.append(
            f"Override 'measure={nested.pop('measure')}' sets a group of options, not a value. "
            f"Set one field, e.g. measure.min_time_s=0.2; fields: {fields_}."
        )
    if errors:
        raise ConfigError(errors)
    current = {
        "name": suite.name,
        "methods": [p.label for p in suite.methods],
        "tasks": [p.label for p in suite.tasks],
        "seeds": list(suite.seeds),
        "hardware": [p.label for p in suite.hardware],
        "budgets": None if suite.budgets is None else list(suite.budgets),
        "batch_sizes": list(suite.batch_sizes),
        "limit": suite.limit,
        "profile": suite.profile,
        "measure": {**dataclasses.asdict(suite.measure), **nested.pop("measure", {})},
    }
    current.update(nested)
    return suite_from_mapping(current, where="overrides")


def runspec_to_dict(spec: RunSpec) -> dict[str, Any]:
    """JSON-able form of a run spec (for worker processes)."""
    return dataclasses.asdict(spec)


def runspec_from_dict(data: Mapping[str, Any]) -> RunSpec:
    """Inverse of :func:`runspec_to_dict`."""

    def plugin(d: Mapping[str, Any]) -> PluginSpec:
        return PluginSpec.make(d["name"], dict(d["options"]))

    return RunSpec(
        task=plugin(data["task"]),
        method=plugin(data["method"]),
        seed=int(data["seed"]),
        hardware=plugin(data["hardware"]),
        budgets=None if data["budgets"] is None else tuple(data["budgets"]),
        batch_sizes=tuple(data["batch_sizes"]),
        limit=data["limit"],
        measure=MeasureConfig(**data["measure"]),
        suite=data["suite"],
        profile=data.get("profile", "full"),
        eval_samples=data.get("eval_samples"),
    )
