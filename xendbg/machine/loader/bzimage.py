"""Linux bzImage: find the compressed vmlinux inside and decompress it.

The x86 boot protocol (Documentation/arch/x86/boot.rst) puts a setup header at 0x1f1. From
protocol 2.08 on it says where the payload is: ``payload_offset`` (u32 at 0x248) and
``payload_length`` (u32 at 0x24c), relative to the start of the protected-mode code, which begins
after the ``setup_sects`` 512-byte sectors of real-mode setup code plus the boot sector. The payload
is the vmlinux ELF compressed with whatever CONFIG_KERNEL_* chose (Debian: xz for amd64, legacy lz4
for cloud-amd64). This is what Xen's libxenguest does in ``xg_dom_bzimageloader.c``.
"""

from __future__ import annotations

import struct

from .decompress import CorruptData, decompress_as, detect
from .elf import ELFMAG
from .model import ImageError

HDR_MAGIC = b"HdrS"
_OFF_SETUP_SECTS = 0x1F1
_OFF_MAGIC = 0x202
_OFF_VERSION = 0x206
_OFF_PAYLOAD = 0x248            # payload_offset, payload_length
_HEADER_END = 0x250


def is_bzimage(data: bytes) -> bool:
    """True if ``data`` carries an x86 boot-protocol setup header ("HdrS" at 0x202)."""
    return len(data) >= _OFF_MAGIC + 4 and data[_OFF_MAGIC:_OFF_MAGIC + 4] == HDR_MAGIC


def payload(data: bytes) -> bytes:
    """The (still compressed) payload of a bzImage; ImageError if the header does not describe one."""
    if len(data) < _HEADER_END:
        raise ImageError(f"truncated bzImage: the setup header ends at {_HEADER_END:#x} "
                         f"but the file has {len(data):#x} bytes")
    version = struct.unpack_from("<H", data, _OFF_VERSION)[0]
    if version < 0x208:
        raise ImageError(f"bzImage boot protocol {version >> 8}.{version & 0xff:02d} is too old: "
                         "the payload fields need 2.08 or later")
    # Boot protocol: setup_sects == 0 means 4 (Xen's loader does not apply this rule, but no
    # kernel with protocol >= 2.08 has 0 there anyway).
    setup_sects = data[_OFF_SETUP_SECTS] or 4
    off, length = struct.unpack_from("<II", data, _OFF_PAYLOAD)
    start = (setup_sects + 1) * 512 + off
    if start + length > len(data) or length == 0:
        raise ImageError(f"bzImage payload at {start:#x} (+{length:#x} bytes) is outside the file "
                         f"({len(data):#x} bytes)")
    return data[start:start + length]


def extract_bzimage(data: bytes) -> tuple[str | None, bytes]:
    """Return ``(compression, vmlinux ELF bytes)``; compression is None for an uncompressed payload.

    Raises ImageError, e.g. "bzImage payload (xz) is corrupt: <reason>".
    """
    blob = payload(data)
    if blob.startswith(ELFMAG):
        return None, blob
    name = detect(blob)
    if name is None:
        raise ImageError(f"bzImage payload has an unknown compression format "
                         f"(starts with {blob[:6].hex(' ')})")
    try:
        out = decompress_as(name, blob)
    except CorruptData as e:
        raise ImageError(f"bzImage payload ({name}) is corrupt: {e}") from None
    if not out.startswith(ELFMAG):
        raise ImageError(f"bzImage payload ({name}) does not decompress to an ELF image "
                         f"(starts with {out[:4].hex(' ')})")
    return name, out
