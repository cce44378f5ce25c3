"""The error hierarchy (SPEC §10.1): abstract bases are never raised.

``ProtocolError`` and ``RemoteProtocolError`` are abstract.  Python cannot
enforce that cheaply at run time (a ``__new__`` check tripled the cost of
refusing a replayed record), so this test enforces it on the source: no
module of ``protocol/`` constructs either of them directly.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from pumpguard.protocol import errors

PROTOCOL_DIR = pathlib.Path(errors.__file__).parent
ABSTRACT = {"ProtocolError", "RemoteProtocolError"}


def _constructed_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


@pytest.mark.parametrize("path", sorted(PROTOCOL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_module_raises_an_abstract_error(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert not (_constructed_names(tree) & ABSTRACT), f"{path.name} constructs an abstract error"


def test_the_check_would_catch_a_direct_construction() -> None:
    tree = ast.parse("raise RemoteProtocolError('x')\nraise errors.ProtocolError()")
    assert _constructed_names(tree) >= ABSTRACT


def test_every_concrete_error_is_local_or_remote() -> None:
    concrete = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type)
        and issubclass(cls, errors.ProtocolError)
        and cls.__name__ not in ABSTRACT
    ]
    assert len(concrete) >= 7
    for cls in concrete:
        assert issubclass(cls, errors.LocalProtocolError | errors.RemoteProtocolError), cls
