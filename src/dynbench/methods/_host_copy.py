"""Host copies of small buffers, so a forward pass on a GPU reads them without a sync per call.

Layer skip's ranking, Transformer^-1's flag and tree loop count, DHT's fitted tables: values a
forward pass needs in Python. :class:`HostCopy` reads one once per change of the buffer; the
host-sync counter (:mod:`dynbench.hardware.host_sync`) checks that the steady state reads none.
"""

from __future__ import annotations

from typing import Any

import torch


class HostCopy:
    """A small buffer's values on the host, read from the device once per change, not once per call.

    Reading a GPU tensor into Python synchronises the host with the device. A forward pass that
    needs a buffer's values on the host (a ranking, a flag, a loop count) keeps one of these per
    buffer: keyed by the tensor object, its storage, device and in-place version, the copy is
    refreshed after a fit, a loaded state dict or a move, and costs nothing otherwise.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Any = None

    def __call__(self, t: torch.Tensor) -> Any:
        """``t.tolist()`` (a Python scalar for a 0-d tensor), as of ``t``'s current contents."""
        key = (id(t), t.data_ptr(), t.device, t._version)
        if key != self._key:
            self._key, self._value = key, t.tolist()
        return self._value
