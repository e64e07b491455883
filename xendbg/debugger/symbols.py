"""Symbols: names for guest addresses, from wherever the image keeps them.

Sources, each tagged so the debugger can say where a name came from:

* ``symtab`` — the ELF ``.symtab`` (xendbg's lab guests, GNU Mach's -dbg image);
* ``System.map`` — a file given with ``--symbols`` (``ADDRESS TYPE NAME`` per line);
* ``kallsyms`` — the table Linux carries inside itself (:mod:`.kallsyms`);
* ``grub-exports`` — GRUB's core is stripped, but it registers its exported functions with its module
  loader from a static table of ``{name, address, isfunc}`` records; that table is found by its
  structure. ``grub_main`` is not exported; it is the target of the one ``call`` in GRUB's entry
  code (``startup.S``), and is named from there (source ``derived``).

Lookups: :meth:`SymbolTable.resolve` (name → address) and :meth:`SymbolTable.lookup` (address →
nearest preceding symbol and offset). An address is only named after a symbol that could contain it:
inside the symbol's size when the size is known, else before the next symbol and within the image.
"""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import capstone

from xendbg.machine.loader.elf import SHT_STRTAB, ElfFile
from xendbg.machine.loader.model import ImageError

_IDENT = re.compile(rb"[A-Za-z_.$][A-Za-z0-9_.$@]*\Z")
MAX_GAP = 1 << 20          # never name an address more than 1 MiB past a size-less symbol


class SymbolError(Exception):
    """A symbol file that cannot be read; ``str()`` is one line."""


@dataclass(frozen=True)
class Symbol:
    address: int
    name: str
    size: int = 0          # 0: unknown
    type: str = "?"        # nm-style type letter (T t D d B b A ...)
    source: str = ""


class SymbolTable:
    """Every known symbol of one guest, from one or more sources."""

    def __init__(self, lo: int = 0, hi: int = 1 << 64) -> None:
        self.lo = lo                  # addresses outside [lo, hi) are never named
        self.hi = hi
        self._by_name: dict[str, Symbol] = {}
        self._sorted: list[Symbol] = []
        self._addrs: list[int] = []
        self.sources: dict[str, int] = {}      # source → how many symbols it gave
        self.notes: list[str] = []             # what could not be loaded, and why

    def __len__(self) -> int:
        return len(self._by_name)

    def add(self, symbols: list[Symbol], source: str) -> None:
        added = 0
        for s in symbols:
            if not s.name:
                continue
            if s.name not in self._by_name:
                self._by_name[s.name] = s
                added += 1
            if s.type not in "AaUuwWvV":          # absolute (per-CPU offsets) and undefined
                self._sorted.append(s)
        self._sorted.sort(key=lambda s: (s.address, s.type not in "Tt", s.name))
        self._addrs = [s.address for s in self._sorted]
        self.sources[source] = self.sources.get(source, 0) + added

    def resolve(self, name: str) -> Symbol | None:
        return self._by_name.get(name)

    def lookup(self, address: int) -> tuple[Symbol, int] | None:
        """The symbol containing ``address`` and the offset into it, or None."""
        if not self.lo <= address < self.hi:
            return None
        i = bisect.bisect_right(self._addrs, address) - 1
        if i < 0:
            return None
        # Several names may share the address: the first sorted is preferred (text, then name).
        first = bisect.bisect_left(self._addrs, self._addrs[i])
        sym = self._sorted[first]
        off = address - sym.address
        if sym.size:
            if off >= sym.size:
                return None
        elif off > MAX_GAP:
            return None
        return sym, off

    def name_of(self, address: int) -> str | None:
        """``symbol+0xoff`` (or ``symbol``) for ``address``; None if no symbol contains it."""
        found = self.lookup(address)
        if found is None:
            return None
        sym, off = found
        return f"{sym.name}+{off:#x}" if off else sym.name

    def fmt(self, address: int) -> str:
        """``0x… <symbol+off>`` or just the hex address."""
        name = self.name_of(address)
        return f"{address:#x} <{name}>" if name else f"{address:#x}"

    def matching(self, prefix: str, limit: int = 20) -> list[str]:
        return sorted(n for n in self._by_name if n.startswith(prefix))[:limit]

    def next_after(self, address: int) -> int | None:
        i = bisect.bisect_right(self._addrs, address)
        return self._addrs[i] if i < len(self._addrs) else None


# -- sources -------------------------------------------------------------------------------------

_STT_FILE, _STT_SECTION = 4, 3
_TYPE_LETTER = {0: "t", 1: "d", 2: "t"}   # NOTYPE (labels), OBJECT, FUNC


