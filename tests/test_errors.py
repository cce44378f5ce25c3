"""The error hierarchy (SPEC §10.1): one tree, and its abstract bases are never raised.

``ProtocolError`` and ``RemoteProtocolError`` are abstract.  Python cannot
enforce that cheaply at run time (a ``__new__`` check tripled the cost of
refusing a replayed record), so this test enforces it on the source: no
module of ``protocol/`` constructs either of them directly.

Every exception class a module of ``protocol/`` defines is a
``ProtocolError``, so a caller that catches ``ProtocolError`` catches every
refusal the protocol makes on purpose.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import types

import pytest

from pumpguard.protocol import errors

PROTOCOL_DIR = pathlib.Path(errors.__file__).parent
PROTOCOL_SOURCES = sorted(PROTOCOL_DIR.glob("*.py"))
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


@pytest.mark.parametrize("path", PROTOCOL_SOURCES, ids=lambda p: p.name)
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


# --- One tree: every exception class of protocol/ is a ProtocolError -----------------


def _module_of(path: pathlib.Path) -> types.ModuleType:
    name = "pumpguard.protocol" if path.stem == "__init__" else f"pumpguard.protocol.{path.stem}"
    return importlib.import_module(name)


def _exceptions_outside_the_tree(module: types.ModuleType) -> list[str]:
    """Exception classes ``module`` defines (not imports) that are not ProtocolErrors."""
    return [
        name
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
        and not issubclass(value, errors.ProtocolError)
    ]


def _class_names(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


@pytest.mark.parametrize("path", PROTOCOL_SOURCES, ids=lambda p: p.name)
def test_every_exception_defined_in_protocol_is_a_protocol_error(path: pathlib.Path) -> None:
    module = _module_of(path)
    # Every class in the source is reachable at module level, so none escapes the check.
    assert _class_names(path) <= set(vars(module)), f"{path.name} defines a nested class"
    assert _exceptions_outside_the_tree(module) == [], f"{path.name}: not a ProtocolError"


def test_the_tree_check_would_catch_a_stray_exception() -> None:
    fake = types.ModuleType("pumpguard.protocol.fake")
    source = (
        "class Stray(ValueError): pass\n"
        "class Fine(errors.MalformedRecord): pass\n"
        "class NotAnError: pass\n"
        "Imported = KeyError\n"
    )
    exec(source, {"errors": errors, "__name__": fake.__name__}, vars(fake))  # noqa: S102
    assert _exceptions_outside_the_tree(fake) == ["Stray"]


def test_audit_and_policy_errors_import_from_where_they_did() -> None:
    from pumpguard.firmware_sim import audit
    from pumpguard.protocol import PolicyInvalid, audit_entry, policy

    assert audit_entry.EntryMalformed is errors.EntryMalformed
    assert audit_entry.AuditVerificationError is audit.AuditVerificationError
    assert audit_entry.AuditVerificationError is errors.AuditVerificationError
    assert policy.PolicyInvalid is PolicyInvalid is errors.PolicyInvalid
    for cls in (errors.EntryMalformed, errors.AuditVerificationError, errors.PolicyInvalid):
        assert issubclass(cls, errors.RemoteProtocolError), cls
