"""A BusyBox initramfs for Linux guests: ``xendbg guests fetch busybox-initramfs``.

The archive is a cpio "newc" image (the format the kernel's initramfs unpacker reads) holding
Debian's static BusyBox, a ``/dev/console`` node (the kernel opens it for init's stdio before any
devtmpfs exists) and an ``/init`` that mounts /proc, /sys and /dev and starts a shell on the
console. Everything is deterministic (fixed inode numbers, mtime 0), so two builds are identical.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

INIT_SCRIPT = b"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "xendbg initramfs: BusyBox $(busybox | head -n 1 | cut -d' ' -f2) shell on the console"
exec sh
"""

NAME = "busybox-initramfs"


def _header(ino: int, mode: int, size: int, name: bytes, nlink: int = 1,
            rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = head + name + b"\0"
    return out + b"\0" * (-len(out) % 4)


def newc_archive(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A cpio newc archive of ``(path, mode, data, (rdev major, minor))`` entries, in order."""
    out = bytearray()
    for ino, (path, mode, data, rdev) in enumerate(entries, start=1):
        nlink = 2 if stat.S_ISDIR(mode) else 1
        out += _header(ino, mode, len(data), path.encode(), nlink, rdev)
        out += data + b"\0" * (-len(data) % 4)
    out += _header(0, 0, 0, b"TRAILER!!!")
    return bytes(out)


def build(busybox: bytes) -> bytes:
    d = stat.S_IFDIR | 0o755
    return newc_archive([
        ("bin", d, b"", (0, 0)),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox, (0, 0)),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
        ("dev", d, b"", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("proc", d, b"", (0, 0)),
        ("sys", d, b"", (0, 0)),
        ("root", stat.S_IFDIR | 0o700, b"", (0, 0)),
        ("init", stat.S_IFREG | 0o755, INIT_SCRIPT, (0, 0)),
    ])


def fetch_initramfs(progress: Callable[[str], None] | None = None) -> Path:
    """Build (once) the BusyBox initramfs in the cache and return its path."""
    from .fetch import cache_dir, fetch

    say = progress or (lambda _msg: None)
    busybox = fetch("busybox", say)
    data = build(busybox.read_bytes())
    out_dir = cache_dir() / NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "initramfs.cpio"
    if not path.is_file() or path.read_bytes() != data:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        say(f"{NAME}: built {path} ({len(data)} bytes)")
    return path


def cached_initramfs() -> Path | None:
    from .fetch import cache_dir
    path = cache_dir() / NAME / "initramfs.cpio"
    return path if path.is_file() else None
