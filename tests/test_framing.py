"""Link framing: COBS, CRC-16 and the resynchronising decoder (SPEC §3).

Attacks and faults these tests stop:

* line noise and garbage: a frame damaged anywhere is refused with
  :class:`FramingError`, and the decoder resynchronises at the next
  delimiter -- whatever the noise, however the bytes are chunked;
* memory exhaustion: a peer that never sends a delimiter cannot make the
  decoder hold more than one maximal frame plus the chunk just passed in;
* unexpected exceptions: for *any* byte stream the decoder returns a record,
  ``None``, or raises :class:`FramingError` -- never anything else (h11's
  fuzz invariant, as a Hypothesis property);
* the local side cannot put an empty or oversized record on the link.
"""

from __future__ import annotations

import itertools
import random

import pytest
from helpers import FRAMING_ERROR, DecoderEvent, drain, feed, tr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpguard.protocol import (
    FrameDecoder,
    FramingError,
    LocalProtocolError,
    decode_frame,
    encode_frame,
)
from pumpguard.protocol.framing import cobs_decode, cobs_encode, crc16
from pumpguard.protocol.wire import CRC_LEN, MAX_ENCODED_FRAME_LEN, MAX_RECORD_LEN

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_events(stream: bytes) -> list[DecoderEvent]:
    """What SPEC §3 says a receiver sees in ``stream``, computed without a decoder.

    Split on every delimiter; an empty piece is an idle line; every other
    complete piece is one frame, either a record or a framing error.  An
    unterminated tail is one error once it is longer than any frame can be.
    """
    *complete, partial = stream.split(b"\x00")
    events: list[DecoderEvent] = []
    for piece in complete:
        if not piece:
            continue
        try:
            events.append(decode_frame(piece))
        except FramingError:
            events.append(FRAMING_ERROR)
    if len(partial) > MAX_ENCODED_FRAME_LEN:
        events.append(FRAMING_ERROR)
    return events


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- CRC and COBS ---------------------------------------------------------------


def test_crc16_is_genibus() -> None:
    # CRC-16/GENIBUS check value from the CRC catalogue (poly 0x1021, init and xorout 0xFFFF).
    assert crc16(b"123456789") == 0xD64E
    assert crc16(b"") == 0x0000  # init 0xFFFF, final XOR 0xFFFF


@pytest.mark.parametrize(
    ("decoded", "encoded"),
    [
        # Cheshire and Baker (1999), and the examples on the COBS Wikipedia page.
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        # 254 non-zero bytes: a full 0xFF block, then the paper's StuffData()
        # closes the (empty) last block with code 0x01.
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
        (bytes(range(1, 255)) + b"\x00", b"\xff" + bytes(range(1, 255)) + b"\x01\x01"),
    ],
)
def test_cobs_known_vectors(decoded: bytes, encoded: bytes) -> None:
    assert cobs_encode(decoded) == encoded
    assert cobs_decode(encoded) == decoded


def _cobs_inputs(length: int, rng: random.Random) -> list[bytes]:
    return [
        rng.randbytes(length),
        bytes(length),
        b"\xff" * length,
        # Mostly non-zero with rare zeros: long runs near the 254-byte block limit.
        bytes(0 if rng.random() < 0.004 else rng.randint(1, 255) for _ in range(length)),
    ]


def test_cobs_round_trip_every_length_0_to_600() -> None:
    rng = random.Random(3)
    for length in range(601):
        for data in _cobs_inputs(length, rng):
            encoded = cobs_encode(data)
            assert 0 not in encoded
            # One code byte per 254 and one at the start, at most: the bound
            # MAX_ENCODED_FRAME_LEN is computed from.
            assert len(encoded) <= length + length // 254 + 1
            assert cobs_decode(encoded) == data


