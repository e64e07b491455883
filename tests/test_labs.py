"""``xendbg lab``: the list, the guides, and the checker's judgement."""

from __future__ import annotations

import subprocess
import sys

from xendbg.labs import LABS, find
from xendbg.labs.check import LabRun, parse


def test_every_lab_has_a_guide_and_known_guests():
    from xendbg.guests import LAB_GUESTS
    for lab in LABS:
        assert lab.guide.is_file(), lab.guide
        assert lab.guide.read_text().startswith(f"# Lab {lab.number}")
        assert all(g in LAB_GUESTS for g in lab.guests)
    assert find("0") is find("hello") is find("hello-pv32") is LABS[0]
    assert find("nope") is None


def test_parse_judges_check_lines():
    run = LabRun("x")
    parse("noise\nCHECK a: ok\r\nCHECK b: FAIL wanted 1, got 2\nRESULT: FAIL\n", run)
    assert run.checks == [("a", True, ""), ("b", False, "wanted 1, got 2")]
    assert run.result == "FAIL" and not run.passed
    ok = LabRun("y")
    parse("CHECK a: ok\nRESULT: PASS\n", ok)
    assert ok.passed
    empty = LabRun("z")
    parse("RESULT: PASS\n", empty)
    assert not empty.passed, "a guest that checked nothing did not pass"


def test_lab_check_cli():
    r = subprocess.run([sys.executable, "-m", "xendbg", "lab", "0", "--check"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hello-pv64: PASS" in r.stdout and "hello-pv32: PASS" in r.stdout


def test_lab_guide_and_unknown_lab():
    r = subprocess.run([sys.executable, "-m", "xendbg", "lab", "hello"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "hypercall page" in r.stdout
    r = subprocess.run([sys.executable, "-m", "xendbg", "lab", "42"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
