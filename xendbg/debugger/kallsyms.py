"""Linux's own symbol table, decoded from the kernel image (``CONFIG_KALLSYMS``).

Debian ships its kernels without a System.map and with ``.symtab`` stripped, but every kernel carries
the table it prints oopses with. ``scripts/kallsyms.c`` emits it into ``.rodata`` as a sequence of
8-byte-aligned arrays, in this order (Linux 6.1, ``CONFIG_KALLSYMS_BASE_RELATIVE``)::

    kallsyms_offsets[N]        s32 each
    kallsyms_relative_base     unsigned long
    kallsyms_num_syms          unsigned int  (N)
    kallsyms_names             per symbol: a length (one byte, or two when bit 7 of the first is set:
                               ULEB128, for "big" symbols), then that many token indexes
    kallsyms_markers           u32 per 256 symbols: where each group starts in kallsyms_names
    kallsyms_seqs_of_names     3 bytes per symbol (sorted-by-name order; newer kernels and Debian's
                               6.1 stable updates only)
    kallsyms_token_table       256 NUL-terminated strings
    kallsyms_token_index       u16[256]: where each token starts in kallsyms_token_table

The expanded name's first character is the symbol type (``T``, ``t``, ``D`` …). With
``CONFIG_KALLSYMS_ABSOLUTE_PERCPU`` (x86-64 SMP) a non-negative offset is an absolute value (the
per-CPU symbols) and a negative one means ``relative_base - 1 - offset``; otherwise every offset is
``relative_base + (u32)offset``.

There is no header and the image has no symbols to find these arrays by, so they are found by their
*structure*: ``token_index`` is the only place where 256 increasing u16 start at 0 and each step is a
short string's length; the token table sits right before it; ``num_syms`` is then the u32 whose
names, decoded, end exactly where the markers begin. Every step is checked; a table that does not
decode consistently is reported as absent rather than guessed.

The decoded table is cached beside the image (``<image>.kallsyms``, System.map format with a header
line holding a hash of the ELF), or in xendbg's cache directory when that place is not writable.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

CACHE_MAGIC = "# xendbg kallsyms v1 "
_MIN_SYMS = 100
_MAX_SYMS = 4_000_000


class KallsymsError(Exception):
    """The image holds no kallsyms table that decodes consistently (``str()`` says why)."""


def _segments(elf: bytes) -> list[tuple[int, int, int]]:
    """(file offset, size, vaddr) of each loadable segment of a little-endian ELF64/ELF32."""
    from xendbg.machine.loader.elf import PT_LOAD, ElfFile
    f = ElfFile(elf)
    return [(p.offset, p.filesz, p.vaddr) for p in f.phdrs if p.type == PT_LOAD and p.filesz]


def _find_token_index(buf: np.ndarray) -> list[int]:
    """8-aligned offsets in ``buf`` where a plausible ``kallsyms_token_index`` starts."""
    n = len(buf) // 2 * 2
    if n < 512:
        return []
    u16 = buf[:n].view("<u2")
    starts = np.nonzero(u16[: len(u16) - 255: 4] == 0)[0] * 4
    found = []
    for i in starts.tolist():
        first = int(u16[i + 1])
        if not 2 <= first <= 64:
            continue
        steps = np.diff(u16[i:i + 256].astype(np.int64))
        if (steps >= 2).all() and (steps <= 128).all():
            found.append(i * 2)
    return found


def _token_table(data: bytes, index_pos: int, index: list[int]) -> tuple[int, list[bytes]] | None:
    """Find where the token table starts, given the index right after it; return the tokens."""
    last = index[-1]
    for pad in range(0, 64):
        start = index_pos - pad - (last + 2)
        for extra in range(0, 64):
            s = start - extra
            if s < 0:
                return None
            end = data.find(b"\0", s + last, index_pos)
            if end < 0 or end + 1 > index_pos or (index_pos - (end + 1)) >= 8:
                continue
            if all(data[s + off - 1] == 0 for off in index[1:]) and data[s + last - 1] == 0:
                tokens = [data[s + off:data.index(b"\0", s + off)] for off in index]
                return s, tokens
        break
    return None


def _decode_names(data: bytes, pos: int, count: int, tokens: list[bytes], limit: int
                  ) -> tuple[list[str], int] | None:
    """Decode ``count`` compressed names from ``pos``; None if they overrun ``limit``."""
    names = []
    table = [t.decode("latin-1") for t in tokens]
    for _ in range(count):
        if pos >= limit:
            return None
        length = data[pos]
        pos += 1
        if length & 0x80:
            length = (length & 0x7F) | (data[pos] << 7)
            pos += 1
        if length == 0 or pos + length > limit:
            return None
        names.append("".join(table[b] for b in data[pos:pos + length]))
        pos += length
    return names, pos


def decode_kallsyms(elf: bytes) -> list[tuple[int, str, str]]:
    """``[(address, type, name)]`` from a Linux image's kallsyms; KallsymsError if there is none."""
    if elf[4:5] != b"\x02":
        raise KallsymsError("only 64-bit Linux images are decoded")
    arr = np.frombuffer(elf, dtype=np.uint8)
    for seg_off, seg_size, _vaddr in _segments(elf):
        seg = arr[seg_off:seg_off + seg_size]
        for rel in _find_token_index(seg):
            index_pos = seg_off + rel
            index = list(struct.unpack_from("<256H", elf, index_pos))
            found = _token_table(elf, index_pos, index)
            if found is None:
                continue
            table_pos, tokens = found
            result = _decode_before(elf, seg_off, table_pos, tokens)
            if result is not None:
                return result
    raise KallsymsError("no kallsyms table found in the image (CONFIG_KALLSYMS off, or a layout "
                        "xendbg does not know)")


