"""Privileged and trapping instructions, executed by the fuzzed guest between its hypercalls.

A PV kernel reaches Xen through more than hypercalls: every privileged instruction it executes
traps (#GP) and is emulated or bounced (``emul_priv.py``, ``priv.py``), port I/O is checked against
its virtual IOPL, CPUID (plain and forced) and RDTSC are intercepted, and faults, ``int3`` and
``int $N`` are bounced through its trap table — which the hypercall fuzzer fills with random
entries. Each snippet here sits in a fixed slot of the fuzzer's code page, followed by a jump to
the sentinel, so the page never changes and Unicorn's translations stay valid.
"""

from __future__ import annotations

import struct

# (name, pv64 bytes, pv32 bytes); None: not an instruction of that mode.
SNIPPETS: tuple[tuple[str, bytes | None, bytes | None], ...] = (
    ("mov cr0->rax", b"\x0f\x20\xc0", b"\x0f\x20\xc0"),
    ("mov cr2->rax", b"\x0f\x20\xd0", b"\x0f\x20\xd0"),
    ("mov cr3->rax", b"\x0f\x20\xd8", b"\x0f\x20\xd8"),
    ("mov cr4->rax", b"\x0f\x20\xe0", b"\x0f\x20\xe0"),
    ("mov cr8->rax", b"\x44\x0f\x20\xc0", None),
    ("mov cr0->r9", b"\x41\x0f\x20\xc1", None),
    ("mov rax->cr0", b"\x0f\x22\xc0", b"\x0f\x22\xc0"),
    ("mov rax->cr2", b"\x0f\x22\xd0", b"\x0f\x22\xd0"),
    ("mov rax->cr3", b"\x0f\x22\xd8", b"\x0f\x22\xd8"),
    ("mov rax->cr4", b"\x0f\x22\xe0", b"\x0f\x22\xe0"),
    ("mov r10->cr3", b"\x41\x0f\x22\xda", None),
    ("prefixed mov cr0", b"\x66\xf3\x0f\x20\xc0", b"\x66\xf3\x0f\x20\xc0"),
    ("mov dr7->rax", b"\x0f\x21\xf8", b"\x0f\x21\xf8"),
    ("mov dr6->rax", b"\x0f\x21\xf0", b"\x0f\x21\xf0"),
    ("mov dr4->rax", b"\x0f\x21\xe0", b"\x0f\x21\xe0"),
    ("mov rax->dr0", b"\x0f\x23\xc0", b"\x0f\x23\xc0"),
    ("mov rax->dr7", b"\x0f\x23\xf8", b"\x0f\x23\xf8"),
    ("mov rax->dr5", b"\x0f\x23\xe8", b"\x0f\x23\xe8"),
    ("rdmsr", b"\x0f\x32", b"\x0f\x32"),
    ("wrmsr", b"\x0f\x30", b"\x0f\x30"),
    ("rdtsc", b"\x0f\x31", b"\x0f\x31"),
    ("rdtscp", b"\x0f\x01\xf9", b"\x0f\x01\xf9"),
    ("rdpmc", b"\x0f\x33", b"\x0f\x33"),
    ("cpuid", b"\x0f\xa2", b"\x0f\xa2"),
    ("xen cpuid", b"\x0f\x0bxen\x0f\xa2", b"\x0f\x0bxen\x0f\xa2"),
    ("ud2 xen (no cpuid)", b"\x0f\x0bxen\x90", b"\x0f\x0bxen\x90"),
    ("ud2", b"\x0f\x0b", b"\x0f\x0b"),
    ("cli", b"\xfa", b"\xfa"),
    ("sti", b"\xfb", b"\xfb"),
    ("hlt", b"\xf4", b"\xf4"),
    ("clts", b"\x0f\x06", b"\x0f\x06"),
    ("wbinvd", b"\x0f\x09", b"\x0f\x09"),
    ("invd", b"\x0f\x08", b"\x0f\x08"),
    ("in al,dx", b"\xec", b"\xec"),
    ("in eax,dx", b"\xed", b"\xed"),
    ("out dx,al", b"\xee", b"\xee"),
    ("in al,0x80", b"\xe4\x80", b"\xe4\x80"),
    ("out 0x80,eax", b"\xe7\x80", b"\xe7\x80"),
    ("insb", b"\x6c", b"\x6c"),
    ("outsb", b"\x6e", b"\x6e"),
    ("int3", b"\xcc", b"\xcc"),
    ("int1", b"\xf1", b"\xf1"),
    ("int 0x80", b"\xcd\x80", b"\xcd\x80"),
    ("int 0x81", b"\xcd\x81", b"\xcd\x81"),
    ("int 0x82", b"\xcd\x82", None),
    ("int 0x0e", b"\xcd\x0e", b"\xcd\x0e"),
    ("int 0x0d", b"\xcd\x0d", b"\xcd\x0d"),
    ("int 0x08", b"\xcd\x08", b"\xcd\x08"),
    ("int 0x03", b"\xcd\x03", b"\xcd\x03"),
    ("int 0x20", b"\xcd\x20", b"\xcd\x20"),
    ("into", None, b"\xce"),
    ("div by zero", b"\x31\xc9\xf7\xf1", b"\x31\xc9\xf7\xf1"),
    ("load [rax]", b"\x48\x8b\x00", b"\x8b\x00"),
    ("store [rax]", b"\x48\x89\x00", b"\x89\x00"),
    ("jmp rax", b"\xff\xe0", b"\xff\xe0"),
    ("lgdt [rax]", b"\x0f\x01\x10", b"\x0f\x01\x10"),
    ("lidt [rax]", b"\x0f\x01\x18", b"\x0f\x01\x18"),
    ("lldt ax", b"\x0f\x00\xd0", b"\x0f\x00\xd0"),
    ("ltr ax", b"\x0f\x00\xd8", b"\x0f\x00\xd8"),
    ("invlpg [rax]", b"\x0f\x01\x38", b"\x0f\x01\x38"),
    ("swapgs", b"\x0f\x01\xf8", None),
    ("sysenter", b"\x0f\x34", b"\x0f\x34"),
    ("sysret", b"\x48\x0f\x07", None),
    ("xgetbv", b"\x0f\x01\xd0", b"\x0f\x01\xd0"),
    ("xsetbv", b"\x0f\x01\xd1", b"\x0f\x01\xd1"),
    ("mov ss,ax", b"\x8e\xd0", b"\x8e\xd0"),
    ("mov ds,ax", b"\x8e\xd8", b"\x8e\xd8"),
    ("mov fs,ax", b"\x8e\xe0", b"\x8e\xe0"),
    ("mov gs,ax", b"\x8e\xe8", b"\x8e\xe8"),
    ("pushf/popf", b"\x9c\x9d", b"\x9c\x9d"),
    ("fninit+fld1", b"\xdb\xe3\xd9\xe8", b"\xdb\xe3\xd9\xe8"),
    ("movaps xmm0,xmm1", b"\x0f\x28\xc1", b"\x0f\x28\xc1"),
)

