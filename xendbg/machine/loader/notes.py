"""Finding and reading what a PV kernel tells Xen about itself: Xen ELF notes or ``__xen_guest``.

The search order and the reading rules are those of Xen's libelf (``libelf-dominfo.c``):

1. PT_NOTE segments, skipping any whose p_offset is 0 (some binutils left it unset);
2. only if those held no note owned by "Xen": SHT_NOTE sections (from index 1);
3. only if still none: the legacy ``__xen_guest`` section, ``KEY=VALUE,KEY=VALUE``.

Only notes whose owner is exactly "Xen" count: GNU Mach's ``.note.Xen`` has owner "name" (a macro
bug), so Xen (and we) fall back to its ``__xen_guest`` string. A Xen note of a type libelf does
not know still counts as "found" (so it stops the fallback), but is otherwise ignored.

Numbers are little-endian and as wide as descsz (1, 2, 4 or 8 bytes; any other size reads as 0, as
in ``elf_note_numeric``). Strings are NUL-terminated, but we accept what is there when they are not:
Linux's FEATURES note has no NUL of its own (only the note padding), and GRUB i386's PAE_MODE note
claims 12 bytes but the file ends 4 bytes in, after "yes\\0".
"""

from __future__ import annotations

import string
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from xendbg.machine.abi import xen as X

from .elf import MAX_STRING, PT_NOTE, SHT_NOTE, ElfFile, truncated
from .model import ImageError, XenNotes

# libelf's note table: the types Xen reads, and whether the value is a string (else a number).
# XEN_ELFNOTE_INFO (0) is deliberately absent: Xen ignores it.
NOTE_IS_STRING = {
    X.XEN_ELFNOTE_ENTRY: False, X.XEN_ELFNOTE_HYPERCALL_PAGE: False, X.XEN_ELFNOTE_VIRT_BASE: False,
    X.XEN_ELFNOTE_INIT_P2M: False, X.XEN_ELFNOTE_PADDR_OFFSET: False, X.XEN_ELFNOTE_HV_START_LOW: False,
    X.XEN_ELFNOTE_XEN_VERSION: True, X.XEN_ELFNOTE_GUEST_OS: True, X.XEN_ELFNOTE_GUEST_VERSION: True,
    X.XEN_ELFNOTE_LOADER: True, X.XEN_ELFNOTE_PAE_MODE: True, X.XEN_ELFNOTE_FEATURES: True,
    X.XEN_ELFNOTE_SUPPORTED_FEATURES: False, X.XEN_ELFNOTE_BSD_SYMTAB: True,
    X.XEN_ELFNOTE_L1_MFN_VALID: False, X.XEN_ELFNOTE_SUSPEND_CANCEL: False,
    X.XEN_ELFNOTE_MOD_START_PFN: False, X.XEN_ELFNOTE_PHYS32_ENTRY: False,
}

# The only feature names libelf's FEATURES parser knows (elf_xen_feature_names[]); not every XENFEAT_.
# An unknown name is silently ignored, an unknown *required* ("!name") one fails the load.
LIBELF_FEATURES: dict[str, int] = {
    name: X.FEATURE_NAMES[name] for name in (
        "writable_page_tables", "writable_descriptor_tables", "auto_translated_physmap",
        "supervisor_mode_kernel", "pae_pgdir_above_4gb", "hvm_callback_vector", "dom0")
}

MAX_NOTES = 65536            # ELF_MAX_TOTAL_NOTE_COUNT: Xen gives up after this many notes
_FEATURE_CHUNK = 63          # libelf reads a feature name into a 64-byte buffer
_LEGACY_NAME, _LEGACY_VALUE = 31, 127    # __xen_guest keys/values go into 32/128-byte buffers
_U64 = (1 << 64) - 1


