"""The loader's result types: what a kernel image is, once Xen's rules have been applied to it.

Plain frozen dataclasses, no behaviour beyond a few derived properties, so that the domain builder,
the debugger and the UI can all hold and print them without importing the parser.
"""

from __future__ import annotations

from dataclasses import dataclass


class ImageError(Exception):
    """A kernel image that cannot be loaded.

    ``str(e)`` is one line saying what is wrong, e.g. ``truncated ELF: program header table ends
    at 0x1234 but the file has 0x200 bytes``.
    """


@dataclass(frozen=True)
class Segment:
    """One loadable PT_LOAD segment. ``data`` holds the p_filesz bytes; the rest up to ``memsz`` is zero.

    The domain builder places it at ``paddr + (virt_base - paddr_offset)``: by p_paddr, never by
    p_vaddr (Linux's ``.data..percpu`` segment has p_vaddr 0).
    """

    paddr: int
    vaddr: int
    data: bytes
    memsz: int
    flags: int

    @property
    def filesz(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:  # the default repr would print megabytes of data
        return (f"Segment(paddr={self.paddr:#x}, vaddr={self.vaddr:#x}, filesz={len(self.data):#x}, "
                f"memsz={self.memsz:#x}, flags={self.flags:#x})")


# PAE levels, in the words of libelf's XEN_PAE_* (none / yes / yes with extended CR3 / bimodal).
PAE_NO = "no"
PAE_YES = "yes"
PAE_EXTCR3 = "extcr3"
PAE_BIMODAL = "bimodal"


@dataclass(frozen=True)
class XenNotes:
    """What the image tells Xen about itself, as found (no defaults applied).

    ``source`` is where it came from: ``"PT_NOTE"``, ``"SHT_NOTE"`` or ``"__xen_guest"``.
    ``entries`` lists every Xen note (or legacy key) seen, in order, as ``(NAME, value)`` for display;
    it includes notes that Xen ignores (INFO, unknown types, legacy keys Xen does not know).
    ``hypercall_page`` is a VA even for the legacy ``HYPERCALL_PAGE=N`` (a page number).
    """

    source: str
    entries: tuple[tuple[str, object], ...]
    guest_os: str | None = None
    guest_version: str | None = None
    xen_version: str | None = None
    loader: str | None = None
    virt_base: int | None = None
    paddr_offset: int | None = None
    entry: int | None = None
    hypercall_page: int | None = None
    pae_mode: str | None = None
    features: str | None = None
    supported_features: int = 0
    init_p2m: int | None = None
    mod_start_pfn: bool = False
    hv_start_low: int | None = None
    l1_mfn_valid: tuple[int, ...] = ()
    suspend_cancel: bool = False
    phys32_entry: int | None = None
    bsd_symtab: bool = False

    @property
    def pae(self) -> str:
        """The PAE level Xen derives from PAE_MODE (``PAE_NO``/``PAE_YES``/``PAE_EXTCR3``/``PAE_BIMODAL``).

        The two sources are read differently by libelf: the note is "yes" (exactly) or anything
        containing "bimodal"; the legacy ``PAE=`` key is "yes[extended-cr3]" or anything starting
        with "yes".
        """
        mode = self.pae_mode
        if mode is None:
            return PAE_NO
        if self.source == "__xen_guest":
            if mode == "yes[extended-cr3]":
                return PAE_EXTCR3
            return PAE_YES if mode.startswith("yes") else PAE_NO
        level = PAE_EXTCR3 if mode == "yes" else PAE_NO
        return PAE_BIMODAL if "bimodal" in mode else level


@dataclass(frozen=True)
class KernelImage:
    """A PV kernel, decompressed, parsed and checked the way Xen's domain builder does it."""

    path: str
    container: str              # e.g. "ELF", "gzip(ELF)", "bzImage/lz4(ELF)", "bzImage/xz(ELF)"
    bits: int                   # 64 or 32
    abi: str                    # "pv64" or "pv32pae"
    entry: int                  # the VA the domain starts at (ENTRY note, else e_entry)
    segments: tuple[Segment, ...]
    notes: XenNotes
    virt_base: int
    paddr_offset: int
    virt_kstart: int
    virt_kend: int
    hypercall_page: int | None
    features_required: frozenset[int]
    features_supported: frozenset[int]
    elf: bytes                  # the decompressed ELF image (for .symtab / kallsyms)

    @property
    def virt_offset(self) -> int:
        """What to add to a p_paddr to get the VA a segment is loaded at (mod 2**64, as in Xen)."""
        return (self.virt_base - self.paddr_offset) & 0xFFFF_FFFF_FFFF_FFFF

    def __repr__(self) -> str:
        return (f"KernelImage(path={self.path!r}, container={self.container!r}, abi={self.abi!r}, "
                f"entry={self.entry:#x}, kernel={self.virt_kstart:#x}-{self.virt_kend:#x}, "
                f"segments={len(self.segments)}, notes={self.notes.source!r})")
