"""Page faults: the exact error code and CR2 of every kind of #PF, and writable page tables.

Each test replaces the lab guest's first instructions (patched through machine memory at the
entry point's frame) with a few hand-assembled ones that make one access, then ``jmp $``.
"""

from __future__ import annotations

import struct

import pytest

from xendbg.machine.abi import xen as X
from xendbg.machine.domain import TrapInfo

P, RW, US, A, D = 1, 2, 4, 0x20, 0x40
NX = 1 << 63
RSVD_BIT = 1 << 51                 # above any MAXPHYADDR the CPU model has: a reserved bit
LOOP = b"\xeb\xfe"                 # jmp $


def mov_imm(is64: bool, reg: str, value: int) -> bytes:
    """``mov $value, %reg`` (64-bit: movabs)."""
    code = {"ax": 0xB8, "cx": 0xB9, "dx": 0xBA, "bx": 0xBB, "si": 0xBE, "di": 0xBF}[reg]
    if is64:
        return bytes([0x48, code]) + struct.pack("<Q", value & (2**64 - 1))
    return bytes([code]) + struct.pack("<I", value & 0xFFFFFFFF)


def patch(m, code: bytes, at: int | None = None) -> None:
    va = m.layout.entry if at is None else at
    ma = m.guest.translate(va)
    m.memory.write(ma, code)
    m.cpu.flush_tb()


def run_to_trap(m):
    traps = []
    m.listeners.append(lambda e: traps.append(e.data) if e.kind == "trap" else None)
    reason = m.run(max_insns=20_000)
    return reason, traps


READ64, WRITE64, JMP = b"\x48\x8b\x00", b"\x48\x89\x00", b"\xff\xe0"
READ32, WRITE32 = b"\x8b\x00", b"\x89\x00"


def _target(kit, kind: str) -> tuple[int, bytes]:
    """(address, access instruction) for each fault kind."""
    m = kit.m
    is64 = kit.is64
    read, write = (READ64, WRITE64) if is64 else (READ32, WRITE32)
    if kind == "read-np":
        return kit.free_va(), read
    if kind == "write-np":
        return kit.free_va(), write
    if kind == "write-ro":
        return m.layout.pt_base_va + 8, write           # the page tables are mapped read-only
    if kind == "fetch-np":
        return kit.free_va(), JMP
    if kind == "fetch-nx":
        va = kit.scratch
        ma = kit.entry_ma(va, 1)
        assert kit.uvm(va, m.memory.read_u64(ma) | NX, X.UVMF_INVLPG) == 0
        return va, JMP
    if kind == "rsvd":
        va = kit.scratch
        ma = kit.entry_ma(va, 1)
        m.memory.write_u64(ma, m.memory.read_u64(ma) | RSVD_BIT)   # Xen would never allow it
        return va, read
    raise AssertionError(kind)


# Error codes: P=1 W=2 U=4 RSVD=8 I=16, as the guest kernel sees them. A 64-bit PV kernel runs in
# ring 3, so the CPU reports U=1; Xen re-sets U from the guest's mode (kernel: 0), as here.
CASES = [("read-np", 0x0), ("write-np", 0x2), ("write-ro", 0x3), ("fetch-np", 0x10),
         ("fetch-nx", 0x11), ("rsvd", 0x9)]


@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
@pytest.mark.parametrize("kind, code", CASES)
def test_page_fault_error_code_and_cr2(mmu_kit, name, kind, code):
    kit = mmu_kit(name)
    m = kit.m
    va, access = _target(kit, kind)
    patch(m, mov_imm(kit.is64, "ax", va) + access + LOOP)
    reason, traps = run_to_trap(m)
    assert reason == "crash"                      # no trap table: Xen crashes the domain
    assert [(t["vector"], t["error_code"], t["cr2"]) for t in traps] == [(14, code, va)]
    raw = m.memory.read(m.vcpu.vcpu_info_ma + m.abi.vcpu_cr2, m.abi.word)
    assert int.from_bytes(raw, "little") == va    # where PV guests read CR2
    assert "unhandled #PF" in m.domain.crashed


