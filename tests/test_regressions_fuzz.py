"""Regression tests for the fuzzer findings of issue #9 that were listed in ``xendbg/fuzz/known.py``.

One group per former entry: ``bounce32-kernel-ss`` (a 32-bit bounce from ring 2/3 onto an unusable
``stack_switch`` selector), ``builder-allocation`` (a domain whose memory cannot be allocated) and
``count-tables-span`` (a kernel whose VA span is terabytes).
"""

from __future__ import annotations

import resource
import struct
import subprocess
import sys

import pytest
from unicorn import x86_const as U

from xendbg.machine.abi import xen as X

XENDBG = [sys.executable, "-m", "xendbg"]
RFLAGS_IF = 1 << 9


# -- bounce32-kernel-ss ----------------------------------------------------------------------------


@pytest.fixture
def pv32(lab_machine, scratch_va, enter_guest):
    m = lab_machine("hello-pv32")
    enter_guest(m)
    return m, scratch_va(m)


def _bad_user_iret32(m, va) -> None:
    """An iret to ring 3 with a null SS: Xen's exit iret faults, so the failsafe callback is
    entered from ring 3 — on the kernel stack, with SS = the ``stack_switch`` selector."""
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0xE019, va + 0x400], 0)
    m.guest.write(va, struct.pack("<6I", 0x1111, va + 0x900, 0xE02B, RFLAGS_IF | 2, 0x1234, 3))
    m.cpu.uc.reg_write(U.UC_X86_REG_ESP, va)
    m.hypercall(X.HYPERVISOR_iret, [], m.cpu.ip)


@pytest.mark.parametrize("guest,ss,kept", [
    ("hello-pv32", 0xE020, 0xE021),     # RPL 0 → the guest kernel's ring 1
    ("hello-pv32", 0xE02B, 0xE02B),     # RPL 3 stays
    ("hello-pv64", 0x0000, 0x0003),     # a 64-bit kernel runs in ring 3
    ("hello-pv64", 0xE02B, 0xE02B),
])
def test_stack_switch_fixes_up_the_rpl_like_xen(lab_machine, guest, ss, kept):
    """Xen's do_stack_switch accepts any selector and raises its RPL (fixup_guest_stack_selector)."""
    m = lab_machine(guest)
    assert m.dispatch(X.HYPERVISOR_stack_switch, [ss, 0x1000], 0) == 0
    assert m.vcpu.kernel_ss == kept and m.vcpu.kernel_sp == 0x1000


@pytest.mark.parametrize("ss,why", [
    (0xE019, "not a writable data segment"),     # Xen's ring-1 code segment
    (0xE033, "RPL 3, not 1"),                    # ring-3 data
    (0x0001, "null stack selector"),
    (0x0101, "not a writable data segment"),     # an empty GDT entry
    (0xFFF9, "beyond the descriptor table"),
    (0x0005, "beyond the descriptor table"),     # an LDT selector, and there is no LDT
])
def test_pv32_bounce_onto_an_unusable_kernel_ss_crashes_the_domain(pv32, ss, why):
    """Fuzzer finding (replay then: hypercalls --guest hello-pv32 --seed 1 --calls 6103): the
    SS load raised UcError inside the hook. Xen loads kernel_ss first and crashes the domain."""
    m, va = pv32
    assert m.dispatch(X.HYPERVISOR_stack_switch, [ss, m.vcpu.kernel_sp], 0) == 0
    _bad_user_iret32(m, va)
    assert not m.internal_errors, m.internal_errors
    crashed = m.domain.crashed
    assert crashed and "kernel stack selector" in crashed and why in crashed, crashed


def test_pv32_bounce_with_the_default_kernel_ss_still_delivers(pv32):
    m, va = pv32
    _bad_user_iret32(m, va)
    assert not m.internal_errors and m.domain.crashed is None
    assert m.cpu.ip == va + 0x400
    assert m.cpu.uc.reg_read(U.UC_X86_REG_SS) & 0xFFFF == 0xE021


