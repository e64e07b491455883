"""A small, defensive ELF reader: headers, program headers, section headers, section names.

Written by hand rather than with pyelftools because a kernel image is untrusted input and every
offset and size has to be checked against the file length with a precise message; pyelftools
raises a dozen exception types on bad input. Only what the Xen loader needs is here: little-endian
ELF32/i386 and ELF64/x86-64, PT_LOAD/PT_NOTE, SHT_NOTE/SHT_SYMTAB and section lookup by name.

Like Xen's ``elf_init``, the header tables are checked up front; the things they point to are
checked when (and only if) they are used, so a corrupt section the loader never looks at does not
stop a kernel from loading, just as it would not under Xen.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .model import ImageError

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_NAMES = {0: "NONE", 1: "REL", 2: "EXEC", 3: "DYN", 4: "CORE"}
ET_EXEC, ET_DYN = 2, 3
EM_386, EM_X86_64 = 3, 62
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
SHT_SYMTAB, SHT_STRTAB, SHT_NOTE = 2, 3, 7

# Xen gives up on strings longer than this (ELF_MAX_STRING_LENGTH in libelf-private.h).
MAX_STRING = 4096

# (header struct, header size, phdr struct, phdr size, shdr struct, shdr size) per class.
_EHDR = {
    ELFCLASS32: struct.Struct("<HHIIIIIHHHHHH"),   # after e_ident
    ELFCLASS64: struct.Struct("<HHIQQQIHHHHHH"),
}
_PHDR32 = struct.Struct("<IIIIIIII")     # type offset vaddr paddr filesz memsz flags align
_PHDR64 = struct.Struct("<IIQQQQQQ")     # type flags offset vaddr paddr filesz memsz align
_SHDR32 = struct.Struct("<IIIIIIIIII")
_SHDR64 = struct.Struct("<IIQQQQIIQQ")


@dataclass(frozen=True)
class Phdr:
    index: int
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Shdr:
    index: int
    name_off: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


def truncated(what: str, end: int, size: int) -> ImageError:
    """The one wording used for every "points past the end of the file" error."""
    return ImageError(f"truncated ELF: {what} ends at {end:#x} but the file has {size:#x} bytes")


class ElfFile:
    """The parsed headers of one ELF image held in memory (``data``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        size = len(data)
        if size < 16 or data[:4] != ELFMAG:
            raise ImageError("not an ELF file (no \\x7fELF magic)")
        cls, enc = data[4], data[5]
        if cls not in (ELFCLASS32, ELFCLASS64):
            raise ImageError(f"bad ELF class {cls} in e_ident (want 1 = ELF32 or 2 = ELF64)")
        if enc == ELFDATA2MSB:
            raise ImageError("big-endian ELF: only little-endian x86 kernels can be loaded")
        if enc != ELFDATA2LSB:
            raise ImageError(f"bad ELF data encoding {enc} in e_ident (want 1 = little-endian)")
        self.cls = cls
        self.bits = 64 if cls == ELFCLASS64 else 32
        ehdr = _EHDR[cls]
        ehsize = 16 + ehdr.size
        if size < ehsize:
            raise truncated(f"ELF{self.bits} header", ehsize, size)
        (self.type, self.machine, _version, self.entry, self.phoff, self.shoff, _flags, _ehsize,
         self.phentsize, self.phnum, self.shentsize, self.shnum, self.shstrndx) = ehdr.unpack_from(data, 16)

        if self.machine not in (EM_386, EM_X86_64):
            raise ImageError(f"ELF machine {self.machine} is not x86 (want 62 = x86-64 or 3 = i386)")
        if (self.machine == EM_X86_64) != (cls == ELFCLASS64):
            arch = "x86-64" if self.machine == EM_X86_64 else "i386"
            raise ImageError(f"ELF{self.bits} file for {arch}: x86-64 kernels must be ELF64 "
                             "and i386 kernels ELF32")
        # Xen's libelf never looks at e_type: it loads by p_paddr whatever the type, so a
        # (non-relocated) ET_DYN loads too. Types without program headers can only fail later
        # with a less helpful message, so they are refused here.
        if self.type not in (ET_EXEC, ET_DYN):
            name = ET_NAMES.get(self.type, str(self.type))
            raise ImageError(f"ELF type {name} cannot be booted: a kernel is an EXEC (or DYN) image")

        self.phdrs = self._read_phdrs()
        self.shdrs = self._read_shdrs()
        self._shstrtab: Shdr | None = None
        if self.shstrndx < len(self.shdrs):     # Xen's elf_shdr_by_index: any index in range
            self._shstrtab = self.shdrs[self.shstrndx]

    # -- header tables -----------------------------------------------------------------------------

    def _read_phdrs(self) -> tuple[Phdr, ...]:
        if self.phnum == 0:
            return ()
        fmt = _PHDR64 if self.cls == ELFCLASS64 else _PHDR32
        if self.phentsize < fmt.size:
            raise ImageError(f"bad e_phentsize {self.phentsize}: an ELF{self.bits} program header "
                             f"has {fmt.size} bytes")
        end = self.phoff + self.phentsize * self.phnum
        if end > len(self.data):
            raise truncated("program header table", end, len(self.data))
        out = []
        for i in range(self.phnum):
            f = fmt.unpack_from(self.data, self.phoff + i * self.phentsize)
            if self.cls == ELFCLASS64:
                p_type, flags, offset, vaddr, paddr, filesz, memsz, _ = f
            else:
                p_type, offset, vaddr, paddr, filesz, memsz, flags, _ = f
            out.append(Phdr(i, p_type, flags, offset, vaddr, paddr, filesz, memsz))
        return tuple(out)

    def _read_shdrs(self) -> tuple[Shdr, ...]:
        if self.shnum == 0:
            return ()
        fmt = _SHDR64 if self.cls == ELFCLASS64 else _SHDR32
        if self.shentsize < fmt.size:
            raise ImageError(f"bad e_shentsize {self.shentsize}: an ELF{self.bits} section header "
                             f"has {fmt.size} bytes")
        end = self.shoff + self.shentsize * self.shnum
        if end > len(self.data):
            raise truncated("section header table", end, len(self.data))
        return tuple(Shdr(i, *fmt.unpack_from(self.data, self.shoff + i * self.shentsize))
                     for i in range(self.shnum))

    # -- checked access ----------------------------------------------------------------------------

    def range_of(self, what: str, offset: int, size: int) -> tuple[int, int]:
        """``(start, end)`` of a byte range that must lie inside the file, else ImageError."""
        end = offset + size
        if end > len(self.data):
            raise truncated(what, end, len(self.data))
        return offset, end

    def cstring(self, offset: int, limit: int | None = None) -> bytes | None:
        """The NUL-terminated string at ``offset`` (without the NUL), or None if it is not
        terminated inside the file (or inside ``limit``) or longer than Xen accepts."""
        end = len(self.data) if limit is None else min(limit, len(self.data))
        if offset >= end:
            return None
        nul = self.data.find(b"\0", offset, min(end, offset + MAX_STRING + 1))
        return None if nul < 0 else self.data[offset:nul]

    # -- sections ----------------------------------------------------------------------------------

    def section_name(self, sh: Shdr) -> str | None:
        """The section's name from .shstrtab, or None when it cannot be read (Xen: "unknown")."""
        if self._shstrtab is None:
            return None
        raw = self.cstring(self._shstrtab.offset + sh.name_off)
        return None if raw is None else raw.decode("latin-1")

    def section_by_name(self, name: str) -> Shdr | None:
        """The first section called ``name`` (Xen's elf_shdr_by_name, which also looks at index 0)."""
        for sh in self.shdrs:
            if self.section_name(sh) == name:
                return sh
        return None

    def symtab(self) -> tuple[Shdr, Shdr | None] | None:
        """The SHT_SYMTAB section and its linked string table, found the way Xen's elf_init does:
        the first symtab whose sh_link is in range; the strtab is None if the link is not a STRTAB."""
        count = len(self.shdrs)
        for sh in self.shdrs[1:]:
            if sh.type != SHT_SYMTAB:
                continue
            if sh.link == 0 or sh.link >= count:
                return None            # Xen stops looking at the first bad link
            strtab = self.shdrs[sh.link]
            return sh, (strtab if strtab.type == SHT_STRTAB else None)
        return None


def is_loadable(ph: Phdr) -> bool:
    """Xen's elf_phdr_is_loadable: PT_LOAD with at least one of R/W/X set (memsz may be 0)."""
    return ph.type == PT_LOAD and (ph.flags & (PF_R | PF_W | PF_X)) != 0
