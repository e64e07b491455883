"""The invariant checker: does the frame table agree with the page tables that exist?

``check(machine)`` recounts, from scratch, every reference that should exist — one per allocated
frame, per present entry of a validated table, per pin, per base pointer, per GDT frame, per
reference another part of Xen holds — and compares with the frame table. It also checks the
safety properties themselves: no frame in use as a page table or descriptor page is mapped
writable anywhere, every entry of a validated table satisfies the rules, Xen's slots hold Xen's
entries, pinned frames are validated tables, and the CPU's cr3 is the vCPU's current table.

It returns a list of violations (empty: all is well). Tests run it after every hypercall of the
lab guests; the fuzzer after every step. It is a recount, so its cost grows with the number of
validated tables (a few ms for a small guest).
"""

from __future__ import annotations

import numpy as np

from ._validate import (
    F_ALLOCATED,
    F_PINNED,
    F_VALIDATED,
    F_XEN_HEAP,
    T_L1,
    T_L2,
    T_L4,
    T_PAE_XEN_L2,
    T_SEG_DESC,
    T_WRITABLE,
)
from .page_types import _P, _RW, ADDR_MASK, XEN_L4_FIRST, XEN_L4_LAST, type_name

MAX_REPORTED = 40


def check(machine) -> list[str]:
    mmu = machine.mmu
    pt = mmu.pt
    d = pt.domid
    n = len(pt.count)
    bad: list[str] = []
    exp_count = ((pt.flags & F_ALLOCATED) != 0).astype(np.int64)
    exp_tc = ((pt.flags & F_XEN_HEAP) != 0).astype(np.int64)
    exp_linear = np.zeros(n, np.int64)

    def held(mfn: int, what: str, t: int | None) -> None:
        exp_count[mfn] += 1
        exp_tc[mfn] += 1
        if t is not None and int(pt.type[mfn]) != t:
            bad.append(f"mfn {mfn:#x} ({what}) has type {type_name(int(pt.type[mfn]))}, "
                       f"expected {type_name(t)}")

    for mfn in np.flatnonzero(pt.flags & F_PINNED).tolist():
        held(mfn, "pinned", None)
        if int(pt.type[mfn]) & 0xF not in (1, 2, 3, 4) or not pt.flags[mfn] & F_VALIDATED:
            bad.append(f"pinned mfn {mfn:#x} is not a validated table "
                       f"({type_name(int(pt.type[mfn]))})")
    v = machine.vcpu
    held(v.guest_table, "kernel base pointer", pt.root_type)
    if v.guest_table_user:
        held(v.guest_table_user, "user base pointer", T_L4)
    for mfn in v.gdt_frames:
        held(mfn, "GDT frame", T_SEG_DESC)
    for mfn, c in mmu.holds.items():
        exp_count[mfn] += c
    for mfn, c in mmu.type_holds.items():
        exp_tc[mfn] += c

    levels = pt.type & 0xF
    tables = np.flatnonzero(((pt.flags & F_VALIDATED) != 0) & (levels >= T_L1) & (levels <= T_L4))
    for mfn in tables.tolist():
        _check_table(pt, mfn, bad, exp_count, exp_tc, exp_linear)

    for name, expected, actual in (("reference count", exp_count, pt.count),
                                   ("type count", exp_tc, pt.type_count),
                                   ("linear count", exp_linear, pt.linear)):
        for mfn in np.flatnonzero(expected != actual)[:MAX_REPORTED].tolist():
            bad.append(f"mfn {mfn:#x}: {name} is {int(actual[mfn])}, the references that exist "
                       f"make {int(expected[mfn])}")
    for mfn in np.flatnonzero((pt.count > 0) & (pt.owner != d))[:MAX_REPORTED].tolist():
        bad.append(f"mfn {mfn:#x} is referenced but owned by d{int(pt.owner[mfn])}")
    for mfn in np.flatnonzero((pt.count == 0) & (pt.owner == d))[:MAX_REPORTED].tolist():
        bad.append(f"mfn {mfn:#x} is owned by the domain with no reference at all")

    mode_table = v.guest_table if v.kernel_mode or not machine.is64 else v.guest_table_user
    if machine.cpu.cr3 >> 12 != mode_table:
        bad.append(f"cr3 {machine.cpu.cr3:#x} is not the vCPU's current table {mode_table:#x}")
    return bad[:MAX_REPORTED]


