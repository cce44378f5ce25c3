"""The real pump firmware and a remote, in one process, for the benchmarks.

:class:`PumpParty` boots a :class:`firmware_sim.pump.Pump` on in-memory
flash (``config.FLASH_SECTOR_SIZE`` x ``config.FLASH_SECTOR_COUNT``, as the
device) or on a flash image file, pairs a remote with it through the six
pairing records and the pump's front panel (SPEC §9), runs a handshake
(SPEC §6) and switches remote bolus on at the pump.  After that,
:meth:`PumpParty.exchange` is one command exchange over a direct link, the
way tests/rig.py wires its remote, without the remote's client library
around it: the remote encodes and seals a message, frames it, the pump
decodes the frame, opens, dispatches, persists and answers, and the remote
decodes the answer's frame, opens it and decodes the message.

The pump's clock (``now``) is set by the caller and never runs by itself;
nothing here sleeps.  Randomness is seeded, so runs are repeatable.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from pumpguard.firmware_sim import config
from pumpguard.firmware_sim.flash import Flash
from pumpguard.firmware_sim.motor import Motor
from pumpguard.firmware_sim.panel import Button
from pumpguard.firmware_sim.pump import Pump
from pumpguard.protocol import (
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    FrameDecoder,
    HandshakeInitiator,
    History,
    HistoryRequest,
    Message,
    Outcome,
    PairingInitiator,
    SecureSession,
    Status,
    StatusRequest,
    audit_entry,
    decode_message,
    encode_frame,
    encode_message,
    paired_peer,
    wire,
    x25519_private,
)

#: The bolus the exchange benchmarks send: one pulse (0.05 U).
BOLUS_PULSES = 1


class ExchangeFailed(AssertionError):
    """The pump did not answer an exchange the way the benchmark expects."""


class PumpParty:
    """A pump on simulated flash and one paired remote with a live session.

    Args:
        seed: seeds the pump's and the remote's randomness.
        flash_path: a flash image file (every program and erase is written
            through and fsync'ed, as ``pumpsim`` does); ``None`` for the
            in-memory flash.
    """

    def __init__(self, seed: int = 0, *, flash_path: Path | None = None) -> None:
        size, count = config.FLASH_SECTOR_SIZE, config.FLASH_SECTOR_COUNT
        self.flash = (
            Flash.in_memory(sector_size=size, sector_count=count)
            if flash_path is None
            else Flash.open_file(flash_path, sector_size=size, sector_count=count)
        )
        self.motor = Motor.in_memory()
        self.now = 1000.0
        self.pump = Pump.boot(
            flash=self.flash,
            motor=self.motor,
            random_bytes=random.Random(seed).randbytes,
            now=self.now,
        )
        self._remote_random = random.Random(seed + 1).randbytes
        self.remote_static = x25519_private(self._remote_random(wire.X25519_KEY_LEN))
        self._decoder = FrameDecoder()
        #: Bytes that crossed the link each way so far (frames, delimiters included).
        self.bytes_to_pump = 0
        self.bytes_from_pump = 0
        #: Command exchanges made so far (the handshake's status included).
        self.exchanges = 0
        # Request ids from a 16-bit value, as the client's random start: 3 bytes of CBOR.
        self._request_ids = itertools.count(0x1234)
        self._command_ids = itertools.count(1)
        self.pair()
        self.session = self.connect()
        self.press(Button.REMOTE_BOLUS_ON)
        if not self.pump.persistent.remote_bolus_enabled:
            raise ExchangeFailed("remote bolus did not switch on")

    # --- the link -------------------------------------------------------------

    def press(self, *buttons: Button) -> None:
        """A person presses ``buttons`` at the pump; the pump's main loop ticks once."""
        for button in buttons:
            self.pump.panel.press(button)
        self.pump.tick(self.now)

    def send_frame(self, frame: bytes) -> bytes:
        """Bytes into the pump; return every byte it answers with."""
        self.pump.receive_data(frame, self.now)
        reply = self.pump.data_to_send()
        self.bytes_to_pump += len(frame)
        self.bytes_from_pump += len(reply)
        return reply

    def send_record(self, record: bytes) -> bytes:
        """Frame ``record``, send it, and return the one record that comes back."""
        self._decoder.receive_data(self.send_frame(encode_frame(record)))
        reply = self._decoder.next_record()
        if reply is None:
            raise ExchangeFailed(f"no reply to a record of type 0x{record[0]:02x}")
        return reply

    # --- set-up: pairing and handshake -------------------------------------------

    def pair(self) -> None:
        """Pair through all six pairing records, a user confirming at the pump."""
        self.press(Button.PAIR)
        initiator = PairingInitiator(self.remote_static, self._remote_random)
        nonce = initiator.receive_commit(self.send_record(initiator.start()))
        code = initiator.receive_pump_nonce(self.send_record(nonce))
        if self.pump.panel.code_shown != code:
            raise ExchangeFailed("the pump shows another code than the remote")
        self.press(Button.CONFIRM_CODE)
        initiator.receive_pump_confirm(self.send_record(initiator.confirm()))

    def connect(self) -> SecureSession:
        """A handshake, then a status exchange so the pump promotes the session."""
        peer = paired_peer(self.remote_static, self.pump.static_public, local_is_remote=True)
        initiator = HandshakeInitiator(
            local_static=self.remote_static, peer=peer, random_bytes=self._remote_random
        )
        keys = initiator.finish(self.send_record(initiator.start()))
        self.session = SecureSession(keys, established_at=self.now)
        self.status()
        return self.session

    # --- command exchanges ------------------------------------------------------

    def next_request_id(self) -> int:
        return next(self._request_ids) % (wire.MAX_REQUEST_ID + 1)

    def next_command_id(self) -> bytes:
        """``seq || 8 zero bytes``: the seq counts up per remote, as SPEC §12.4 requires."""
        seq = next(self._command_ids).to_bytes(wire.COMMAND_SEQ_LEN, "big")
        return seq + bytes(wire.COMMAND_NONCE_LEN)

    def exchange(self, message: Message) -> Message:
        """One request and its response, both sides, framing included."""
        self.exchanges += 1
        session = self.session
        frame = encode_frame(session.seal(encode_message(message)))
        self._decoder.receive_data(self.send_frame(frame))
        reply = self._decoder.next_record()
        if reply is None:
            raise ExchangeFailed(f"no reply to {type(message).__name__}")
        return decode_message(session.open(reply))

    def status(self) -> Status:
        status = self.exchange(StatusRequest(self.next_request_id()))
        if not isinstance(status, Status):
            raise ExchangeFailed(f"status answered with {status!r}")
        return status

    def history(self, from_seq: int) -> list[audit_entry.AuditEntry]:
        """The audit entries from ``from_seq`` on, read over the session and verified."""
        audit_key = self.status().audit_key
        signed: list[bytes] = []
        while True:
            answer = self.exchange(HistoryRequest(self.next_request_id(), from_seq))
            if not isinstance(answer, History):
                raise ExchangeFailed(f"history answered with {answer!r}")
            if not answer.entry:
                break
            signed.append(answer.entry)
            from_seq = answer.next_seq
        return list(audit_entry.verify_entries(signed, audit_key).entries)

    def bolus_exchange(self) -> Message:
        """BolusPrepare, then BolusCommit with the pump's challenge, under a new command id.

        Returns the pump's last answer: a :class:`CommandOutcome` saying
        IN_PROGRESS once the bolus is persisted, audited and started.
        """
        command_id = self.next_command_id()
        challenge = self.exchange(BolusPrepare(self.next_request_id(), command_id, BOLUS_PULSES))
        if not isinstance(challenge, BolusChallenge):
            raise ExchangeFailed(f"prepare answered with {challenge!r}")
        return self.exchange(
            BolusCommit(self.next_request_id(), command_id, BOLUS_PULSES, challenge.challenge)
        )

    def end_bolus(self) -> None:
        """Between rounds: the user cancels the bolus at the pump before its first pulse.

        The clock moves on 10 ms, so every round's audit entry has its own
        time; a cancelled bolus that delivered nothing counts against no limit.
        """
        if self.pump.delivery.active_bolus is not None:
            self.press(Button.CANCEL_BOLUS)
        self.now += 0.01

    def check_bolus_started(self, answer: Message) -> None:
        if not (
            isinstance(answer, CommandOutcome)
            and answer.outcome is Outcome.IN_PROGRESS
            and answer.requested == BOLUS_PULSES
        ):
            raise ExchangeFailed(f"the bolus did not start: {answer!r}")

    def close(self) -> None:
        self.flash.close()
        self.motor.close()