@pytest.mark.parametrize("run", [253, 254, 255, 508, 509])
@pytest.mark.parametrize("where", ["alone", "zero_after", "zero_before", "zero_both"])
def test_cobs_round_trip_at_block_boundaries(run: int, where: str) -> None:
    body = b"\x5a" * run
    data = {
        "alone": body,
        "zero_after": body + b"\x00",
        "zero_before": b"\x00" + body,
        "zero_both": b"\x00" + body + b"\x00",
    }[where]
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize(
    "bad",
    [
        b"\x00",  # code byte 0 can never occur
        b"\x05\x11\x22",  # code points past the end
        b"\x02\x11\x00\x01",  # a zero inside the frame
        b"\xff" + b"\x01" * 10,  # 0xFF block cut short
    ],
)
def test_cobs_decode_refuses_malformed(bad: bytes) -> None:
    with pytest.raises(FramingError):
        cobs_decode(bad)


@given(st.binary(max_size=700))
@FUZZ
def test_cobs_round_trip_property(data: bytes) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


# --- encode_frame / decode_frame ------------------------------------------------


def test_frame_round_trip_every_record_length() -> None:
    rng = random.Random(4)
    for length in range(1, MAX_RECORD_LEN + 1):
        for record in (rng.randbytes(length), bytes(length), b"\xff" * length):
            frame = encode_frame(record)
            assert frame.endswith(b"\x00")
            assert frame.index(0) == len(frame) - 1  # exactly one delimiter, at the end
            assert len(frame) - 1 <= MAX_ENCODED_FRAME_LEN
            # SPEC §3 layout: COBS(record || CRC-16 big-endian) || 0x00.
            crc = crc16(record).to_bytes(CRC_LEN, "big")
            assert frame == cobs_encode(record + crc) + b"\x00"
            assert decode_frame(frame[:-1]) == record


def _worst_case_record() -> bytes:
    """A maximal record whose frame is exactly MAX_ENCODED_FRAME_LEN long."""
    rng = random.Random(5)
    while True:
        record = bytes(rng.randint(1, 255) for _ in range(MAX_RECORD_LEN))
        if 0 not in crc16(record).to_bytes(CRC_LEN, "big"):
            return record


def test_worst_case_frame_is_exactly_the_maximum_and_decodes() -> None:
    record = _worst_case_record()
    frame = encode_frame(record)
    assert len(frame) - 1 == MAX_ENCODED_FRAME_LEN
    # Byte by byte the buffer reaches exactly the bound without tripping it.
    tr(frame, [record])


@pytest.mark.parametrize("length", [0, MAX_RECORD_LEN + 1, 4096])
def test_encode_frame_refuses_empty_and_oversized(length: int) -> None:
    with pytest.raises(LocalProtocolError) as excinfo:
        encode_frame(b"\x03" * length)
    assert excinfo.type is LocalProtocolError


def test_decode_frame_refusals() -> None:
    good = encode_frame(b"\x03hello")[:-1]
    cases = [
        b"",  # nothing at all
        cobs_encode(b"\x12\x34"),  # only a CRC's worth of bytes
        cobs_encode(b"\x03hello" + b"\x00\x00"),  # wrong CRC
        good[:-1],  # truncated
        good + b"\x02\x55",  # extended
        b"\x07" * (MAX_ENCODED_FRAME_LEN + 1),  # longer than any frame
    ]
    for bad in cases:
        with pytest.raises(FramingError):
            decode_frame(bad)


def test_decode_frame_refuses_appended_zero_bytes() -> None:
    """SPEC §3: with CRC-16/CCITT-FALSE (no final XOR) CRC(m || crc(m)) == 0,
    so a stray 0x01 before the delimiter (one more zero byte after COBS)
    passed the check for every frame.  The final XOR of CRC-16/GENIBUS stops it."""
    for record in (b"\x03hello", bytes(range(1, 100)), b"\x02" * MAX_RECORD_LEN):
        for extra in (b"\x01", b"\x01\x01", b"\x01\x01\x01"):
            with pytest.raises(FramingError):
                decode_frame(encode_frame(record)[:-1] + extra)


def test_decode_frame_never_returns_an_oversized_record() -> None:
    """SPEC §3: a record is at most MAX_RECORD_LEN bytes, checked on receive too.

    A record of zeros COBS-encodes compactly, so one byte past the limit still
    fits the encoded-frame bound; only a check on the record itself refuses it.
    """
    record = bytes(MAX_RECORD_LEN + 1)
    raw = record + crc16(record).to_bytes(CRC_LEN, "big")
    encoded = cobs_encode(raw)
    assert len(encoded) <= MAX_ENCODED_FRAME_LEN  # fits the frame bound ...
    with pytest.raises(FramingError):  # ... but carries a 257-byte record
        decode_frame(encoded)