def _check_table(pt, mfn: int, bad: list[str], exp_count, exp_tc, exp_linear) -> None:
    t = int(pt.type[mfn])
    level = t & 0xF
    table = pt.table(mfn)
    idx = np.array(pt._present_guest_entries(mfn, t), dtype=np.int64)
    vals = table[idx] if len(idx) else np.zeros(0, np.uint64)
    targets = ((vals & np.uint64(ADDR_MASK)) >> np.uint64(12)).astype(np.int64)
    disallow = {1: pt.l1_disallow, 2: pt.l2_disallow, 3: pt.l3_disallow, 4: pt.l4_disallow}[level]
    for i in np.flatnonzero(vals & np.uint64(disallow)).tolist():
        bad.append(f"L{level} mfn {mfn:#x}[{int(idx[i])}] = {int(vals[i]):#x} sets disallowed bits")
    inside = targets < len(pt.count)
    for i in np.flatnonzero(~inside).tolist():
        bad.append(f"L{level} mfn {mfn:#x}[{int(idx[i])}] maps mfn {int(targets[i]):#x} outside "
                   "machine memory")
    vals, targets, idx = vals[inside], targets[inside], idx[inside]
    foreign = pt.owner[targets] != pt.domid
    for i in np.flatnonzero(foreign)[:MAX_REPORTED].tolist():
        bad.append(f"L{level} mfn {mfn:#x}[{int(idx[i])}] maps mfn {int(targets[i]):#x} of "
                   f"d{int(pt.owner[targets[i]])}")
    if level == T_L1:
        np.add.at(exp_count, targets, 1)
        rw = targets[(vals & np.uint64(_RW)) != 0]
        np.add.at(exp_tc, rw, 1)
        for target in np.unique(rw[pt.type[rw] != T_WRITABLE]).tolist():
            bad.append(f"mfn {target:#x} is mapped writable by L1 mfn {mfn:#x} but is in use as "
                       f"{type_name(int(pt.type[target]))}")
        return
    for i, target in enumerate(targets.tolist()):
        entry = int(vals[i])
        where = f"L{level} mfn {mfn:#x}[{int(idx[i])}]"
        tt = int(pt.type[target])
        if target == mfn:
            if entry & _RW:
                bad.append(f"{where} maps its own table writable")
            continue
        exp_count[target] += 1
        exp_tc[target] += 1
        want = level - 1
        if not pt.is64 and level == 3 and int(idx[i]) == 3:
            want = T_L2 | T_PAE_XEN_L2
        if tt & 0xF == level:
            exp_linear[mfn] += 1
            exp_linear[target] -= 1
            if entry & _RW:
                bad.append(f"{where} is a writable linear entry")
        elif tt != want:
            bad.append(f"{where} maps mfn {target:#x} of type {type_name(tt)}, expected "
                       f"{type_name(want)}")
        if not pt.flags[target] & F_VALIDATED:
            bad.append(f"{where} maps mfn {target:#x}, which is not validated")
    _check_xen_slots(pt, mfn, t, table, bad)


def _check_xen_slots(pt, mfn: int, t: int, table, bad: list[str]) -> None:
    if t == T_L4:
        for slot in range(XEN_L4_FIRST, XEN_L4_LAST + 1):
            want = pt.xen_slots.get(slot, 0)
            have = int(table[slot])
            if have != want and not (slot == pt.m2p_slot and have == 0):
                bad.append(f"L4 mfn {mfn:#x} slot {slot} is {have:#x}, Xen's entry is {want:#x}")
    elif t == T_L2 | T_PAE_XEN_L2:
        for index in range(pt.xen_l2_first, 512):
            want = pt.xen_slots.get(index, 0)
            if int(table[index]) != want:
                bad.append(f"PAE Xen L2 mfn {mfn:#x}[{index}] is {int(table[index]):#x}, "
                           f"Xen's entry is {want:#x}")


__all__ = ["check", "_P"]
