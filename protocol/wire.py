"""Every number that crosses the wire or bounds a buffer, in one place.

docs/SPEC.md §11 ("Constants") is the normative table; this module is its
executable copy.  Other modules name these constants and never restate them,
so a port to C can be checked against a single file.
"""

from __future__ import annotations

import enum
from typing import Final

#: The single protocol version and cipher suite.  There is nothing to
#: negotiate and therefore nothing to downgrade to (SPEC §2).  The name is
#: hashed into every handshake transcript, so a peer speaking anything else
#: derives different keys and fails authentication.
SUITE_NAME: Final = b"pumpguard/1 KK-X25519 AES-CCM-16-64-128 SHA-256"

# --- Link framing (SPEC §3) -------------------------------------------------

#: Byte that ends every link frame; COBS guarantees it appears nowhere else.
FRAME_DELIMITER: Final = 0x00
#: CRC-16/GENIBUS (poly 0x1021, init 0xFFFF, final XOR 0xFFFF), big-endian,
#: after the record.  The final XOR matters: without it a record followed by
#: its own CRC checks to zero, so a stray 0x01 before the delimiter (which
#: COBS decodes as one more zero byte) would still pass.
CRC_LEN: Final = 2
CRC_INIT: Final = 0xFFFF
CRC_XOROUT: Final = 0xFFFF
#: Largest record (header + body + tag) a link frame may carry.
MAX_RECORD_LEN: Final = 256
#: Largest COBS-encoded frame, delimiter excluded: COBS adds at most one byte
#: per 254 and one more at the start.
MAX_ENCODED_FRAME_LEN: Final = (MAX_RECORD_LEN + CRC_LEN) + (MAX_RECORD_LEN + CRC_LEN) // 254 + 1


class RecordType(enum.IntEnum):
    """First byte of every record (SPEC §4).  Unknown values are dropped."""

    #: Session handshake, remote -> pump (SPEC §6.2).
    HANDSHAKE_INIT = 0x01
    #: Session handshake, pump -> remote (SPEC §6.3).
    HANDSHAKE_RESP = 0x02
    #: Protected application data under session keys (SPEC §7).
    DATA = 0x03
    #: Pairing (SPEC §9), in the order they are sent.
    PAIR_REQUEST = 0x10
    PAIR_COMMIT = 0x11
    PAIR_REMOTE_NONCE = 0x12
    PAIR_PUMP_NONCE = 0x13
    PAIR_REMOTE_CONFIRM = 0x14
    PAIR_PUMP_CONFIRM = 0x15


# --- Primitive sizes (SPEC §5) ----------------------------------------------

X25519_KEY_LEN: Final = 32
HASH_LEN: Final = 32
AEAD_KEY_LEN: Final = 16
#: AES-CCM with L = 2: 13-byte nonce, payload up to 65535 bytes.
AEAD_NONCE_LEN: Final = 13
#: 64-bit tag, as in OSCORE's default AES-CCM-16-64-128 and BLE.
TAG_LEN: Final = 8

# --- Protected records (SPEC §7) --------------------------------------------

#: type (1) || counter (4, big-endian).
COUNTER_LEN: Final = 4
HEADER_LEN: Final = 1 + COUNTER_LEN
#: Per-direction static IV; nonce = header (5) || iv (8).
IV_LEN: Final = AEAD_NONCE_LEN - HEADER_LEN
#: Everything a protected record adds to its plaintext.
RECORD_OVERHEAD: Final = HEADER_LEN + TAG_LEN
#: Largest plaintext one DATA record carries.
MAX_PLAINTEXT_LEN: Final = MAX_RECORD_LEN - RECORD_OVERHEAD
#: Counters run 0 .. COUNTER_LIMIT - 1.  A sender never uses COUNTER_LIMIT or
#: above and a receiver refuses it, so a counter can never wrap (S11).
COUNTER_LIMIT: Final = 0xFFFF_FFFF
#: A session asks for a rekey once it has sent this many records; the hard
#: limit above leaves room for ~2^31 more while the rekey happens.
REKEY_AFTER_RECORDS: Final = 1 << 31
#: Replay window width in counters (SPEC §7.3); one 64-bit word in C.
REPLAY_WINDOW: Final = 64

# --- Session lifetime (SPEC §8) ---------------------------------------------

