"""The pump's command table (firmware_sim/commands.py, SPEC §12.6), walked row by row.

* Every request type of SPEC §12.2 has exactly one row, and nothing else has one.
* The table in the module's docstring and the one in SPEC §12.6 are :data:`COMMAND_TABLE`.
* Every row in every pump mode, through the real firmware on the rig, with a hand-driven
  paired remote: a mode the row allows is answered by the row's handler (each answer is
  checked for what that handler does); a mode it does not allow is refused
  ``malformed-request``; in the safe state nothing is answered at all, because the link
  trusts no key there (S8) -- so no row may list it.
* Outside its row's modes or roles a request is refused by dispatch alone, and its
  handler never runs.
"""

from __future__ import annotations

import re
import typing
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from test_pump import enrol_prescriber, make_bench, signed

from pumpguard.firmware_sim import commands, config
from pumpguard.firmware_sim.commands import COMMAND_TABLE, CommandRule, PumpMode, Role
from pumpguard.firmware_sim.panel import Button
from pumpguard.host.inmemory import Rig, seeded_random
from pumpguard.host.rawremote import RawRemote
from pumpguard.protocol import (
    BolusCancel,
    BolusChallenge,
    BolusCommit,
    BolusPrepare,
    CommandOutcome,
    CommandQuery,
    History,
    HistoryRequest,
    LimitPolicy,
    Message,
    MessageType,
    Ok,
    Outcome,
    PolicyUpload,
    RefusalCode,
    Refused,
    Status,
    StatusRequest,
    Unpair,
    messages,
)

SPEC = Path(__file__).resolve().parent.parent / "docs" / "SPEC.md"

#: Requests are the message types below 0x80 (SPEC §12.2); responses are 0x81 and up.
REQUEST_TYPES = sorted(t for t in MessageType if t < 0x80)


def row_id(row: CommandRule) -> str:
    return row.message.name


# --- The table as data --------------------------------------------------------------------


def test_every_request_type_has_exactly_one_row() -> None:
    counts = Counter(row.message for row in COMMAND_TABLE)
    assert [t for t, n in counts.items() if n > 1] == [], "a message type with two rows"
    assert sorted(counts) == REQUEST_TYPES


def test_every_request_message_class_has_a_row() -> None:
    """The same, from the message classes protocol.messages defines."""
    classes = [
        cls
        for cls in vars(messages).values()
        if isinstance(cls, type) and issubclass(cls, Message) and cls is not Message
    ]
    requests = sorted(cls.TYPE for cls in classes if cls.TYPE < 0x80)
    assert requests == REQUEST_TYPES
    # The typed union the client sends is the same set: no request the pump
    # dispatches is missing from it, and it holds no response.
    assert sorted(cls.TYPE for cls in typing.get_args(messages.Request)) == requests
    assert sorted(row.message for row in COMMAND_TABLE) == requests


def test_no_row_lists_the_safe_state() -> None:
    """In the safe state the link trusts no key: a row listing it would promise what the
    pump cannot do (see test_every_row_in_every_mode)."""
    assert [row.message.name for row in COMMAND_TABLE if PumpMode.SAFE_STATE in row.modes] == []


def test_every_role_the_table_names_exists_and_every_row_names_one() -> None:
    for row in COMMAND_TABLE:
        assert row.roles, row.message.name
        assert row.roles <= set(Role)


def _rows_in(text: str) -> set[tuple[str, str, frozenset[str], frozenset[str]]]:
    """``(message, handler, modes, roles)`` of each table line in ``text``."""
    rows = set()
    for line in text.splitlines():
        words = re.findall(r"[A-Za-z_.]+", line)
        if len(words) >= 3 and words[0] in MessageType.__members__ and "Commands." in words[1]:
            rows.add(
                (
                    words[0],
                    words[1].removeprefix("Commands."),
                    frozenset(w for w in words[2:] if w in PumpMode.__members__),
                    frozenset(w for w in words[2:] if w in Role.__members__),
                )
            )
    return rows


