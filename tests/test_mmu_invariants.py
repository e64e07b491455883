"""The invariant checker: it holds after every hypercall of real guests, and it notices breakage."""

from __future__ import annotations

import pytest

from xendbg.guests import lab_image
from xendbg.machine.mmu._validate import F_PINNED
from xendbg.machine.mmu.invariants import check

LAB_GUESTS = ["hello-pv64", "hello-pv32", "events-pv64", "events-pv32", "mmu-pv64", "mmu-pv32"]


def _checked_run(m, max_insns: int):
    """Run ``m``, checking the invariants after every hypercall; (reason, violations, calls)."""
    seen: list[tuple[int, str, list[str]]] = []
    calls: list[str] = []

    def on_event(e) -> None:
        if e.kind != "hypercall":
            return
        calls.append(e.data["name"])
        problems = check(m)
        if problems:
            seen.append((e.insns, e.data["name"], problems))

    m.listeners.append(on_event)
    return m.run(max_insns=max_insns), seen, calls


@pytest.mark.parametrize("name", LAB_GUESTS)
def test_invariants_hold_after_every_hypercall_of_the_lab_guests(lab_machine, name):
    if not lab_image(name).exists():
        pytest.skip(f"{name} is not built yet")
    m = lab_machine(name)
    assert check(m) == []
    reason, seen, calls = _checked_run(m, 50_000_000)
    assert seen == [], seen[:3]
    assert calls and reason in ("shutdown", "blocked", "budget")


def test_grant_frames_are_in_the_frame_table(lab_machine):
    """The grant table's frames are Xen pages shared with the guest: allocated to the domain
    with a permanent writable type, so that the guest may map them and never as a table."""
    m = lab_machine("hello-pv64")
    pt = m.mmu.pt
    assert m.grant_table.frames
    for mfn in m.grant_table.frames:
        info = m.mmu.frame_info(mfn)
        assert info["xen_heap"] and info["type"] == "writable" and pt.type_count[mfn] == 1
    assert check(m) == []


@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_the_checker_catches_a_broken_frame_table(mmu_kit, name):
    kit = mmu_kit(name)
    m = kit.m
    pt = m.mmu.pt
    assert kit.check() == []
    top = m.vcpu.guest_table
    (spare,) = kit.spare()
    stack = next(r for r in m.layout.regions if r.name == "boot stack")
    data = int(m.domain.p2m[stack.pfn])
    l1 = kit.entry_ma(kit.scratch, 1) >> 12
    l1_entry = kit.entry_ma(kit.scratch, 1)

    def broken(mutate, undo, expect: str) -> None:
        mutate()
        problems = check(m)
        undo()
        assert any(expect in p for p in problems), problems
        assert check(m) == []

    broken(lambda: pt.count.__setitem__(spare, 2), lambda: pt.count.__setitem__(spare, 1),
           "reference count")
    broken(lambda: pt.type_count.__setitem__(data, 0), lambda: pt.type_count.__setitem__(data, 1),
           "type count")
    saved = m.memory.read_u64(l1_entry)
    broken(lambda: m.memory.write_u64(l1_entry, top << 12 | 0x67),
           lambda: m.memory.write_u64(l1_entry, saved), "mapped writable")
    broken(lambda: pt.flags.__setitem__(spare, pt.flags[spare] | F_PINNED),
           lambda: pt.flags.__setitem__(spare, pt.flags[spare] & (0xFF ^ F_PINNED)), "not a validated")
    broken(lambda: m.memory.write_u64(l1_entry, saved | 1 << 7),
           lambda: m.memory.write_u64(l1_entry, saved), "disallowed")
    if kit.is64:
        slot = (top << 12) + 262 * 8
        xen = m.memory.read_u64(slot)
        broken(lambda: m.memory.write_u64(slot, 0), lambda: m.memory.write_u64(slot, xen),
               "Xen's entry")
    cr3 = m.cpu.cr3
    broken(lambda: setattr(m.cpu, "cr3", l1 << 12), lambda: setattr(m.cpu, "cr3", cr3), "cr3")


def test_grub_rebuilds_its_page_tables_with_no_rejected_update(debian_guest):
    """GRUB x86_64 builds a new L4, pins it, switches to it and unpins the builder's (issue #3,
    acceptance 2), with the invariants holding after every hypercall."""
    from xendbg.machine.builder import BuildConfig
    from xendbg.machine.loader import load_kernel
    from xendbg.machine.machine import Machine

    m = Machine(load_kernel(debian_guest("grub-x86_64")), BuildConfig(memory_mib=128))
    rejected = []
    ops = []
    m.listeners.append(lambda e: rejected.append(e.data["why"]) if e.kind == "mmu_reject"
                       else None)
    m.listeners.append(lambda e: ops.append((e.data["why"], e.data["pinned"]))
                       if e.kind == "page_type" and "pinned" in e.data else None)
    old = m.vcpu.guest_table
    _reason, seen, calls = _checked_run(m, 3_000_000)
    assert "mmuext_op" in calls and rejected == [] and seen == []
    new = m.vcpu.guest_table
    assert new != old
    assert [p for _w, p in ops] == [1, 0]
    assert ops[0][0] == f"MMUEXT_PIN_L4_TABLE mfn {new:#x}"
    assert m.mmu.pt.flags[new] & F_PINNED and not m.mmu.pt.flags[old] & F_PINNED
    assert m.stats.errors.get("update_va_mapping", 0) == 0
