"""load_kernel: unwrap a kernel file, parse its ELF and Xen notes, and check them as Xen does.

The checks follow Xen's own order and rules: ``elf_init`` (header tables inside the file),
``elf_parse_binary`` (the physical span of the loadable segments), ``elf_xen_parse`` (notes),
``elf_xen_note_check``, ``elf_xen_addr_calc_check``, then the domain builder's compatibility checks
(``xc_dom_parse_elf_kernel``, ``xc_dom_guest_type``): 64-bit x86-64 or 32-bit PAE, and no
requirement to be dom0. Where Xen's one message covers several cases ("ELF start or entries are out
of bounds") we say which one it is.
"""

from __future__ import annotations

import os
import string

from xendbg.machine.abi import xen as X

from . import bzimage
from .decompress import CorruptData, decompress_as, detect
from .elf import ELFMAG, ElfFile, is_loadable
from .model import PAE_NO, ImageError, KernelImage, Segment, XenNotes
from .notes import find_xen_notes

_U64 = (1 << 64) - 1


def _bits(mask: int) -> frozenset[int]:
    return frozenset(i for i in range(mask.bit_length()) if mask >> i & 1)


def _describe(data: bytes) -> str:
    """A few words about what an unrecognised file looks like, for the error message."""
    head = data[:64]
    if head and all(chr(b) in string.printable for b in head):
        line = head.decode("ascii").splitlines()[0] if head.strip() else ""
        return f"it looks like text: {line[:40]!r}"
    return f"it starts with {data[:8].hex(' ')}"


def _unwrap_bzimage(data: bytes) -> tuple[str, bytes]:
    comp, elf = bzimage.extract_bzimage(data)
    return (f"bzImage/{comp}(ELF)" if comp else "bzImage(ELF)"), elf


def unwrap(data: bytes) -> tuple[str, bytes]:
    """``(container, ELF bytes)`` for a raw ELF, a bzImage or a compressed file holding either."""
    if not data:
        raise ImageError("empty file")
    if data.startswith(ELFMAG):
        return "ELF", data
    if bzimage.is_bzimage(data):
        return _unwrap_bzimage(data)
    name = detect(data)
    if name is None:
        raise ImageError("not a kernel image: neither ELF, nor a bzImage, nor a known compressed "
                         f"format ({_describe(data)})")
    try:
        inner = decompress_as(name, data)
    except CorruptData as e:
        raise ImageError(f"{name} data is corrupt: {e}") from None
    if inner.startswith(ELFMAG):
        return f"{name}(ELF)", inner
    if bzimage.is_bzimage(inner):
        container, elf = _unwrap_bzimage(inner)
        return f"{name}({container})", elf
    raise ImageError(f"{name} data does not contain an ELF image or a bzImage ({_describe(inner)})")


def _bsd_symtab_end(elf: ElfFile, pend: int) -> int:
    """elf_parse_bsdsyms: with BSD_SYMTAB, Xen appends a small ELF header, the .symtab and its
    .strtab after the kernel, and the kernel's end moves past them."""
    found = elf.symtab()
    if found is None:
        raise ImageError("BSD_SYMTAB is set but the image has no usable .symtab section")
    symtab, strtab = found
    align = 8 if elf.bits == 64 else 4

    def up(x: int) -> int:
        return (x + align - 1) & ~(align - 1)

    elf.range_of(".symtab", symtab.offset, symtab.size)
    # u32 size, then (as Xen counts it) the u32 again plus a 64-byte ELF header, then 3 shdrs.
    size = up(4 + 4 + 64 + 3 * (64 if elf.bits == 64 else 40))
    size = up(size + symtab.size)
    if strtab is None:
        return pend                     # Xen gives up quietly: nothing is appended
    elf.range_of(".strtab", strtab.offset, strtab.size)
    size = up(size + strtab.size)
    return up(pend) + size