def _table_rows() -> set[tuple[str, str, frozenset[str], frozenset[str]]]:
    return {
        (
            row.message.name,
            row.handler.__name__,
            frozenset(mode.name for mode in row.modes),
            frozenset(role.name for role in row.roles),
        )
        for row in COMMAND_TABLE
    }


def test_the_docstring_table_is_the_command_table() -> None:
    assert commands.__doc__ is not None
    assert _rows_in(commands.__doc__) == _table_rows()


def test_the_spec_table_is_the_command_table() -> None:
    text = SPEC.read_text(encoding="utf-8")
    start = text.index("### 12.6 ")
    section = text[start : text.index("\n## ", start)]
    assert _rows_in(section) == _table_rows()


# --- The table on the firmware ------------------------------------------------------------


@dataclass
class Case:
    """A request of one row's type, made ready in RUNNING, and what its handler does."""

    #: Runs in RUNNING before the pump is put in the mode under test; returns the request.
    build: Callable[[Rig, RawRemote], Message]
    #: The handler's answer and its effect on the pump.
    check: Callable[[Rig, Message, Message], None]


CID = bytes(range(16))
POLICY = LimitPolicy(1, 100, 150, 500)


def _challenge(remote: RawRemote, pulses: int) -> bytes:
    answer = remote.ask(BolusPrepare(remote.next_id(), CID, pulses))
    assert isinstance(answer, BolusChallenge)
    return answer.challenge


def _running_bolus(rig: Rig, remote: RawRemote) -> Message:
    challenge = _challenge(remote, 40)
    started = remote.ask(BolusCommit(remote.next_id(), CID, 40, challenge))
    assert isinstance(started, CommandOutcome)
    assert started.outcome is Outcome.IN_PROGRESS
    return BolusCancel(remote.next_id())


def _with_prescriber(rig: Rig, remote: RawRemote) -> Message:
    enrol_prescriber(rig)
    body, signature = signed(POLICY, rig)
    return PolicyUpload(remote.next_id(), body, signature)


def _status(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, Status)
    assert answer.pump_id == rig.pump.pump_id


def _prepare(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, BolusChallenge)
    assert answer.command_id == CID


def _commit(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, CommandOutcome)
    assert (answer.command_id, answer.outcome) == (CID, Outcome.IN_PROGRESS)
    assert rig.pump.delivery.active_bolus is not None


def _query(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, CommandOutcome)
    assert (answer.command_id, answer.outcome) == (CID, Outcome.UNKNOWN)


def _cancel(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, CommandOutcome)
    assert (answer.command_id, answer.outcome) == (CID, Outcome.CANCELLED)
    assert rig.pump.delivery.active_bolus is None


def _history(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, History)
    assert answer.entry, "the first audit entry"


def _policy(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, Ok)
    assert rig.pump.persistent.policy == POLICY


def _unpair(rig: Rig, request: Message, answer: Message) -> None:
    assert isinstance(answer, Ok)
    assert rig.pump.persistent.remotes == ()


CASES: dict[MessageType, Case] = {
    MessageType.STATUS_REQUEST: Case(lambda rig, r: StatusRequest(r.next_id()), _status),
    MessageType.BOLUS_PREPARE: Case(lambda rig, r: BolusPrepare(r.next_id(), CID, 4), _prepare),
    MessageType.BOLUS_COMMIT: Case(
        lambda rig, r: BolusCommit(r.next_id(), CID, 4, _challenge(r, 4)), _commit
    ),
    MessageType.COMMAND_QUERY: Case(lambda rig, r: CommandQuery(r.next_id(), CID), _query),
    MessageType.BOLUS_CANCEL: Case(_running_bolus, _cancel),
    MessageType.HISTORY_REQUEST: Case(lambda rig, r: HistoryRequest(r.next_id(), 0), _history),
    MessageType.POLICY_UPLOAD: Case(_with_prescriber, _policy),
    MessageType.UNPAIR: Case(lambda rig, r: Unpair(r.next_id()), _unpair),
}