#: A session this old asks for a new handshake ...
SESSION_REKEY_AFTER_S: Final = 1800.0
#: ... and one this old is refused by both sides.
SESSION_MAX_AGE_S: Final = 3600.0
#: A session unused for this long is dropped by the pump.
SESSION_IDLE_TIMEOUT_S: Final = 300.0
#: The pump remembers this many recent HANDSHAKE_INIT ephemeral keys and
#: refuses a repeat before any public-key work (SPEC §6.5).
RECENT_HANDSHAKES: Final = 32

# --- Handshake (SPEC §6) ----------------------------------------------------

HANDSHAKE_INIT_LEN: Final = 1 + X25519_KEY_LEN + TAG_LEN
HANDSHAKE_RESP_LEN: Final = 1 + X25519_KEY_LEN + TAG_LEN
#: Labels fed to HKDF.  Distinct labels keep derived keys independent.
LABEL_SPLIT: Final = b"pumpguard/1 split"
#: Most remotes a pump keeps paired at once (SPEC §9).
MAX_REMOTES: Final = 4

# --- Therapy units and factory limits (SPEC §12) ----------------------------

#: Insulin is counted on the wire and in the ledger in pulses of the pump's
#: motor, never in floating-point units.  One pulse is 0.05 U.
PULSE_MILLIUNITS: Final = 50
#: Factory limits (S6): what a new pump enforces until a prescriber policy
#: replaces them.  The brief: no more than 10 U in one bolus.
FACTORY_MAX_BOLUS_PULSES: Final = 200  # 10 U
FACTORY_MAX_1H_PULSES: Final = 300  # 15 U per rolling hour
FACTORY_MAX_24H_PULSES: Final = 1000  # 50 U per rolling 24 hours
#: Bolus limits never exceed these, whatever a policy says.
ABSOLUTE_MAX_BOLUS_PULSES: Final = 500  # 25 U
ABSOLUTE_MAX_24H_PULSES: Final = 4000  # 200 U

# --- Pairing (SPEC §9) ------------------------------------------------------

PAIR_NONCE_LEN: Final = 16
PAIR_CONFIRM_LEN: Final = 16
#: Digits of the comparison code: a man in the middle succeeds with
#: probability exactly 10^-SAS_DIGITS per attempt.
SAS_DIGITS: Final = 6
LABEL_PAIR_COMMIT: Final = b"pumpguard/1 pair commit"
LABEL_PAIR_SAS: Final = b"pumpguard/1 pair code"
LABEL_PAIR_CONFIRM: Final = b"pumpguard/1 pair confirm"

# --- Application messages (SPEC §12) ----------------------------------------


class MessageType(enum.IntEnum):
    """First element of every CBOR message inside a DATA record (SPEC §12)."""

    # Requests, remote -> pump.
    STATUS_REQUEST = 0x01
    BOLUS_PREPARE = 0x02
    BOLUS_COMMIT = 0x03
    COMMAND_QUERY = 0x04
    BOLUS_CANCEL = 0x05
    HISTORY_REQUEST = 0x06
    POLICY_UPLOAD = 0x07
    UNPAIR = 0x08
    # Responses, pump -> remote.
    STATUS = 0x81
    BOLUS_CHALLENGE = 0x82
    COMMAND_OUTCOME = 0x83
    HISTORY = 0x84
    OK = 0x85
    REFUSED = 0xFF


class Outcome(enum.IntEnum):
    """What became of a bolus command id (SPEC §12.4).  Stored by the pump."""

    #: The pump never committed this id; any challenge issued for it is void.
    UNKNOWN = 0
    #: Committed; delivery under way.
    IN_PROGRESS = 1
    #: Every requested pulse delivered.
    DELIVERED = 2
    #: Stopped by a cancel; ``delivered`` says how much went in.
    CANCELLED = 3
    #: Stopped by power loss, an alarm or suspend; ``delivered`` says how much.
    INTERRUPTED = 4
    #: The pump no longer holds this id's outcome: its sequence number is at
    #: or below the highest one the pump forgot for this remote, so it may have
    #: executed.  Never "not executed": read the audit log (SPEC §12.4).
    #: ``requested`` and ``delivered`` are 0 (unknown).
    EVICTED = 5


