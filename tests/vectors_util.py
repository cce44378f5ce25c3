"""Load test vectors stored as JSON under ``tests/vectors/`` (STYLE.md §5).

Modelled on pyca/cryptography's ``load_vectors_from_file``: tests name a
vector file, never a path of their own, so every vector the suite uses is
listed in ``tests/vectors/`` with its provenance (see the README files there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Root of the stored vectors.
VECTORS_DIR = Path(__file__).resolve().parent / "vectors"


def vector_path(name: str) -> Path:
    """Path of a vector file, ``name`` relative to ``tests/vectors/``.

    A bare name without ``.json`` is looked up as ``<name>.json`` first and
    then as ``wycheproof/<name>.json``, so ``"x25519_test"`` and
    ``"session_vectors"`` both work.
    """
    candidates = [VECTORS_DIR / name]
    if not name.endswith(".json"):
        candidates += [VECTORS_DIR / f"{name}.json", VECTORS_DIR / "wycheproof" / f"{name}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no vector file {name!r} under {VECTORS_DIR}")


def load_vectors(name: str) -> dict[str, Any]:
    """Parse one JSON vector file; raises if it is missing or not an object."""
    with vector_path(name).open(encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise TypeError(f"vector file {name!r} does not hold a JSON object")
    return data
