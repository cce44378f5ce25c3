"""Regenerate the figures in docs/SECURITY.md from a run of the security suite.

    python tests/security_report.py            # the default suite (about a minute)
    python tests/security_report.py --slow     # also the soaks marked slow (minutes)

It runs the attack-oriented test modules with pytest, reads pytest's JUnit
XML, and rewrites the section of docs/SECURITY.md between the markers
``<!-- figures:start -->`` and ``<!-- figures:end -->``: per group of attacks,
how many were tried, how many were refused as the test demands, and how many
failed.  Every test in these modules asserts its oracle itself (motor pulses
from the motor's own witness, bytes on the wire, state on disk), so a
delivery that should not have happened is a failed test here, never a
silent number.  Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECURITY_MD = ROOT / "docs" / "SECURITY.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"

#: Module -> what its tests attack.
GROUPS: dict[str, str] = {
    "test_attacks.py": "replay, tamper, spoof, denial of service, stolen remote key",
    "test_link_faults.py": "link faults: drop, duplicate, reorder, corrupt, hold (boluses)",
    "test_pairing.py": "pairing protocol: man in the middle, commitment, replay, bad keys",
    "test_pump_pairing.py": "pairing on the pump: MITM, lockout, power cuts, unpairing",
    "test_pump_crash.py": "power cut at every storage write (bolus, pairing, limits)",
    "test_pump_stateful.py": "random commands, faults, reboots against a reference model",
    "test_session.py": "record layer: replay window, bit flips, reflection, exhaustion",
    "test_handshake.py": "session handshake: replay, forgery, invalid keys, MITM",
    "test_vectors.py": "negative test vectors",
    "test_framing.py": "framing: garbage, oversized and partial frames",
    "test_e2e_pty.py": "separate processes over a pty: killed remote, -v hygiene",
}


def run(slow: bool) -> dict[str, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *(str(ROOT / "tests" / name) for name in GROUPS),
        ]
        if slow:
            command += ["-m", "slow or not slow"]
        subprocess.run(command, cwd=ROOT, check=False)  # noqa: S603 - our own test suite
        tree = ET.parse(junit)  # noqa: S314 - pytest's own output
    counts: dict[str, dict[str, int]] = {
        name: {"tried": 0, "passed": 0, "failed": 0, "skipped": 0, "xfail": 0} for name in GROUPS
    }
    for case in tree.iter("testcase"):
        # classname is "test_attacks" or "test_attacks.SomeClass" (tests/ is no package).
        parts = (case.get("classname") or "").split(".")
        key = next((g for g in GROUPS if g[:-3] in parts), None)
        if key is None:
            continue
        group = counts[key]
        group["tried"] += 1
        if case.find("failure") is not None or case.find("error") is not None:
            group["failed"] += 1
        elif (skipped := case.find("skipped")) is not None:
            kind = "xfail" if "xfail" in (skipped.get("type") or "") else "skipped"
            group[kind] += 1
        else:
            group["passed"] += 1
    return counts


def render(counts: dict[str, dict[str, int]], slow: bool) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Last run: {now}, Python {platform.python_version()}, "
        f"{'with' if slow else 'without'} the slow soaks "
        "(`python tests/security_report.py`).",
        "",
        "| attacks | tests run | refused as required (passed) | failed | skipped / xfail |",
        "|---|---|---|---|---|",
    ]
    total = {"tried": 0, "passed": 0, "failed": 0, "skipped": 0, "xfail": 0}
    for module, what in GROUPS.items():
        group = counts[module]
        for key in total:
            total[key] += group[key]
        lines.append(
            f"| {what} (`{module}`) | {group['tried']} | {group['passed']} | "
            f"{group['failed']} | {group['skipped']} / {group['xfail']} |"
        )
    lines.append(
        f"| **all** | **{total['tried']}** | **{total['passed']}** | **{total['failed']}** | "
        f"{total['skipped']} / {total['xfail']} |"
    )
    lines.append("")
    verdict = (
        "0 — every test that can deliver insulin asserts it against the motor's own witness, "
        "and none failed"
        if total["failed"] == 0
        else f"UNKNOWN — {total['failed']} test(s) failed; read their output"
    )
    lines.append(f"Units delivered that the user did not ask for: **{verdict}**.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", action="store_true", help="include the slow soaks")
    args = parser.parse_args()
    counts = run(args.slow)
    text = SECURITY_MD.read_text()
    if START not in text or END not in text:
        text += f"\n## Figures of the last run\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    SECURITY_MD.write_text(f"{head}{START}\n{render(counts, args.slow)}\n{END}{tail}")
    print(re.sub(r"\n{2,}", "\n", render(counts, args.slow)))
    return 0 if all(group["failed"] == 0 for group in counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