@pytest.mark.parametrize("kind, code", [("read-np", 0x4), ("write-ro", 0x7), ("fetch-nx", 0x15)])
def test_user_mode_faults_have_the_user_bit(mmu_kit, kind, code):
    """A 64-bit guest in user mode (its own L4, Xen's TF_kernel_mode clear): U=1."""
    kit = mmu_kit("hello-pv64")
    m = kit.m
    va, access = _target(kit, kind)               # set up in the kernel's tables …
    user = m.vcpu.guest_table                     # … which the user table shares here
    assert kit.mmuext([(X.MMUEXT_NEW_USER_BASEPTR, user)]) == (0, 1)
    patch(m, mov_imm(True, "ax", va) + access + LOOP)
    m.toggle_guest_mode(m.vcpu)
    assert not m.vcpu.kernel_mode
    reason, traps = run_to_trap(m)
    assert reason == "crash" and [(t["error_code"], t["cr2"]) for t in traps] == [(code, va)]


@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_page_fault_is_bounced_with_its_error_code(mmu_kit, name):
    kit = mmu_kit(name)
    m = kit.m
    handler = m.layout.entry + 0x80
    m.vcpu.trap_table[14] = TrapInfo(14, 0, m.abi.kernel_cs, handler)
    va = kit.free_va()
    patch(m, mov_imm(kit.is64, "ax", va) + (WRITE64 if kit.is64 else WRITE32) + LOOP)
    patch(m, LOOP, at=handler)
    reason = m.run(max_insns=5_000)
    assert reason == "budget" and m.cpu.ip == handler
    sp = m.cpu.sp
    if kit.is64:      # rcx, r11, error code, rip, cs, rflags, rsp, ss
        frame = struct.unpack("<4Q", m.guest.read(sp, 32))
        assert frame[2] == 0x2 and frame[3] == m.layout.entry + 10
    else:             # error code, eip, cs, eflags
        frame = struct.unpack("<3I", m.guest.read(sp, 12))
        assert frame[0] == 0x2 and frame[1] == m.layout.entry + 5


# -- writable page tables ------------------------------------------------------------------------

def _l1_entry_va(kit, va: int) -> tuple[int, int, int]:
    """(VA through which the guest reads the L1 entry mapping ``va``, l1 mfn, index)."""
    m = kit.m
    ma = kit.entry_ma(va, 1)
    l1 = ma >> 12
    pfn = m.mmu.pfn_of(l1)
    return m.domain.virt_base + (pfn << 12) + (ma & 0xFFF), l1, (ma & 0xFFF) >> 3


def _ptwr_kit(mmu_kit, name: str, enable: bool = True):
    kit = mmu_kit(name)
    if enable:
        assert kit.hc("vm_assist", X.VMASST_CMD_enable, X.VMASST_TYPE_writable_pagetables) == 0
    return kit


@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_ptwr_store_is_applied_as_a_validated_update(mmu_kit, name):
    kit = _ptwr_kit(mmu_kit, name)
    m = kit.m
    pt = m.mmu.pt
    entry_va, l1, index = _l1_entry_va(kit, kit.scratch)
    old = m.memory.read_u64((l1 << 12) + index * 8)
    old_mfn = (old >> 12) & 0xFFFFFFFFFF
    (data,) = kit.spare()
    new = data << 12 | P | RW | A | D
    if kit.is64:
        code = mov_imm(True, "ax", entry_va) + mov_imm(True, "bx", new) + b"\x48\x89\x18"
    else:   # two 4-byte stores, low half first, as a 32-bit PAE kernel writes
        code = (mov_imm(False, "ax", entry_va) + b"\xc7\x00" + struct.pack("<I", new & 0xFFFFFFFF)
                + b"\xc7\x40\x04" + struct.pack("<I", new >> 32))
    patch(m, code + LOOP)
    records = len(m.mmu.history.records)
    assert m.run(max_insns=2_000) == "budget"
    assert m.cpu.ip == m.layout.entry + len(code)          # every store emulated, RIP advanced
    got = m.memory.read_u64((l1 << 12) + index * 8)
    assert got == new | (US if kit.is64 else 0)
    assert pt.type_count[data] == 1 and pt.type_count[old_mfn] == 0
    assert any(r.kind == "ptwr" for r in list(m.mmu.history.records)[records:])
    assert kit.check() == []


