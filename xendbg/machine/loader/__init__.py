"""Loading Xen PV kernel images: ELF, gzip'd ELF and Linux bzImage, checked the way Xen's libelf does.

``load_kernel(path)`` returns a :class:`KernelImage` (segments to place by p_paddr, the Xen notes, the
kernel's VA range, entry point, hypercall page and features) or raises :class:`ImageError` with a
one-line reason; it never raises anything else. ``decompress(data)`` is the format sniffer and
decompressor it uses, exposed for the guest fetcher and the debugger.

Modules: ``elf`` (a bounds-checked ELF reader), ``notes`` (Xen notes and ``__xen_guest``),
``decompress`` (gzip/xz/lz4/zstd/bzip2/lzma), ``bzimage`` (the x86 boot-protocol wrapper),
``kernel`` (unwrapping and Xen's checks), ``model`` (the result types).
"""

from .bzimage import extract_bzimage, is_bzimage
from .decompress import decompress
from .kernel import load_kernel, load_kernel_bytes
from .model import (
    PAE_BIMODAL,
    PAE_EXTCR3,
    PAE_NO,
    PAE_YES,
    ImageError,
    KernelImage,
    Segment,
    XenNotes,
)
from .notes import LIBELF_FEATURES, parse_features

__all__ = [
    "ImageError", "Segment", "XenNotes", "KernelImage", "load_kernel", "load_kernel_bytes",
    "decompress", "extract_bzimage", "is_bzimage", "parse_features", "LIBELF_FEATURES",
    "PAE_NO", "PAE_YES", "PAE_EXTCR3", "PAE_BIMODAL",
]
