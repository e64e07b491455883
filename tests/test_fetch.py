"""The guest registry and the Debian fetcher.

Most tests run ``fetch`` against fake ``apt-get``/``apt-cache`` scripts (put first on PATH) that
serve small .debs built here with the real ``dpkg-deb``: the whole path — apt queries, download,
extraction, unpacking, the cache and its errors — runs without network. The last tests fetch real
guests through the shared ``debian_guest`` fixture.
"""

from __future__ import annotations

import gzip
import importlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import xendbg.guests as guests
from xendbg.guests import GuestError, fetch, list_guests, resolve_kernel
from xendbg.machine.loader import ImageError, load_kernel

# The package re-exports the function fetch(), which hides the submodule of the same name.
fetch_mod = importlib.import_module("xendbg.guests.fetch")

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")

FAKE_APT_CACHE = r"""#!/bin/bash
echo "apt-cache $*" >> "$FAKE_APT/log"
if [ "$1" = show ]; then
    f="$FAKE_APT/pkgs/$3"
    if [ -f "$f" ]; then cat "$f"; exit 0; fi
    echo "E: No packages found" >&2; exit 100
fi
if [ "$1" = search ]; then
    ls "$FAKE_APT/pkgs" | grep -E "$3" | sed 's/$/ - a package/'
    exit 0
fi
exit 1
"""

FAKE_APT_GET = r"""#!/bin/bash
echo "apt-get $*" >> "$FAKE_APT/log"
if [ "$1" = update ]; then touch "$FAKE_APT/updated"; exit 0; fi
if [ "$1" = download ]; then
    if [ -f "$FAKE_APT/offline" ]; then
        echo "W: some warning" >&2
        echo "E: Failed to fetch http://deb.debian.org/x.deb  Temporary failure resolving 'x'" >&2
        exit 100
    fi
    pkg="${2%%=*}"; ver="${2#*=}"
    cp "$FAKE_APT/debs/$pkg.deb" "./${pkg}_${ver//:/%3a}_amd64.deb"
    exit 0
fi
exit 1
"""