@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_ptwr_refuses_a_writable_mapping_of_a_table(mmu_kit, name):
    kit = _ptwr_kit(mmu_kit, name)
    m = kit.m
    entry_va, l1, index = _l1_entry_va(kit, kit.scratch)
    old = m.memory.read_u64((l1 << 12) + index * 8)
    bad = m.layout.pt_base_mfn << 12 | P | RW | A | D
    if kit.is64:
        code = mov_imm(True, "ax", entry_va) + mov_imm(True, "bx", bad) + b"\x48\x89\x18"
    else:
        code = mov_imm(False, "ax", entry_va) + b"\xc7\x00" + struct.pack("<I", bad)
    patch(m, code + LOOP)
    reason, traps = run_to_trap(m)
    assert reason == "crash" and traps[0]["vector"] == 14
    assert traps[0]["error_code"] == 0x3 and traps[0]["cr2"] == entry_va
    assert m.memory.read_u64((l1 << 12) + index * 8) == old
    why = m.mmu.history.rejections[-1]
    assert why.op == "ptwr" and why.mfn == l1 and why.index == index and "writable" in why.rule
    assert kit.check() == []


def test_ptwr_needs_the_assist_and_an_l1(mmu_kit):
    kit = _ptwr_kit(mmu_kit, "hello-pv64", enable=False)
    m = kit.m
    entry_va, _l1, _ = _l1_entry_va(kit, kit.scratch)
    patch(m, mov_imm(True, "ax", entry_va) + b"\x48\x89\x00" + LOOP)
    reason, traps = run_to_trap(m)
    assert reason == "crash" and traps[0]["error_code"] == 0x3
    assert not m.mmu.history.rejections                   # not a ptwr candidate: a plain #PF
    # With the assist, a write to an L2 (not an L1) still faults.
    kit = _ptwr_kit(mmu_kit, "hello-pv64")
    m = kit.m
    ma = kit.entry_ma(kit.scratch, 2)
    l2_va = m.domain.virt_base + (m.mmu.pfn_of(ma >> 12) << 12) + (ma & 0xFFF)
    patch(m, mov_imm(True, "ax", l2_va) + b"\x48\x89\x00" + LOOP)
    reason, traps = run_to_trap(m)
    assert reason == "crash" and traps[0]["cr2"] == l2_va


def test_ptwr_xchg_cmpxchg_and_subword(mmu_kit):
    kit = _ptwr_kit(mmu_kit, "hello-pv64")
    m = kit.m
    entry_va, l1, index = _l1_entry_va(kit, kit.scratch)
    ma = (l1 << 12) + index * 8
    old = m.memory.read_u64(ma)
    a, b = kit.spare(2)
    new_a = a << 12 | P | RW | A | D
    new_b = b << 12 | P | A | US
    code = (mov_imm(True, "di", entry_va) + mov_imm(True, "bx", new_a)
            + b"\x48\x87\x1f"                                   # xchg %rbx, (%rdi)
            + mov_imm(True, "ax", 0x1234)                      # wrong expected value
            + mov_imm(True, "cx", new_b)
            + b"\xf0\x48\x0f\xb1\x0f"                           # lock cmpxchg %rcx, (%rdi): fails
            + b"\xf0\x48\x0f\xb1\x0f"                           # rax now = current: succeeds
            + b"\x89\x0f")                                      # mov %ecx, (%rdi): low half only
    patch(m, code + LOOP)
    assert m.run(max_insns=2_000) == "budget"
    assert m.cpu.ip == m.layout.entry + len(code)
    assert m.cpu.uc.reg_read(__import__("unicorn").x86_const.UC_X86_REG_RBX) == old
    assert m.memory.read_u64(ma) == new_b
    assert m.mmu.pt.type_count[a] == 0 and m.mmu.pt.count[b] == 2
    assert kit.check() == []


def test_ptwr_pae_high_half_first(mmu_kit):
    kit = _ptwr_kit(mmu_kit, "hello-pv32")
    m = kit.m
    entry_va, l1, index = _l1_entry_va(kit, kit.scratch)
    ma = (l1 << 12) + index * 8
    # The high half first: the merged entry names a frame far beyond memory → written not-present.
    code = mov_imm(False, "ax", entry_va) + b"\xc7\x40\x04" + struct.pack("<I", 0x100) + LOOP
    patch(m, code)
    assert m.run(max_insns=2_000) == "budget"
    entry = m.memory.read_u64(ma)
    assert not entry & P and entry >> 32 == 0x100
    assert kit.check() == []
