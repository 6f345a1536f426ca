"""Download a data file from its canonical address: streamed to a temporary file, checked, renamed.

The file never appears under its final name until its checksum passes, so a killed download or a
corrupt mirror leaves nothing a loader would pick up. Mirrors are tried in order. Progress goes to a
callback; nothing here prints.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError, Progress
from dynbench.tasks.data.integrity import FileSpec, read_payload

CHUNK = 1 << 20  # bytes read per step: progress updates often enough, few Python-level calls
USER_AGENT = "dynbench-data (python urllib)"  # some mirrors refuse requests without a user agent


class _Failed(Exception):
    """One mirror did not deliver a good file (the message says why)."""


def _stream(url: str, tmp: Path, name: str, progress: Progress | None, timeout: float) -> None:
    """Copy ``url`` into ``tmp``, calling ``progress`` per chunk; a short read is a failure."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if progress is not None:
                progress(name, done, total)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(name, done, total)
    except urllib.error.HTTPError as exc:
        raise _Failed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Failed(f"cannot connect ({exc.reason})") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, IncompleteRead
        raise _Failed(f"the transfer broke off ({type(exc).__name__}: {exc})") from None
    if total is not None and done != total:
        raise _Failed(f"received {done:,} of {total:,} bytes")


def fetch(
    spec: FileSpec,
    base_urls: Sequence[str],
    directory: Path,
    *,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``spec`` into ``directory`` from the first mirror whose file passes its checksum.

    Args:
        spec: the file and its checksum.
        base_urls: mirrors in order; the file's URL is ``base + "/" + spec.name``.
        directory: where the file goes (created if needed); it is written as ``.name.<pid>.part``
            and renamed.
        progress: called with ``(name, bytes_done, bytes_total)`` as bytes arrive.
        timeout: seconds to wait for a connection or a chunk.

    Returns:
        The path of the verified file.

    Raises:
        DatasetCorruptError: no mirror delivered a good file and one delivered a bad one; names its
            URL.
        DatasetMissingError: no mirror could be reached or none had the file; the message lists each
            attempt.
    """
    return fetch_checked(
        spec.name,
        base_urls,
        directory,
        check=lambda path: read_payload(path, spec),
        progress=progress,
        timeout=timeout,
    )


def fetch_checked(
    name: str,
    base_urls: Sequence[str],
    directory: Path,
    *,
    check: Callable[[Path], object],
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``name`` into ``directory`` from the first mirror whose copy passes ``check``.

    :func:`fetch` is this with the payload check of a :class:`FileSpec`; an archive checked by its
    own SHA-256 (:mod:`dynbench.tasks.data.archive`) passes its own ``check``.

    Args:
        name: the file name; its URL is ``base + "/" + name`` and it is saved under that name.
        base_urls: mirrors in order.
        directory: where the file goes (created if needed); it is written as ``.name.<pid>.part``
            and renamed.
        check: called on the downloaded temporary file; raises :class:`DatasetCorruptError` for a
            bad file.
        progress: called with ``(name, bytes_done, bytes_total)`` as bytes arrive.
        timeout: seconds to wait for a connection or a chunk.

    Returns:
        The path of the checked file.

    Raises:
        DatasetCorruptError: no mirror delivered a good file and one delivered a bad one; names its
            URL.
        DatasetMissingError: no mirror could be reached or none had the file; the message lists each
            attempt.
    """
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / name
    tmp = directory / f".{name}.{os.getpid()}.part"
    failures: list[str] = []
    bad_url, bad_problem = "", ""
    for base in base_urls:
        url = f"{base.rstrip('/')}/{name}"
        try:
            _stream(url, tmp, name, progress, timeout)
            check(tmp)
        except _Failed as exc:
            failures.append(f"{url}: {exc}")
        except DatasetCorruptError as exc:
            failures.append(f"{url}: the file it sent is corrupt: {exc.problem}")
            bad_url, bad_problem = bad_url or url, bad_problem or exc.problem
        else:
            os.replace(tmp, final)
            return final
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # a failed or interrupted attempt leaves nothing behind
    attempts = "\n".join(f"  - {f}" for f in failures) or "  (no download address is known)"
    if bad_url:
        raise DatasetCorruptError(
            bad_url,
            bad_problem,
            f"Nothing was written to {directory}. Attempts:\n{attempts}\nTry again later, or get {name} another way.",
        )
    raise DatasetMissingError(f"{name} could not be downloaded (nothing was written to {directory}):\n{attempts}")
