"""One-line descriptions of records for ``-v`` logs (BRIEF: direction, type,
length, counter, verdict -- never keys, codes or plaintext).

Only public header bytes are read: the type byte and, for DATA, the counter.
"""

from __future__ import annotations

from .wire import HEADER_LEN, RecordType


def describe_record(record: bytes) -> str:
    """``"DATA len=29 ctr=7"``, ``"HANDSHAKE_INIT len=41"``, ``"type=0x7f len=3"``."""
    if not record:
        return "empty"
    try:
        name = RecordType(record[0]).name
    except ValueError:
        name = f"type=0x{record[0]:02x}"
    text = f"{name} len={len(record)}"
    if record[0] == RecordType.DATA and len(record) >= HEADER_LEN:
        text += f" ctr={int.from_bytes(record[1:HEADER_LEN], 'big')}"
    return text