def test_decode_frame_refuses_every_single_bit_flip() -> None:
    rng = random.Random(6)
    for record in (b"\x03", rng.randbytes(40), rng.randbytes(MAX_RECORD_LEN), bytes(30)):
        encoded = encode_frame(record)[:-1]
        for bit in range(len(encoded) * 8):
            damaged = bytearray(encoded)
            damaged[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(FramingError):
                decode_frame(bytes(damaged))


# --- FrameDecoder: whole, byte by byte, chunked, with garbage ---------------------

A = b"\x03first record"
B = b"\x01" + bytes(40)  # many zeros inside: COBS must hide them all
C = b"\x02" + bytes(range(256))[: MAX_RECORD_LEN - 1]


def test_decoder_clean_stream() -> None:
    tr(encode_frame(A), [A])
    tr(encode_frame(A) + encode_frame(B) + encode_frame(C), [A, B, C])


def test_decoder_idle_delimiters_are_not_errors() -> None:
    stream = b"\x00\x00" + encode_frame(A) + b"\x00" * 5 + encode_frame(B) + b"\x00"
    tr(stream, [A, B])


def test_decoder_garbage_with_zeros_before_between_after() -> None:
    stream = (
        b"noise\x00"  # garbage ended by a delimiter: one bad frame
        + encode_frame(A)
        + b"\xff\xfe\x00\x00"  # garbage, then an idle delimiter
        + encode_frame(B)
        + b"\x03ab\x00"  # valid COBS, but no longer than a CRC
        + encode_frame(C)
        + b"junk\x00tail"  # after the last frame, ended and unended
    )
    tr(stream, [FRAMING_ERROR, A, FRAMING_ERROR, B, FRAMING_ERROR, C, FRAMING_ERROR])


def test_decoder_garbage_without_zeros_merges_into_next_frame() -> None:
    # Non-zero garbage has no delimiter of its own, so it becomes the front of
    # the next frame, which fails its CRC; the decoder is resynchronised by
    # that frame's delimiter and the following frame is recovered.
    stream = b"noise" + encode_frame(A) + encode_frame(B) + b"\xaa\xbb" + encode_frame(C)
    tr(stream, [FRAMING_ERROR, B, FRAMING_ERROR])


def test_decoder_damaged_frame_between_good_ones() -> None:
    damaged = bytearray(encode_frame(B))
    damaged[3] ^= 0x10
    stream = encode_frame(A) + bytes(damaged) + encode_frame(C)
    tr(stream, [A, FRAMING_ERROR, C])


@pytest.mark.parametrize(
    "garbage_len",
    [MAX_ENCODED_FRAME_LEN + 1, MAX_ENCODED_FRAME_LEN + 2, 2 * MAX_ENCODED_FRAME_LEN + 7, 5000],
)
def test_oversized_frame_raises_once_and_decoder_recovers(garbage_len: int) -> None:
    garbage = b"\x05" * garbage_len
    stream = encode_frame(A) + garbage + b"\x00" + encode_frame(B) + encode_frame(C)
    tr(stream, [A, FRAMING_ERROR, B, C])


def test_frame_exactly_at_the_bound_is_not_oversized() -> None:
    # MAX_ENCODED_FRAME_LEN bytes of garbage is a bad frame, not an oversized
    # one; MAX + 1 is oversized.  Either way exactly one error.
    for length in (MAX_ENCODED_FRAME_LEN, MAX_ENCODED_FRAME_LEN + 1):
        tr(b"\x05" * length + b"\x00" + encode_frame(A), [FRAMING_ERROR, A])


def test_oversized_without_delimiter_counts_one_dropped_frame() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"\x09" * (MAX_ENCODED_FRAME_LEN + 1))
    with pytest.raises(FramingError):
        decoder.next_record()
    # Still inside the same oversized frame: no second error, however long it runs.
    for _ in range(10):
        decoder.receive_data(b"\x09" * 1000)
        assert decoder.next_record() is None
    assert decoder.frames_dropped == 1
    decoder.receive_data(b"\x00" + encode_frame(A))
    assert decoder.next_record() == A
    assert decoder.next_record() is None
    assert decoder.frames_dropped == 1


