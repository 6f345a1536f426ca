"""dynbench: a benchmark and reproducibility suite for dynamic-compute methods in transformers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dynbench")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
