"""Symbols: ELF .symtab, System.map, Linux's kallsyms decoded from the image, GRUB's exports; and
breakpoint conditions."""

from __future__ import annotations

import struct

import pytest

from xendbg.debugger.breakpoints import Condition
from xendbg.debugger.kallsyms import KallsymsError, decode_kallsyms, load_kallsyms
from xendbg.debugger.memview import DebugError
from xendbg.debugger.symbols import (
    Symbol,
    SymbolError,
    SymbolTable,
    parse_system_map,
    symbols_for_image,
)
from xendbg.guests import lab_image
from xendbg.machine.loader import load_kernel


def test_lab_guest_symtab():
    image = load_kernel(lab_image("hello-pv64"))
    table = symbols_for_image(image)
    assert table.sources == {"symtab": len(table)}
    start = table.resolve("_start")
    assert start.address == image.entry and start.type == "T"
    main = table.resolve("main").address
    assert table.name_of(main + 3) == "main+0x3"
    assert table.fmt(main) == f"{main:#x} <main>"
    assert table.lookup(0x1000) is None                   # outside the image


def test_lookup_respects_sizes_and_prefers_text():
    table = SymbolTable(0x1000, 0x9000)
    table.add([Symbol(0x2000, "sized", 0x10, "T"), Symbol(0x3000, "data_alias", 0, "d"),
               Symbol(0x3000, "func", 0, "T"), Symbol(0x4000, "percpu", 0, "A")], "test")
    assert table.name_of(0x2008) == "sized+0x8"
    assert table.name_of(0x2010) is None                  # past the symbol's size
    assert table.name_of(0x3004) == "func+0x4"
    assert table.resolve("percpu").address == 0x4000      # by name only
    assert table.name_of(0x4000) == "func+0x1000"


def test_system_map_parsing():
    syms = parse_system_map("# comment\nffffffff81000000 T _text\n0000000000001000 A percpu x\n")
    assert [(s.address, s.type, s.name) for s in syms] == [(0xFFFFFFFF81000000, "T", "_text"),
                                                           (0x1000, "A", "percpu")]
    for bad in ("zz T name", "ffff TT name", "ffff"):
        with pytest.raises(SymbolError):
            parse_system_map(bad)


def _fake_kallsyms(names: list[str], base: int = 0xFFFFFFFF81000000, seqs: bool = False) -> bytes:
    """A tiny image laid out as scripts/kallsyms.c lays out its arrays (tokens = single bytes)."""
    def align(buf: bytearray) -> None:
        buf += b"\0" * (-len(buf) % 8)

    tokens = [bytes([i]) if 32 < i < 127 else b"\x01%d" % i for i in range(256)]
    n = len(names)
    blob = bytearray(b"\xAA" * 64)
    offsets = [0x100 * (i + 1) for i in range(n)]
    blob += struct.pack(f"<{n}i", *[-1 - o for o in offsets])   # absolute-percpu encoding
    align(blob)
    blob += struct.pack("<Q", base)
    blob += struct.pack("<I", n)
    align(blob)
    starts = []
    names_start = len(blob)
    for name in names:
        starts.append(len(blob) - names_start)
        enc = name.encode()
        blob += bytes([len(enc)]) + enc
    align(blob)
    markers = [starts[i] for i in range(0, n, 256)]
    blob += struct.pack(f"<{len(markers)}I", *markers)
    align(blob)
    if seqs:
        blob += bytes(3 * n)
        align(blob)
    index = []
    table = bytearray()
    for t in tokens:
        index.append(len(table))
        table += t + b"\0"
    blob += table
    align(blob)
    blob += struct.pack("<256H", *index)
    # Wrap it in a minimal ELF64 with one PT_LOAD over the blob.
    ehdr = bytearray(64)
    ehdr[:16] = b"\x7fELF\x02\x01\x01" + bytes(9)
    struct.pack_into("<HHIQQQIHHHHHH", ehdr, 16, 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 120, base, 0, len(blob), len(blob), 0x1000)
    return bytes(ehdr) + phdr + bytes(blob)


@pytest.mark.parametrize("seqs", [False, True])
def test_kallsyms_decoded_by_structure(seqs):
    names = ["Tstart_kernel", "tlocal_fn", "Ddata_thing"] + [f"Tfn_{i}" for i in range(300)]
    syms = decode_kallsyms(_fake_kallsyms(names, seqs=seqs))
    assert len(syms) == len(names)
    # offset -1 - 0x100 encodes relative_base + 0x100 (CONFIG_KALLSYMS_ABSOLUTE_PERCPU)
    assert syms[0] == (0xFFFFFFFF81000000 + 0x100, "T", "start_kernel")
    assert syms[1] == (0xFFFFFFFF81000000 + 0x200, "t", "local_fn")
    assert syms[2][1:] == ("D", "data_thing")


def test_kallsyms_absent_is_an_error():
    image = load_kernel(lab_image("hello-pv64"))
    with pytest.raises(KallsymsError):
        decode_kallsyms(image.elf)


def test_linux_kallsyms_and_its_cache(debian_guest, tmp_path, monkeypatch):
    monkeypatch.setenv("XENDBG_CACHE", str(tmp_path / "cache"))
    image = load_kernel(debian_guest("linux-cloud"))
    where = tmp_path / "vmlinux"                 # the cache goes beside this (nonexistent) path
    syms = load_kallsyms(image.elf, where)
    assert len(syms) > 80_000
    by_name = {n: (a, t) for a, t, n in syms}
    text = by_name["_text"][0]
    start = by_name["start_kernel"]
    assert start[1] == "T" and text < start[0] < image.virt_kend
    cache = tmp_path / "vmlinux.kallsyms"
    assert cache.is_file()
    assert load_kallsyms(image.elf, where) == syms          # read back from the cache
    table = symbols_for_image(image)
    assert table.resolve("start_kernel").address == start[0]
    assert table.name_of(start[0] + 5) == "start_kernel+0x5"


def test_grub_exports_and_grub_main(debian_guest):
    for name in ("grub-x86_64", "grub-i386"):
        image = load_kernel(debian_guest(name))
        table = symbols_for_image(image)
        assert table.sources.get("grub-exports", 0) > 100, name
        main = table.resolve("grub_main")
        assert main is not None and main.source == "derived"
        for exported in ("grub_malloc", "grub_printf", "grub_dl_load"):
            assert table.resolve(exported) is not None, (name, exported)


@pytest.mark.parametrize("text,names,want", [
    ("rax == 5", {"rax": 5}, True),
    ("$rax == 5 && rbx > 1", {"rax": 5, "rbx": 0}, False),
    ("error", {"error": True}, True),
    ("!error", {"error": True}, False),
    ("port in (1, 2) or vector == 14", {"port": 3, "vector": 14}, True),
    ("(cmd & 0xff) == 3", {"cmd": 0x103}, True),
])
def test_conditions(text, names, want):
    assert Condition(text).evaluate(names) is want


@pytest.mark.parametrize("text", ["__import__('os')", "rax.real", "[x for x in y]", "f(1)", "rax ="])
def test_conditions_refuse_anything_else(text):
    with pytest.raises(DebugError):
        Condition(text)


def test_condition_with_unknown_name_is_an_error():
    with pytest.raises(DebugError):
        Condition("nope == 1").evaluate({"rax": 0})
