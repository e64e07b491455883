"""Wall time for Debian's Linux 6.1 (cloud) to reach each boot milestone: xendbg vs QEMU TCG.

xendbg boots the PV kernel (vmlinux from the cached package) with ``console=hvc0``; the baseline is
QEMU (``qemu-system-x86_64``, TCG, no KVM) booting the *same* vmlinuz natively with
``console=ttyS0``, measured in the same run to the same milestones. Milestones are console
patterns, timed from process start to the first line that matches:

* banner — ``Linux version 6.1``
* root mount — the kernel reaches init and fails to mount a root fs (no initramfs)
* shell — with the BusyBox initramfs, the shell answers ``echo $((6*7))`` with ``42``

QEMU comes from Debian (``apt-get install qemu-system-x86``); without it the baseline column says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

MILESTONES = [
    ("banner", r"Linux version 6\.1", False),
    ("root mount", r"Unable to mount root fs|VFS: Cannot open root device", False),
    ("shell", r"(?m)^42\r?$", True),
]
LIMIT = 900.0


def _time_process(argv: list[str], pattern: str, feed: bytes | None) -> float | None:
    """Seconds from start until ``pattern`` appears on stdout, or None."""
    regex = re.compile(pattern)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    text = ""
    fed = feed is None
    try:
        os.set_blocking(proc.stdout.fileno(), True)
        while time.perf_counter() - start < LIMIT:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                return None
            text += chunk.decode("utf-8", "replace").replace("\r\n", "\n").replace("\n\r", "\n")
            if not fed and "/ #" in text:
                proc.stdin.write(feed)
                proc.stdin.flush()
                fed = True
            if regex.search(text):
                return time.perf_counter() - start
        return None
    finally:
        proc.kill()
        proc.wait()


def _xendbg_argv(ramdisk: bool) -> list[str]:
    argv = [sys.executable, "-m", "xendbg", "run", "linux-cloud", "--cmdline", "console=hvc0"]
    if ramdisk:
        argv += ["--ramdisk", "busybox-initramfs", "--input", r"echo $((6*7))\n"]
    return argv


def _qemu_argv(vmlinuz: Path, initramfs: Path | None) -> list[str] | None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None
    argv = [qemu, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-kernel",
            str(vmlinuz), "-append", "console=ttyS0 panic=-1"]
    if initramfs is not None:
        argv += ["-initrd", str(initramfs)]
    return argv


def run() -> list[dict]:
    from xendbg.guests import fetch_any
    vmlinux = fetch_any("linux-cloud", lambda _m: None)
    vmlinuz = next(vmlinux.parent.glob("vmlinuz*"), None)
    initramfs = fetch_any("busybox-initramfs", lambda _m: None)
    rows = []
    for name, pattern, shell in MILESTONES:
        ours = _time_process(_xendbg_argv(shell), pattern, None)
        qargv = _qemu_argv(vmlinuz, initramfs if shell else None) if vmlinuz else None
        theirs = _time_process(qargv, pattern, b"echo $((6*7))\n" if shell else None) \
            if qargv else None
        rows.append({
            "what": f"Linux 6.1 cloud boot to {name} (wall s)",
            "xendbg": round(ours, 2) if ours is not None else "not reached",
            "baseline": round(theirs, 2) if theirs is not None else
            ("qemu-system-x86_64 not installed" if qargv is None else "not reached"),
            "baseline_name": "QEMU TCG, same vmlinuz, native boot, console=ttyS0",
            "unit": "s", "higher_is_better": False,
            "note": "xendbg: PV domU on hvc0; QEMU: bare-metal x86 boot; from process start",
        })
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
