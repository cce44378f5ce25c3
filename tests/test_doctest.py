"""Run the doctests in ``protocol/`` (STYLE §6: doctest small pure classes).

The examples in docstrings are documentation a reader will copy -- the
:class:`~protocol.framing.FrameDecoder` example shows resynchronisation after
garbage (SPEC §3) -- so they must stay true.  Every module of the package is
collected automatically, so a new module's doctests cannot be forgotten.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import pumpguard.protocol as protocol

MODULES = sorted(
    f"{protocol.__name__}.{info.name}" for info in pkgutil.iter_modules(protocol.__path__)
)


#: Exception *messages* are for the local log (SPEC §10, STYLE §3) and may be
#: reworded; the exception *class* in an example must still match exactly.
FLAGS = doctest.IGNORE_EXCEPTION_DETAIL


@pytest.mark.parametrize("name", [protocol.__name__, *MODULES])
def test_module_doctests_pass(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, report=False)
    assert result.failed == 0, f"{result.failed} doctest failures in {name}"


def test_framing_doctest_messages_exact() -> None:
    import pumpguard.protocol.framing

    assert doctest.testmod(pumpguard.protocol.framing, report=False).failed == 0


def test_doctests_exist() -> None:
    """The runner must actually run something; ``protocol.framing`` has a doctest."""
    attempted = {
        name: doctest.testmod(importlib.import_module(name), report=False).attempted
        for name in MODULES
    }
    assert attempted["pumpguard.protocol.framing"] > 0
    assert sum(attempted.values()) > 0