def test_pv32_a_faulting_ss_load_the_checks_miss_is_a_crash_not_an_escape(pv32, monkeypatch):
    """The second line of defence: should the descriptor checks let a selector through that the
    CPU refuses, the UcError still becomes a domain crash."""
    from xendbg.machine import traps
    m, va = pv32
    monkeypatch.setattr(traps, "_kernel_ss_fault", lambda _m, _ss: None)
    m.dispatch(X.HYPERVISOR_stack_switch, [0xE019, m.vcpu.kernel_sp], 0)
    _bad_user_iret32(m, va)
    assert not m.internal_errors, m.internal_errors
    assert m.domain.crashed and "loading stack selector 0xe019 faulted" in m.domain.crashed


def test_pv32_unusable_kernel_ss_in_a_running_guest(lab_machine, scratch_va, enter_guest):
    """End to end through the CPU: the guest itself sets a code selector as its kernel stack and
    then makes an iret to ring 3 that faults; the run ends in a crash with the reason."""
    m = lab_machine("hello-pv32")
    enter_guest(m)
    va = scratch_va(m)
    code = struct.pack("<BI", 0xB8, X.HYPERVISOR_stack_switch)        # mov eax, 3
    code += struct.pack("<BI", 0xBB, 0xE019)                           # mov ebx, 0xe019
    code += struct.pack("<BI", 0xB9, m.vcpu.kernel_sp)                 # mov ecx, kernel_sp
    code += b"\xcd\x82"                                                # int 0x82
    code += struct.pack("<BI", 0xBC, va + 0x800)                       # mov esp, frame
    code += struct.pack("<BI", 0xB8, X.HYPERVISOR_iret)                # mov eax, 23
    code += b"\xcd\x82"
    m.guest.write(va + 0x100, code)
    m.guest.write(va + 0x800, struct.pack("<6I", 0, va + 0x900, 0xE02B, RFLAGS_IF | 2, 0, 3))
    m.hypercall(X.HYPERVISOR_set_callbacks, [0xE019, 0, 0xE019, va + 0x400], 0)
    m.set_guest_ip(va + 0x100)
    assert m.run(max_insns=1000) == "crash"
    assert not m.internal_errors, m.internal_errors
    assert "kernel stack selector 0xe019" in m.domain.crashed


# -- builder-allocation -------------------------------------------------------------------------


def _run(*args, limit_mib: int = 0):
    def limit() -> None:
        if limit_mib:
            resource.setrlimit(resource.RLIMIT_AS, (limit_mib << 20, limit_mib << 20))

    return subprocess.run([*XENDBG, *args], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)


