"""Download a data file from its canonical address: streamed to a temporary file, checked, renamed.

The file never appears under its final name until its check passes, so a killed download or a
corrupt mirror leaves nothing a loader would pick up. Mirrors are tried in order. Progress goes to a
callback; nothing here prints.

What ``pooch`` does here, and what stays ours (issue 13 asked for pooch "or a justification"):

- The HTTP(S) transfer is :class:`pooch.HTTPDownloader` (``requests`` underneath: redirects,
  proxies, the certifi CA bundle, urllib3's check that the body is as long as ``Content-Length``).
  Its progress-bar hook takes any object with ``total``/``update``/``reset``/``close``;
  :class:`_PoochProgress` turns that into our ``progress(name, done, total)`` callback.
- :func:`pooch.retrieve` (download, hash, move into place) is not used, for four reasons. (1) Most
  of our checksums are of the *payload*: a ``.gz`` file is checked by its decompressed bytes
  (:mod:`dynbench.tasks.data.integrity`), so that two gzip encodings of the same data both pass;
  pooch can only hash the file as stored. (2) With ``known_hash=None`` it hashes the whole file
  anyway, only to log the digest (2.4 GB for Speech Commands). (3) With a hash it checks no size
  first, reports no progress while hashing, and on a mismatch deletes the file and raises a
  ``ValueError`` whose text is all we get, so our error could not say which digest arrived.
  (4) It logs to stderr by default. The part it would replace (temporary name, check, rename) is
  the dozen lines of :func:`fetch_checked`, which also turn every failure into
  :class:`DatasetMissingError` / :class:`DatasetCorruptError` with what to do.
- Mirrors are a loop here: pooch tries one URL per file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError, Progress
from dynbench.tasks.data.integrity import FileSpec, read_payload

CHUNK = 1 << 20  # bytes per write: pooch's default (1 KB) would flush 2.4 million times for 2.4 GB
HEADERS = {
    "User-Agent": "dynbench-data (pooch)",  # some mirrors refuse requests without a user agent
    # the bytes as published: a server that gzip-encodes a .tar.gz on the fly would otherwise have
    # requests decode it, and the saved file would fail its checksum and its Content-Length check
    "Accept-Encoding": "identity",
}


class _Failed(Exception):
    """One mirror did not deliver a good file (the message says why)."""


class _PoochProgress:
    """The progress-bar object pooch's downloader drives, reporting to our ``progress`` callback.

    pooch sets ``total`` once the response headers arrive (0 when the server sends no length),
    then calls ``update(chunk_size)`` per chunk, counting the last, shorter chunk in full; so the
    byte count reported is the size of the file being written (pooch flushes every chunk), which
    is exact.
    """

    def __init__(self, name: str, file: Path, progress: Progress | None) -> None:
        self.name, self.file, self.progress = name, file, progress
        self._total: int | None = None
        self.started = False  # headers arrived: a later error broke the transfer, not the connection
        self.last: tuple[int, int | None] | None = None  # the last report, so none is sent twice

    @property
    def total(self) -> int | None:
        """Bytes the server announced (``None`` when it did not say)."""
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        # pooch sets this exactly once, when the transfer starts: the moment to report 0 bytes
        self._total, self.started = (int(value) or None), True
        self._report(0)

    def update(self, n: int) -> None:  # n is ignored: it overshoots on the last chunk; the file size is exact
        """One chunk was written."""
        self._report(self.file.stat().st_size)

    def reset(self) -> None:
        """Ignored: pooch resets then refills the bar at the end, and :meth:`close` reports."""

    def close(self) -> None:
        """The transfer finished."""
        self._report(self.file.stat().st_size)

    def _report(self, done: int) -> None:
        if self.progress is not None and (done, self._total) != self.last:
            self.last = (done, self._total)
            self.progress(self.name, done, self._total)


def _cause(exc: BaseException) -> str:
    """The innermost reason behind a requests error, e.g. ``[Errno 111] Connection refused``.

    requests wraps urllib3's error, which wraps the socket's; the outer messages repeat the URL.
    """
    for _ in range(8):  # a bounded walk: exception chains can loop
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.__cause__ or exc.__context__
        if inner is None and exc.args and isinstance(exc.args[0], BaseException):
            inner = exc.args[0]
        if inner is None:
            break
        exc = inner
    return str(exc) or type(exc).__name__


def _stream(url: str, tmp: Path, name: str, progress: Progress | None, timeout: float) -> None:
    """Copy ``url`` into ``tmp`` with pooch's HTTP downloader, calling ``progress`` per chunk.

    Raises:
        _Failed: the server could not be reached, refused, or the transfer broke off.
        DatasetMissingError: ``tmp`` could not be written (no other mirror would help).
    """
    import pooch  # imported on use: it pulls in requests, which `bench` needs only to download
    import requests

    bar = _PoochProgress(name, tmp, progress)
    downloader = pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK, timeout=timeout, headers=HEADERS)
    try:
        downloader(url, str(tmp), None)
    except requests.HTTPError as exc:
        response = exc.response
        raise _Failed(f"HTTP {response.status_code} {response.reason}" if response is not None else str(exc)) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        raise _Failed("not an http:// or https:// address") from None
    except requests.RequestException as exc:  # refused, unresolvable, timed out, reset, cut short
        if not bar.started:
            raise _Failed(f"cannot connect ({_cause(exc)})") from None
        got = f" with {tmp.stat().st_size:,} of {bar.total:,} bytes saved" if bar.total and tmp.exists() else ""
        raise _Failed(f"the transfer broke off{got} ({_cause(exc)})") from None
    except OSError as exc:  # requests wraps network errors, so this is the local file: disk full, read-only
        raise DatasetMissingError(
            f"{name} could not be written to {tmp.parent} ({exc}). "
            "Free some space there, or point DYNBENCH_DATA at a writable folder with room."
        ) from None
    done = tmp.stat().st_size
    if bar.total is not None and done != bar.total:  # urllib3 2 checks this too; urllib3 1.x does not
        raise _Failed(f"the transfer broke off with {done:,} of {bar.total:,} bytes saved")


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
        DatasetMissingError: no mirror could be reached or none had the file (the message lists
            each attempt), or ``directory`` cannot be written.
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
