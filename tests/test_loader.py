"""The kernel-image loader: synthetic ELF images built here, then the real Debian guests.

The synthetic images exercise Xen's rules one at a time (where notes are looked for, which owner
counts, the defaults of VIRT_BASE/PADDR_OFFSET, the kernel range, the entry and hypercall page
checks, FEATURES), every error path, and every container (gzip, bzImage with each compressor).
A hypothesis test mutates valid images and requires ImageError or success, never another exception.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import lz4.block
import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xendbg.machine.abi import xen as X
from xendbg.machine.loader import (
    PAE_BIMODAL,
    PAE_EXTCR3,
    PAE_YES,
    ImageError,
    decompress,
    extract_bzimage,
    load_kernel,
    load_kernel_bytes,
    parse_features,
)

PT_LOAD, PT_NOTE = 1, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOTE = 1, 2, 3, 7
VB = 0xFFFFFFFF80000000
VB32 = 0xC0000000

# ------------------------------------------------------------------------------------------------
# A small ELF writer
# ------------------------------------------------------------------------------------------------


@dataclass
class Seg:
    paddr: int
    data: bytes = b""
    memsz: int | None = None
    vaddr: int | None = None
    flags: int = 7
    type: int = PT_LOAD


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def note(ntype: int, desc: bytes, owner: bytes = b"Xen") -> bytes:
    """One ELF note: owner NUL-terminated, both name and desc padded to 4 bytes."""
    name = owner + b"\0"
    return struct.pack("<III", len(name), len(desc), ntype) + _pad4(name) + _pad4(desc)


_NUM = {v: k for k, v in X.ELFNOTE_NAMES.items()}


def xnotes(pairs, bits: int = 64, owner: bytes = b"Xen") -> bytes:
    """Xen notes from (NAME, value): str -> ASCIZ, int -> number as wide as the class, bytes -> raw."""
    out = b""
    for name, value in pairs:
        if isinstance(value, str):
            desc = value.encode() + b"\0"
        elif isinstance(value, int):
            desc = struct.pack("<Q" if bits == 64 else "<I", value)
        else:
            desc = value
        out += note(_NUM[name] if isinstance(name, str) else name, desc, owner)
    return out


def pv_notes(bits: int = 64, drop: tuple[str, ...] = (), **extra) -> list[tuple[str, object]]:
    """The minimal set a generic-loader PV kernel carries, plus/minus some."""
    base = VB if bits == 64 else VB32
    d: dict[str, object] = {"XEN_VERSION": "xen-3.0", "GUEST_OS": "test", "LOADER": "generic",
                            "VIRT_BASE": base, "ENTRY": base + 0x10}
    if bits == 32:
        d["PAE_MODE"] = "yes"
    d.update(extra)
    return [(k, v) for k, v in d.items() if k not in drop and v is not None]


def default_segs(bits: int = 64) -> list[Seg]:
    base = VB if bits == 64 else VB32
    return [Seg(0x0, b"\x90" * 0x100, 0x3000, base, 5), Seg(0x4000, b"\xaa" * 0x80, 0x1000, base + 0x4000, 6)]


def build_elf(*, bits: int = 64, segs: list[Seg] | None = None, entry: int | None = None,
              pt_notes: list[bytes] | bytes | None = None, sh_notes: bytes | None = None,
              xen_guest: bytes | None = None, e_type: int = 2, machine: int | None = None,
              note_offset_zero: bool = False, symtab: bool = False) -> bytes:
    """An ELF image: ehdr, phdrs, segment data, note blobs, section data, then section headers."""
    segs = default_segs(bits) if segs is None else segs
    if pt_notes is None:
        pt_notes = []
    elif isinstance(pt_notes, bytes):
        pt_notes = [pt_notes]
    is64 = bits == 64
    ehsize, phsize, shsize = (64, 56, 64) if is64 else (52, 32, 40)
    nph = len(segs) + len(pt_notes)
    body = bytearray(ehsize + phsize * nph)

    def put(blob: bytes, align: int = 16) -> int:
        body.extend(b"\0" * (-len(body) % align))
        off = len(body)
        body.extend(blob)
        return off

    phdrs = []
    for s in segs:
        off = put(s.data)
        memsz = len(s.data) if s.memsz is None else s.memsz
        vaddr = s.paddr if s.vaddr is None else s.vaddr
        phdrs.append((s.type, s.flags, off, vaddr, s.paddr, len(s.data), memsz))
    for blob in pt_notes:
        off = put(blob, 4)
        phdrs.append((PT_NOTE, 4, 0 if note_offset_zero else off, 0, 0, len(blob), 0))

    sections: list[tuple[str, int, bytes, int, int]] = []      # name, type, data, link, entsize
    if sh_notes is not None:
        sections.append((".note.Xen", SHT_NOTE, sh_notes, 0, 0))
    if xen_guest is not None:
        sections.append(("__xen_guest", SHT_PROGBITS, xen_guest, 0, 0))
    if symtab:
        symsz = 24 if is64 else 16
        strtab = b"\0start\0"
        sym = (struct.pack("<IBBHQQ", 1, 0x12, 0, 1, VB, 0) if is64
               else struct.pack("<IIIBBH", 1, VB32, 0, 0x12, 0, 1))
        sections.append((".symtab", SHT_SYMTAB, b"\0" * symsz + sym, len(sections) + 2, symsz))
        sections.append((".strtab", SHT_STRTAB, strtab, 0, 0))
    names = b"\0" + b"".join(n.encode() + b"\0" for n, *_ in sections) + b".shstrtab\0"
    sections.append((".shstrtab", SHT_STRTAB, names, 0, 0))
    shdrs = [(0, 0, 0, 0, 0, 0, 0)]
    for name, stype, data, link, entsize in sections:
        off = put(data, 8)
        shdrs.append((names.index(name.encode() + b"\0"), stype, off, len(data), link, entsize, 0))
    shoff = put(b"", 8)
    for name_off, stype, off, size, link, entsize, _ in shdrs:
        if is64:
            body.extend(struct.pack("<IIQQQQIIQQ", name_off, stype, 0, 0, off, size, link, 0, 1, entsize))
        else:
            body.extend(struct.pack("<IIIIIIIIII", name_off, stype, 0, 0, off, size, link, 0, 1, entsize))

    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + b"\0" * 9
    machine = (62 if is64 else 3) if machine is None else machine
    entry = ((VB if is64 else VB32) + 0x10) if entry is None else entry
    ehdr = struct.pack("<HHIQQQIHHHHHH" if is64 else "<HHIIIIIHHHHHH", e_type, machine, 1, entry,
                       ehsize, shoff, 0, ehsize, phsize, nph, shsize, len(shdrs), len(shdrs) - 1)
    body[0:ehsize] = ident + ehdr
    for i, (ptype, flags, off, vaddr, paddr, filesz, memsz) in enumerate(phdrs):
        at = ehsize + i * phsize
        if is64:
            ph = struct.pack("<IIQQQQQQ", ptype, flags, off, vaddr, paddr, filesz, memsz, 16)
        else:
            ph = struct.pack("<IIIIIIII", ptype, off, vaddr, paddr, filesz, memsz, flags, 16)
        body[at:at + phsize] = ph
    return bytes(body)


def pv_elf(bits: int = 64, **extra) -> bytes:
    """A valid PV kernel with its notes in a PT_NOTE segment."""
    return build_elf(bits=bits, pt_notes=xnotes(pv_notes(bits, **extra), bits))


def load(data: bytes):
    return load_kernel_bytes(data, "test.elf")


def load_err(data: bytes) -> str:
    with pytest.raises(ImageError) as ei:
        load(data)
    msg = str(ei.value)
    assert "\n" not in msg and msg
    assert "internal error" not in msg, msg
    return msg


# -- compressed containers ------------------------------------------------------------------------

def _size(data: bytes) -> bytes:
    return struct.pack("<I", len(data) & 0xFFFFFFFF)


def lz4_legacy(data: bytes, chunk: int = 8 << 20) -> bytes:
    out = struct.pack("<I", 0x184C2102)
    for i in range(0, len(data), chunk):
        block = lz4.block.compress(data[i:i + chunk], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out


# What Linux's build does for each CONFIG_KERNEL_*: the decompressed size is appended except for gzip.
COMPRESSORS = {
    "gzip": lambda d: gzip.compress(d),
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + _size(d),
    "lz4": lambda d: lz4_legacy(d) + _size(d),
    "zstd": lambda d: zstandard.ZstdCompressor(level=19).compress(d) + _size(d),
    "bzip2": lambda d: bz2.compress(d) + _size(d),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE) + _size(d),
}


def make_bzimage(payload: bytes, setup_sects: int = 4, version: int = 0x20F, gap: int = 0x2CC) -> bytes:
    setup = bytearray((max(setup_sects, 0) or 4) * 512 + 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<II", setup, 0x248, gap, len(payload))
    return bytes(setup) + b"\xcc" * gap + payload + b"\0" * 100


# ------------------------------------------------------------------------------------------------
# Notes: where they come from, which ones count
# ------------------------------------------------------------------------------------------------


def test_basic_pv64_image():
    k = load(pv_elf())
    assert (k.bits, k.abi, k.container) == (64, "pv64", "ELF")
    assert k.notes.source == "PT_NOTE"
    assert k.notes.entries[:3] == (("XEN_VERSION", "xen-3.0"), ("GUEST_OS", "test"), ("LOADER", "generic"))
    assert (k.virt_base, k.paddr_offset) == (VB, 0)
    assert (k.virt_kstart, k.virt_kend) == (VB, VB + 0x5000)
    assert k.entry == VB + 0x10
    assert k.hypercall_page is None
    assert [(s.paddr, s.filesz, s.memsz, s.flags) for s in k.segments] == [(0, 0x100, 0x3000, 5),
                                                                           (0x4000, 0x80, 0x1000, 6)]
    assert k.segments[0].data == b"\x90" * 0x100
    assert k.elf.startswith(b"\x7fELF")


def test_load_kernel_reads_files_and_pathlike(tmp_path):
    p = tmp_path / "k.elf"
    p.write_bytes(pv_elf())
    assert load_kernel(p).path == str(p)
    assert load_kernel(str(p)).entry == VB + 0x10
    with pytest.raises(ImageError, match="cannot read"):
        load_kernel(tmp_path / "missing")
    with pytest.raises(ImageError, match="cannot read"):
        load_kernel(tmp_path)


def test_pt_note_wins_over_sht_note_and_xen_guest():
    img = build_elf(pt_notes=xnotes(pv_notes(GUEST_OS="from-phdr")),
                    sh_notes=xnotes(pv_notes(GUEST_OS="from-shdr")),
                    xen_guest=b"GUEST_OS=legacy,XEN_VER=xen-3.0,LOADER=generic\0")
    k = load(img)
    assert k.notes.source == "PT_NOTE" and k.notes.guest_os == "from-phdr"


def test_sht_note_used_when_pt_note_has_no_xen_note():
    # The PT_NOTE segment only holds a GNU build-id: Xen then looks at the SHT_NOTE sections.
    img = build_elf(pt_notes=note(3, b"\x11" * 20, b"GNU"), sh_notes=xnotes(pv_notes(GUEST_OS="shdr")))
    k = load(img)
    assert k.notes.source == "SHT_NOTE" and k.notes.guest_os == "shdr"


def test_pt_note_at_offset_zero_is_skipped():
    img = build_elf(pt_notes=xnotes(pv_notes(GUEST_OS="phdr")), note_offset_zero=True,
                    sh_notes=xnotes(pv_notes(GUEST_OS="shdr")))
    assert load(img).notes.source == "SHT_NOTE"


def test_unknown_xen_note_type_still_stops_the_fallback():
    # libelf counts any "Xen" note, even one it does not know, so SHT_NOTE is never consulted and
    # the image fails the LOADER/GUEST_OS check.
    img = build_elf(pt_notes=note(0x1000001, b"\0" * 8), sh_notes=xnotes(pv_notes()))
    msg = load_err(img)
    assert "generic loader or Linux" in msg


def test_notes_with_another_owner_are_ignored_gnu_mach_style():
    # GNU Mach: .note.Xen with owner "name", and the real information in __xen_guest.
    img = build_elf(
        segs=[Seg(0x40000000, b"\xf4" * 0x40, 0x4000)], entry=0x40000000,
        sh_notes=xnotes(pv_notes(GUEST_OS="not me"), owner=b"name"),
        xen_guest=b"GUEST_OS=GNU Mach,GUEST_VERSION=1.3,XEN_VER=xen-3.0,VIRT_BASE=0x40000000,"
                  b"ELF_PADDR_OFFSET=0x40000000,HYPERCALL_PAGE=0x2,LOADER=generic\0")
    k = load(img)
    n = k.notes
    assert n.source == "__xen_guest"
    assert (n.guest_os, n.xen_version, n.loader) == ("GNU Mach", "xen-3.0", "generic")
    assert n.guest_version is None                     # libelf's key is GUEST_VER
    assert ("GUEST_VERSION", "1.3") in n.entries
    assert (n.virt_base, n.paddr_offset) == (0x40000000, 0x40000000)
    assert k.hypercall_page == n.hypercall_page == 0x40002000
    assert (k.virt_kstart, k.virt_kend, k.entry) == (0x40000000, 0x40004000, 0x40000000)


@pytest.mark.parametrize("owner", [b"XEN", b"Xen2", b"Xe", b""])
def test_only_owner_exactly_xen_counts(owner):
    assert "not a Xen PV kernel" in load_err(build_elf(pt_notes=xnotes(pv_notes(), owner=owner)))


def test_xen_guest_defaults_paddr_offset_to_virt_base():
    img = build_elf(segs=[Seg(0xC0100000, b"x" * 16, 0x2000)], entry=0xC0100000,
                    xen_guest=b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,HYPERCALL_PAGE=0x101\0")
    k = load(img)
    assert (k.virt_base, k.paddr_offset) == (0xC0000000, 0xC0000000)
    assert (k.virt_kstart, k.virt_kend) == (0xC0100000, 0xC0102000)
    assert k.hypercall_page == 0xC0101000


def test_xen_guest_without_virt_base():
    img = build_elf(segs=[Seg(0x0, b"x" * 16, 0x3000)], entry=0,
                    xen_guest=b"LOADER=generic,XEN_VER=xen-3.0,HYPERCALL_PAGE=2,BSD_SYMTAB=no\0",
                    symtab=True)
    k = load(img)
    assert (k.virt_base, k.paddr_offset, k.hypercall_page) == (0, 0, 0x2000)
    assert k.notes.bsd_symtab            # libelf only looks at the key, not its value
    assert k.virt_kend > 0x3000          # and then appends the symbol table after the kernel


def test_xen_guest_strtoull_and_long_values():
    from xendbg.machine.loader.notes import strtoull

    assert [strtoull(s) for s in ("0x10", "010", "10", " 7z", "", "0x", "-1", "99999999999999999999999")] == \
        [16, 8, 10, 7, 0, 0, 2**64 - 1, 2**64 - 1]
    long_os = "linux" + "x" * 200
    k = load(build_elf(xen_guest=f"XEN_VER=xen-3.0,VIRT_BASE={VB:#x},ELF_PADDR_OFFSET=0,GUEST_OS={long_os}"
                       .encode() + b"\0"))
    assert k.notes.guest_os == long_os[:127]      # libelf's value buffer holds 127 characters
    # ... and the rest is read as keys of at most 31 characters each.
    assert k.notes.entries[-3:] == (("x" * 31, ""), ("x" * 31, ""), ("x" * 16, ""))


def test_notes_defaults_without_virt_base():
    segs = [Seg(0x1000, b"x", 0x1000)]
    k = load(build_elf(segs=segs, entry=0x1000, pt_notes=xnotes(pv_notes(drop=("VIRT_BASE", "ENTRY")))))
    assert (k.virt_base, k.paddr_offset, k.entry) == (0, 0, 0x1000)
    assert (k.virt_kstart, k.virt_kend) == (0x1000, 0x2000)


def test_paddr_offset_without_virt_base_is_an_error():
    img = build_elf(segs=[Seg(0x1000, b"x", 0x1000)], entry=0x1000,
                    pt_notes=xnotes(pv_notes(drop=("VIRT_BASE", "ENTRY"), PADDR_OFFSET=0)))
    assert load_err(img) == "PADDR_OFFSET is set but VIRT_BASE is not"
    img = build_elf(segs=[Seg(0x1000, b"x", 0x1000)], entry=0x1000,
                    xen_guest=b"LOADER=generic,XEN_VER=xen-3.0,ELF_PADDR_OFFSET=0\0")
    assert load_err(img) == "ELF_PADDR_OFFSET is set but VIRT_BASE is not"


def test_explicit_paddr_offset_moves_the_kernel():
    segs = [Seg(0xFFFFFFFF81000000, b"x", 0x1000, 0xFFFFFFFF81000000)]
    k = load(build_elf(segs=segs, pt_notes=xnotes(pv_notes(PADDR_OFFSET=VB, ENTRY=0xFFFFFFFF81000000))))
    assert (k.virt_kstart, k.paddr_offset) == (0xFFFFFFFF81000000, VB)


def test_segments_are_placed_by_paddr_and_span_follows_libelf():
    # .data..percpu style: vaddr 0, paddr in the middle; an empty PT_LOAD still counts for the
    # span (elf_parse_binary), a PT_LOAD without R/W/X flags does not count at all.
    segs = [Seg(0x1000000, b"a" * 32, 0x1000, VB + 0x1000000, 5),
            Seg(0x1001000, b"b" * 32, 0x1000, 0, 6),
            Seg(0x1002000, b"", 0, VB + 0x1002000, 6),
            Seg(0x1003000, b"c" * 8, 0x8000, VB + 0x1003000, 7),
            Seg(0x9000000, b"", 0x1000, 0, 0),
            Seg(0x800000, b"", 0x10, 0, 4, type=6)]          # PT_PHDR: ignored
    k = load(build_elf(segs=segs, pt_notes=xnotes(pv_notes(ENTRY=VB + 0x1000000))))
    assert [s.paddr for s in k.segments] == [0x1000000, 0x1001000, 0x1003000]
    assert k.segments[1].vaddr == 0
    assert (k.virt_kstart, k.virt_kend) == (VB + 0x1000000, VB + 0x100B000)
    k = load(build_elf(segs=segs + [Seg(0x900000, b"", 0, 0, 4)],
                       pt_notes=xnotes(pv_notes(ENTRY=VB + 0x1000000))))
    assert k.virt_kstart == VB + 0x900000 and len(k.segments) == 3


# ------------------------------------------------------------------------------------------------
# Entry, hypercall page, INIT_P2M, VIRT_BASE bounds
# ------------------------------------------------------------------------------------------------


def test_entry_defaults_to_e_entry():
    k = load(build_elf(entry=VB + 0x20, pt_notes=xnotes(pv_notes(drop=("ENTRY",)))))
    assert k.entry == VB + 0x20 and k.notes.entry is None


@pytest.mark.parametrize("entry,ok", [(VB, True), (VB + 0x4FFF, True), (VB + 0x5000, True),
                                      (VB + 0x5001, False), (VB - 1, False)])
def test_entry_bounds(entry, ok):
    img = pv_elf(ENTRY=entry)
    if ok:
        assert load(img).entry == entry        # Xen's test is entry > kend: the end itself passes
    else:
        assert load_err(img).startswith(f"entry point {entry:#x} is outside")


@pytest.mark.parametrize("page,ok", [(VB, True), (VB + 0x4000, True), (VB + 0x5000, False), (0x1000, False)])
def test_hypercall_page_bounds(page, ok):
    img = pv_elf(HYPERCALL_PAGE=page)
    if ok:
        assert load(img).hypercall_page == page
    else:
        assert load_err(img).startswith(f"HYPERCALL_PAGE {page:#x} is outside")


def test_init_p2m_inside_kernel_is_an_error():
    assert load(pv_elf(INIT_P2M=0x8000000000)).notes.init_p2m == 0x8000000000
    assert load(pv_elf(INIT_P2M=VB + 0x5000)).notes.init_p2m == VB + 0x5000
    assert "INIT_P2M" in load_err(pv_elf(INIT_P2M=VB + 0x1000))


def test_virt_base_above_kernel_start_is_an_error():
    assert "VIRT_BASE" in load_err(pv_elf(VIRT_BASE=VB + 0x1000, PADDR_OFFSET=0x2000))


def test_numeric_note_widths():
    # Numbers are as wide as descsz: 1, 2, 4 or 8 bytes; any other width reads as 0 (libelf).
    notes = xnotes(pv_notes(drop=("VIRT_BASE", "ENTRY"))) \
        + note(X.XEN_ELFNOTE_ENTRY, struct.pack("<I", 0x1020)) \
        + note(X.XEN_ELFNOTE_SUSPEND_CANCEL, b"\x01") + note(X.XEN_ELFNOTE_MOD_START_PFN, b"\x01\x00") \
        + note(X.XEN_ELFNOTE_HV_START_LOW, b"\x01\x02\x03")
    k = load(build_elf(segs=[Seg(0x1000, b"x", 0x1000)], pt_notes=notes))
    assert k.entry == k.notes.entry == 0x1020
    assert k.notes.suspend_cancel and k.notes.mod_start_pfn
    assert k.notes.hv_start_low == 0


def strip_shdrs(img: bytes, end: int, bits: int) -> bytes:
    """Cut the image at ``end`` and drop its section headers (e_shoff = e_shnum = e_shstrndx = 0)."""
    out = bytearray(img[:end])
    if bits == 64:
        struct.pack_into("<Q", out, 40, 0)
        struct.pack_into("<HH", out, 60, 0, 0)
    else:
        struct.pack_into("<I", out, 32, 0)
        struct.pack_into("<HH", out, 48, 0, 0)
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# Strings: Linux's FEATURES without NUL, GRUB i386's PAE_MODE cut by EOF
# ------------------------------------------------------------------------------------------------


def test_string_note_without_nul():
    feats = b"!writable_page_tables|pae_pgdir_above_4gb"
    k = load(build_elf(pt_notes=xnotes(pv_notes()) + note(X.XEN_ELFNOTE_FEATURES, feats)))
    assert k.notes.features == feats.decode()
    assert k.features_required == {0} and k.features_supported == {0, 4}


def test_string_note_cut_by_end_of_file_grub_i386_style():
    # The last note says descsz 12 but the file (and the PT_NOTE segment) ends right after
    # "yes\0", as in grub-i386-xen.bin.
    notes = xnotes(pv_notes(32, drop=("PAE_MODE",)), 32)
    cut_note = struct.pack("<III", 4, 12, X.XEN_ELFNOTE_PAE_MODE) + b"Xen\0" + b"yes\0"
    img = build_elf(bits=32, pt_notes=notes + cut_note)
    k = load(strip_shdrs(img, img.index(cut_note) + len(cut_note), 32))
    assert k.notes.pae_mode == "yes" and k.notes.pae == PAE_EXTCR3 and k.abi == "pv32pae"


# ------------------------------------------------------------------------------------------------
# FEATURES
# ------------------------------------------------------------------------------------------------


def test_parse_features():
    assert parse_features("") == (0, 0)
    assert parse_features("writable_page_tables|!pae_pgdir_above_4gb") == (0b10001, 0b10000)
    assert parse_features("||dom0|") == (1 << 11, 0)
    # Known to features.h but not to libelf's table: ignored as optional, fatal when required.
    assert parse_features("linux_rsdp_unrestricted|no_such_thing") == (0, 0)
    with pytest.raises(ImageError, match="'linux_rsdp_unrestricted'"):
        parse_features("!linux_rsdp_unrestricted")
    with pytest.raises(ImageError, match="'bogus'"):
        parse_features("writable_page_tables|!bogus")
    # libelf cuts names at 63 characters: the tail of a long name is read as another name.
    assert parse_features("x" * 63 + "dom0") == (1 << 11, 0)


def test_supported_features_note_is_ored_in():
    k = load(pv_elf(FEATURES="writable_descriptor_tables",
                    SUPPORTED_FEATURES=struct.pack("<I", 0x8801)))
    assert k.notes.supported_features == 0x8801
    assert k.features_supported == {0, 1, 11, 15} and k.features_required == frozenset()


def test_required_unknown_feature_fails_the_load():
    assert "'nope'" in load_err(pv_elf(FEATURES="!nope"))


def test_required_dom0_is_refused():
    assert "XENFEAT_dom0" in load_err(pv_elf(FEATURES="!dom0"))


def test_legacy_features_and_pae():
    # Legacy images have p_paddr == VA (ELF_PADDR_OFFSET defaults to VIRT_BASE).
    img = build_elf(bits=32, segs=[Seg(0xC0100000, b"x", 0x1000)], entry=0xC0100000,
                    xen_guest=b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,PAE=yes,"
                              b"FEATURES=writable_page_tables|!auto_translated_physmap\0")
    k = load(img)
    assert (k.notes.pae, k.virt_kstart) == (PAE_YES, 0xC0100000)
    assert k.features_required == {2} and k.features_supported == {0, 2}
    bad = img.replace(b"VIRT_BASE=0xC0000000", b"VIRT_BASE=0xC0200000")
    assert load_err(bad) == "VIRT_BASE 0xc0200000 lies above the kernel's start 0xc0100000"


# ------------------------------------------------------------------------------------------------
# 32-bit
# ------------------------------------------------------------------------------------------------


def test_pv32_pae():
    k = load(pv_elf(32))
    assert (k.bits, k.abi, k.virt_kstart, k.entry) == (32, "pv32pae", VB32, VB32 + 0x10)


@pytest.mark.parametrize("mode,level", [("bimodal", PAE_BIMODAL), ("yes,bimodal", PAE_BIMODAL),
                                        ("yes", PAE_EXTCR3)])
def test_pv32_pae_modes(mode, level):
    assert load(pv_elf(32, PAE_MODE=mode)).notes.pae == level


@pytest.mark.parametrize("mode", ["no", "yesplease", None])
def test_pv32_without_pae_is_refused(mode):
    assert "non-PAE 32-bit guests are not supported" in load_err(pv_elf(32, PAE_MODE=mode))


def test_pv32_legacy_without_pae_is_refused():
    img = build_elf(bits=32, entry=VB32 + 0x10,
                    xen_guest=b"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,ELF_PADDR_OFFSET=0\0")
    assert "non-PAE" in load_err(img)


# ------------------------------------------------------------------------------------------------
# Error paths
# ------------------------------------------------------------------------------------------------


def test_not_an_image():
    assert load_err(b"") == "empty file"
    assert "looks like text: 'hello world'" in load_err(b"hello world\nsecond line\n")
    assert "starts with 00 01 02" in load_err(bytes(range(64)))


def test_truncated_elf_at_every_cut_point():
    img = pv_elf()
    for cut in range(1, len(img)):
        msg = load_err(img[:cut])
        if cut >= 64:
            assert msg.startswith("truncated ELF: "), (cut, msg)


def test_truncated_elf_message():
    img = pv_elf()
    assert load_err(img[:100]) == \
        "truncated ELF: program header table ends at 0xe8 but the file has 0x64 bytes"
    assert load_err(img[:40]) == "truncated ELF: ELF64 header ends at 0x40 but the file has 0x28 bytes"


def test_bad_e_phoff():
    img = bytearray(pv_elf())
    struct.pack_into("<Q", img, 32, 0x7FFF_FFFF_0000)
    assert load_err(bytes(img)).startswith("truncated ELF: program header table ends at 0x7fffffff00a8")


def test_bad_entsizes():
    img = bytearray(pv_elf())
    struct.pack_into("<H", img, 54, 8)
    assert "e_phentsize" in load_err(bytes(img))


def test_segment_out_of_file_and_filesz_above_memsz():
    img = bytearray(pv_elf())
    struct.pack_into("<QQ", img, 64 + 32, 0x100000, 0x100000)   # phdr 0 p_filesz, p_memsz
    assert load_err(bytes(img)).startswith("truncated ELF: PT_LOAD segment 0 ends at")
    struct.pack_into("<QQ", img, 64 + 32, 0x200, 0x100)         # p_filesz > p_memsz
    assert "p_filesz 0x200 is larger than p_memsz 0x100" in load_err(bytes(img))


def test_non_xen_elf():
    assert load_err(build_elf()) == "not a Xen PV kernel: no Xen ELF notes and no __xen_guest section"


@pytest.mark.skipif(not os.path.exists("/bin/true"), reason="no /bin/true")
def test_bin_true_is_not_a_xen_kernel():
    assert load_err(Path("/bin/true").read_bytes()) == \
        "not a Xen PV kernel: no Xen ELF notes and no __xen_guest section"


def test_pvh_only_image():
    img = build_elf(bits=32, segs=[Seg(0x100000, b"x", 0x1000)], entry=0x100000,
                    pt_notes=xnotes([("PHYS32_ENTRY", 0x100000)], 32))
    assert load_err(img) == "PVH-only image (PHYS32_ENTRY note only); xendbg runs PV guests"


def test_loader_and_version_checks():
    assert "LOADER is 'elf' and GUEST_OS is 'mine'" in load_err(pv_elf(LOADER="elf", GUEST_OS="mine"))
    assert load(pv_elf(LOADER=None, GUEST_OS="linux-ish")).notes.loader is None
    assert "XEN_VERSION is 'xen-2.0'" in load_err(pv_elf(XEN_VERSION="xen-2.0"))
    assert "XEN_VERSION is ''" in load_err(pv_elf(XEN_VERSION=None))


def test_elf_kinds():
    assert "big-endian" in load_err(b"\x7fELF\x02\x02\x01" + b"\0" * 100)
    assert "machine 40" in load_err(build_elf(machine=40, pt_notes=xnotes(pv_notes())))
    assert "ELF32 file for x86-64" in load_err(build_elf(bits=32, machine=62))
    assert "ELF type REL" in load_err(build_elf(e_type=1, pt_notes=xnotes(pv_notes())))
    # Xen's libelf never checks e_type: an ET_DYN kernel loads, by p_paddr, unrelocated.
    assert load(build_elf(e_type=3, pt_notes=xnotes(pv_notes()))).entry == VB + 0x10


def test_no_loadable_segment():
    assert "no loadable segment" in load_err(build_elf(segs=[], pt_notes=xnotes(pv_notes())))


def test_numeric_note_past_end_of_file():
    notes = xnotes(pv_notes(drop=("ENTRY",)))
    cut = struct.pack("<III", 4, 8, X.XEN_ELFNOTE_ENTRY) + b"Xen\0" + b"\x10\0"
    img = build_elf(pt_notes=notes + cut)
    img = strip_shdrs(img, img.index(cut) + len(cut), 64)
    assert "the value of ELF note ENTRY ends at" in load_err(img)


# ------------------------------------------------------------------------------------------------
# Containers
# ------------------------------------------------------------------------------------------------


def test_gzip_elf():
    k = load(gzip.compress(pv_elf()))
    assert k.container == "gzip(ELF)" and k.elf == pv_elf()


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_bzimage_payloads(name):
    elf = pv_elf()
    k = load(make_bzimage(COMPRESSORS[name](elf)))
    assert k.container == f"bzImage/{name}(ELF)"
    assert k.elf == elf and k.entry == VB + 0x10
    assert extract_bzimage(make_bzimage(COMPRESSORS[name](elf))) == (name, elf)


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_decompress_each_format(name):
    data = b"xendbg " * 5000
    assert decompress(COMPRESSORS[name](data)) == (name, data)


def test_decompress_errors():
    with pytest.raises(ImageError, match="unknown compression format"):
        decompress(b"\x7fELF....")
    with pytest.raises(ImageError, match="^gzip data is corrupt: "):
        decompress(gzip.compress(b"abc" * 100)[:-12])
    assert decompress(lz4.frame.compress(b"q" * 999)) == ("lz4-frame", b"q" * 999)


def test_lz4_legacy_blocks_and_trailer():
    data = os.urandom(5000) + b"z" * 20000
    assert decompress(lz4_legacy(data, 4096)) == ("lz4", data)                 # no trailer
    assert decompress(lz4_legacy(data, 4096) + _size(data)) == ("lz4", data)   # Linux's trailer
    assert decompress(lz4_legacy(data[:100]) + lz4_legacy(data[100:]))[1] == data   # 2 streams
    with pytest.raises(ImageError, match="trailer says"):
        decompress(lz4_legacy(data, 4096) + _size(data[1:]))
    with pytest.raises(ImageError, match="bad block size"):
        decompress(lz4_legacy(data, 4096)[:-10])


def test_bzimage_uncompressed_payload_and_setup_sects_zero():
    elf = pv_elf()
    assert load(make_bzimage(elf)).container == "bzImage(ELF)"
    assert load(make_bzimage(gzip.compress(elf), setup_sects=0)).container == "bzImage/gzip(ELF)"


@pytest.mark.parametrize("name", ["xz", "lz4", "gzip", "zstd"])
def test_bzimage_corrupt_payload(name):
    payload = bytearray(COMPRESSORS[name](pv_elf()))
    for i in range(len(payload) // 3, len(payload) // 3 + 40):
        payload[i] ^= 0x5A
    msg = load_err(make_bzimage(bytes(payload)))
    assert msg.startswith(f"bzImage payload ({name}) is corrupt: ") or "not a Xen" in msg or \
        msg.startswith(f"bzImage payload ({name}) does not decompress to an ELF"), msg


def test_bzimage_truncated_payload():
    payload = COMPRESSORS["xz"](pv_elf())
    img = make_bzimage(payload)
    start = 5 * 512 + 0x2CC
    assert load_err(img[:start + len(payload) // 2]).startswith("bzImage payload at ")
    short = bytearray(img)
    struct.pack_into("<I", short, 0x24C, len(payload) // 2)
    assert load_err(bytes(short)).startswith("bzImage payload (xz) is corrupt: ")


def test_bzimage_header_errors():
    assert "too old" in load_err(make_bzimage(gzip.compress(pv_elf()), version=0x207))
    assert "unknown compression format" in load_err(make_bzimage(b"\x01\x02\x03\x04" * 10))
    assert "does not decompress to an ELF" in load_err(make_bzimage(gzip.compress(b"hello")))
    assert "truncated bzImage" in load_err(make_bzimage(b"")[:0x240])


def test_gzip_of_garbage():
    assert load_err(gzip.compress(b"plain text")).startswith("gzip data does not contain an ELF image")
    assert load_err(gzip.compress(pv_elf())[:-30]).startswith("gzip data is corrupt: ")


def test_bsd_symtab_extends_kernel_end():
    k = load(build_elf(pt_notes=xnotes(pv_notes(BSD_SYMTAB="yes")), symtab=True))
    # pend rounded to 8, then 4 + 68 + 3*64 bytes of headers, then symtab (48) and strtab (7), rounded.
    assert k.virt_kend == VB + 0x5000 + 264 + 48 + 8
    assert "no usable .symtab" in load_err(pv_elf(BSD_SYMTAB="yes"))


# ------------------------------------------------------------------------------------------------
# Robustness: mutated images raise ImageError or load, nothing else
# ------------------------------------------------------------------------------------------------

_VALID = build_elf(pt_notes=xnotes(pv_notes(FEATURES="writable_page_tables")),
                   sh_notes=xnotes(pv_notes()), xen_guest=b"GUEST_OS=linux,XEN_VER=xen-3.0\0", symtab=True)
_VALID32 = build_elf(bits=32, pt_notes=xnotes(pv_notes(32), 32))


def _check_mutant(data: bytes) -> None:
    try:
        load(data)
    except ImageError as e:
        assert "\n" not in str(e) and "internal error" not in str(e), str(e)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from([_VALID, _VALID32]),
       flips=st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(_VALID))))
def test_random_byte_mutations(base, flips, cut):
    img = bytearray(base)
    for pos, val in flips:
        if pos < len(img):
            img[pos] = val
    _check_mutant(bytes(img[:cut] if cut is not None else img))


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from([_VALID, _VALID32]),
       fields=st.lists(st.tuples(st.integers(0, 0x1FF), st.sampled_from([1, 2, 4, 8]),
                                 st.integers(0, 2**64 - 1)), min_size=1, max_size=4))
def test_random_header_field_overwrites(base, fields):
    # The headers live in the first bytes (ehdr, phdrs); overwrite whole fields with any value.
    img = bytearray(base)
    for pos, width, value in fields:
        if pos + width <= len(img):
            img[pos:pos + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
    _check_mutant(bytes(img))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["gzip", "xz", "lz4", "zstd"]),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
def test_random_mutations_of_compressed_images(name, flips):
    img = bytearray(make_bzimage(COMPRESSORS[name](_VALID)))
    for pos, val in flips:
        img[pos % len(img)] = val
    _check_mutant(bytes(img))


# ------------------------------------------------------------------------------------------------
# Real guests from Debian (GUESTS.md §2); fetched once by the debian_guest fixture
# ------------------------------------------------------------------------------------------------


def test_real_grub_x86_64(debian_guest):
    k = load_kernel(debian_guest("grub-x86_64"))
    n = k.notes
    assert (k.abi, k.container, n.source) == ("pv64", "ELF", "PT_NOTE")
    assert dict(n.entries) == {"GUEST_OS": "GRUB", "LOADER": "generic", "XEN_VERSION": "xen-3.0",
                               "ENTRY": 0, "VIRT_BASE": 0}
    assert (k.entry, k.virt_base, k.virt_kstart, k.hypercall_page) == (0, 0, 0, None)
    assert len(k.segments) == 2 and k.segments[0].paddr == 0
    # The second segment's file offset and address are not congruent mod 4096 (copy, don't map).
    assert k.segments[1].paddr % 4096 != 0


def test_real_grub_i386(debian_guest):
    k = load_kernel(debian_guest("grub-i386"))
    n = k.notes
    assert (k.bits, k.abi, n.source) == (32, "pv32pae", "PT_NOTE")
    assert (n.guest_os, n.loader, n.xen_version, n.pae_mode, n.pae) == \
        ("GRUB", "generic", "xen-3.0", "yes", PAE_EXTCR3)
    assert (k.entry, k.virt_kstart, k.hypercall_page) == (0, 0, None)


def test_real_gnumach_dbg(debian_guest):
    k = load_kernel(debian_guest("gnumach-dbg"))
    n = k.notes
    assert (k.abi, n.source) == ("pv64", "__xen_guest")
    assert (n.guest_os, n.xen_version, n.loader) == ("GNU Mach", "xen-3.0", "generic")
    assert (n.virt_base, n.paddr_offset) == (0x40000000, 0x40000000)
    assert k.hypercall_page == 0x40002000
    assert (k.entry, k.virt_kstart) == (0x40000000, 0x40000000)
    assert k.virt_kstart <= k.hypercall_page < k.virt_kend
    assert b".symtab" in k.elf


def test_real_linux_cloud(debian_guest):
    vmlinux = debian_guest("linux-cloud")
    k = load_kernel(vmlinux)
    n = k.notes
    assert (k.abi, k.container, n.source) == ("pv64", "ELF", "PT_NOTE")
    assert (n.guest_os, n.guest_version, n.xen_version, n.loader) == ("linux", "2.6", "xen-3.0", "generic")
    assert (n.virt_base, n.paddr_offset, k.virt_offset) == (VB, 0, VB)
    assert n.init_p2m == 0x8000000000
    assert n.features == "!writable_page_tables|pae_pgdir_above_4gb"
    assert n.supported_features == 0x8801
    assert (n.pae_mode, n.l1_mfn_valid, n.suspend_cancel, n.mod_start_pfn) == ("yes", (1, 1), True, True)
    assert n.hv_start_low == 0xFFFF800000000000
    assert n.phys32_entry is not None and n.phys32_entry < 0x4000000
    assert k.hypercall_page is None                   # XSA-466: no hypercall page any more
    assert k.features_required == {0} and {0, 4, 11, 15} <= k.features_supported
    assert k.virt_kstart == 0xFFFFFFFF81000000
    assert k.virt_kstart <= k.entry < k.virt_kend
    assert k.entry == n.entry != int.from_bytes(k.elf[24:32], "little")     # e_entry is physical
    # One segment (.data..percpu) has p_vaddr 0: placed by p_paddr.
    assert any(s.vaddr == 0 and s.paddr > 0x1000000 for s in k.segments)
    # The vmlinuz it came from loads to the same thing.
    vmlinuz = next(vmlinux.parent.glob("vmlinuz-*"))
    z = load_kernel(vmlinuz)
    assert z.container == "bzImage/lz4(ELF)" and z.elf == k.elf and z.entry == k.entry