def _decode_before(elf: bytes, seg_start: int, table_pos: int, tokens: list[bytes]
                   ) -> list[tuple[int, str, str]] | None:
    """Walk back from the token table to ``kallsyms_num_syms`` and decode everything.

    Each 8-aligned u32 below the table is tried as ``num_syms`` (N), nearest first. For a given N the
    markers' place is fixed (right before the token table, or before the 3N-byte
    ``seqs_of_names``), so a candidate is only decoded when its markers start at 0, increase, and
    point inside the names; the decoded names must then end exactly where the markers begin.
    """
    def up8(x: int) -> int:
        return (x + 7) & ~7

    lo = max(seg_start + 8, table_pos - 64 * 1024 * 1024)
    q = (table_pos - 8) & ~7
    while q >= lo:
        n = struct.unpack_from("<I", elf, q)[0]
        base = struct.unpack_from("<Q", elf, q - 8)[0]
        q -= 8
        if not (_MIN_SYMS <= n <= _MAX_SYMS and base >> 63):
            continue
        names_pos = q + 16
        groups = (n + 255) // 256
        for seqs in (0, up8(3 * n)):
            markers_pos = table_pos - seqs - up8(4 * groups)
            if markers_pos <= names_pos:
                continue
            markers = struct.unpack_from(f"<{groups}I", elf, markers_pos)
            if markers[0] != 0 or any(b <= a for a, b in zip(markers, markers[1:], strict=False)) or \
                    names_pos + markers[-1] >= markers_pos:
                continue
            decoded = _decode_names(elf, names_pos, n, tokens, markers_pos)
            if decoded is None or up8(decoded[1]) != markers_pos:
                continue
            offsets_pos = names_pos - 16 - up8(4 * n)
            if offsets_pos >= seg_start:
                return _symbols(elf, offsets_pos, base, decoded[0])
    return None


def _symbols(elf: bytes, offsets_pos: int, base: int, names: list[str]) -> list[tuple[int, str, str]]:
    n = len(names)
    offsets = np.frombuffer(elf, dtype="<i4", count=n, offset=offsets_pos).astype(np.int64)
    mask = (1 << 64) - 1
    if (offsets < 0).any():           # CONFIG_KALLSYMS_ABSOLUTE_PERCPU
        addrs = [(int(o) if o >= 0 else (base - 1 - int(o))) & mask for o in offsets.tolist()]
    else:
        addrs = [(base + int(o)) & mask for o in offsets.tolist()]
    return [(a, name[:1], name[1:]) for a, name in zip(addrs, names, strict=True)]


# -- the cache ---------------------------------------------------------------------------------------

def elf_digest(elf: bytes) -> str:
    return hashlib.blake2b(elf, digest_size=16).hexdigest()


def cache_paths(image_path: str | os.PathLike[str] | None, digest: str) -> list[Path]:
    """Where a decoded table may be cached: beside the image first, then xendbg's cache."""
    paths = []
    if image_path:
        p = Path(image_path)
        paths.append(p.with_name(p.name + ".kallsyms"))
    root = Path(os.environ.get("XENDBG_CACHE") or Path.home() / ".cache" / "xendbg")
    paths.append(root / "kallsyms" / f"{digest}.kallsyms")
    return paths


def read_cache(path: Path, digest: str) -> list[tuple[int, str, str]] | None:
    try:
        with open(path, encoding="latin-1") as f:
            if f.readline().strip() != (CACHE_MAGIC + digest).strip():
                return None
            out = []
            for line in f:
                addr, typ, name = line.split(None, 2)
                out.append((int(addr, 16), typ, name.rstrip("\n")))
            return out
    except (OSError, ValueError):
        return None


def write_cache(paths: list[Path], digest: str, syms: list[tuple[int, str, str]]) -> Path | None:
    text = CACHE_MAGIC + digest + "\n" + "".join(f"{a:016x} {t} {n}\n" for a, t, n in syms)
    for path in paths:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="latin-1")
            os.replace(tmp, path)
            return path
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
    return None


def load_kallsyms(elf: bytes, image_path: str | os.PathLike[str] | None = None
                  ) -> list[tuple[int, str, str]]:
    """The image's kallsyms, from the cache when it is there; decoded (and cached) otherwise."""
    digest = elf_digest(elf)
    paths = cache_paths(image_path, digest)
    for path in paths:
        cached = read_cache(path, digest)
        if cached is not None:
            return cached
    syms = decode_kallsyms(elf)
    write_cache(paths, digest, syms)
    return syms
