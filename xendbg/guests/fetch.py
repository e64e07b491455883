"""Real Xen PV guests from Debian: which package holds each, and fetching it into a local cache.

``fetch(name)`` runs ``apt-get download`` for the guest's package, pulls the one file it needs out
of the .deb (``dpkg-deb --fsys-tarfile`` streamed through :mod:`tarfile`, so the 90-390 MB of Linux
modules are never written), turns it into a loadable ELF (gunzip for GNU Mach; for Linux the
vmlinux is extracted from the bzImage by the loader's own code, and the vmlinuz is kept beside it)
and returns that file's path.

Cache: ``$XENDBG_CACHE`` or ``~/.cache/xendbg``::

    debs/<package>_<version>_<arch>.deb           downloaded packages, shared (GRUB's two images
                                                  come from one package)
    <guest>/<package>_<version>/<files>           one directory per guest and package version,
    <guest>/<package>_<version>/fetched.json      written last: its presence means "complete"

A directory is filled under a temporary name and renamed into place, so an interrupted or
concurrent fetch never leaves a half-made entry. Once a guest is cached, ``fetch`` returns it at
once without asking apt; ``refresh=True`` asks apt for the current version and fetches it if it is
new. ``XENDBG_DEB_DIR`` (or ``deb_dirs=``) names directories of already-downloaded .debs to use
before asking apt.

Every failure (no apt, unknown package, no network, a .deb without the expected file) is a
:class:`GuestError` whose message is one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

Progress = Callable[[str], None]

APT_LISTS_DIR = Path("/var/lib/apt/lists")
MANIFEST = "fetched.json"


class GuestError(Exception):
    """A guest that cannot be found, built or fetched; ``str(e)`` is one line."""


@dataclass(frozen=True)
class DebianGuest:
    """Where a Debian guest comes from and what to do with it.

    ``package`` is a package name, or (when ``package_regex`` is set) a description of a family
    such as Linux's ``linux-image-6.1.0-NN-cloud-amd64-unsigned`` whose highest NN apt knows is used.
    ``member`` is a regular expression matched against the path inside the .deb (without "./").
    """

    name: str
    kind: str                   # "debian" (a kernel) or "tool"
    description: str
    abi: str | None
    package: str
    member: str
    unpack: str = "none"        # "none", "gunzip" or "bzimage"
    package_regex: str | None = None


DEBIAN_GUESTS: dict[str, DebianGuest] = {g.name: g for g in (
    DebianGuest("grub-x86_64", "debian", "GRUB 2.06 PV image, 64-bit (grub-xen-host); ends at grub>",
                "pv64", "grub-xen-host", r"usr/lib/grub-xen/grub-x86_64-xen\.bin"),
    DebianGuest("grub-i386", "debian", "GRUB 2.06 PV image, 32-bit PAE (grub-xen-host); ends at grub>",
                "pv32pae", "grub-xen-host", r"usr/lib/grub-xen/grub-i386-xen\.bin"),
    DebianGuest("gnumach", "debian", "GNU Mach 1.8 microkernel, Xen PV, stripped",
                "pv64", "gnumach-image-1.8-xen-486", r"boot/gnumach-1\.8-xen-486\.gz", "gunzip"),
    DebianGuest("gnumach-dbg", "debian", "GNU Mach 1.8 microkernel, Xen PV, with kdb, symbols and DWARF",
                "pv64", "gnumach-image-1.8-xen-486-dbg", r"boot/gnumach-1\.8-xen-486-dbg\.gz", "gunzip"),
    DebianGuest("linux-cloud", "debian", "Linux 6.1 cloud-amd64 (Debian 12), vmlinux from the LZ4 bzImage",
                "pv64", "linux-image-6.1.0-NN-cloud-amd64-unsigned", r"boot/vmlinuz-.*", "bzimage",
                r"linux-image-6\.1\.0-([0-9]+)-cloud-amd64-unsigned"),
    DebianGuest("linux", "debian", "Linux 6.1 amd64 (Debian 12), vmlinux from the XZ bzImage",
                "pv64", "linux-image-6.1.0-NN-amd64-unsigned", r"boot/vmlinuz-.*", "bzimage",
                r"linux-image-6\.1\.0-([0-9]+)-amd64-unsigned"),
    DebianGuest("busybox", "tool", "static BusyBox 1.35 (busybox-static), for a Linux initramfs",
                None, "busybox-static", r"bin/busybox"),
)}


# -- small helpers --------------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$XENDBG_CACHE`` or ``~/.cache/xendbg``."""
    env = os.environ.get("XENDBG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xendbg"


def _stderr(msg: str) -> None:
    print(f"xendbg: {msg}", file=sys.stderr, flush=True)


def _one_line(text: str) -> str:
    """The most telling line of a tool's output: its first "E:" line, else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or ["(no output)"])[0 if errors else -1]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LC_ALL": "C"})
    except OSError as e:
        raise GuestError(f"cannot run {argv[0]} ({what}): {e.strerror or e}") from None


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise GuestError(f"{tool} is not available: fetching Debian guests needs apt-get, apt-cache "
                         "and dpkg-deb (a Debian or Ubuntu host)")
    return path


def _version_key(pkg: str, version: str) -> str:
    """The directory name for one package version (apt writes ':' as '%3a' in file names too)."""
    return f"{pkg}_{version}".replace(":", "%3a").replace("/", "_")


# -- the cache ------------------------------------------------------------------------------------

def _entries(name: str) -> list[tuple[float, Path, dict]]:
    """Complete cache entries of one guest: (manifest mtime, directory, manifest)."""
    out = []
    base = cache_dir() / name
    if not base.is_dir():
        return out
    for d in base.iterdir():
        m = d / MANIFEST
        try:
            info = json.loads(m.read_text())
            if (d / info["image"]).is_file():
                out.append((m.stat().st_mtime, d, info))
        except (OSError, ValueError, KeyError, TypeError):
            continue                    # not an entry, half-made or damaged: ignore it
    return sorted(out, key=lambda e: e[0])


def cached_image(name: str) -> Path | None:
    """The image of the most recently fetched version of a Debian guest, or None."""
    entries = _entries(name)
    return entries[-1][1] / entries[-1][2]["image"] if entries else None


# -- which package, which version -----------------------------------------------------------------

class _Apt:
    """apt-cache/apt-get queries, running ``apt-get update`` at most once when the lists are missing."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.updated = False

    def update(self, why: str) -> None:
        if self.updated:
            return
        self.updated = True
        _need("apt-get")
        self.progress(f"{why}: running apt-get update")
        r = _run(["apt-get", "update"], "apt-get update")
        if r.returncode != 0:
            raise GuestError(f"apt-get update failed: {_one_line(r.stderr + r.stdout)}")

    def ensure_lists(self) -> None:
        _need("apt-cache")
        try:
            has_lists = any(APT_LISTS_DIR.glob("*_Packages*"))
        except OSError:
            has_lists = False
        if not has_lists:
            self.update(f"apt's package lists are missing ({APT_LISTS_DIR})")

    def newest_in_family(self, g: DebianGuest) -> str:
        """The package of ``g``'s family with the highest ABI number apt knows."""
        assert g.package_regex is not None
        for attempt in (0, 1):
            r = _run(["apt-cache", "search", "--names-only", f"^{g.package_regex}$"], "apt-cache search")
            found = []
            for line in r.stdout.splitlines():
                m = re.fullmatch(g.package_regex, line.split(" ", 1)[0])
                if m:
                    found.append((int(m.group(1)), m.group(0)))
            if found:
                return max(found)[1]
            if attempt == 0 and not self.updated:
                self.update(f"apt knows no {g.package}")
            else:
                break
        raise GuestError(f"no package {g.package} in apt's lists (searched for ^{g.package_regex}$)")

    def candidate(self, pkg: str) -> tuple[str, int]:
        """(version, .deb size) of the version apt would download."""
        for attempt in (0, 1):
            r = _run(["apt-cache", "show", "--no-all-versions", pkg], "apt-cache show")
            fields = dict(re.findall(r"^(Version|Size): (.+)$", r.stdout, re.M))
            if r.returncode == 0 and "Version" in fields:
                return fields["Version"].strip(), int(fields.get("Size", "0").strip() or 0)
            if attempt == 0 and not self.updated:
                self.update(f"apt knows no {pkg}")
            else:
                break
        raise GuestError(f"package {pkg} not found in apt's lists "
                         "(is this a Debian 12 host with main enabled?)")


def _deb_dirs(deb_dirs: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    if deb_dirs is None:
        env = os.environ.get("XENDBG_DEB_DIR", "")
        deb_dirs = [d for d in env.split(os.pathsep) if d]
    return [Path(d) for d in deb_dirs if Path(d).is_dir()]


def _local_deb(g: DebianGuest, dirs: list[Path]) -> tuple[str, str, Path] | None:
    """A .deb of ``g`` already on disk: (package, version, path), the newest if several."""
    best: tuple[tuple[int, str], str, str, Path] | None = None
    pattern = g.package_regex or re.escape(g.package)
    for d in dirs:
        for f in d.glob("*.deb"):
            parts = f.name[:-4].split("_")
            if len(parts) != 3:
                continue
            m = re.fullmatch(pattern, parts[0])
            if not m:
                continue
            version = unquote(parts[1])
            key = (int(m.group(1)) if g.package_regex else 0, version)
            if best is None or key > best[0]:
                best = (key, parts[0], version, f)
    return None if best is None else (best[1], best[2], best[3])


# -- download and unpack --------------------------------------------------------------------------

def _download(pkg: str, version: str, size: int, progress: Progress) -> Path:
    debs = cache_dir() / "debs"
    stem = f"{pkg}_{version.replace(':', '%3a')}_"
    for f in sorted(debs.glob(stem.replace("[", "[[]") + "*.deb")) if debs.is_dir() else ():
        return f
    _need("apt-get")
    tmp = debs / f".download-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        progress(f"downloading {pkg} {version} ({size / 1e6:.1f} MB) with apt-get download")
        t0 = time.monotonic()
        r = _run(["apt-get", "download", f"{pkg}={version}"], "apt-get download", cwd=tmp)
        got = sorted(tmp.glob("*.deb"))
        if r.returncode != 0 or not got:
            raise GuestError(f"apt-get download {pkg}={version} failed: {_one_line(r.stderr + r.stdout)}")
        dest = debs / got[0].name
        os.replace(got[0], dest)
        progress(f"downloaded {dest.name} in {time.monotonic() - t0:.1f}s")
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_member(deb: Path, member: str, dest: Path) -> Path:
    """Copy the first file of ``deb`` whose path matches ``member`` into ``dest``; return its path."""
    _need("dpkg-deb")
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise GuestError(f"cannot run dpkg-deb: {e.strerror or e}") from None
    found: Path | None = None
    try:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                path = info.name[2:] if info.name.startswith("./") else info.name.lstrip("/")
                if not (info.isfile() and re.fullmatch(member, path)):
                    continue
                src = tar.extractfile(info)
                assert src is not None
                # Only the basename is used: nothing in the archive chooses where we write.
                found = dest / Path(path).name
                with open(found, "wb") as out:
                    shutil.copyfileobj(src, out)
                break
    except (tarfile.TarError, OSError) as e:
        raise GuestError(f"cannot read {deb.name}: {e}") from None
    finally:
        if proc.poll() is None:
            proc.kill()                 # we stopped reading early; dpkg-deb is ours to end
        _, err = proc.communicate()
    if found is None:
        if proc.returncode not in (0, -9):
            raise GuestError(f"dpkg-deb cannot read {deb.name}: {_one_line(err.decode(errors='replace'))}")
        raise GuestError(f"{deb.name} has no file matching {member}")
    return found


def _unpack(g: DebianGuest, src: Path) -> tuple[str, list[str]]:
    """Make the loadable image from the extracted file: (image name, all file names)."""
    from xendbg.machine.loader import ImageError, decompress, extract_bzimage

    if g.unpack == "none":
        return src.name, [src.name]
    data = src.read_bytes()
    try:
        if g.unpack == "gunzip":
            _, elf = decompress(data)
            out = src.with_suffix("")           # gnumach-1.8-xen-486-dbg.gz -> ...-dbg
        else:
            _, elf = extract_bzimage(data)
            out = src.with_name("vmlinux")
    except ImageError as e:
        raise GuestError(f"{src.name} from {g.package}: {e}") from None
    if not elf.startswith(b"\x7fELF"):
        raise GuestError(f"{src.name} from {g.package} does not hold an ELF image")
    out.write_bytes(elf)
    if g.unpack == "gunzip":
        src.unlink()                            # the ELF is all we need; the .deb still has the .gz
        return out.name, [out.name]
    return out.name, [src.name, out.name]


# -- fetch ----------------------------------------------------------------------------------------

def fetch(name: str, progress: Progress | None = None, *, refresh: bool = False,
          deb_dirs: Sequence[str | os.PathLike[str]] | None = None) -> Path:
    """Fetch a Debian guest into the cache (if needed) and return the path of its loadable image.

    For Linux that is the extracted ``vmlinux`` (the ``vmlinuz`` is kept next to it); for GNU Mach
    the gunzipped ELF; for GRUB the ``.bin``; for busybox the static binary. ``progress`` receives
    one-line messages (default: printed on stderr). Raises GuestError.
    """
    say = progress or _stderr
    g = DEBIAN_GUESTS.get(name)
    if g is None:
        from . import LAB_GUESTS, lab_image

        if name in LAB_GUESTS:
            raise GuestError(f"{name} is a lab guest: it is built, not fetched (image: {lab_image(name)})")
        raise GuestError(f"unknown guest {name!r}; `xendbg guests list` shows the known ones")
    if not refresh:
        cached = cached_image(name)
        if cached is not None:
            say(f"{name}: cached at {cached}")
            return cached

    local = _local_deb(g, _deb_dirs(deb_dirs))
    if local is not None:
        pkg, version, deb = local
        say(f"{name}: using {deb}")
    else:
        apt = _Apt(say)
        apt.ensure_lists()
        pkg = apt.newest_in_family(g) if g.package_regex else g.package
        version, size = apt.candidate(pkg)
        deb = None
    entry = cache_dir() / name / _version_key(pkg, version)
    for _, d, info in _entries(name):
        if d == entry:
            os.utime(entry / MANIFEST)          # make it the "most recent" entry again
            say(f"{name}: cached at {d / info['image']}")
            return d / info["image"]
    shutil.rmtree(entry, ignore_errors=True)    # a damaged entry (image gone) is fetched again
    if deb is None:
        deb = _download(pkg, version, size, say)

    tmp = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        say(f"{name}: extracting {g.member.replace(chr(92), '').replace('.*', '*')} from {deb.name}")
        src = _extract_member(deb, g.member, tmp)
        image, files = _unpack(g, src)
        manifest = {"guest": name, "package": pkg, "version": version, "image": image,
                    "files": files, "deb": deb.name}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / MANIFEST).is_file():    # not a concurrent fetch that got there first
                raise
    except OSError as e:
        raise GuestError(f"cannot write the cache at {entry.parent}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = entry / image
    say(f"{name}: {pkg} {version} ready at {path}")
    return path
