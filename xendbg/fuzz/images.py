"""Seed images for the file fuzzer, made from the lab guests: every container the loader accepts.

The lab guests are small, committed ELF images with Xen notes. From them this module writes the
other shapes a kernel comes in, so that each format can be fuzzed without downloading anything:

* an ELF whose only Xen information is a legacy ``__xen_guest`` section (as GNU Mach ships),
* a Linux-style bzImage (boot protocol 2.15 setup header) whose payload is the ELF compressed with
  xz, legacy lz4 or gzip, with the 4-byte decompressed size appended as Linux's build does,
* bare gzip, xz and legacy-lz4 compressed ELF files.

Each seed comes with its *regions*: the byte ranges worth mutating (headers, tables, note records,
the ``__xen_guest`` string, compressed-stream headers and trailers) and the fields inside them.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from dataclasses import dataclass, field

from xendbg.machine.loader import load_kernel_bytes

LZ4_LEGACY_MAGIC = 0x184C2102
_LZ4_BLOCK = 8 << 20


@dataclass
class Region:
    name: str
    start: int
    end: int
    weight: float
    fields: list[tuple[int, int]] = field(default_factory=list)   # (offset, size) inside the file
    text: bool = False                                              # a KEY=VALUE string


@dataclass
class Seed:
    name: str
    data: bytes
    regions: list[Region]


# -- ELF -----------------------------------------------------------------------------------------

_EHDR64 = [(16, 2), (18, 2), (20, 4), (24, 8), (32, 8), (40, 8), (48, 4), (52, 2), (54, 2), (56, 2),
           (58, 2), (60, 2), (62, 2)]
_EHDR32 = [(16, 2), (18, 2), (20, 4), (24, 4), (28, 4), (32, 4), (36, 4), (40, 2), (42, 2), (44, 2),
           (46, 2), (48, 2), (50, 2)]
_IDENT = [(4, 1), (5, 1), (6, 1), (7, 1)]
_PHDR64 = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 8), (48, 8)]
_PHDR32 = [(0, 4), (4, 4), (8, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4)]
_SHDR64 = [(0, 4), (4, 4), (8, 8), (16, 8), (24, 8), (32, 8), (40, 4), (44, 4), (48, 8), (56, 8)]
_SHDR32 = [(i * 4, 4) for i in range(10)]


def _elf_tables(data: bytes):
    """(bits, ehdr size, phdrs [(off, type, offset, filesz)], shdrs [(off, type, offset, size)])."""
    bits = 64 if data[4] == 2 else 32
    if bits == 64:
        phoff, shoff = struct.unpack_from("<QQ", data, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    else:
        phoff, shoff = struct.unpack_from("<II", data, 28)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 42)
    phdrs, shdrs = [], []
    for i in range(phnum):
        off = phoff + i * phentsize
        if bits == 64:
            p_type, _f, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        else:
            p_type, p_offset, _v, _p, p_filesz = struct.unpack_from("<IIIII", data, off)
        phdrs.append((off, p_type, p_offset, p_filesz))
    for i in range(shnum):
        off = shoff + i * shentsize
        if bits == 64:
            _n, s_type, _fl, _a, s_offset, s_size = struct.unpack_from("<IIQQQQ", data, off)
        else:
            _n, s_type, _fl, _a, s_offset, s_size = struct.unpack_from("<IIIIII", data, off)
        shdrs.append((off, s_type, s_offset, s_size))
    return bits, (64 if bits == 64 else 52), phdrs, shdrs


def _note_fields(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """namesz, descsz, type and the first desc word of each note record in [start, end)."""
    out = []
    off = start
    while off + 12 <= end:
        namesz, descsz, _t = struct.unpack_from("<III", data, off)
        out += [(off, 4), (off + 4, 4), (off + 8, 4)]
        desc = off + 12 + ((namesz + 3) & ~3)
        if descsz in (4, 8) and desc + descsz <= end:
            out.append((desc, descsz))
        off = desc + ((descsz + 3) & ~3)
    return out


def elf_regions(data: bytes, notes_only: bool = False) -> list[Region]:
    bits, ehsize, phdrs, shdrs = _elf_tables(data)
    ph_f, sh_f = (_PHDR64, _SHDR64) if bits == 64 else (_PHDR32, _SHDR32)
    notes = []
    for _off, p_type, p_offset, p_filesz in phdrs:
        if p_type == 4:
            notes.append(Region("PT_NOTE records", p_offset, p_offset + p_filesz, 3.0,
                                _note_fields(data, p_offset, p_offset + p_filesz)))
    for _off, s_type, s_offset, s_size in shdrs:
        if s_type == 7 and not any(r.start == s_offset for r in notes):
            notes.append(Region("SHT_NOTE records", s_offset, s_offset + s_size, 2.0,
                                _note_fields(data, s_offset, s_offset + s_size)))
    if notes_only:
        return notes
    regions = [Region("ELF header", 0, ehsize, 3.0,
                      _IDENT + (_EHDR64 if bits == 64 else _EHDR32))]
    if phdrs:
        first, last = phdrs[0][0], phdrs[-1][0] + len(ph_f) * 0 + (56 if bits == 64 else 32)
        regions.append(Region("program headers", first, last, 4.0,
                              [(off + o, s) for off, *_ in phdrs for o, s in ph_f]))
    if shdrs:
        first, last = shdrs[0][0], shdrs[-1][0] + (64 if bits == 64 else 40)
        regions.append(Region("section headers", first, last, 2.0,
                              [(off + o, s) for off, *_ in shdrs for o, s in sh_f]))
    for r in notes:
        r.weight = 1.5
    regions += notes
    regions.append(Region("whole file", 0, len(data), 0.5))
    return regions


def rebase_notes(data: bytes, new_base: int) -> bytes:
    """The same ELF with its VIRT_BASE, ENTRY and HYPERCALL_PAGE notes (and e_entry) moved to
    ``new_base``. Segments are placed by p_paddr, so nothing else moves; the code itself is not
    relocated — the image loads and builds, which is all the file fuzzer needs. A low VIRT_BASE (as
    GNU Mach's 0x40000000) lets one mutated p_paddr or p_memsz make a kernel span terabytes."""
    out = bytearray(data)
    bits, _ehsize, phdrs, _shdrs = _elf_tables(data)
    word = 8 if bits == 64 else 4
    old_base = None
    for _off, p_type, p_offset, p_filesz in phdrs:
        if p_type != 4:
            continue
        off, end = p_offset, p_offset + p_filesz
        while off + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, off)
            desc = off + 12 + ((namesz + 3) & ~3)
            if ntype == 3 and descsz == word:
                old_base = int.from_bytes(data[desc:desc + word], "little")
            off = desc + ((descsz + 3) & ~3)
        off = p_offset
        while off + 12 <= end and old_base is not None:
            namesz, descsz, ntype = struct.unpack_from("<III", data, off)
            desc = off + 12 + ((namesz + 3) & ~3)
            if ntype in (1, 2, 3) and descsz == word:
                value = int.from_bytes(data[desc:desc + word], "little") - old_base + new_base
                out[desc:desc + word] = value.to_bytes(word, "little")
            off = desc + ((descsz + 3) & ~3)
    if old_base is not None:
        e_entry = int.from_bytes(data[24:24 + word], "little")
        out[24:24 + word] = ((e_entry - old_base + new_base) % (1 << (8 * word))).to_bytes(word,
                                                                                         "little")
    return bytes(out)


