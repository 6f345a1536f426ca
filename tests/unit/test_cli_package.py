"""The ``dynbench.cli`` package: one module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import types
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import dynbench.cli as cli
from dynbench.cli import main
from dynbench.cli.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from dynbench.config import ConfigError

PACKAGE_MODULES = {
    info.name: importlib.import_module(f"dynbench.cli.{info.name}")
    for info in pkgutil.iter_modules(cli.__path__)
    if info.name != "__main__"  # running it would call sys.exit
}


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path of ``parser`` (``("data",)``, ``("data", "list")``, …), nested ones
    included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _command_paths(sub, (*prefix, name))


COMMAND_PATHS = sorted(_command_paths(cli.build_parser()))


def test_every_subcommand_module_has_add_parser_and_run_and_is_listed():
    """A module with either function is a subcommand: it needs both, and a line in SUBCOMMANDS."""
    listed = set(cli.SUBCOMMANDS)
    for name, module in PACKAGE_MODULES.items():
        has = {f for f in ("add_parser", "run") if inspect.isfunction(getattr(module, f, None))}
        if has:
            assert has == {"add_parser", "run"}, f"dynbench.cli.{name} has only {has}"
            assert module in listed, f"dynbench.cli.{name} is a subcommand module missing from SUBCOMMANDS"
    for module in cli.SUBCOMMANDS:
        assert module.__name__.rsplit(".", 1)[-1] in PACKAGE_MODULES
        assert list(inspect.signature(module.add_parser).parameters) == ["subparsers"]
        assert list(inspect.signature(module.run).parameters) == ["args"]
    assert len(cli.SUBCOMMANDS) == len(listed) >= 7


def test_each_subcommand_module_adds_one_subcommand_in_the_order_of_subcommands():
    for module in cli.SUBCOMMANDS:
        subparsers = argparse.ArgumentParser().add_subparsers()
        module.add_parser(subparsers)
        assert len(subparsers.choices) == 1, module.__name__
    top = [path[0] for path in _command_paths(cli.build_parser()) if len(path) == 1]
    assert top == [
        "lm-eval",
        "run",
        "ls",
        "validate",
        "report",
        "export",
        "data",
        "paper",
        "compare",
        "baseline",
        "history",
    ]


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=" ".join)
def test_every_subcommands_help_exits_0(path: tuple[str, ...], monkeypatch, capsys):
    from dynbench.integrations import lm_eval_cli

    def lm_eval_help(argv: list[str]) -> int:  # lm-eval's own --help, without running lm-eval
        raise SystemExit(0)

    monkeypatch.setattr(lm_eval_cli, "main", lm_eval_help)
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"bench {' '.join(path)}" in out


def test_top_level_help_lists_every_subcommand_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "{lm-eval,run,ls,validate,report,export,data,paper,compare,baseline,history}" in out


@pytest.mark.parametrize("argv", [["nope"], ["rnu", "--methods", "dense"], [], ["data", "nope"]], ids=str)
def test_unknown_or_missing_subcommands_exit_2(argv: list[str], capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_USAGE
    assert "bench" in capsys.readouterr().err


def test_lm_eval_without_arguments_prints_how_and_exits_2(capsys):
    assert main(["lm-eval"]) == EXIT_USAGE
    assert main(["-v", "lm-eval"]) == EXIT_USAGE  # argparse's route to it: no arguments left for lm-eval
    assert capsys.readouterr().out.count("bench lm-eval --model dynbench") == 2


def test_lm_eval_arguments_pass_through_unparsed(monkeypatch):
    from dynbench.integrations import lm_eval_cli

    seen: list[list[str]] = []
    monkeypatch.setattr(lm_eval_cli, "main", lambda argv: seen.append(argv) or 7)
    argv = ["--model", "dynbench", "--tasks", "x", "-v", "--unknown-to-bench"]
    assert main(["lm-eval", *argv]) == 7
    assert seen == [argv]


def _fake_subcommand(outcome: object) -> types.ModuleType:
    """A subcommand module built in the test: ``bench fake --n N`` returns or raises ``outcome``."""
    module = types.ModuleType("fake")

    def add_parser(subparsers: argparse._SubParsersAction) -> None:
        subparsers.add_parser("fake", help="a test subcommand").add_argument("--n", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome if args.n == 0 else args.n

    module.add_parser, module.run = add_parser, run
    return module


def test_a_new_subcommand_is_one_module_plus_one_line_in_subcommands(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, _fake_subcommand(EXIT_OK)))
    assert main(["fake"]) == EXIT_OK
    assert main(["fake", "--n", "3"]) == 3
    assert "fake" in cli.build_parser().format_help()


@pytest.mark.parametrize(
    ("raised", "code", "message"),
    [
        (UsageError("Results directory R does not exist."), EXIT_USAGE, "error: Results directory R"),
        (ConfigError(["Unknown method 'mdo'."]), EXIT_USAGE, "Unknown method 'mdo'."),
        (ValueError("bad value"), EXIT_USAGE, "error: bad value"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted; finished runs are kept"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_errors_map_to_exit_codes_with_one_message(monkeypatch, capsys, raised, code, message):
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, _fake_subcommand(raised)))
    assert main(["fake"]) == code
    assert message in capsys.readouterr().err


def test_a_failed_run_code_is_returned_unchanged(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, _fake_subcommand(EXIT_FAILED)))
    assert main(["fake"]) == EXIT_FAILED


def test_the_console_scripts_are_the_packages_main():
    scripts = {e.name: e for e in entry_points(group="console_scripts") if e.value == "dynbench.cli:main"}
    assert {"bench", "dynbench"} <= set(scripts)
    assert scripts["bench"].load() is main


def test_no_function_in_the_cli_package_is_over_60_lines():
    for name, module in PACKAGE_MODULES.items():
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 60, f"dynbench.cli.{name}.{node.name} is {lines} lines"


def test_version_names_dynbench_torch_and_python(capsys):
    import platform

    import torch

    from dynbench import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"bench {__version__} (torch {torch.__version__}, Python {platform.python_version()})"
