"""The lab guest images hello-pv64 / hello-pv32: a reproducible build, the Xen notes that Xen's
domain builder reads, the segment layout, and the symbols the debugger shows.

The images are committed (xendbg/guests/images/); these tests read them with pyelftools. The build
tests run only where gcc, as and ld exist.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from xendbg.guests import build

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096

# elfnote.h
XEN_ELFNOTE_ENTRY = 1
XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_PADDR_OFFSET = 4
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_GUEST_OS = 6
XEN_ELFNOTE_GUEST_VERSION = 7
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_PAE_MODE = 9

GUESTS = {
    "hello-pv64": dict(elfclass=64, machine="EM_X86_64", virt_base=0xFFFFFFFF80000000, width=8,
                       kernel_cs=0xE033, trap_info=16, trap_address=8),
    "hello-pv32": dict(elfclass=32, machine="EM_386", virt_base=0xC0000000, width=4,
                       kernel_cs=0xE019, trap_info=8, trap_address=4),
}

CHECKS = ["magic", "hypercall_page", "direct_hypercall", "console_io", "enosys", "efault", "m2p",
          "console_ring", "trap_table", "int3"]

LABELS = ["_start", "hypercall_page", "main", "step1_hello", "hello_write", "step2_magic",
          "step3_hypercall_page", "step4_direct_hypercall", "direct_hypercall_site", "step5_console_io",
          "step6_enosys", "step6_efault", "step7_m2p", "step8_console_ring", "ring_publish", "ring_notify",
          "ring_drain", "step9_trap_table", "trap_table", "step10_int3", "int3_site", "int3_return",
          "int3_verify", "trap_int3", "trap_int3_iret", "step11_finish", "finish", "print_str",
          "print_hex", "check_failed", "fail_count", "stack_top"]

needs_toolchain = pytest.mark.skipif(build.find_toolchain() is None,
                                     reason="no x86 gcc/as/ld on this machine")


class Image:
    def __init__(self, name: str):
        self.path = build.IMAGES_DIR / f"{name}.elf"
        self.data = self.path.read_bytes()
        self.elf = ELFFile(io.BytesIO(self.data))
        self.loads = [s for s in self.elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        symtab = self.elf.get_section_by_name(".symtab")
        self.symbols = {s.name: s for s in symtab.iter_symbols()} if symtab else {}

    def sym(self, name: str) -> int:
        return self.symbols[name]["st_value"]

    def read(self, va: int, size: int) -> bytes:
        """Bytes at a virtual address, from the file part of the PT_LOAD that holds them."""
        for seg in self.loads:
            if seg["p_vaddr"] <= va and va + size <= seg["p_vaddr"] + seg["p_filesz"]:
                off = seg["p_offset"] + va - seg["p_vaddr"]
                return self.data[off:off + size]
        raise AssertionError(f"{va:#x}+{size} is not in the file part of any PT_LOAD")

    def notes(self) -> list[tuple[str, int, bytes]]:
        """(owner, type, desc) of every note in the PT_NOTE segments, parsed by hand."""
        out = []
        for seg in self.elf.iter_segments():
            if seg["p_type"] != "PT_NOTE":
                continue
            blob, off = seg.data(), 0
            while off + 12 <= len(blob):
                namesz, descsz, ntype = struct.unpack_from("<III", blob, off)
                off += 12
                owner = blob[off:off + namesz].rstrip(b"\0").decode()
                off += (namesz + 3) & ~3
                out.append((owner, ntype, blob[off:off + descsz]))
                off += (descsz + 3) & ~3
        return out

    def xen_notes(self) -> dict[int, bytes]:
        return {ntype: desc for owner, ntype, desc in self.notes() if owner == "Xen"}


@pytest.fixture(scope="module", params=sorted(GUESTS))
def guest(request) -> tuple[str, dict, Image]:
    name = request.param
    if not (build.IMAGES_DIR / f"{name}.elf").is_file():
        pytest.fail(f"images/{name}.elf is missing: run python -m xendbg.guests.build")
    return name, GUESTS[name], Image(name)


# -- build ---------------------------------------------------------------------------------------

@needs_toolchain
def test_build_check_finds_no_difference():
    proc = subprocess.run([sys.executable, "-m", "xendbg.guests.build", "--check"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_toolchain
def test_build_is_reproducible(tmp_path):
    first = build.build(list(GUESTS), tmp_path / "a")
    second = build.build(list(GUESTS), tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_build_discovers_the_hello_guests():
    guests = build.discover()
    assert guests["hello-pv64"].abi.name == "pv64" and guests["hello-pv64"].script.name == "pv64.ld"
    assert guests["hello-pv32"].abi.name == "pv32" and guests["hello-pv32"].script.name == "pv32.ld"


def test_build_without_toolchain_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(build, "find_toolchain", lambda: None)
    assert build.main(["--check"]) == 2
    assert "no x86 toolchain" in capsys.readouterr().err


# -- ELF header, notes ---------------------------------------------------------------------------

def test_elf_header(guest):
    _, spec, img = guest
    assert img.elf.elfclass == spec["elfclass"]
    assert img.elf["e_machine"] == spec["machine"]
    assert img.elf["e_type"] == "ET_EXEC"


def test_xen_notes(guest):
    name, spec, img = guest
    notes = img.xen_notes()
    w = spec["width"]

    def num(ntype: int) -> int:
        assert len(notes[ntype]) == w, f"note {ntype} is {len(notes[ntype])} bytes, want {w}"
        return int.from_bytes(notes[ntype], "little")

    assert notes[XEN_ELFNOTE_XEN_VERSION] == b"xen-3.0\0"
    assert notes[XEN_ELFNOTE_GUEST_OS] == b"xendbg-lab\0"
    assert notes[XEN_ELFNOTE_GUEST_VERSION] == b"1\0"
    assert notes[XEN_ELFNOTE_LOADER] == b"generic\0"
    assert num(XEN_ELFNOTE_VIRT_BASE) == spec["virt_base"]
    assert num(XEN_ELFNOTE_PADDR_OFFSET) == 0
    assert num(XEN_ELFNOTE_ENTRY) == img.sym("_start")
    assert num(XEN_ELFNOTE_HYPERCALL_PAGE) == img.sym("hypercall_page")
    if name.endswith("pv32"):
        assert notes[XEN_ELFNOTE_PAE_MODE] == b"yes\0"
    else:
        assert XEN_ELFNOTE_PAE_MODE not in notes


def test_notes_are_in_a_pt_note_segment_and_a_note_section(guest):
    _, _, img = guest
    segs = [s for s in img.elf.iter_segments() if s["p_type"] == "PT_NOTE"]
    assert len(segs) == 1
    assert segs[0]["p_offset"] != 0  # Xen's libelf skips PT_NOTE segments at offset 0
    section = img.elf.get_section_by_name(".note.Xen")
    assert section is not None and section["sh_type"] == "SHT_NOTE"
    assert section.data() == segs[0].data()
    assert all(owner == "Xen" for owner, _, _ in img.notes())


def test_no_build_id(guest):
    _, _, img = guest
    assert img.elf.get_section_by_name(".note.gnu.build-id") is None
    assert all(owner != "GNU" for owner, _, _ in img.notes())


# -- segments, entry, hypercall page ------------------------------------------------------------

def test_load_segments(guest):
    _, spec, img = guest
    text, data = img.loads
    for seg in img.loads:
        assert seg["p_paddr"] == seg["p_vaddr"] - spec["virt_base"]
        assert seg["p_vaddr"] % PAGE == 0 and seg["p_offset"] % PAGE == 0
    assert text["p_paddr"] == 0  # the kernel starts at VIRT_BASE
    assert text["p_flags"] == P_FLAGS.PF_R | P_FLAGS.PF_X
    assert data["p_flags"] == P_FLAGS.PF_R | P_FLAGS.PF_W
    assert data["p_memsz"] > data["p_filesz"]  # .bss with the stack
    assert text["p_vaddr"] + text["p_memsz"] <= data["p_vaddr"]


def test_entry_is_start(guest):
    _, spec, img = guest
    entry = img.elf["e_entry"]
    assert entry == img.sym("_start") == spec["virt_base"]
    assert img.symbols["_start"]["st_info"]["type"] == "STT_FUNC"
    assert img.read(entry, 1) == b"\xfc"  # cld


def test_hypercall_page_is_a_zero_page_inside_the_image(guest):
    _, _, img = guest
    hp = int.from_bytes(img.xen_notes()[XEN_ELFNOTE_HYPERCALL_PAGE], "little")
    assert hp % PAGE == 0
    text = img.loads[0]
    assert text["p_vaddr"] <= hp and hp + PAGE <= text["p_vaddr"] + text["p_filesz"]
    assert img.read(hp, PAGE) == bytes(PAGE)
    assert img.symbols["hypercall_page"]["st_size"] == PAGE
    assert img.elf.get_section_by_name(".text")["sh_addr"] <= hp


# -- symbols and data the debugger and the lab checks rely on ---------------------------------

def test_symbols_of_interest(guest):
    _, _, img = guest
    missing = [label for label in LABELS if label not in img.symbols]
    assert not missing
    lo = img.loads[0]["p_vaddr"]
    hi = img.loads[-1]["p_vaddr"] + img.loads[-1]["p_memsz"]
    for label in LABELS:
        assert lo <= img.sym(label) <= hi, label
    assert img.read(img.sym("int3_site"), 1) == b"\xcc"
    assert img.sym("int3_return") == img.sym("int3_site") + 1


def test_trap_table(guest):
    _, spec, img = guest
    size, addr_off = spec["trap_info"], spec["trap_address"]
    w = spec["width"]
    entry = img.read(img.sym("trap_table"), 2 * size)
    vector, flags, cs = struct.unpack_from("<BBH", entry)
    assert (vector, flags, cs) == (3, 3, spec["kernel_cs"])
    assert int.from_bytes(entry[addr_off:addr_off + w], "little") == img.sym("trap_int3")
    assert entry[size:] == bytes(size)  # the terminator


def test_console_strings(guest):
    name, _, img = guest
    rodata = img.elf.get_section_by_name(".rodata").data()
    for check in CHECKS:
        assert f"CHECK {check}: ok\n".encode() in rodata, check
    assert f"{name}: magic=".encode() in rodata
    assert b"hello from the console ring\n" in rodata
    assert b"RESULT: PASS\n" in rodata and b"RESULT: FAIL\n" in rodata


def test_shutdown_reason_is_poweroff(guest):
    _, _, img = guest
    assert img.read(img.sym("sched_shutdown_arg"), 4) == b"\0\0\0\0"  # SHUTDOWN_poweroff