def xen_guest_elf(image_bytes: bytes, rebase: int | None = None) -> bytes:
    """An ELF with the lab guest's segments and only a ``__xen_guest`` string for Xen; with
    ``rebase``, laid out as GNU Mach is (VIRT_BASE = ELF_PADDR_OFFSET = ``rebase``, p_paddr =
    p_vaddr)."""
    img = load_kernel_bytes(image_bytes)
    bits = img.bits
    vb = img.virt_base
    entry, po = img.entry, img.paddr_offset
    shift = 0
    if rebase is not None:
        shift = rebase
        entry, po = entry - vb + rebase, rebase
        vb = rebase
    legacy = [f"GUEST_OS=linux,GUEST_VER=2.6,XEN_VER=xen-3.0,VIRT_BASE={vb:#x}",
              f"ELF_PADDR_OFFSET={po:#x}", f"VIRT_ENTRY={entry:#x}",
              f"HYPERCALL_PAGE={(img.hypercall_page - img.virt_base) >> 12:#x}", "LOADER=generic"]
    if bits == 32:
        legacy.append("PAE=yes[extended-cr3]")
    text = ",".join(legacy).encode() + b"\0"
    shstr = b"\0__xen_guest\0.shstrtab\0"
    ehsize, phsize, shsize = (64, 56, 64) if bits == 64 else (52, 32, 40)
    segs = img.segments
    offset = 0x1000
    layout = []
    for s in segs:
        layout.append(offset)
        offset = (offset + len(s.data) + 0xFFF) & ~0xFFF
    guest_off = offset
    shstr_off = guest_off + len(text)
    shoff = (shstr_off + len(shstr) + 7) & ~7
    out = bytearray(shoff + 3 * shsize)
    phoff = ehsize
    if bits == 64:
        out[:64] = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
            "<HHIQQQIHHHHHH", 2, 62, 1, entry, phoff, shoff, 0, ehsize, phsize, len(segs),
            shsize, 3, 2)
    else:
        out[:52] = b"\x7fELF\x01\x01\x01" + bytes(9) + struct.pack(
            "<HHIIIIIHHHHHH", 2, 3, 1, entry, phoff, shoff, 0, ehsize, phsize, len(segs),
            shsize, 3, 2)
    for i, (s, off) in enumerate(zip(segs, layout, strict=True)):
        ph = phoff + i * phsize
        paddr = s.paddr + shift
        vaddr = paddr if rebase is not None else s.vaddr
        if bits == 64:
            struct.pack_into("<IIQQQQQQ", out, ph, 1, s.flags, off, vaddr, paddr, len(s.data),
                             s.memsz, 0x1000)
        else:
            struct.pack_into("<IIIIIIII", out, ph, 1, off, vaddr, paddr, len(s.data), s.memsz,
                             s.flags, 0x1000)
        out[off:off + len(s.data)] = s.data
    out[guest_off:guest_off + len(text)] = text
    out[shstr_off:shstr_off + len(shstr)] = shstr
    for i, (name, typ, off, size) in enumerate([(0, 0, 0, 0), (1, 1, guest_off, len(text)),
                                                (13, 3, shstr_off, len(shstr))]):
        sh = shoff + i * shsize
        if bits == 64:
            struct.pack_into("<IIQQQQIIQQ", out, sh, name, typ, 0, 0, off, size, 0, 0, 1, 0)
        else:
            struct.pack_into("<IIIIIIIIII", out, sh, name, typ, 0, 0, off, size, 0, 0, 1, 0)
    return bytes(out)