def _one_line_error(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    return err[0]


def test_cli_memory_above_the_limit_is_a_one_line_error():
    line = _one_line_error(_run("run", "hello-pv64", "--memory", "1048576"))
    assert "--memory 1048576 MiB is more than xendbg's limit of 16384 MiB" in line


def test_cli_memory_the_host_cannot_allocate_is_a_one_line_error():
    # 16 GiB of guest memory (allowed) in a process limited to 4 GiB of address space.
    line = _one_line_error(_run("run", "hello-pv64", "--memory", "16384", limit_mib=4096))
    assert "cannot allocate" in line and "machine memory" in line, line


@pytest.mark.parametrize("exc", [OSError(12, "Cannot allocate memory"), MemoryError(),
                                 OverflowError("cannot fit 'int' into an index-sized integer")])
def test_allocation_failure_is_a_build_error(lab_machine, monkeypatch, exc):
    from xendbg.machine import builder

    def refuse(_frames):
        raise exc

    monkeypatch.setattr(builder, "MachineMemory", refuse)
    with pytest.raises(builder.BuildError, match="cannot allocate .* MiB of machine memory"):
        lab_machine("hello-pv64")


def test_32bit_limit_is_checked_first(lab_machine):
    from xendbg.machine.builder import BuildError
    with pytest.raises(BuildError, match="at most 3072 MiB"):
        lab_machine("hello-pv32", memory_mib=4096)


# -- count-tables-span --------------------------------------------------------------------------


def _terabyte_span_image(guest: str = "hello-pv64") -> bytes:
    """The lab guest with VIRT_BASE moved down to 0xffff800000000000 and PADDR_OFFSET adjusted
    so that its segments stay where they were: a start-of-day span of 128 TiB."""
    from xendbg.guests import lab_image
    data = bytearray(lab_image(guest).read_bytes())
    virt_base, old_base = 0xFFFF800000000000, 0xFFFFFFFF80000000
    for note_type, value in ((X.XEN_ELFNOTE_VIRT_BASE, virt_base),
                             (X.XEN_ELFNOTE_PADDR_OFFSET, (virt_base - old_base) % (1 << 64))):
        at = data.find(struct.pack("<III", 4, 8, note_type) + b"Xen\0")
        assert at >= 0, f"note {note_type} not found"
        struct.pack_into("<Q", data, at + 16, value)
    return bytes(data)


def test_count_tables_costs_per_run_not_per_table():
    """The old count enumerated every 2 MiB of the span in a set; this span has 2**43 L1 tables."""
    from xendbg.machine.pagetable import count_tables
    assert count_tables([(0, 1 << 64)], 4) == (1 << 43) + (1 << 34) + (1 << 25)
    assert count_tables([(0, 1 << 32)], 3) == 2048 + 4
    # Overlapping and touching ranges share their tables; empty ranges need none.
    ranges = [(0x1000, 0x3000), (0x2000, 0x400000), (0x600000, 0x600000), (0x400000, 0x401000)]
    assert count_tables(ranges, 4) == 3 + 1 + 1
    assert count_tables([], 4) == 0


@pytest.mark.parametrize("mib", [16, 16384])
def test_terabyte_span_is_refused_before_anything_is_built(monkeypatch, mib):
    from xendbg.machine import builder
    from xendbg.machine.loader.kernel import load_kernel_bytes
    image = load_kernel_bytes(_terabyte_span_image())
    assert image.virt_kend - image.virt_base > 1 << 40

    def must_not_run(*_a, **_k):
        raise AssertionError("reached before the span was checked")

    monkeypatch.setattr(builder, "count_tables", must_not_run)
    monkeypatch.setattr(builder, "MachineMemory", must_not_run)
    with pytest.raises(builder.BuildError, match="more than xendbg's limit of 16384 MiB"):
        builder.build_domain(image, builder.BuildConfig(memory_mib=mib))


def test_terabyte_span_gets_a_bounded_default_memory():
    from xendbg.machine.builder import MAX_MEMORY_MIB
    from xendbg.machine.loader.kernel import load_kernel_bytes
    from xendbg.runner import default_memory
    assert default_memory(load_kernel_bytes(_terabyte_span_image())) == MAX_MEMORY_MIB


def test_terabyte_span_in_the_cli_is_a_one_line_error(tmp_path):
    f = tmp_path / "span.elf"
    f.write_bytes(_terabyte_span_image())
    line = _one_line_error(_run("run", str(f)))
    assert "start-of-day layout needs" in line and "limit" in line, line


def test_layout_span_beyond_memory_is_checked_before_the_tables(lab_machine, monkeypatch):
    """A ramdisk that does not fit: the layout check runs before the page tables are counted."""
    from xendbg.machine import builder
    monkeypatch.setattr(builder, "count_tables", lambda *_a: (_ for _ in ()).throw(
        AssertionError("count_tables ran")))
    with pytest.raises(builder.BuildError, match=r"needs \d+ MiB but the domain has 16 MiB"):
        lab_machine("hello-pv64", ramdisk=bytes(20 << 20))