SLOT = 32
FIRST_SLOT = 64
MSRS = (0xC0000080, 0xC0000100, 0xC0000101, 0xC0000102, 0x10, 0x277, 0x1A0, 0x17, 0x1B, 0x3A,
        0xC0000081, 0xC0000082, 0x40000000, 0x0, 0xFFFFFFFF)
PORTS = (0x20, 0x21, 0x40, 0x60, 0x64, 0x70, 0x71, 0x80, 0x3F8, 0xCF8, 0xCFC, 0xFFFF)


def snippets_for(bits: int) -> list[tuple[str, bytes]]:
    return [(name, b64 if bits == 64 else b32) for name, b64, b32 in SNIPPETS
            if (b64 if bits == 64 else b32) is not None]


def code_page(bits: int, code_va: int, sentinel_va: int, head: bytes) -> tuple[bytes, list[int]]:
    """The fuzzer's code page: ``head`` (trap + sentinel), then one slot per snippet, each followed
    by ``jmp sentinel``; returns the page and each snippet's address."""
    page = bytearray(head + b"\xcc" * (4096 - len(head)))
    addrs = []
    for i, (_name, insn) in enumerate(snippets_for(bits)):
        off = FIRST_SLOT + i * SLOT
        after = off + len(insn) + 5
        page[off:off + len(insn)] = insn
        page[off + len(insn)] = 0xE9
        struct.pack_into("<i", page, off + len(insn) + 1, sentinel_va - (code_va + after))
        addrs.append(code_va + off)
    if FIRST_SLOT + len(addrs) * SLOT > 4096:
        raise AssertionError("too many snippets for one page")
    return bytes(page), addrs