def xen_guest_regions(data: bytes) -> list[Region]:
    start = data.index(b"GUEST_OS=")
    end = data.index(b"\0", start) + 1
    regions = [Region("__xen_guest string", start, end, 6.0, text=True)]
    regions += [r for r in elf_regions(data) if r.name in ("ELF header", "section headers")]
    return regions


# -- compressed streams and bzImage --------------------------------------------------------------

def lz4_legacy(data: bytes) -> bytes:
    """``lz4 -l`` framing, as Linux's build makes it: magic, [u32 size][block]..., then the size."""
    import lz4.block

    out = bytearray(struct.pack("<I", LZ4_LEGACY_MAGIC))
    for i in range(0, len(data), _LZ4_BLOCK):
        block = lz4.block.compress(data[i:i + _LZ4_BLOCK], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return bytes(out)


def compress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if kind == "lz4":
        return lz4_legacy(data)
    raise ValueError(kind)


def stream_regions(kind: str, data: bytes, base: int = 0) -> list[Region]:
    """Header, body and trailer of a compressed stream starting at ``base`` in the file."""
    n = len(data)
    if kind == "gzip":
        head, tail = [(base + 3, 1), (base + 4, 4), (base + 8, 1), (base + 9, 1)], 8
        head_end = 10
    elif kind == "xz":
        head, tail = [(base + 6, 2), (base + 8, 4), (base + 12, 1), (base + 13, 1)], 32
        head_end = 24
    else:
        head, tail = [(base, 4), (base + 4, 4)], 4
        head_end = 8
    return [Region(f"{kind} header", base, base + head_end, 4.0, head),
            Region(f"{kind} data", base + head_end, base + n - tail, 2.0),
            Region(f"{kind} trailer", base + n - tail, base + n, 2.0,
                   [(base + n - 4, 4)] + ([(base + n - 8, 4)] if tail >= 8 else []))]


def bzimage(payload: bytes, setup_sects: int = 4) -> bytes:
    """A bzImage around ``payload`` (already compressed, size trailer included)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    pm_code = b"\x90" * 0x200                      # stands for the decompressor's code
    struct.pack_into("<I", setup, 0x1F4, (len(pm_code) + len(payload) + 15) // 16)  # syssize
    struct.pack_into("<II", setup, 0x248, len(pm_code), len(payload))
    return bytes(setup) + pm_code + payload


_BZ_FIELDS = [(0x1F1, 1), (0x1F4, 4), (0x1FE, 2), (0x202, 4), (0x206, 2), (0x211, 1), (0x214, 4),
              (0x230, 4), (0x236, 2), (0x238, 4), (0x248, 4), (0x24C, 4)]


def bzimage_regions(data: bytes, kind: str, payload_len: int) -> list[Region]:
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512 + struct.unpack_from("<I", data, 0x248)[0]
    return [Region("setup header", 0x1F1, 0x250, 6.0, _BZ_FIELDS)] + \
        stream_regions(kind, data[start:start + payload_len], start)


def with_size_trailer(compressed: bytes, size: int) -> bytes:
    """Linux appends the decompressed size (u32) after xz/lz4/gzip payloads."""
    return compressed + struct.pack("<I", size & 0xFFFFFFFF)
