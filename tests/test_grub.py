"""GRUB's PV images on both ABIs: the ``grub>`` prompt, a typed command answered (issue #4
acceptance 2-4), and the two things they needed: ``--until`` matching lines as a terminal shows
them (GRUB ends lines with ``\\n\\r``) and Xen's compat rule for a 32-bit guest's L3 entries (GRUB's
i386 tables set RW there)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EINVAL
from xendbg.runner import _Until, render_line_breaks

XENDBG = [sys.executable, "-m", "xendbg"]
ECHO_UNTIL = r"(?m)^xen dbg\r?$"          # acceptance 3, verbatim from the issue
P, RW, US, PWT, PCD, A, D = 1, 2, 4, 8, 0x10, 0x20, 0x40
NX = 1 << 63


def xendbg_run(*args: str) -> subprocess.CompletedProcess:
    # --timeout is only a guard against a hang; the verdict is the exit status and the output.
    return subprocess.run([*XENDBG, "run", *args, "--timeout", "90"], capture_output=True,
                          timeout=150)


# -- --until against rendered line breaks ------------------------------------------------------------

@pytest.mark.parametrize("raw, shown", [
    ("a\n\rb", "a\r\nb"),               # GRUB's order: LF then CR
    ("a\r\nb", "a\r\nb"),
    ("a\r\r\nb", "a\r\nb"),             # a second CR at column 0 does nothing
    ("a\r\n\r\nb", "a\r\n\r\nb"),       # two line breaks stay two
    ("a\n\n\rb", "a\r\n\r\nb"),
    ("a\nb", "a\nb"),                   # a bare LF is kept as sent
    ("a\rb", "a\rb"),                   # so is a CR inside a line
])
def test_render_line_breaks(raw, shown):
    assert render_line_breaks(raw) == shown


class _FakeMachine:
    def __init__(self) -> None:
        self.stops: list[str] = []

    def request_stop(self, reason: str = "stop") -> None:
        self.stops.append(reason)


def test_until_matches_grub_echo_bytes_in_any_chunking():
    """The bytes GRUB wrote around the echoed line (dumped from the console listener), cut at
    every position: the pattern matches exactly once the line "xen dbg" has ended."""
    data = b"\x1b[9;18Hg\x1b[9;19H\n\rxen dbg\n\rgrub> "
    end_of_line = data.index(b"dbg") + 3
    for cut in range(1, len(data)):
        m = _FakeMachine()
        until = _Until(ECHO_UNTIL, m)
        until.feed(data[:cut])
        # "xen dbg" at the very end already ends the text: `$` matches there.
        assert until.matched == (cut >= end_of_line), cut
        until.feed(data[cut:])
        assert until.matched and m.stops == ["until"]


def test_until_does_not_match_a_partial_line_or_the_typed_echo():
    m = _FakeMachine()
    until = _Until(ECHO_UNTIL, m)
    # GRUB echoes the keystrokes one by one with cursor moves in between; no line is "xen dbg".
    until.feed(b"grub> \x1b[9;7He\x1b[9;8Hc\x1b[9;9Hh\x1b[9;10Ho\x1b[9;11H \x1b[9;12Hx")
    until.feed(b"\n\rxen dbgx\n\r")
    assert not until.matched and m.stops == []


def test_until_decodes_utf8_split_across_chunks():
    m = _FakeMachine()
    until = _Until("é", m)
    data = "é".encode()
    until.feed(data[:1])
    assert not until.matched
    until.feed(data[1:])
    assert until.matched


# -- a 32-bit guest's L3 entries: Xen's compat mask ---------------------------------------------------

def _grub_style_l3(kit, extra: int) -> int:
    """A new L3 built as GRUB's i386 map_all_pages does: each entry with ``extra`` flags (GRUB
    uses P|RW), slot 3 pointing at a private copy of the L2 that holds Xen's slots."""
    m = kit.m
    pt = m.mmu.pt
    top = m.vcpu.guest_table
    new, l2 = kit.spare(2)
    entries = m.memory.frame_u64(top).copy()
    old_l2 = int(entries[3]) >> 12
    for i, value in enumerate(m.memory.frame_u64(old_l2)[:pt.xen_l2_first].tolist()):
        if value:
            assert kit.mmu_update([((l2 << 12) + i * 8, value)]) == (0, 1)
    entries[3] = l2 << 12 | P
    for i in range(4):
        value = int(entries[i])
        if value & P:
            value = value & ~0xFFF | P | extra
            assert kit.mmu_update([((new << 12) + i * 8, value)]) == (0, 1)
    return new


@pytest.mark.parametrize("extra", [RW, RW | US | A | D, 0xE00])
def test_pae_l3_accepts_what_xen_compat_accepts(mmu_kit, extra):
    kit = mmu_kit("hello-pv32")
    m = kit.m
    old = m.vcpu.guest_table
    new = _grub_style_l3(kit, extra)
    ops = [(X.MMUEXT_PIN_L3_TABLE, new), (X.MMUEXT_NEW_BASEPTR, new),
           (X.MMUEXT_UNPIN_TABLE, old)]
    assert kit.mmuext(ops) == (0, 3)
    assert m.vcpu.guest_table == new and m.cpu.cr3 >> 12 == new
    assert m.guest.read(m.layout.entry, 4) is not None
    assert kit.check() == []


@pytest.mark.parametrize("extra", [PWT, PCD, 0x80, 0x100, NX, 1 << 52])
def test_pae_l3_refuses_what_xen_compat_refuses(mmu_kit, extra):
    kit = mmu_kit("hello-pv32")
    new = _grub_style_l3(kit, extra)
    assert kit.mmuext([(X.MMUEXT_PIN_L3_TABLE, new)]) == (-EINVAL, 0)
    assert "disallowed" in kit.m.mmu.history.rejections[-1].rule
    assert kit.check() == []


# -- the Debian images, end to end ---------------------------------------------------------------------

@pytest.mark.parametrize("guest", ["grub-x86_64", "grub-i386"])
def test_grub_reaches_the_prompt(debian_guest, guest):
    r = xendbg_run(str(debian_guest(guest)), "--until", "grub>")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Welcome to GRUB!" in r.stdout
    assert b"grub>" in r.stdout


@pytest.mark.parametrize("guest", ["grub-x86_64", "grub-i386"])
def test_grub_answers_a_typed_command(debian_guest, guest):
    r = xendbg_run(str(debian_guest(guest)), "--input", r"echo xen dbg\n",
                   "--until", ECHO_UNTIL)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    # GRUB's own line ending, which the acceptance pattern meets as a terminal renders it.
    assert b"\n\rxen dbg\n\r" in r.stdout


def test_grub_i386_switches_to_its_own_page_tables(debian_guest, tmp_path):
    """The hypercalls of GRUB's map_all_pages on the 32-bit ABI all succeed (the L3 with RW set
    is pinned, becomes the base pointer, the bootstrap L3 is unpinned and remapped writable)."""
    trace = tmp_path / "t.jsonl"
    r = xendbg_run(str(debian_guest("grub-i386")), "--until", "grub>", "--trace", str(trace))
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    import json
    calls = [json.loads(line) for line in trace.read_text().splitlines()]
    names = {c["name"] for c in calls}
    assert {"vm_assist", "mmuext_op", "update_va_mapping"} <= names
    assert [c for c in calls if c["error"]] == []