@dataclass
class FoundNotes:
    """What the note search produced: the notes (None if there were none) and the feature bitmaps."""

    notes: XenNotes | None
    supported: int = 0       # f_supported[0]: FEATURES names + SUPPORTED_FEATURES bitmap
    required: int = 0        # f_required[0]: FEATURES names marked "!"


@dataclass
class _Parms:
    """Mutable twin of XenNotes while notes are being read; a later note overwrites an earlier one."""

    entries: list[tuple[str, object]] = field(default_factory=list)
    values: dict[str, object] = field(default_factory=dict)
    supported: int = 0
    required: int = 0


# -- features -------------------------------------------------------------------------------------

def parse_features(text: str) -> tuple[int, int]:
    """Parse a FEATURES string ``"a|!b|c"`` into (supported, required) bitmaps, as libelf does.

    Names are cut into chunks of at most 63 characters (libelf's buffer), "!" marks a required
    feature (which is also supported). Raises ImageError for a required feature libelf does not know.
    """
    supported = required = 0
    pos = 0
    while pos < len(text) and text[pos] != "\0":
        name, n = [], 0
        while n < _FEATURE_CHUNK:
            c = text[pos + n] if pos + n < len(text) else "\0"
            if c == "\0":
                break
            n += 1
            if c == "|":
                break
            name.append(c)
        pos += n
        feature = "".join(name)
        req = feature.startswith("!")
        bit = LIBELF_FEATURES.get(feature[1:] if req else feature)
        if bit is not None:
            supported |= 1 << bit
            if req:
                required |= 1 << bit
        elif req:
            raise ImageError(f"FEATURES requires {feature[1:]!r}, which Xen's loader does not know "
                             f"(it knows {', '.join(LIBELF_FEATURES)})")
    return supported, required


# -- ELF notes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RawNote:
    offset: int
    owner: bytes
    type: int
    desc_off: int
    descsz: int


def iter_notes(elf: ElfFile, start: int, end: int, counter: list[int]) -> Iterator[RawNote]:
    """The notes in ``[start, end)``; ``counter`` counts notes across all areas (Xen's limit is total)."""
    data, size = elf.data, len(elf.data)
    off = start
    while off < end:
        counter[0] += 1
        if counter[0] > MAX_NOTES:
            raise ImageError(f"too many ELF notes (Xen stops at {MAX_NOTES})")
        if off + 12 > size:
            raise truncated(f"ELF note header at {off:#x}", off + 12, size)
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        name_off = off + 12
        owner = data[name_off:min(name_off + namesz, size)].split(b"\0", 1)[0]
        desc_off = name_off + ((namesz + 3) & ~3)
        yield RawNote(off, owner, ntype, desc_off, descsz)
        off = desc_off + ((descsz + 3) & ~3)


def _note_string(elf: ElfFile, note: RawNote) -> str | None:
    """A string note's value: up to the first NUL, or to the end of desc / of the file if there is
    none (see the module docstring). None when the value starts past the end of the file (Xen's
    elf_strval fails and the note is ignored)."""
    size = len(elf.data)
    if note.desc_off >= size:
        return None
    raw = elf.data[note.desc_off:min(note.desc_off + note.descsz, size, note.desc_off + MAX_STRING)]
    return raw.split(b"\0", 1)[0].decode("latin-1")


def _note_number(elf: ElfFile, note: RawNote, name: str, width: int | None = None) -> int:
    """A numeric note (elf_note_numeric); ``width`` reads only the first unit of that size
    (elf_note_numeric_array, used for the SUPPORTED_FEATURES bitmap)."""
    if width is None:
        if note.descsz not in (1, 2, 4, 8):
            return 0
        width = note.descsz
    elif note.descsz % width or note.descsz < width:
        return 0
    elf.range_of(f"the value of ELF note {name}", note.desc_off, width)
    return int.from_bytes(elf.data[note.desc_off:note.desc_off + width], "little")


