"""The results store: one file of rows and one of per-sample records per run, written atomically.

Layout under the results directory::

    runs/<run_key>.jsonl       tidy rows (dynbench.types.ROW_COLUMNS), written last: its presence
                               means the run finished
    samples/<run_key>.jsonl    per-sample records (sample id, FLOPs, layers, score, correct …)
    timings/<run_key>.jsonl    every timed call per (budget, batch size): method and dense durations
                               in interleaved pairs, the input each pair ran and its FLOPs
    failures/<run_key>.json    the last failure of a run not finished: phase, one-line error, log
                               path, time (removed when the run succeeds)
    logs/<run_key>.log         that failure's traceback (the worker's error output in subprocess
                               mode)
    claims/<run_key>.lock      the process computing the run now (:mod:`dynbench.harness.claims`)

Each file is written to a temporary name and renamed into place, so a killed sweep leaves no partial
file and a resumed sweep skips finished ``run_key``s; a write that fails removes its temporary file.
Sweeps sharing the folder claim a run before computing it, so none computes a run twice.

Reading skips a file that is not a complete store file (truncated, not JSON lines, records of
another shape or run) with a warning naming it, or raises :class:`BadResultFile` with ``strict``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from dynbench.harness.claims import Claim, holder, try_claim
from dynbench.harness.provenance import now
from dynbench.types import ROW_COLUMNS
from dynbench.validation import choice_message

logger = logging.getLogger(__name__)

# What a record of each folder must hold to be read as one; `run_key` must also name its file.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "runs": ("run_key", "task", "method", "metric", "value"),
    "samples": ("run_key",),
    "timings": ("run_key",),
    "failures": ("run_key", "phase", "error", "log", "time"),
}


ExportFormat = Literal["csv", "parquet"]
EXPORT_FORMATS: dict[str, ExportFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
"""The file extensions :meth:`ResultStore.export` knows, and the format each one means."""


def export_format(path: Path, fmt: str | None = None) -> ExportFormat:
    """The table format of an export to ``path``: ``fmt`` when given, else its extension's.

    Args:
        path: the file to write (``rows.csv``, ``rows.parquet``, ``rows.pq``).
        fmt: ``csv`` or ``parquet``; ``None`` infers it from the extension.

    Raises:
        ValueError: ``fmt`` is not a format, the extension is unknown and ``fmt`` is ``None``, or
            ``fmt`` disagrees with a known extension.
    """
    choices = sorted(set(EXPORT_FORMATS.values()))
    inferred = EXPORT_FORMATS.get(path.suffix.lower())
    if fmt is not None and fmt not in choices:
        raise ValueError(choice_message("--format", fmt, choices, "Or leave it out: --out's extension decides."))
    if fmt is None:
        if inferred is None:
            what = f"the extension {path.suffix!r}" if path.suffix else "a name without an extension"
            raise ValueError(
                f"--out {path}: cannot tell the format from {what}; known extensions are {', '.join(EXPORT_FORMATS)}. "
                f"Name the file with one of them or give --format ({' or '.join(choices)})."
            )
        return inferred
    if inferred is not None and inferred != fmt:
        raise ValueError(
            f"--format {fmt} disagrees with --out {path}, whose extension {path.suffix!r} means {inferred}. "
            f"Leave out --format, or name the file with a {fmt} extension "
            f"({', '.join(e for e, f in EXPORT_FORMATS.items() if f == fmt)})."
        )
    return fmt  # type: ignore[return-value]  # checked against the choices above


class BadResultFile(ValueError):
    """A file in a results folder is not a complete store file (``--strict`` makes it exit 2)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path} is not a readable dynbench results file: {reason}. Move it out of the results folder "
            "(or delete it and re-run that run), or leave out --strict to skip it."
        )
        self.path = path
        self.reason = reason


def _write_atomic(path: Path, text_chunks: Iterable[str]) -> None:
    """Write ``path`` through a temporary file; on any failure the temporary file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            for chunk in text_chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_jsonl_atomic(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    _write_atomic(path, (json.dumps(rec, default=_json_default, allow_nan=True) + "\n" for rec in records))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


def _check_records(path: Path, kind: str) -> list[dict[str, Any]]:
    """Every record of a store file, checked against its folder's shape.

    Raises:
        BadResultFile: unreadable, truncated (no final newline), not JSON, or records of another
            shape or run.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadResultFile(path, f"it cannot be read ({exc})") from None
    if kind == "failures":
        lines = [text]
    else:
        if text and not text.endswith("\n"):
            raise BadResultFile(path, "its last line is cut off (the file is truncated)")
        lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise BadResultFile(path, f"line {number} is not JSON ({exc})") from None
        if not isinstance(rec, dict):
            raise BadResultFile(path, f"line {number} is a JSON {type(rec).__name__}, not an object")
        missing = [f for f in REQUIRED_FIELDS[kind] if f not in rec]
        if missing:
            raise BadResultFile(path, f"line {number} lacks the fields {missing} of a {kind} record")
        if rec["run_key"] != path.stem:
            raise BadResultFile(path, f"line {number} belongs to run {rec['run_key']!r}, not to {path.stem!r}")
        records.append(rec)
    return records


