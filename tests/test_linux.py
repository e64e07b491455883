"""Debian's Linux 6.1 PV kernel (linux-cloud) on xendbg: early printk, then init to the root mount.

These boot the real kernel (about 2.7 billion guest instructions to the root-fs panic), so they
take tens of seconds each; they run in CI with the package fetched and cached by apt.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

XENDBG = [sys.executable, "-m", "xendbg"]


@pytest.fixture(scope="module")
def linux_cloud(debian_guest):
    return debian_guest("linux-cloud")


def run(*args, timeout=900):
    return subprocess.run([*XENDBG, "run", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_early_printk_banner(linux_cloud):
    r = run(str(linux_cloud), "--cmdline", "console=hvc0 earlyprintk=xen",
            "--until", r"Linux version 6\.1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Linux version 6.1" in r.stdout


def test_boots_through_init_to_the_root_mount(linux_cloud):
    r = run(str(linux_cloud), "--cmdline", "console=hvc0",
            "--until", "Unable to mount root fs|VFS: Cannot open root device")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    out = r.stdout
    # The PV machinery the kernel found on its way there.
    for line in ("Hypervisor detected: Xen PV",
                 "Grant table initialized",
                 "clocksource: Switched to clocksource xen"):
        assert line in out, f"missing {line!r}"
    assert "Kernel panic" not in out.split("VFS:")[0], "panicked before the root mount"
    assert "unchecked MSR access error" not in out


def test_busybox_shell_answers_and_powers_off(linux_cloud):
    """Issue 8's summit: init from the BusyBox initramfs, a shell on hvc0 that computes 6*7 from
    typed input, then ``poweroff -f`` powers the domain off (exit status 0)."""
    import re
    r = run(str(linux_cloud), "--ramdisk", "busybox-initramfs", "--cmdline", "console=hvc0",
            "--input", r"echo $((6*7))\npoweroff -f\n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "BusyBox v1.35" in r.stdout
    assert re.search(r"(?m)^42\r?$", r.stdout), r.stdout[-1500:]
    assert "reboot: System halted" in r.stdout