def _display_value(elf: ElfFile, note: RawNote) -> object:
    """A note Xen does not read (INFO, CRASH_*, unknown types): a string if it looks like one."""
    raw = elf.data[note.desc_off:min(note.desc_off + note.descsz, len(elf.data))]
    text = raw.rstrip(b"\0")
    if text and all(chr(b) in string.printable for b in text):
        return text.decode("ascii")
    return bytes(raw)


def _parse_note(elf: ElfFile, parms: _Parms, note: RawNote) -> None:
    """elf_xen_parse_note: record one "Xen" note."""
    ntype = note.type
    name = X.ELFNOTE_NAMES.get(ntype, f"{ntype:#x}")
    if ntype not in NOTE_IS_STRING:
        parms.entries.append((name, _display_value(elf, note)))
        return
    v = parms.values
    if NOTE_IS_STRING[ntype]:
        text = _note_string(elf, note)
        if text is None:
            return
        parms.entries.append((name, text))
        if ntype == X.XEN_ELFNOTE_BSD_SYMTAB:
            v["bsd_symtab"] = text == "yes"
        else:                       # GUEST_OS -> guest_os, PAE_MODE -> pae_mode, ...
            v[name.lower()] = text
        if ntype == X.XEN_ELFNOTE_FEATURES:
            sup, req = parse_features(text)
            parms.supported |= sup
            parms.required |= req
        return
    if ntype == X.XEN_ELFNOTE_L1_MFN_VALID:
        # Pairs of (mask, value) words; Xen itself only records the note.
        word = 8 if elf.bits == 64 else 4
        avail = max(0, min(note.descsz, len(elf.data) - note.desc_off)) // word
        words = tuple(int.from_bytes(elf.data[note.desc_off + i * word:note.desc_off + (i + 1) * word],
                                     "little") for i in range(avail))
        parms.entries.append((name, words))
        v["l1_mfn_valid"] = words
        return
    if ntype == X.XEN_ELFNOTE_SUPPORTED_FEATURES:
        val = _note_number(elf, note, name, width=4)
        parms.supported |= val
    else:
        val = _note_number(elf, note, name)
    parms.entries.append((name, val))
    if ntype == X.XEN_ELFNOTE_MOD_START_PFN:
        v["mod_start_pfn"] = bool(val)
    elif ntype == X.XEN_ELFNOTE_SUSPEND_CANCEL:
        v["suspend_cancel"] = bool(val)
    elif ntype == X.XEN_ELFNOTE_PHYS32_ENTRY:
        v["phys32_entry"] = val & 0xFFFF_FFFF      # Xen keeps it in a uint32_t
    elif ntype == X.XEN_ELFNOTE_SUPPORTED_FEATURES:
        v["supported_features"] = val
    else:                           # ENTRY -> entry, INIT_P2M -> init_p2m, ...
        v[name.lower()] = val


def _scan(elf: ElfFile, parms: _Parms, start: int, end: int, counter: list[int]) -> int:
    """elf_xen_parse_notes: parse the notes of one area, return how many were owned by "Xen"."""
    found = 0
    for note in iter_notes(elf, start, end, counter):
        if note.owner != b"Xen":
            continue
        _parse_note(elf, parms, note)
        found += 1
    return found


# -- __xen_guest ----------------------------------------------------------------------------------

def strtoull(text: str) -> int:
    """C's strtoull(text, NULL, 0): optional sign, 0x = hex, leading 0 = octal, longest valid prefix,
    0 when there are no digits, ULLONG_MAX on overflow; a "-" negates modulo 2**64."""
    s = text.lstrip(" \t\n\v\f\r")
    neg = s[:1] == "-"
    if s[:1] in ("+", "-"):
        s = s[1:]
    base = 10
    if s[:2].lower() == "0x" and s[2:3] and s[2] in string.hexdigits:
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    digits = "0123456789abcdef"[:base]
    n = 0
    while n < len(s) and s[n].lower() in digits:
        n += 1
    value = int(s[:n], base) if n else 0
    if value > _U64:
        return _U64
    return (-value) & _U64 if neg else value


