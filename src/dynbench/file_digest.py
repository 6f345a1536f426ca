"""Content digests of the files a cache key depends on (pretrained weights, GGUF files).

A cache key that names a weights file by its path alone reuses a stale fit when the file at that
path is replaced. Keys add the SHA-256 of the file's content instead; it is computed once per
version of the file in a process (memoised by resolved path, size and modification time), so a
350 MB checkpoint is read once, not once per run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20  # read 1 MiB at a time: memory stays flat for multi-GB files
_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's content, memoised by (resolved path, size, mtime).

    Raises:
        OSError: the file cannot be read.
    """
    resolved = Path(path).expanduser().resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    if key not in _MEMO:
        h = hashlib.sha256()
        with open(resolved, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _MEMO[key] = h.hexdigest()
    return _MEMO[key]


def files_digest(paths: Iterable[Path]) -> str:
    """16 hex characters over the content of ``paths`` in order (a missing file counts as such)."""
    h = hashlib.sha256()
    for path in paths:
        h.update((file_sha256(path) if Path(path).expanduser().is_file() else "missing").encode())
    return h.hexdigest()[:16]