def test_memory_bound_under_a_megabyte_of_garbage() -> None:
    """A peer that never sends a delimiter cannot grow the decoder's buffer."""
    chunk_size = 4096
    rng = random.Random(7)
    decoder = FrameDecoder()
    errors = 0
    for _ in range((1 << 20) // chunk_size):
        decoder.receive_data(rng.randbytes(chunk_size).replace(b"\x00", b"\x01"))
        # The one private read in the suite: no public observable shows the
        # buffer's size, and this bound is the point of the test.
        assert len(decoder._buffer) <= MAX_ENCODED_FRAME_LEN + chunk_size
        events = drain(decoder)
        errors += len(events)
        assert set(events) <= {FRAMING_ERROR}
        assert len(decoder._buffer) <= MAX_ENCODED_FRAME_LEN
    assert errors == 1
    assert decoder.frames_dropped == 1
    decoder.receive_data(b"\x00" + encode_frame(A))
    assert drain(decoder) == [A]


def test_decoder_many_frames_random_chunks() -> None:
    rng = random.Random(8)
    records = [rng.randbytes(rng.randint(1, MAX_RECORD_LEN)) for _ in range(200)]
    stream = b"".join(encode_frame(r) for r in records)
    tr(stream, records, seed=9)


# --- Hypothesis: h11's fuzz invariant ---------------------------------------------

records_st = st.binary(min_size=1, max_size=MAX_RECORD_LEN)
streams_st = st.lists(
    st.one_of(
        st.binary(max_size=300),
        records_st.map(encode_frame),
        st.just(b"\x00"),
        st.integers(MAX_ENCODED_FRAME_LEN - 2, 3 * MAX_ENCODED_FRAME_LEN).map(
            lambda n: b"\x05" * n
        ),
    ),
    max_size=8,
).map(b"".join)
cuts_st = st.lists(st.integers(min_value=0, max_value=5000), max_size=30)


@given(stream=streams_st, cuts=cuts_st)
@FUZZ
def test_decoder_only_returns_records_or_raises_framing_error(
    stream: bytes, cuts: list[int]
) -> None:
    """Either a record, ``None``, or :class:`FramingError`: never anything else.

    Any other exception escapes this loop and fails the test.  The events must
    also be exactly what :func:`reference_events` computes from the whole
    stream, however it is chunked.
    """
    decoder = FrameDecoder()
    events: list[DecoderEvent] = []
    for chunk in chunked(stream, cuts):
        decoder.receive_data(chunk)
        while True:
            try:
                result = decoder.next_record()
            except FramingError:
                events.append(FRAMING_ERROR)
                continue
            assert result is None or type(result) is bytes
            if result is None:
                break
            assert 1 <= len(result) <= MAX_RECORD_LEN
            events.append(result)
    assert events == reference_events(stream)
    assert decoder.frames_dropped == events.count(FRAMING_ERROR)


@given(
    pieces=st.lists(st.tuples(st.binary(max_size=400), records_st), max_size=6),
    trailing=st.binary(max_size=400),
    cuts=cuts_st,
)
@FUZZ
def test_every_frame_after_a_delimiter_is_recovered(
    pieces: list[tuple[bytes, bytes]], trailing: bytes, cuts: list[int]
) -> None:
    """Garbage (any bytes) + delimiter + frame: the frame always comes out."""
    stream = b""
    expected: list[DecoderEvent] = []
    for garbage, record in pieces:
        stream += garbage + b"\x00" + encode_frame(record)
        expected += reference_events(garbage + b"\x00")
        expected.append(record)
    stream += trailing
    expected += reference_events(trailing)
    events = feed(chunked(stream, cuts))
    assert events == expected
    records = [event for event in events if isinstance(event, bytes)]
    # Every genuine record is there, in order.
    iterator = iter(records)
    assert all(any(got == record for got in iterator) for _, record in pieces)
