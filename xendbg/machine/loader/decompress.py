"""Decompressing kernel images: the formats Linux can compress a bzImage payload with, plus gzip'd files.

Every decompressor is driven incrementally with an output cap, so a corrupt or hostile input can
neither exhaust memory nor raise anything but ImageError. Trailing bytes after the end of the
compressed stream are ignored: Linux appends the decompressed size (4 bytes, little-endian) after
its xz / lz4 / zstd / bzip2 / lzma payloads, and gzip(1) itself ignores trailing garbage.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable

from .model import ImageError

MAX_OUTPUT = 1 << 30            # no kernel image is anywhere near 1 GiB decompressed
_CHUNK = 1 << 20

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20      # each legacy block decompresses to at most 8 MiB
LZ4_LEGACY_BOUND = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16   # LZ4_compressBound(8 MiB)

# (name, magic) in the order they are tried; the lzma-alone magic is weak (a properties byte
# and a dictionary size), so it goes last, as in Xen's bzImage loader.
MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b"),
    ("xz", b"\xfd7zXZ\x00"),
    ("lz4", struct.pack("<I", LZ4_LEGACY_MAGIC)),
    ("lz4-frame", b"\x04\x22\x4d\x18"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("bzip2", b"BZh"),
    ("lzo", b"\x89LZO\x00"),
    ("lzma", b"\x5d\x00\x00"),
)


class CorruptData(Exception):
    """Raised by the decoders below with the reason only; callers say what the data was."""


def detect(data: bytes) -> str | None:
    """The compression format ``data`` starts with, or None."""
    for name, magic in MAGICS:
        if data.startswith(magic):
            if name == "bzip2" and not (len(data) > 3 and data[3:4] in b"123456789"):
                continue
            return name
    return None


def _grow(out: bytearray, chunk: bytes) -> None:
    out += chunk
    if len(out) > MAX_OUTPUT:
        raise CorruptData(f"decompresses to more than {MAX_OUTPUT >> 20} MiB")


def _stream(make: Callable[[], object], data: bytes) -> bytes:
    """Drive a bz2/lzma/lz4.frame-style decompressor (decompress(data, max_length), eof,
    needs_input) to the end of its stream."""
    d = make()
    out = bytearray()
    _grow(out, d.decompress(data, _CHUNK))  # type: ignore[attr-defined]
    while not d.eof and not d.needs_input:  # type: ignore[attr-defined]
        _grow(out, d.decompress(b"", _CHUNK))  # type: ignore[attr-defined]
    if not d.eof:  # type: ignore[attr-defined]
        raise CorruptData("the data ends before the compressed stream does")
    return bytes(out)


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    buf = data
    while True:
        _grow(out, d.decompress(buf, _CHUNK))
        buf = d.unconsumed_tail
        if d.eof or not buf:
            break
    while not d.eof:                # output still buffered inside zlib
        chunk = d.decompress(b"", _CHUNK)
        if not chunk:
            break
        _grow(out, chunk)
    if not d.eof:
        raise CorruptData("the data ends before the compressed stream does")
    return bytes(out)


def _unlz4_legacy(data: bytes) -> bytes:
    """The legacy lz4 format (``lz4 -l``, used by Linux): magic, then ``[u32 size][block]`` repeated,
    then (from Linux's build) the u32 decompressed size. A magic word inside starts a new stream."""
    import lz4.block

    out = bytearray()
    pos, n = 4, len(data)
    while pos < n:
        if n - pos < 4:
            raise CorruptData(f"{n - pos} stray bytes at the end")
        size = struct.unpack_from("<I", data, pos)[0]
        if size == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if pos + 4 == n:
            # The last word is not a block (it has no data): the size Linux appends. Like Xen's
            # loader, insist that it matches what was decompressed.
            if size != len(out) & 0xFFFF_FFFF:
                raise CorruptData(f"decompressed to {len(out):#x} bytes but the trailer says {size:#x}")
            break
        if size == 0 or size > LZ4_LEGACY_BOUND or pos + 4 + size > n:
            raise CorruptData(f"bad block size {size:#x} at offset {pos:#x} "
                              f"({n - pos - 4:#x} bytes follow)")
        try:
            block = lz4.block.decompress(data[pos + 4:pos + 4 + size], uncompressed_size=LZ4_LEGACY_BLOCK)
        except Exception as e:          # lz4.block.LZ4BlockError and friends
            raise CorruptData(f"block at offset {pos:#x}: {e}") from None
        _grow(out, block)
        pos += 4 + size
    if not out:
        raise CorruptData("no data blocks")
    return bytes(out)


def _lz4_frame(data: bytes) -> bytes:
    import lz4.frame

    return _stream(lz4.frame.LZ4FrameDecompressor, data)


def _unzstd(data: bytes) -> bytes:
    import zstandard

    d = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    # Feed the input in slices: zstd's decompressobj has no max_length, so this bounds how much
    # output one call can produce before the cap is checked.
    for i in range(0, len(data), 1 << 12):
        _grow(out, d.decompress(data[i:i + (1 << 12)]))
        if d.eof:
            break
    if not d.eof:
        raise CorruptData("the data ends before the compressed stream does")
    return bytes(out)


def _decoders() -> dict[str, Callable[[bytes], bytes]]:
    return {
        "gzip": _gunzip,
        "xz": lambda d: _stream(lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), d),
        "lzma": lambda d: _stream(lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE), d),
        "bzip2": lambda d: _stream(bz2.BZ2Decompressor, d),
        "lz4": _unlz4_legacy,
        "lz4-frame": _lz4_frame,
        "zstd": _unzstd,
    }


def decompress_as(name: str, data: bytes) -> bytes:
    """Decompress ``data`` known to be in format ``name``; CorruptData(reason) on failure."""
    if name == "lzo":
        raise CorruptData("LZO is not supported (Python has no LZO decompressor)")
    try:
        out = _decoders()[name](data)
    except CorruptData:
        raise
    except MemoryError:
        raise CorruptData("out of memory while decompressing") from None
    except Exception as e:  # zlib.error, lzma.LZMAError, OSError (bz2), zstd.ZstdError, ...
        raise CorruptData(str(e) or type(e).__name__) from None
    if not out:
        raise CorruptData("decompresses to nothing")
    return out


def decompress(data: bytes) -> tuple[str, bytes]:
    """Detect gzip / xz / lz4 (legacy or frame) / zstd / bzip2 / lzma by magic and decompress.

    Returns ``(format name, decompressed bytes)``; raises ImageError for an unknown format or
    corrupt data.
    """
    name = detect(data)
    if name is None:
        raise ImageError(f"unknown compression format (data starts with {data[:6].hex(' ') or 'nothing'})")
    try:
        return name, decompress_as(name, data)
    except CorruptData as e:
        raise ImageError(f"{name} data is corrupt: {e}") from None
