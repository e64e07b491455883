"""The guests xendbg knows by name: its own lab guests and real PV guests from Debian.

- Lab guests are built from ``src/`` into ``images/<name>.elf`` by ``python -m xendbg.guests.build``;
  one that has not been built yet is reported as such, never faked.
- Debian guests (GRUB, GNU Mach, Linux 6.1) are fetched with apt into a cache (see :mod:`.fetch`);
  ``busybox`` is listed too, as a tool for a Linux initramfs rather than a kernel.

``resolve_kernel(spec)`` turns what a user typed (a file, a lab name, a Debian name) into the path
of a loadable image; ``list_guests()`` says what exists and where. Both raise :class:`GuestError`
with a one-line message. These are what ``xendbg guests list|fetch`` and ``xendbg KERNEL`` call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .fetch import DEBIAN_GUESTS, GuestError, cache_dir, cached_image, fetch

IMAGES_DIR = Path(__file__).resolve().parent / "images"


@dataclass(frozen=True)
class Guest:
    """A known guest: ``kind`` is "lab", "debian" or "tool"; ``abi`` is "pv64", "pv32pae" or None."""

    name: str
    kind: str
    description: str
    abi: str | None


@dataclass(frozen=True)
class GuestInfo:
    """A known guest and where it stands on this machine.

    ``status`` is "built" / "not built yet" (lab), "cached at PATH" / "not fetched" (Debian);
    ``path`` is the loadable image when there is one.
    """

    name: str
    kind: str
    description: str
    abi: str | None
    status: str
    path: Path | None


LAB_GUESTS: dict[str, Guest] = {g.name: g for g in (
    Guest("hello-pv64", "lab", "lab 0: hello on the console, then shutdown (64-bit PV)", "pv64"),
    Guest("hello-pv32", "lab", "lab 0: hello on the console, then shutdown (32-bit PAE PV)", "pv32pae"),
    Guest("mmu-pv64", "lab", "lab: page tables, pinning, mmu_update, update_va_mapping (64-bit)", "pv64"),
    Guest("mmu-pv32", "lab", "lab: page tables, pinning, mmu_update, update_va_mapping (32-bit PAE)",
          "pv32pae"),
    Guest("events-pv64", "lab", "lab: event channels, upcalls and masking (64-bit)", "pv64"),
    Guest("events-pv32", "lab", "lab: event channels, upcalls and masking (32-bit PAE)", "pv32pae"),
    Guest("time-pv64", "lab", "lab: virtual time, pvclock, timers and blocking (64-bit)", "pv64"),
    Guest("time-pv32", "lab", "lab: virtual time, pvclock, timers and blocking (32-bit PAE)", "pv32pae"),
    Guest("demo", "lab", "demo guest that exercises every mechanism in turn", "pv64"),
)}

RAMDISKS: dict[str, Guest] = {
    "busybox-initramfs": Guest("busybox-initramfs", "ramdisk",
                               "cpio initramfs: Debian's static BusyBox, /init starts a shell on "
                               "the console", None),
}

GUESTS: dict[str, Guest] = {
    **LAB_GUESTS,
    **{g.name: Guest(g.name, g.kind, g.description, g.abi) for g in DEBIAN_GUESTS.values()},
    **RAMDISKS,
}


def lab_image(name: str) -> Path:
    """Where a lab guest's image is (or will be, once built)."""
    return IMAGES_DIR / f"{name}.elf"


def get_guest(name: str) -> Guest:
    """The known guest called ``name``; GuestError if there is none."""
    try:
        return GUESTS[name]
    except KeyError:
        raise GuestError(f"unknown guest {name!r}; `xendbg guests list` shows the known ones") from None


def guest_info(name: str) -> GuestInfo:
    """One guest's :class:`GuestInfo`."""
    g = get_guest(name)
    path: Path | None
    if g.kind == "lab":
        path = lab_image(name)
        status = "built" if path.is_file() else "not built yet"
        path = path if path.is_file() else None
    elif g.kind == "ramdisk":
        from .initramfs import cached_initramfs
        path = cached_initramfs()
        status = f"cached at {path}" if path else "not built (`xendbg guests fetch " + name + "`)"
    else:
        path = cached_image(name)
        status = f"cached at {path}" if path else "not fetched"
    return GuestInfo(g.name, g.kind, g.description, g.abi, status, path)


def list_guests() -> list[GuestInfo]:
    """Every known guest, lab guests first, with its status."""
    return [guest_info(name) for name in GUESTS]


def resolve_kernel(spec: str | os.PathLike[str], *, fetch_missing: bool = True,
                   progress: Callable[[str], None] | None = None) -> Path:
    """The loadable image that ``spec`` names.

    An existing file is itself; a lab guest name is its built image; a Debian guest name is its
    cached image, fetched first if missing (unless ``fetch_missing`` is false). Raises GuestError.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text in LAB_GUESTS:
        image = lab_image(text)
        if not image.is_file():
            raise GuestError(f"lab guest {text} is not built yet (build it with "
                             f"`python -m xendbg.guests.build {text}`)")
        return image
    if text in DEBIAN_GUESTS:
        if DEBIAN_GUESTS[text].kind != "debian":
            raise GuestError(f"{text} is a tool, not a kernel: it goes into a Linux guest's initramfs")
        cached = cached_image(text)
        if cached is not None:
            return cached
        if not fetch_missing:
            raise GuestError(f"{text} is not fetched yet: run `xendbg guests fetch {text}`")
        return fetch(text, progress)
    if path.exists():
        raise GuestError(f"{text} is not a file")
    if os.sep in text or text.startswith(".") or "." in Path(text).name:
        raise GuestError(f"no such file: {text} (nor a known guest: `xendbg guests list` shows those)")
    raise GuestError(f"{text!r} is neither a file nor a known guest; "
                     "`xendbg guests list` shows the known ones")


def fetch_any(name: str, progress: Callable[[str], None] | None = None) -> Path:
    """``xendbg guests fetch NAME``: a Debian guest or tool, or a ramdisk xendbg builds."""
    if name in RAMDISKS:
        from .initramfs import fetch_initramfs
        return fetch_initramfs(progress)
    return fetch(name, progress)


def resolve_ramdisk(spec: str | os.PathLike[str], *,
                    progress: Callable[[str], None] | None = None) -> Path:
    """``--ramdisk``: an existing file, or a ramdisk known by name (built on first use)."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text in RAMDISKS:
        return fetch_any(text, progress)
    raise GuestError(f"--ramdisk {text}: no such file, nor a known ramdisk "
                     f"({', '.join(RAMDISKS)})")


__all__ = [
    "Guest", "GuestInfo", "GuestError", "GUESTS", "LAB_GUESTS", "DEBIAN_GUESTS", "IMAGES_DIR",
    "cache_dir", "cached_image", "fetch", "get_guest", "guest_info", "lab_image", "list_guests",
    "resolve_kernel", "resolve_ramdisk", "fetch_any", "RAMDISKS",
]