class FakeApt:
    """A fake apt on PATH plus a package store; ``log()`` lists the commands apt was asked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for d in ("bin", "pkgs", "debs", "build"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "log").touch()
        for name, text in (("apt-cache", FAKE_APT_CACHE), ("apt-get", FAKE_APT_GET)):
            p = root / "bin" / name
            p.write_text(text)
            p.chmod(0o755)

    def add(self, pkg: str, version: str, files: dict[str, bytes]) -> Path:
        """Build a real .deb holding ``files`` and make apt know it."""
        tree = self.root / "build" / pkg
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text(
            f"Package: {pkg}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t>\n"
            "Description: test package\n")
        for path, data in files.items():
            (tree / path).parent.mkdir(parents=True, exist_ok=True)
            (tree / path).write_bytes(data)
        deb = self.root / "debs" / f"{pkg}.deb"
        subprocess.run(["dpkg-deb", "-Zgzip", "--root-owner-group", "--build", str(tree), str(deb)],
                       check=True, capture_output=True)
        size = deb.stat().st_size
        (self.root / "pkgs" / pkg).write_text(f"Package: {pkg}\nVersion: {version}\nSize: {size}\n")
        return deb

    def log(self) -> list[str]:
        return (self.root / "log").read_text().splitlines()

    def downloads(self) -> list[str]:
        return [ln for ln in self.log() if ln.startswith("apt-get download")]


@pytest.fixture
def apt(tmp_path, monkeypatch) -> FakeApt:
    fake = FakeApt(tmp_path / "apt")
    monkeypatch.setenv("FAKE_APT", str(fake.root))
    monkeypatch.setenv("PATH", f"{fake.root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("XENDBG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XENDBG_DEB_DIR", raising=False)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").touch()
    monkeypatch.setattr(fetch_mod, "APT_LISTS_DIR", lists)
    return fake


def tiny_elf() -> bytes:
    return b"\x7fELF\x02\x01\x01" + b"\0" * 57 + b"payload"


def tiny_bzimage(elf: bytes) -> bytes:
    payload = gzip.compress(elf)
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<HII", setup, 0x206, 0x20F, 0, 0)
    struct.pack_into("<II", setup, 0x248, 0, len(payload))
    return bytes(setup) + payload


GNUMACH_DBG = ("gnumach-image-1.8-xen-486-dbg", "2:1.8+git20221224-2")


def add_gnumach(apt: FakeApt, version: str = GNUMACH_DBG[1]) -> None:
    apt.add(GNUMACH_DBG[0], version, {"boot/gnumach-1.8-xen-486-dbg.gz": gzip.compress(tiny_elf())})


# ------------------------------------------------------------------------------------------------
# fetch with a fake apt
# ------------------------------------------------------------------------------------------------


def test_fetch_from_nothing_then_cached(apt):
    add_gnumach(apt)
    said: list[str] = []
    path = fetch("gnumach-dbg", progress=said.append)
    assert path.name == "gnumach-1.8-xen-486-dbg" and path.read_bytes() == tiny_elf()
    assert path.parent.name == "gnumach-image-1.8-xen-486-dbg_2%3a1.8+git20221224-2"
    assert path.parent.parent == Path(os.environ["XENDBG_CACHE"]) / "gnumach-dbg"
    assert apt.downloads() == [f"apt-get download {GNUMACH_DBG[0]}={GNUMACH_DBG[1]}"]
    assert any("downloading" in m for m in said) and all("\n" not in m for m in said)
    calls = len(apt.log())
    # Second time: straight from the cache, apt is not even asked.
    said.clear()
    assert fetch("gnumach-dbg", progress=said.append) == path
    assert len(apt.log()) == calls and said == [f"gnumach-dbg: cached at {path}"]
    assert guests.guest_info("gnumach-dbg").status == f"cached at {path}"


def test_refresh_asks_apt_and_fetches_a_new_version(apt):
    add_gnumach(apt)
    old = fetch("gnumach-dbg", progress=lambda m: None)
    assert fetch("gnumach-dbg", progress=lambda m: None, refresh=True) == old   # same version
    assert len(apt.downloads()) == 1
    add_gnumach(apt, "2:1.8+git20240101-1")
    new = fetch("gnumach-dbg", progress=lambda m: None, refresh=True)
    assert new != old and "git20240101" in str(new) and len(apt.downloads()) == 2
    assert guests.cached_image("gnumach-dbg") == new
    assert old.exists()                                   # versions live side by side


def test_debs_are_shared_between_guests(apt):
    apt.add("grub-xen-host", "2.06-13", {"usr/lib/grub-xen/grub-x86_64-xen.bin": b"\x7fELF64",
                                         "usr/lib/grub-xen/grub-i386-xen.bin": b"\x7fELF32"})
    assert fetch("grub-x86_64", progress=lambda m: None).read_bytes() == b"\x7fELF64"
    assert fetch("grub-i386", progress=lambda m: None).read_bytes() == b"\x7fELF32"
    assert len(apt.downloads()) == 1


def test_linux_takes_the_highest_abi_and_extracts_vmlinux(apt):
    for nn in (9, 50, 100):
        apt.add(f"linux-image-6.1.0-{nn}-cloud-amd64-unsigned", f"6.1.{nn}-1",
                {f"boot/vmlinuz-6.1.0-{nn}-cloud-amd64": tiny_bzimage(tiny_elf() + bytes([nn])),
                 f"lib/modules/6.1.0-{nn}-cloud-amd64/x.ko": b"module"})
    apt.add("linux-image-6.1.0-200-rt-amd64-unsigned", "6.1.200-1", {"boot/vmlinuz-x": b"no"})
    path = fetch("linux-cloud", progress=lambda m: None)
    assert apt.downloads() == ["apt-get download linux-image-6.1.0-100-cloud-amd64-unsigned=6.1.100-1"]
    assert path.name == "vmlinux" and path.read_bytes() == tiny_elf() + bytes([100])
    assert (path.parent / "vmlinuz-6.1.0-100-cloud-amd64").is_file()
    assert not (path.parent / "x.ko").exists()           # only what is needed is extracted


def test_missing_apt_lists_trigger_one_update(apt, monkeypatch, tmp_path):
    empty = tmp_path / "nolists"
    empty.mkdir()
    monkeypatch.setattr(fetch_mod, "APT_LISTS_DIR", empty)
    add_gnumach(apt)
    said: list[str] = []
    fetch("gnumach-dbg", progress=said.append)
    assert [ln for ln in apt.log() if ln == "apt-get update"] == ["apt-get update"]
    assert any("package lists are missing" in m and "apt-get update" in m for m in said)


def test_unknown_package_updates_once_then_fails(apt):
    with pytest.raises(GuestError) as ei:
        fetch("gnumach", progress=lambda m: None)
    assert "gnumach-image-1.8-xen-486 not found in apt's lists" in str(ei.value)
    assert apt.log().count("apt-get update") == 1
    with pytest.raises(GuestError, match="no package linux-image-6.1.0-NN-amd64-unsigned"):
        fetch("linux", progress=lambda m: None)


def test_download_failure_is_one_line(apt):
    add_gnumach(apt)
    (apt.root / "offline").touch()
    with pytest.raises(GuestError) as ei:
        fetch("gnumach-dbg", progress=lambda m: None)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"apt-get download {GNUMACH_DBG[0]}={GNUMACH_DBG[1]} failed: E: Failed to fetch")
    assert guests.cached_image("gnumach-dbg") is None
    assert not list((Path(os.environ["XENDBG_CACHE"]) / "debs").glob("*.deb"))


def test_no_apt_at_all(apt, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(GuestError, match="^apt-cache is not available"):
        fetch("gnumach-dbg", progress=lambda m: None)


def test_deb_dirs_avoid_apt(apt, tmp_path):
    add_gnumach(apt)
    local = tmp_path / "local"
    local.mkdir()
    shutil.copy(apt.root / "debs" / f"{GNUMACH_DBG[0]}.deb",
                local / f"{GNUMACH_DBG[0]}_{GNUMACH_DBG[1].replace(':', '%3a')}_amd64.deb")
    path = fetch("gnumach-dbg", progress=lambda m: None, deb_dirs=[local])
    assert path.read_bytes() == tiny_elf() and apt.log() == []


def test_deb_without_the_file(apt):
    apt.add("busybox-static", "1:1.35", {"usr/share/doc/busybox/README": b"hi"})
    with pytest.raises(GuestError, match=r"has no file matching bin/busybox$"):
        fetch("busybox", progress=lambda m: None)
    assert guests.cached_image("busybox") is None


def test_damaged_cache_entry_is_fetched_again(apt):
    add_gnumach(apt)
    path = fetch("gnumach-dbg", progress=lambda m: None)
    path.unlink()
    assert guests.cached_image("gnumach-dbg") is None
    assert fetch("gnumach-dbg", progress=lambda m: None) == path and path.is_file()
    assert len(apt.downloads()) == 1                      # the .deb itself was still cached


def test_bad_payload_is_a_guest_error(apt):
    apt.add(GNUMACH_DBG[0], GNUMACH_DBG[1], {"boot/gnumach-1.8-xen-486-dbg.gz": b"\x1f\x8bnot really"})
    with pytest.raises(GuestError, match="gzip data is corrupt"):
        fetch("gnumach-dbg", progress=lambda m: None)


def test_fetch_refuses_lab_and_unknown_names(apt):
    with pytest.raises(GuestError, match="is a lab guest"):
        fetch("hello-pv64")
    with pytest.raises(GuestError, match="xendbg guests list"):
        fetch("windows-95")


# ------------------------------------------------------------------------------------------------
# Registry, list_guests, resolve_kernel
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def images(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    monkeypatch.setattr(guests, "IMAGES_DIR", d)
    return d


def test_registry():
    names = set(guests.GUESTS)
    assert {"hello-pv64", "hello-pv32", "mmu-pv64", "mmu-pv32", "events-pv64", "events-pv32",
            "time-pv64", "time-pv32", "demo"} == set(guests.LAB_GUESTS)
    assert {"grub-x86_64", "grub-i386", "gnumach", "gnumach-dbg", "linux-cloud", "linux", "busybox"} <= names
    assert guests.GUESTS["busybox"].kind == "tool" and guests.GUESTS["busybox"].abi is None
    assert guests.GUESTS["grub-i386"].abi == "pv32pae" and guests.GUESTS["linux"].kind == "debian"


def test_list_guests_statuses(apt, images):
    (images / "hello-pv64.elf").write_bytes(b"\x7fELF")
    add_gnumach(apt)
    fetched = fetch("gnumach-dbg", progress=lambda m: None)
    status = {g.name: g for g in list_guests()}
    assert status["hello-pv64"].status == "built" and status["hello-pv64"].path == images / "hello-pv64.elf"
    assert status["hello-pv32"].status == "not built yet" and status["hello-pv32"].path is None
    assert status["gnumach-dbg"].status == f"cached at {fetched}"
    assert status["linux"].status == "not fetched"
    assert [g.name for g in list_guests()][:2] == ["hello-pv64", "hello-pv32"]


def test_resolve_kernel(apt, images, tmp_path):
    f = tmp_path / "my.elf"
    f.write_bytes(b"x")
    assert resolve_kernel(str(f)) == f and resolve_kernel(f) == f
    (images / "hello-pv64.elf").write_bytes(b"\x7fELF")
    assert resolve_kernel("hello-pv64") == images / "hello-pv64.elf"
    with pytest.raises(GuestError, match="^lab guest hello-pv32 is not built yet"):
        resolve_kernel("hello-pv32")
    with pytest.raises(GuestError, match="not fetched yet: run `xendbg guests fetch gnumach-dbg`"):
        resolve_kernel("gnumach-dbg", fetch_missing=False)
    assert apt.log() == []
    add_gnumach(apt)
    path = resolve_kernel("gnumach-dbg", progress=lambda m: None)        # fetched on demand
    assert path.read_bytes() == tiny_elf()
    assert resolve_kernel("gnumach-dbg", fetch_missing=False) == path
    with pytest.raises(GuestError, match="is a tool, not a kernel"):
        resolve_kernel("busybox")
    with pytest.raises(GuestError, match="`xendbg guests list`"):
        resolve_kernel("nonsense")
    with pytest.raises(GuestError, match="^no such file: ./missing.elf"):
        resolve_kernel("./missing.elf")
    with pytest.raises(GuestError, match="is not a file"):
        resolve_kernel(str(tmp_path))


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("XENDBG_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert guests.cache_dir() == tmp_path / ".cache" / "xendbg"
    monkeypatch.setenv("XENDBG_CACHE", "~/elsewhere")
    assert guests.cache_dir() == tmp_path / "elsewhere"


# ------------------------------------------------------------------------------------------------
# Real guests (debian_guest fixture: cached; skipped without apt, failed in CI)
# ------------------------------------------------------------------------------------------------


def test_real_busybox_is_a_tool_not_a_kernel(debian_guest):
    path = debian_guest("busybox")
    assert path.name == "busybox" and path.read_bytes()[:4] == b"\x7fELF"
    with pytest.raises(ImageError, match="not a Xen PV kernel"):
        load_kernel(path)


@pytest.mark.parametrize("name,image", [("grub-x86_64", "grub-x86_64-xen.bin"),
                                        ("gnumach-dbg", "gnumach-1.8-xen-486-dbg"),
                                        ("linux-cloud", "vmlinux")])
def test_real_guests_are_cached_and_resolvable(debian_guest, name, image):
    path = debian_guest(name)
    assert path.name == image
    assert (path.parent / fetch_mod.MANIFEST).is_file()
    assert guests.cached_image(name) is not None
    assert resolve_kernel(str(path)) == path