class RefusalCode(enum.IntEnum):
    """Reasons in a REFUSED response.  Sent only inside an authenticated session."""

    MALFORMED_REQUEST = 1
    REMOTE_BOLUS_DISABLED = 2
    OVER_SINGLE_LIMIT = 3
    OVER_1H_LIMIT = 4
    OVER_24H_LIMIT = 5
    CHALLENGE_INVALID = 6
    COMMAND_ID_CONFLICT = 7
    BUSY = 8
    DELIVERY_UNAVAILABLE = 9
    POLICY_INVALID = 10
    POLICY_ROLLBACK = 11
    NO_PRESCRIBER = 12
    SAFE_STATE = 13
    NOTHING_TO_CANCEL = 14
    #: The command id's sequence number is not above the highest this remote
    #: has committed, and the pump never committed this id: it never will.
    #: ``detail`` is that highest sequence number (saturated at UINT32_MAX).
    COMMAND_ID_STALE = 15


COMMAND_ID_LEN: Final = 16
#: A command id is ``seq (8 bytes, big-endian) || random (8 bytes)``: ``seq``
#: counts up per remote from 1, journaled by the remote before it is sent;
#: the random half keeps ids unguessable and distinct across a lost journal.
#: The pump tells "never seen" from "forgotten" by ``seq`` (SPEC §12.4).
COMMAND_SEQ_LEN: Final = 8
COMMAND_NONCE_LEN: Final = COMMAND_ID_LEN - COMMAND_SEQ_LEN
#: Largest command sequence number; 0 is never a valid one.
MAX_COMMAND_SEQ: Final = (1 << (8 * COMMAND_SEQ_LEN)) - 1
CHALLENGE_LEN: Final = 16
#: A bolus must be committed within this long after its challenge was
#: issued, on the pump's clock (S3).
BOLUS_CHALLENGE_TTL_S: Final = 30.0
#: Largest policy body and request id.
MAX_POLICY_LEN: Final = 96
MAX_REQUEST_ID: Final = 0xFFFF
#: Pump id: the first bytes of SHA-256 of the pump's static public key.
PUMP_ID_LEN: Final = 8
ED25519_PUBLIC_LEN: Final = 32
ED25519_SIGNATURE_LEN: Final = 64
LABEL_POLICY: Final = b"pumpguard/1 limits policy"
#: Largest signed audit entry (entry || Ed25519 signature): one per History
#: response (SPEC §12.2, §13.4).
MAX_AUDIT_SIGNED_LEN: Final = 200


# =============================================================================
# Integer ranges and the CBOR map keys of signed bodies.  Every other module
# names these; none restates a key, a length or a range.
# =============================================================================

# --- Integer ranges ---------------------------------------------------------

#: Largest value of a uint32 field: a policy version, a dose in pulses, an
#: audit seq.
UINT32_MAX: Final = 0xFFFF_FFFF
#: Largest CBOR unsigned integer (RFC 8949 §3.1, major type 0); the most
#: negative CBOR integer is ``-1 - UINT64_MAX``.
UINT64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF
#: An Ed25519 private key seed as the pump stores its audit key (RFC 8032 §5.1.5).
ED25519_SEED_LEN: Final = 32

# --- Limits policy body (SPEC §12.5) ----------------------------------------
#
#   policy = {1: pump-id (bstr .size 8), 2: version (uint .le 4294967295),
#             3: max-bolus-pulses, 4: max-1h-pulses, 5: max-24h-pulses}

POLICY_KEY_PUMP_ID: Final = 1
POLICY_KEY_VERSION: Final = 2
POLICY_KEY_MAX_BOLUS: Final = 3
POLICY_KEY_MAX_1H: Final = 4
POLICY_KEY_MAX_24H: Final = 5

# --- Audit entry (SPEC §13.4) -----------------------------------------------
#
#   audit-entry = {1: seq, 2: uptime_ms, 3: event, 4: {* name => value}, 5: prev_hash}
#
# signed by Ed25519 over SHA-256(entry); prev_hash is HASH_LEN bytes.

AUDIT_KEY_SEQ: Final = 1
AUDIT_KEY_UPTIME_MS: Final = 2
AUDIT_KEY_EVENT: Final = 3
AUDIT_KEY_FIELDS: Final = 4
AUDIT_KEY_PREV_HASH: Final = 5
#: Largest entry (CBOR bytes): what is left of the signed form after the signature.
MAX_AUDIT_ENTRY_LEN: Final = MAX_AUDIT_SIGNED_LEN - ED25519_SIGNATURE_LEN
#: Longest event name and field name, in characters.
MAX_AUDIT_NAME_LEN: Final = 32
#: Longest text or bytes field value.
MAX_AUDIT_VALUE_LEN: Final = 64
#: Most fields in one entry.
MAX_AUDIT_FIELDS: Final = 16
#: Largest seq.  Seqs never wrap: an append past it is refused.
MAX_AUDIT_SEQ: Final = UINT32_MAX