# The keys libelf knows in __xen_guest (note: GUEST_VER and XEN_VER, not GUEST_VERSION/XEN_VERSION).
_LEGACY_STRINGS = {"LOADER": "loader", "GUEST_OS": "guest_os", "GUEST_VER": "guest_version",
                   "XEN_VER": "xen_version", "PAE": "pae_mode", "FEATURES": "features"}
_LEGACY_NUMBERS = {"VIRT_BASE": "virt_base", "VIRT_ENTRY": "entry",
                   "ELF_PADDR_OFFSET": "paddr_offset", "HYPERCALL_PAGE": "hypercall_page"}


def _parse_guest_info(text: bytes, parms: _Parms) -> None:
    """elf_xen_parse_guest_info, including its fixed-size buffers: a key longer than 31 characters
    or a value longer than 127 is cut, and the rest is read as the next key."""
    s = text.decode("latin-1")
    v = parms.values
    h = 0
    while h < len(s):
        name: list[str] = []
        value: list[str] = []
        while len(name) < _LEGACY_NAME and h < len(s):
            c = s[h]
            if c == ",":
                h += 1
                break
            if c == "=":
                h += 1
                while len(value) < _LEGACY_VALUE and h < len(s):
                    c = s[h]
                    if c == ",":
                        h += 1
                        break
                    value.append(c)
                    h += 1
                break
            name.append(c)
            h += 1
        key, val = "".join(name), "".join(value)
        parms.entries.append((key, val))
        if key in _LEGACY_STRINGS:
            v[_LEGACY_STRINGS[key]] = val
        elif key in _LEGACY_NUMBERS:
            num = strtoull(val)
            # HYPERCALL_PAGE is a page number here; VIRT_BASE is added once all keys are read.
            v[_LEGACY_NUMBERS[key]] = (num << 12) & _U64 if key == "HYPERCALL_PAGE" else num
        elif key == "BSD_SYMTAB":
            v["bsd_symtab"] = True         # libelf only looks at the key, not its value
        if key == "FEATURES":
            sup, req = parse_features(val)
            parms.supported |= sup
            parms.required |= req
    if v.get("virt_base") is not None and v.get("hypercall_page") is not None:
        v["hypercall_page"] = (v["hypercall_page"] + v["virt_base"]) & _U64


# -- the search -----------------------------------------------------------------------------------

def find_xen_notes(elf: ElfFile) -> FoundNotes:
    """elf_xen_parse without the checks: find the notes in libelf's order and read them."""
    parms = _Parms()
    counter = [0]
    source = None
    for ph in elf.phdrs:
        if ph.type != PT_NOTE or ph.offset == 0:
            continue
        start, end = elf.range_of(f"PT_NOTE segment {ph.index}", ph.offset, ph.filesz)
        if _scan(elf, parms, start, end, counter):
            source = "PT_NOTE"
    if source is None:
        for sh in elf.shdrs[1:]:
            if sh.type != SHT_NOTE:
                continue
            start, end = elf.range_of(f"SHT_NOTE section {sh.index}", sh.offset, sh.size)
            if _scan(elf, parms, start, end, counter):
                source = "SHT_NOTE"
    if source is None:
        sh = elf.section_by_name("__xen_guest")
        if sh is None:
            return FoundNotes(None)
        # libelf reads up to a NUL wherever it is; we also stop at the end of the section.
        start, end = elf.range_of("section __xen_guest", sh.offset, sh.size)
        raw = elf.data[start:end].split(b"\0", 1)[0]
        _parse_guest_info(raw, parms)
        source = "__xen_guest"
    notes = XenNotes(source=source, entries=tuple(parms.entries), **parms.values)  # type: ignore[arg-type]
    return FoundNotes(notes, parms.supported, parms.required)
