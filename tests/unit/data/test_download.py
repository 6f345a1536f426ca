"""Downloads through pooch's HTTP downloader, from servers on 127.0.0.1 that misbehave on purpose.

test_sources.py covers the ordinary paths (progress, a corrupt file, 404 and a dead port); these are
the transport's edge cases: a later mirror after a failing one, a body shorter than announced, no
``Content-Length``, a server that would gzip-encode the bytes on the fly, and a local file that
cannot be written.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dynbench.tasks.data.catalog import DatasetCorruptError, DatasetMissingError
from dynbench.tasks.data.download import fetch, fetch_checked
from dynbench.tasks.data.integrity import FileSpec

PAYLOAD = bytes(range(256)) * 6000  # 1.46 MiB: two 1 MiB chunks, the last one short (pooch counts it in full)
SPEC = FileSpec("blob.bin", hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD))

Behaviour = Callable[[http.server.BaseHTTPRequestHandler], None]


def send(handler: http.server.BaseHTTPRequestHandler, body: bytes, *, length: int | None, **headers: str) -> None:
    handler.send_response(200)
    if length is not None:
        handler.send_header("Content-Length", str(length))
    for key, value in headers.items():
        handler.send_header(key.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Behaviour], str]]:
    """``server(behaviour)`` → base URL of a server on 127.0.0.1 answering every GET with it."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(behaviour: Behaviour) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the connection closes after each answer: a short body ends

            def do_GET(self) -> None:  # noqa: N802 - the name http.server looks up
                behaviour(self)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/data"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def good(handler: http.server.BaseHTTPRequestHandler) -> None:
    send(handler, PAYLOAD, length=len(PAYLOAD))


def test_a_failing_mirror_is_skipped_and_the_next_one_used(tmp_path: Path, server):
    def missing(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_error(503, "Busy")

    got = fetch(SPEC, (server(missing), server(good)), tmp_path / "cache")
    assert got == tmp_path / "cache" / "blob.bin" and got.read_bytes() == PAYLOAD
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["blob.bin"]  # no .part left


def test_a_body_shorter_than_announced_is_a_failed_attempt_that_leaves_nothing(tmp_path: Path, server):
    def short(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, PAYLOAD[:1000], length=len(PAYLOAD))

    url = server(short)
    with pytest.raises(DatasetMissingError) as err:
        fetch(SPEC, (url,), tmp_path / "cache")
    msg = str(err.value)
    assert f"{url}/blob.bin: the transfer broke off" in msg and "nothing was written" in msg
    assert not any((tmp_path / "cache").iterdir())


def test_without_content_length_progress_has_no_total_and_counts_real_bytes(tmp_path: Path, server):
    def unsized(handler: http.server.BaseHTTPRequestHandler) -> None:
        send(handler, PAYLOAD, length=None)

    calls: list[tuple[str, int, int | None]] = []
    fetch(SPEC, (server(unsized),), tmp_path / "cache", progress=lambda *c: calls.append(c))
    assert calls[0] == ("blob.bin", 0, None) and calls[-1] == ("blob.bin", len(PAYLOAD), None)
    assert all(done <= len(PAYLOAD) for _, done, _ in calls)  # never pooch's rounded-up chunk count


def test_the_bytes_are_saved_as_published_even_where_a_server_would_gzip_them(tmp_path: Path, server):
    archive = gzip.compress(PAYLOAD, mtime=0)  # a .gz file, checked by the SHA-256 of the file itself
    seen: list[str] = []

    def encoding(handler: http.server.BaseHTTPRequestHandler) -> None:
        accept = handler.headers.get("Accept-Encoding", "")
        seen.append(accept)
        if "gzip" in accept:  # a server that compresses on the fly (as some do for .tar.gz)
            twice = gzip.compress(archive, mtime=0)
            send(handler, twice, length=len(twice), Content_Encoding="gzip")
        else:
            send(handler, archive, length=len(archive))

    digest = hashlib.sha256(archive).hexdigest()

    def check(path: Path) -> None:
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DatasetCorruptError(path, "its SHA-256 differs", "Get a good copy.")

    got = fetch_checked("blob.bin.gz", (server(encoding),), tmp_path / "cache", check=check)
    assert got.read_bytes() == archive and seen == ["identity"]


def test_a_full_disk_stops_at_once_with_what_to_do(tmp_path: Path, server):
    cache = tmp_path / "cache"
    cache.mkdir()
    part = cache / f".blob.bin.{os.getpid()}.part"
    part.symlink_to("/dev/full")  # every write to the temporary file fails with ENOSPC, as on a full disk
    with pytest.raises(DatasetMissingError, match=r"blob\.bin could not be written to .*cache .*DYNBENCH_DATA"):
        fetch(SPEC, (server(good), server(good)), cache)
    assert not any(cache.iterdir())  # the temporary name is removed
