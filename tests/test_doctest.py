"""Run every docstring example of the installed package (STYLE §6: doctest small pure classes).

The examples in docstrings are documentation a reader will copy -- the
:class:`~pumpguard.protocol.framing.FrameDecoder` example shows
resynchronisation after garbage (SPEC §3) -- so they must stay true.

Every module of ``pumpguard.protocol``, ``pumpguard.firmware_sim`` and
``pumpguard.host`` is searched, so a new module's examples cannot be
forgotten; only modules that *have* examples become test cases, since a case
for a module without any would pass whatever happened (a test that cannot
fail).  :func:`test_every_example_in_the_source_is_collected` guards the
collection itself.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import pumpguard.firmware_sim
import pumpguard.host
import pumpguard.protocol

PACKAGES: tuple[ModuleType, ...] = (pumpguard.protocol, pumpguard.firmware_sim, pumpguard.host)


def _all_modules() -> list[ModuleType]:
    names = [
        name
        for package in PACKAGES
        for name in (
            package.__name__,
            *(f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)),
        )
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _example_count(module: ModuleType) -> int:
    return sum(len(test.examples) for test in doctest.DocTestFinder().find(module))


ALL_MODULES = _all_modules()
#: The modules with at least one docstring example: one test case each.
WITH_EXAMPLES = [module.__name__ for module in ALL_MODULES if _example_count(module)]

#: Exception *messages* are for the local log (SPEC §10, STYLE §3) and may be
#: reworded; the exception *class* in an example must still match exactly.
FLAGS = doctest.IGNORE_EXCEPTION_DETAIL


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, report=False)
    assert result.attempted > 0, f"no example ran in {name}"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples fail in {name}"


def test_framing_doctest_messages_exact() -> None:
    """The framing examples hold with their exception messages too."""
    import pumpguard.protocol.framing

    result = doctest.testmod(pumpguard.protocol.framing, report=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_example_in_the_source_is_collected() -> None:
    """A module whose source shows an example prompt is a test case, so no example
    sits where doctest does not look (a comment, a string that is not a docstring);
    and the collection is not empty (``protocol.framing`` has examples)."""
    prompted = sorted(m.__name__ for m in ALL_MODULES if ">>> " in inspect.getsource(m))
    assert prompted == WITH_EXAMPLES
    assert "pumpguard.protocol.framing" in WITH_EXAMPLES