def symtab_symbols(elf: bytes) -> list[Symbol]:
    """Symbols of the ELF ``.symtab`` (empty if the image is stripped); ImageError on a bad table."""
    f = ElfFile(elf)
    found = f.symtab()
    if found is None:
        return []
    sh, strtab = found
    if strtab is None or strtab.type != SHT_STRTAB:
        return []
    f.range_of(".symtab", sh.offset, sh.size)
    f.range_of(".strtab", strtab.offset, strtab.size)
    is64 = f.bits == 64
    entsize = 24 if is64 else 16
    out = []
    for off in range(sh.offset + entsize, sh.offset + sh.size - entsize + 1, entsize):
        if is64:
            name_off, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", elf, off)
        else:
            name_off, value, size, info, _other, shndx = struct.unpack_from("<IIIBBH", elf, off)
        kind, bind = info & 0xF, info >> 4
        if kind in (_STT_FILE, _STT_SECTION) or shndx == 0:
            continue
        raw = f.cstring(strtab.offset + name_off, strtab.offset + strtab.size)
        if not raw:
            continue
        letter = "a" if shndx == 0xFFF1 else _TYPE_LETTER.get(kind, "t")
        if bind != 0:        # global / weak: upper case, as nm prints
            letter = letter.upper()
        out.append(Symbol(value, raw.decode("latin-1"), size, letter, "symtab"))
    return out


def parse_system_map(text: str, source: str = "System.map") -> list[Symbol]:
    """``ADDRESS TYPE NAME [MODULE]`` lines; SymbolError naming the first bad line."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) != 1:
            raise SymbolError(f"line {number}: not 'ADDRESS TYPE NAME': {line[:60]!r}")
        try:
            address = int(parts[0], 16)
        except ValueError:
            raise SymbolError(f"line {number}: bad address {parts[0][:20]!r}") from None
        out.append(Symbol(address, parts[2], 0, parts[1], source))
    return out


def load_system_map(path: str | Path) -> list[Symbol]:
    try:
        text = Path(path).read_text(encoding="latin-1")
    except OSError as exc:
        raise SymbolError(f"{path}: {exc.strerror or exc}") from None
    try:
        return parse_system_map(text, "System.map")
    except SymbolError as exc:
        raise SymbolError(f"{path}: {exc}") from None


def grub_symbols(image) -> list[Symbol]:
    """GRUB's exported-symbol table and ``grub_main`` (see the module docstring)."""
    if not image.segments:
        return []
    seg = image.segments[0]
    data, base = seg.data, seg.vaddr
    is64 = image.bits == 64
    rec = struct.Struct("<QQQ" if is64 else "<III")
    end = base + max(seg.memsz, len(data))

    def string_at(va: int) -> bytes | None:
        if not base <= va < base + len(data):
            return None
        off = va - base
        nul = data.find(b"\0", off, off + 128)
        if nul < 0:
            return None
        s = data[off:nul]
        return s if _IDENT.match(s) else None

    best: list[Symbol] = []
    step = 8 if is64 else 4
    pos = 0
    while pos + rec.size <= len(data):
        run: list[Symbol] = []
        p = pos
        while p + rec.size <= len(data):
            name_va, addr, isfunc = rec.unpack_from(data, p)
            name = string_at(name_va)
            if name is None or not base <= addr < end or isfunc not in (0, 1):
                break
            run.append(Symbol(addr, name.decode(), 0, "T" if isfunc else "D", "grub-exports"))
            p += rec.size
        if len(run) > len(best):
            best = run
        pos = p + step if run else pos + step
    if len(best) < 16:
        best = []
    best.append(Symbol(image.entry, "_start", 0, "T", "derived"))
    main = _entry_call_target(image, data, base)
    if main is not None:
        best.append(Symbol(main, "grub_main", 0, "T", "derived"))
    return best


def _entry_call_target(image, data: bytes, base: int) -> int | None:
    """The target of the first direct ``call`` in the first 64 bytes at the entry point."""
    off = image.entry - base
    if not 0 <= off < len(data):
        return None
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if image.bits == 64
                     else capstone.CS_MODE_32)
    for insn in md.disasm(data[off:off + 64], image.entry):
        if insn.mnemonic == "call":
            try:
                return int(insn.op_str, 16)
            except ValueError:
                return None
    return None


def symbols_for_image(image, system_map: str | Path | None = None) -> SymbolTable:
    """Every symbol xendbg can find for ``image`` (a loaded KernelImage), plus ``system_map``."""
    table = SymbolTable(image.virt_kstart, max(image.virt_kend, image.virt_kstart + 1))
    if system_map is not None:
        table.add(load_system_map(system_map), "System.map")
    try:
        elf_syms = symtab_symbols(image.elf)
    except ImageError as exc:
        table.notes.append(f".symtab unreadable: {exc}")
        elf_syms = []
    if elf_syms:
        table.add(elf_syms, "symtab")
        return table
    guest_os = (image.notes.guest_os or "").lower()
    if "linux" in guest_os or (not guest_os and image.bits == 64):
        from xendbg.debugger.kallsyms import KallsymsError, load_kallsyms
        try:
            ks = load_kallsyms(image.elf, getattr(image, "path", None))
            # Per-CPU symbols (type A) are offsets, not addresses: resolvable by name only.
            table.add([Symbol(a, n, 0, t, "kallsyms") for a, t, n in ks], "kallsyms")
        except KallsymsError as exc:
            table.notes.append(f"kallsyms: {exc}")
    elif "grub" in guest_os:
        syms = grub_symbols(image)
        if syms:
            table.add(syms, "grub-exports")
        table.notes.append("GRUB: only the core's exported symbols and grub_main are known; "
                           "module symbols exist once GRUB has loaded (relocated) its modules")
    if not len(table):
        table.notes.append("no symbols in the image (stripped); give a System.map with --symbols")
    return table