def build_image(path: str, container: str, data: bytes) -> KernelImage:
    """Parse and check one ELF kernel (``data``); ``path``/``container`` are for the result only."""
    elf = ElfFile(data)

    # elf_parse_binary: the physical span of every loadable segment, even an empty one.
    loadable = [ph for ph in elf.phdrs if is_loadable(ph)]
    if not loadable:
        raise ImageError("no loadable segment: no PT_LOAD program header has R, W or X set")
    segments = []
    for ph in loadable:
        if ph.filesz > ph.memsz:
            raise ImageError(f"PT_LOAD segment {ph.index}: p_filesz {ph.filesz:#x} is larger than "
                             f"p_memsz {ph.memsz:#x}")
        if ph.paddr + ph.memsz > 1 << elf.bits:
            raise ImageError(f"PT_LOAD segment {ph.index}: p_paddr {ph.paddr:#x} + p_memsz "
                             f"{ph.memsz:#x} wraps around the {elf.bits}-bit address space")
        start, end = elf.range_of(f"PT_LOAD segment {ph.index}", ph.offset, ph.filesz)
        if ph.memsz:
            segments.append(Segment(ph.paddr, ph.vaddr, data[start:end], ph.memsz, ph.flags))
    pstart = min(ph.paddr for ph in loadable)
    pend = max(ph.paddr + ph.memsz for ph in loadable)

    found = find_xen_notes(elf)
    notes = found.notes
    if notes is None:
        raise ImageError("not a Xen PV kernel: no Xen ELF notes and no __xen_guest section")
    _note_check(notes)

    # elf_xen_addr_calc_check
    legacy = notes.source == "__xen_guest"
    if notes.paddr_offset is not None and notes.virt_base is None:
        key = "ELF_PADDR_OFFSET" if legacy else "PADDR_OFFSET"
        raise ImageError(f"{key} is set but VIRT_BASE is not")
    virt_base = notes.virt_base if notes.virt_base is not None else 0
    if notes.paddr_offset is not None:
        paddr_offset = notes.paddr_offset
    else:
        # With the legacy string, old hypervisors took p_paddr to be a VA: the default keeps that.
        paddr_offset = virt_base if legacy else 0
    virt_offset = (virt_base - paddr_offset) & _U64
    kstart = (pstart + virt_offset) & _U64
    kend = (pend + virt_offset) & _U64
    entry = notes.entry if notes.entry is not None else elf.entry
    if notes.bsd_symtab:
        kend = (_bsd_symtab_end(elf, pend) + virt_offset) & _U64

    span = f"the kernel's range {kstart:#x}-{kend:#x}"
    if kstart > kend:
        raise ImageError(f"kernel start {kstart:#x} lies above its end {kend:#x} "
                         f"(VIRT_BASE {virt_base:#x}, PADDR_OFFSET {paddr_offset:#x})")
    if virt_base > kstart:
        raise ImageError(f"VIRT_BASE {virt_base:#x} lies above the kernel's start {kstart:#x}")
    # Xen's test is entry > kend, so an entry exactly at the end still passes.
    if not kstart <= entry <= kend:
        raise ImageError(f"entry point {entry:#x} is outside {span}")
    if notes.init_p2m is not None and kstart <= notes.init_p2m < kend:
        raise ImageError(f"INIT_P2M {notes.init_p2m:#x} lies inside {span}")
    hypercall_page = notes.hypercall_page
    if hypercall_page is not None and not kstart <= hypercall_page < kend:
        raise ImageError(f"HYPERCALL_PAGE {hypercall_page:#x} is outside {span}")

    # Domain builder: what kind of guest this is.
    if elf.bits == 32:
        if notes.pae == PAE_NO:
            raise ImageError(f"non-PAE 32-bit guests are not supported (PAE_MODE is {notes.pae_mode!r})")
        if kend > 1 << 32:
            raise ImageError(f"{span} goes past 4 GiB, which a 32-bit guest cannot address")
    if found.required >> X.XENFEAT_dom0 & 1:
        raise ImageError("the kernel requires XENFEAT_dom0 ('!dom0' in FEATURES): it cannot run as "
                         "the unprivileged domain xendbg builds")

    return KernelImage(
        path=path, container=container, bits=elf.bits, abi="pv64" if elf.bits == 64 else "pv32pae",
        entry=entry, segments=tuple(segments), notes=notes, virt_base=virt_base,
        paddr_offset=paddr_offset, virt_kstart=kstart, virt_kend=kend, hypercall_page=hypercall_page,
        features_required=_bits(found.required), features_supported=_bits(found.supported), elf=data)


def _note_check(notes: XenNotes) -> None:
    """elf_xen_note_check for a PV guest."""
    loader, guest_os = notes.loader or "", notes.guest_os or ""
    if not (loader.startswith("generic") or guest_os.startswith("linux")):
        if notes.phys32_entry is not None:
            raise ImageError("PVH-only image (PHYS32_ENTRY note only); xendbg runs PV guests")
        raise ImageError(f"Xen only loads images for the generic loader or Linux: LOADER is {loader!r} "
                         f"and GUEST_OS is {guest_os!r}")
    if not (notes.xen_version or "").startswith("xen-3.0"):
        raise ImageError(f"XEN_VERSION is {notes.xen_version or ''!r}: Xen only loads images built "
                         "for 'xen-3.0'")


def load_kernel_bytes(data: bytes, path: str = "<memory>") -> KernelImage:
    """load_kernel for an image already in memory."""
    try:
        container, elf = unwrap(bytes(data))
        return build_image(path, container, elf)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("out of memory while reading the image") from None
    except Exception as e:  # a parser bug must still honour "ImageError only"; say so plainly
        raise ImageError(f"internal error while reading the image: {type(e).__name__}: {e}") from e


def load_kernel(path: str | os.PathLike[str]) -> KernelImage:
    """Load a Xen PV kernel (ELF, gzip'd ELF or bzImage) and check it as Xen would. Raises ImageError only."""
    try:
        name = os.fspath(path)
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None
    except (TypeError, ValueError) as e:
        raise ImageError(f"bad kernel path {path!r}: {e}") from None
    return load_kernel_bytes(data, name)
