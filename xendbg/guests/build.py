"""Build the lab guests: ``python -m xendbg.guests.build [--check] [NAME...]``.

Every ``src/<name>.S`` with a linker script becomes ``images/<name>.elf``. The script is
``src/<name>.ld`` if there is one, else the one named by the ABI suffix (``hello-pv64.S`` ->
``pv64.ld``, ``hello-pv32.S`` -> ``pv32.ld``); its ``OUTPUT_FORMAT`` says which ABI it is:

1. ``gcc -E -undef -nostdinc -x assembler-with-cpp`` runs the C preprocessor (``#include`` of the
   shared ``xen-<abi>.inc`` and its ``#define`` constants);
2. ``as --64`` / ``as --32`` assembles it;
3. ``ld -m elf_x86_64`` / ``ld -m elf_i386 -T <abi>.ld --build-id=none`` links it.

The images are reproducible byte for byte: no build-id, no timestamps, and every tool runs in
the directory of its input with relative file names, so no host path ends up in the output. The
symbol table is kept: the debugger shows these symbols.

``--check`` rebuilds into a temporary directory and exits 1, listing the images that differ from
the committed ones (a missing image differs). Without a usable x86 toolchain it says so and exits
2. ``XENDBG_CROSS_COMPILE`` (e.g. ``x86_64-linux-gnu-``) names a tool prefix to try first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC_DIR = HERE / "src"
IMAGES_DIR = HERE / "images"


@dataclass(frozen=True)
class Abi:
    name: str
    as_flags: tuple[str, ...]
    ld_emulation: str


ABIS = {
    "pv64": Abi("pv64", ("--64",), "elf_x86_64"),
    "pv32": Abi("pv32", ("--32",), "elf_i386"),
}

CPP_FLAGS = ("-E", "-undef", "-nostdinc", "-x", "assembler-with-cpp", "-I", ".")
LD_FLAGS = ("--build-id=none", "-nostdlib", "-static", "-z", "max-page-size=0x1000", "-z", "noexecstack")


@dataclass(frozen=True)
class Toolchain:
    gcc: str
    as_: str
    ld: str


@dataclass(frozen=True)
class Guest:
    name: str
    source: Path
    abi: Abi
    script: Path


class BuildError(Exception):
    pass


def _ld_emulations(ld: str) -> set[str]:
    try:
        out = subprocess.run([ld, "-V"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return set()
    return {line.strip() for line in out.splitlines() if line.startswith(" ")}


def find_toolchain() -> Toolchain | None:
    """The first prefix with gcc, as and an ld that can emit both x86 ELF flavours, or None."""
    prefixes = []
    env = os.environ.get("XENDBG_CROSS_COMPILE")
    if env:
        prefixes.append(env)
    prefixes += ["", "x86_64-linux-gnu-"]
    for prefix in prefixes:
        tools = [shutil.which(prefix + tool) for tool in ("gcc", "as", "ld")]
        if not all(tools):
            continue
        gcc, as_, ld = tools
        if {abi.ld_emulation for abi in ABIS.values()} <= _ld_emulations(ld):
            return Toolchain(gcc, as_, ld)
    return None


def _script_abi(script: Path) -> Abi | None:
    """The ABI a linker script links for, from its OUTPUT_FORMAT."""
    text = script.read_text()
    for fmt, abi in (("elf64-x86-64", "pv64"), ("elf32-i386", "pv32")):
        if f'OUTPUT_FORMAT("{fmt}")' in text:
            return ABIS[abi]
    return None


def discover() -> dict[str, Guest]:
    """Every src/<name>.S with a linker script: src/<name>.ld if there is one, else the script of
    its ABI suffix (hello-pv64.S -> pv64.ld). The script's OUTPUT_FORMAT gives the ABI."""
    guests = {}
    for source in sorted(SRC_DIR.glob("*.S")):
        name = source.stem
        script = SRC_DIR / f"{name}.ld"
        if not script.is_file():
            script = SRC_DIR / f"{name.rsplit('-', 1)[-1]}.ld"
        abi = _script_abi(script) if script.is_file() else None
        if abi is not None:
            guests[name] = Guest(name, source, abi, script)
    return guests


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} (in {cwd}) failed:\n{proc.stdout}{proc.stderr}")
    if proc.stderr.strip():
        sys.stderr.write(proc.stderr)


def build_guest(guest: Guest, out_dir: Path, tools: Toolchain) -> Path:
    """Preprocess, assemble and link one guest into out_dir/<name>.elf; returns that path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image = out_dir / f"{guest.name}.elf"
    with tempfile.TemporaryDirectory(prefix=f"xendbg-{guest.name}-") as tmp:
        work = Path(tmp)
        asm, obj = f"{guest.name}.s", f"{guest.name}.o"
        _run([tools.gcc, *CPP_FLAGS, "-o", str(work / asm), guest.source.name], cwd=SRC_DIR)
        _run([tools.as_, *guest.abi.as_flags, "-o", obj, asm], cwd=work)
        shutil.copyfile(guest.script, work / guest.script.name)
        _run([tools.ld, "-m", guest.abi.ld_emulation, *LD_FLAGS, "-T", guest.script.name,
              "-o", "image.elf", obj], cwd=work)
        shutil.copyfile(work / "image.elf", image)
    return image


def build(names: list[str] | None = None, out_dir: Path = IMAGES_DIR,
          tools: Toolchain | None = None) -> list[Path]:
    tools = tools or find_toolchain()
    if tools is None:
        raise BuildError("no x86 toolchain (gcc, as, ld with elf_x86_64 and elf_i386)")
    guests = discover()
    selected = names or list(guests)
    unknown = [n for n in selected if n not in guests]
    if unknown:
        raise BuildError(f"unknown guest(s): {', '.join(unknown)} (known: {', '.join(guests)})")
    return [build_guest(guests[n], out_dir, tools) for n in selected]


def check(names: list[str] | None = None, tools: Toolchain | None = None) -> list[str]:
    """Rebuild into a temp dir; return the names whose image differs from images/<name>.elf."""
    with tempfile.TemporaryDirectory(prefix="xendbg-guests-") as tmp:
        differ = []
        for fresh in build(names, Path(tmp), tools):
            committed = IMAGES_DIR / fresh.name
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                differ.append(fresh.stem)
        return differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xendbg.guests.build", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temp dir and report images that differ from the committed ones")
    parser.add_argument("names", nargs="*", metavar="NAME", help="guests to build (default: all)")
    args = parser.parse_args(argv)

    tools = find_toolchain()
    if tools is None:
        print("xendbg.guests.build: no x86 toolchain found (need gcc, as, and an ld with the "
              "elf_x86_64 and elf_i386 emulations; set XENDBG_CROSS_COMPILE for a prefixed one)",
              file=sys.stderr)
        return 2
    try:
        if args.check:
            differ = check(args.names or None, tools)
            for name in differ:
                print(f"differs: images/{name}.elf")
            if differ:
                print("rebuild with: python -m xendbg.guests.build", file=sys.stderr)
                return 1
            print("guest images are up to date")
            return 0
        for image in build(args.names or None, IMAGES_DIR, tools):
            print(f"built {image.relative_to(HERE)} ({image.stat().st_size} bytes)")
        return 0
    except BuildError as exc:
        print(f"xendbg.guests.build: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
