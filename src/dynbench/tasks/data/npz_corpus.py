"""A synthesized corpus on disk: arrays in one ``.npz``, a JSON manifest beside it, a SHA-256 check.

``spoken-digits`` (tasks/data/espeak.py) and ``spoken-commands`` (tasks/data/command_corpus.py)
store what they synthesize the same way: the arrays and their manifest are each written to a
temporary file and moved into place with ``os.replace`` (a killed write leaves no corpus a loader
would take), and loading re-checks that the manifest describes the corpus asked for and that the
arrays hash to the manifest's ``sha256``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def manifest_path(path: Path) -> Path:
    """The manifest beside the corpus file ``path``."""
    return path.with_suffix(".json")


def is_cached(path: Path) -> bool:
    """Whether the corpus file and its manifest are on disk (not verified)."""
    return path.exists() and manifest_path(path).exists()


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray], manifest: Mapping[str, Any]) -> Path:
    """Write ``arrays`` to ``path``, then the manifest, each via a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    tmp_json = path.with_name(f".{path.stem}.{os.getpid()}.tmp.json")
    tmp_json.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_json, manifest_path(path))
    return path


def load_arrays(
    path: Path,
    names: Sequence[str],
    spec: Any,
    checksum: Callable[..., str],
    error: type[Exception],
    prepare: str,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The manifest and the arrays ``names`` of the corpus at ``path``, checked.

    Args:
        path: the corpus file.
        names: the arrays to read, in the order ``checksum`` takes them.
        spec: the corpus spec (a dataclass) the manifest must describe.
        checksum: the corpus's SHA-256 over the arrays.
        error: the exception type to raise for a bad file (the data set's own).
        prepare: the command that makes the corpus, for the messages.

    Raises:
        FileNotFoundError: not cached.
        error: the files cannot be read, describe another corpus or fail the SHA-256.
    """
    if not is_cached(path):
        raise FileNotFoundError(f"no synthesized corpus at {path}. Run `{prepare}`.")
    fix = f"Delete {path} and {manifest_path(path)} and run `{prepare}` again."
    try:
        manifest = json.loads(manifest_path(path).read_text())
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # our handle: closed on a bad file too
            arrays = [z[name] for name in names]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise error(f"the cached corpus {path} cannot be read ({exc}). {fix}") from exc
    if manifest.get("spec") != json.loads(json.dumps(dataclasses.asdict(spec))):
        raise error(f"the manifest of {path} describes another corpus than the one asked for. {fix}")
    if checksum(*arrays) != manifest.get("sha256"):
        raise error(f"the cached corpus {path} fails its SHA-256 check (corrupt or truncated). {fix}")
    return manifest, arrays
