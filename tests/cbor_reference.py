"""An independent CBOR encoder (RFC 8949), for tests of the decoders that read CBOR.

The expected bytes of ``tests/test_messages.py`` and ``tests/test_policy.py``
come from here, written from the RFC rather than with cbor2 (the library the
implementation uses), so a cbor2 quirk cannot make a test agree with itself.
:func:`cbor` gives the deterministic encoding (RFC 8949 §4.2.1); :func:`head`
with a ``width`` and :func:`cbor_items` give the other forms a decoder must
refuse.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Final

from hypothesis import strategies as st

U32: Final = 0xFFFF_FFFF
U64: Final = 0xFFFF_FFFF_FFFF_FFFF

#: RFC 8949 §3: the additional information for a 1-, 2-, 4- and 8-byte argument.
_AI_FOR_WIDTH: Final = {1: 24, 2: 25, 4: 26, 8: 27}
#: The largest argument each width holds (0: inside the initial byte).
_WIDTH_MAX: Final = {0: 23, 1: 0xFF, 2: 0xFFFF, 4: 0xFFFF_FFFF, 8: 0xFFFF_FFFF_FFFF_FFFF}


def head(major: int, argument: int, width: int | None = None) -> bytes:
    """Initial byte and argument of a data item (RFC 8949 §3).

    ``width`` (0, 1, 2, 4 or 8 bytes after the initial byte) forces a form;
    by default the shortest one, as deterministic encoding requires (§4.2.1).
    """
    if width is None:
        width = next((w for w in (0, 1, 2, 4) if argument <= _WIDTH_MAX[w]), 8)
    if width == 0:
        return bytes([major << 5 | argument])
    return bytes([major << 5 | _AI_FOR_WIDTH[width]]) + argument.to_bytes(width, "big")


@dataclasses.dataclass(frozen=True)
class Tag:
    """A tagged data item (RFC 8949 §3.4), major type 6."""

    number: int
    value: object


def cbor(value: object) -> bytes:
    """The deterministic encoding of ``value`` (RFC 8949 §4.2.1).

    Shortest arguments, bignums only beyond 64 bits, definite lengths, map
    keys sorted by their encoded bytes, floats in the shortest of
    half/single/double that keeps the value.
    """
    if value is False:
        return b"\xf4"
    if value is True:
        return b"\xf5"
    if value is None:
        return b"\xf6"
    if isinstance(value, int):
        major, argument = (0, value) if value >= 0 else (1, -1 - value)
        if argument > _WIDTH_MAX[8]:  # §3.4.3: a bignum, tag 2 (or 3) on its bytes
            return cbor(Tag(2 + major, argument.to_bytes((argument.bit_length() + 7) // 8, "big")))
        return head(major, argument)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head(3, len(raw)) + raw
    if isinstance(value, float):
        for code, fmt in ((0xF9, ">e"), (0xFA, ">f")):
            try:
                packed = struct.pack(fmt, value)
            except OverflowError:
                continue
            if struct.unpack(fmt, packed)[0] == value or math.isnan(value):
                return bytes([code]) + packed
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor(item) for item in value)
    if isinstance(value, dict):
        pairs = sorted((cbor(k), cbor(v)) for k, v in value.items())
        return head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    if isinstance(value, Tag):
        return head(6, value.number) + cbor(value.value)
    raise TypeError(f"no CBOR for {value!r}")


def cbor_items() -> st.SearchStrategy[bytes]:
    """Encoded CBOR items of every kind, canonical or not, nested, tagged, malformed."""

    def uint_forms(major: int) -> st.SearchStrategy[bytes]:
        return st.tuples(st.integers(0, U64), st.sampled_from([None, 0, 1, 2, 4, 8])).map(
            lambda t: head(major, t[0], _fit(t[0], t[1]))
        )

    leaves = st.one_of(
        uint_forms(0),
        uint_forms(1),
        st.sampled_from([0, 23, 24, 255, 256, 0xFFFF, U32, U64]).map(lambda v: head(0, v)),
        st.binary(max_size=40).map(cbor),
        st.binary(max_size=20).map(lambda b: head(2, len(b), 1) + b),  # non-minimal length
        st.lists(st.binary(max_size=8), max_size=3).map(
            lambda chunks: b"\x5f" + b"".join(cbor(c) for c in chunks) + b"\xff"
        ),
        st.text(max_size=10).map(cbor),
        st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf8\x20", b"\xf8\x14", b"\xff"]),
        st.floats(allow_nan=True).map(cbor),
        st.binary(min_size=1, max_size=9).map(lambda b: bytes([0xF9 + len(b) % 3]) + b),
        st.binary(max_size=12),  # arbitrary bytes, possibly not CBOR at all
    )

    def extend(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
        parts = st.lists(children, max_size=5)
        return st.one_of(
            parts.map(lambda p: head(4, len(p)) + b"".join(p)),
            parts.map(lambda p: b"\x9f" + b"".join(p) + b"\xff"),
            parts.map(lambda p: head(5, len(p) // 2) + b"".join(p[: len(p) // 2 * 2])),
            st.tuples(
                st.sampled_from([0, 1, 2, 3, 4, 5, 24, 28, 29, 30, 32, 35, 36, 37, 258, 55799]),
                children,
            ).map(lambda t: head(6, t[0]) + t[1]),
        )

    return st.recursive(leaves, extend, max_leaves=6)


def _fit(value: int, width: int | None) -> int | None:
    """``width`` if ``value`` fits in it (or ``None``: shortest), else shortest."""
    if width is None:
        return None
    limit = 23 if width == 0 else (1 << (8 * width)) - 1
    return width if value <= limit else None