def test_every_row_has_a_case() -> None:
    assert sorted(CASES) == REQUEST_TYPES


@dataclass
class Setup:
    rig: Rig
    remote: RawRemote


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """A paired pump with remote bolus on, and a hand-driven remote in session."""
    bench = make_bench(tmp_path)
    remote = RawRemote.from_keys(bench.rig, bench.path, random_bytes=seeded_random("hand remote"))
    assert remote.handshake()
    yield Setup(bench.rig, remote)
    bench.rig.close()


def _enter(rig: Rig, mode: PumpMode) -> None:
    """Put the pump in ``mode`` without ending the hand remote's session, if it can."""
    if mode is PumpMode.PAIRING:
        rig.user.opens_pairing = False
        rig.press(Button.PAIR)
    elif mode is PumpMode.SAFE_STATE:
        # Storage the pump cannot trust, then a reboot: RAM (the session) is gone too.
        first, count = config.FLASH_MAIN_STORE
        size = config.FLASH_SECTOR_SIZE
        rig.flash.tamper(first * size, bytes(count * size))
        rig.reboot()
    assert rig.pump.mode is mode


@pytest.mark.parametrize("mode", list(PumpMode), ids=lambda mode: mode.name)
@pytest.mark.parametrize("row", COMMAND_TABLE, ids=row_id)
def test_every_row_in_every_mode(setup: Setup, row: CommandRule, mode: PumpMode) -> None:
    rig, remote = setup.rig, setup.remote
    case = CASES[row.message]
    request = case.build(rig, remote)
    assert request.TYPE is row.message
    _enter(rig, mode)
    answer = remote.ask(request)
    if mode is PumpMode.SAFE_STATE:
        assert answer is None, "the safe state answers nothing"
        assert not remote.handshake(), "nor a new handshake"
    elif mode in row.modes:
        assert answer is not None
        assert answer.request_id == request.request_id
        case.check(rig, request, answer)
        assert rig.pump.mode is mode
    else:
        assert answer == Refused(request.request_id, RefusalCode.MALFORMED_REQUEST, 0)


@pytest.mark.parametrize(
    "narrowed",
    [
        pytest.param({"modes": frozenset({PumpMode.PAIRING})}, id="mode"),
        pytest.param({"roles": frozenset[Role]()}, id="role"),
    ],
)
def test_a_request_outside_its_row_is_refused_and_never_handled(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, narrowed: dict[str, frozenset[object]]
) -> None:
    """Dispatch alone decides: the row's handler is not even called (RUNNING, REMOTE)."""
    rig, remote = setup.rig, setup.remote
    row = next(row for row in COMMAND_TABLE if row.message is MessageType.UNPAIR)
    called: list[Message] = []

    def handler(self: commands.Commands, request: Message, origin: object, now: float) -> Ok:
        called.append(request)
        return Ok(request.request_id)

    monkeypatch.setitem(
        commands._ROWS,
        MessageType.UNPAIR,
        replace(row, handler=handler, **narrowed),  # type: ignore[arg-type]
    )
    request = Unpair(remote.next_id())
    assert remote.ask(request) == Refused(request.request_id, RefusalCode.MALFORMED_REQUEST, 0)
    assert called == []
    paired = rig.pump.persistent.remotes
    assert len(paired) == 1, "the remote is still paired"
    monkeypatch.undo()  # the table as it is: the same request is handled
    request = Unpair(remote.next_id())
    assert remote.ask(request) == Ok(request.request_id)
    assert rig.pump.persistent.remotes == ()


def test_a_response_type_sent_to_the_pump_is_refused(setup: Setup) -> None:
    remote = setup.remote
    request = Ok(remote.next_id())
    assert remote.ask(request) == Refused(request.request_id, RefusalCode.MALFORMED_REQUEST, 0)