class ResultStore:
    """A directory of finished runs, failure records and claims.

    Args:
        root: the results directory (created on first write).
        strict: raise :class:`BadResultFile` on a file that cannot be read as a store file,
            instead of skipping it with a warning (every skipped file is in :attr:`bad_files`).
    """

    def __init__(self, root: Path, *, strict: bool = False) -> None:
        self.root = Path(root)
        self.strict = strict
        self.bad_files: dict[Path, str] = {}  # skipped file → why (each warned about once)
        self._read: dict[Path, tuple[tuple[int, int], list[dict[str, Any]] | None]] = {}

    def rows_path(self, run_key: str) -> Path:
        """Where a run's rows live."""
        return self.root / "runs" / f"{run_key}.jsonl"

    def samples_path(self, run_key: str) -> Path:
        """Where a run's per-sample records live."""
        return self.root / "samples" / f"{run_key}.jsonl"

    def timings_path(self, run_key: str) -> Path:
        """Where a run's timed-call records live."""
        return self.root / "timings" / f"{run_key}.jsonl"

    def failure_path(self, run_key: str) -> Path:
        """Where the record of a run's last failure lives."""
        return self.root / "failures" / f"{run_key}.json"

    def log_path(self, run_key: str) -> Path:
        """Where the traceback of a run's last failure lives."""
        return self.root / "logs" / f"{run_key}.log"

    def claim_path(self, run_key: str) -> Path:
        """The lock file of the process computing a run."""
        return self.root / "claims" / f"{run_key}.lock"

    def has(self, run_key: str) -> bool:
        """Whether the run finished: its rows file exists, reads as a complete store file, has rows.

        Rows files are written last, through a temporary file renamed into place, so a killed or
        failed write never leaves one. A rows file that is there but not readable (truncated or
        damaged later, a foreign file) or empty does not count as done: the run is computed again
        and its files are replaced. A bad file is warned about once, never raised, even with
        ``strict``.
        """
        path = self.rows_path(run_key)
        return path.exists() and bool(self._records(path, "runs", strict=False))

    def write(
        self,
        run_key: str,
        rows: list[dict[str, Any]],
        samples: list[dict[str, Any]],
        timings: list[dict[str, Any]] | None = None,
    ) -> None:
        """Store a finished run: samples and timed calls first, rows last (rows mark completion).

        When a write fails, the run's files are removed (what is left is in an unknown state), so
        the run is not done and the next sweep runs it again.
        """
        missing = [c for c in ROW_COLUMNS if rows and c not in rows[0]]
        if missing:
            raise ValueError(f"Rows for run {run_key} lack columns {missing}; every row needs {list(ROW_COLUMNS)}.")
        try:
            _write_jsonl_atomic(self.samples_path(run_key), samples)
            if timings:
                _write_jsonl_atomic(self.timings_path(run_key), ({"run_key": run_key, **t} for t in timings))
            _write_jsonl_atomic(self.rows_path(run_key), rows)
        except BaseException:
            for path in (self.rows_path(run_key), self.samples_path(run_key), self.timings_path(run_key)):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise

    def run_keys(self) -> list[str]:
        """Finished runs, sorted."""
        folder = self.root / "runs"
        return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.exists() else []

    def _records(self, path: Path, kind: str, *, strict: bool | None = None) -> list[dict[str, Any]] | None:
        """A store file's records; ``None`` when it is bad (warned once; raised when ``strict``).

        ``strict`` ``None`` = the store's own setting.
        """
        strict = self.strict if strict is None else strict
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_size, st.st_mtime_ns)
        if path in self._read and self._read[path][0] == stamp:
            records = self._read[path][1]
        else:
            try:
                records = _check_records(path, kind)
            except BadResultFile as exc:
                if strict:
                    raise
                records = None
                if path not in self.bad_files:
                    self.bad_files[path] = exc.reason
                    logger.warning("skipping %s: %s", path, exc.reason)
            self._read[path] = (stamp, records)
        if records is None and strict:
            raise BadResultFile(path, self.bad_files[path])
        return records

    def _readable_keys(self) -> list[str]:
        """Finished runs whose rows file is readable."""
        return [k for k in self.run_keys() if self._records(self.rows_path(k), "runs") is not None]

    def rows(self) -> pd.DataFrame:
        """Every stored row as one tidy DataFrame.

        Columns in :data:`ROW_COLUMNS` order, extras after. Bad files are skipped (see the class).
        """
        records = [r for key in self._readable_keys() for r in self._records(self.rows_path(key), "runs") or ()]
        df = pd.DataFrame.from_records(records)
        if df.empty:
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        extra = [c for c in df.columns if c not in ROW_COLUMNS]
        return df[[c for c in ROW_COLUMNS if c in df.columns] + extra]

    def _finished_records(self, folder: str) -> list[dict[str, Any]]:
        """The records of ``folder`` (samples or timings) of every finished, readable run."""
        keys = self._readable_keys()
        paths = [self.root / folder / f"{k}.jsonl" for k in keys]
        return [r for p in paths if p.exists() for r in self._records(p, folder) or ()]

    def samples(self) -> pd.DataFrame:
        """Every stored per-sample record as one DataFrame."""
        return pd.DataFrame.from_records(self._finished_records("samples"))

    def timings(self) -> pd.DataFrame:
        """Every stored timed-call record (one per run, budget and batch size) as one DataFrame."""
        return pd.DataFrame.from_records(self._finished_records("timings"))

    def record_failure(
        self, run_key: str, *, phase: str, error: str, detail: str, about: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Store why a run failed: the traceback in its log, the record naming phase, error and log.

        Args:
            run_key: the run.
            phase: where it failed (``backbone``, ``fit``, ``quality``, ``flops``, ``timing``,
                ``memory``, ``store``, …).
            error: the one-line cause.
            detail: the traceback or the worker's error output, for the log.
            about: what else identifies the run (title, task, method, seed, hardware).

        Returns:
            The record as written.

        Raises:
            OSError: the results folder cannot be written.
        """
        previous = self.failure(run_key)
        record = {
            "run_key": run_key,
            **(about or {}),
            "phase": phase,
            "error": error,
            "log": str(self.log_path(run_key)),
            "time": now(),
            "attempts": int(previous.get("attempts", 1)) + 1 if previous else 1,
        }
        header = "".join(f"{k}: {v}\n" for k, v in record.items() if k != "log")
        _write_atomic(self.log_path(run_key), [header, "\n", detail.rstrip("\n") + "\n"])
        _write_atomic(self.failure_path(run_key), [json.dumps(record, default=_json_default, indent=1) + "\n"])
        return record

    def failure(self, run_key: str) -> dict[str, Any] | None:
        """The record of a run's last failure, if one is stored (bad ones are skipped or raised)."""
        path = self.failure_path(run_key)
        records = self._records(path, "failures") if path.exists() else None
        return records[0] if records else None

    def clear_failure(self, run_key: str) -> None:
        """Forget a run's failure (it has just succeeded): its record and its log."""
        for path in (self.failure_path(run_key), self.log_path(run_key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def failures(self) -> list[dict[str, Any]]:
        """The failure records of runs that have not finished since, sorted by run key."""
        folder = self.root / "failures"
        if not folder.exists():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            if self.has(path.stem):
                continue
            records = self._records(path, "failures")
            if records:
                out.append(records[0])
        return out

    def claim(self, run_key: str) -> Claim | None:
        """Claim a run before computing it, or ``None`` when a live process holds it.

        A claim left by a dead process is taken over. Holding the claim, no other process writes
        this run's files, so temporary files left by a killed writer of it are removed here.

        Raises:
            OSError: the results folder cannot be written.
        """
        claim = try_claim(self.claim_path(run_key))
        if claim is not None:
            for folder in ("runs", "samples", "timings", "failures", "logs"):
                for tmp in (self.root / folder).glob(f".{run_key}.*.tmp"):
                    with contextlib.suppress(OSError):
                        tmp.unlink()
        return claim

    def claim_holder(self, run_key: str) -> str:
        """Who holds a run's claim, for messages (``pid P on host H since T``)."""
        return holder(self.claim_path(run_key))

    def export(self, path: Path, fmt: str | None = None) -> Path:
        """Write all rows to one CSV or Parquet file, through a temporary file renamed into place.

        Args:
            path: the file to write (replaced if it exists; its folder is created).
            fmt: ``csv`` or ``parquet``; ``None`` = from ``path``'s extension
                (:func:`export_format`).

        Raises:
            ValueError: unknown or mismatched format, no rows, or Parquet without pyarrow.
            OSError: the write failed (a full disk); no file is left, not even a temporary one.
        """
        fmt = export_format(path, fmt)
        df = self.rows()
        if df.empty:
            raise ValueError(f"No result rows under {self.root}. Run `bench run --out {self.root}` first.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            if fmt == "csv":
                df.to_csv(tmp, index=False)
            else:
                df.to_parquet(tmp, index=False)
            os.replace(tmp, path)
        except ImportError as exc:
            raise ValueError(
                f"Parquet export needs pyarrow: {exc}. Install it with `pip install 'dynbench[parquet]'`."
            ) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # already renamed on success; a half-written file on failure
        return path
