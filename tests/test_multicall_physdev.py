"""multicall batching and physdev_op as a domU gets it, through the hypercall interface."""

from __future__ import annotations

import struct

import pytest

from xendbg.machine.abi import xen as X


def call(m, nr, *args):
    result = m.dispatch(nr, list(args), 0)
    return result if result >= 0 or result < -4096 else result


@pytest.mark.parametrize("guest", ["hello-pv64", "hello-pv32"])
def test_multicall_runs_entries_and_writes_only_results(lab_machine, scratch_va, guest):
    m = lab_machine(guest)
    va = scratch_va(m)
    word = m.abi.word
    fmt = "<8Q" if word == 8 else "<8I"
    entries = [
        (X.HYPERVISOR_xen_version, 0xAAAA, X.XENVER_version, 0, 0, 0, 0, 0),
        (63, 0xBBBB, 1, 2, 3, 4, 5, 6),                              # unknown: -ENOSYS
        (X.HYPERVISOR_iret, 0, 0, 0, 0, 0, 0, 0),                    # not allowed in a batch
        (X.HYPERVISOR_vm_assist, 0, X.VMASST_CMD_enable, X.VMASST_TYPE_writable_pagetables,
         0xDEAD, 0, 0, 0),
        (X.HYPERVISOR_multicall, 0, va, 1, 0, 0, 0, 0),              # no nesting
    ]
    m.guest.write(va, b"".join(struct.pack(fmt, *e) for e in entries))
    assert call(m, X.HYPERVISOR_multicall, va, len(entries)) == 0
    raw = m.guest.read(va, len(entries) * m.abi.multicall_entry_size)
    got = [struct.unpack_from(fmt, raw, i * m.abi.multicall_entry_size)
           for i in range(len(entries))]
    mask = (1 << (8 * word)) - 1
    assert got[0][1] == 4 << 16 | 17
    assert got[1][1] == -38 & mask
    assert got[2][1] == -38 & mask
    assert got[3][1] == 0 and m.domain.vm_assist & (1 << X.VMASST_TYPE_writable_pagetables)
    assert got[4][1] == -38 & mask
    for before, after in zip(entries, got, strict=True):
        assert before[0] == after[0] and before[2:] == after[2:], "only result may change"
    assert [e.result for e in m.multicalls.last] == [4 << 16 | 17, -38, -38, 0, -38]


def test_multicall_bad_list_is_efault(lab_machine):
    m = lab_machine("hello-pv64")
    assert call(m, X.HYPERVISOR_multicall, 0x1000, 2) == -14
    assert call(m, X.HYPERVISOR_multicall, 0xFFFF800000000000, 1) == -14


def test_multicall_stops_when_the_domain_dies(lab_machine, scratch_va):
    m = lab_machine("hello-pv64")
    va = scratch_va(m)
    reason = va + 0x800
    m.guest.write(reason, struct.pack("<I", X.SHUTDOWN_reboot))
    entries = [(X.HYPERVISOR_sched_op, 0, X.SCHEDOP_shutdown, reason, 0, 0, 0, 0),
               (X.HYPERVISOR_xen_version, 0x1234, 0, 0, 0, 0, 0, 0)]
    m.guest.write(va, b"".join(struct.pack("<8Q", *e) for e in entries))
    assert call(m, X.HYPERVISOR_multicall, va, 2) == 0
    assert m.domain.shutdown is not None and m.domain.shutdown.name == "reboot"
    assert len(m.multicalls.last) == 1
    assert m.guest.read_u64(va + 64 + 8) == 0x1234, "the entry after the shutdown did not run"


@pytest.mark.parametrize("guest", ["hello-pv64", "hello-pv32"])
def test_physdev_as_a_domu(lab_machine, scratch_va, guest):
    m = lab_machine(guest)
    va = scratch_va(m)
    m.guest.write_u32(va, 1)
    assert call(m, X.HYPERVISOR_physdev_op, 6, va) == 0 and m.vcpu.iopl == 1      # set_iopl
    m.guest.write_u32(va, 4)
    assert call(m, X.HYPERVISOR_physdev_op, 6, va) == -22
    assert call(m, X.HYPERVISOR_physdev_op, 6, 0x1000) == -14
    assert call(m, X.HYPERVISOR_physdev_op, 13, va) == -1                        # map_pirq
    assert call(m, X.HYPERVISOR_physdev_op, 99, va) == -38
    # pirq_eoi_gmfn_v2: a frame of its own, once
    m.guest.write_word(va, m.domain.store_mfn)
    assert call(m, X.HYPERVISOR_physdev_op, 28, va) == 0
    assert call(m, X.HYPERVISOR_physdev_op, 28, va) == -16
    # the compat form carries the command in the structure
    m.guest.write(va, struct.pack("<II", 6, 3))
    assert call(m, X.HYPERVISOR_physdev_op_compat, va) == 0 and m.vcpu.iopl == 3


def test_physdev_eoi_map_must_be_owned(lab_machine, scratch_va):
    m = lab_machine("hello-pv64")
    va = scratch_va(m)
    m.guest.write_word(va, 1)          # frame 1 is Xen's
    assert call(m, X.HYPERVISOR_physdev_op, 28, va) == -22


@pytest.mark.parametrize("guest", ["hello-pv64", "hello-pv32"])
def test_a_domu_allocates_pirq_numbers_but_binds_none(lab_machine, scratch_va, guest):
    from xendbg.machine.physdev import NR_IRQS_GSI, NR_PIRQS_DOMU

    m = lab_machine(guest)
    va = scratch_va(m)
    m.guest.write(va, struct.pack("<II", 3, 0xdead))
    assert call(m, X.HYPERVISOR_physdev_op, 5, va) == 0                          # status query
    assert m.guest.read_u32(va + 4) == 1, "Xen always says XENIRQSTAT_needs_eoi"
    m.guest.write_u32(va, NR_PIRQS_DOMU)
    assert call(m, X.HYPERVISOR_physdev_op, 5, va) == -22
    m.guest.write_u32(va, NR_PIRQS_DOMU - 1)
    assert call(m, X.HYPERVISOR_physdev_op, 12, va) == -22, "eoi of a PIRQ never allocated"
    # MSI-type numbers come from the top down, GSI-type from 16 up, until none is left
    got = []
    for kind in [0] * (NR_PIRQS_DOMU - NR_IRQS_GSI) + [1] * (NR_IRQS_GSI - 16):
        m.guest.write(va, struct.pack("<iI", kind, 0))
        assert call(m, X.HYPERVISOR_physdev_op, 23, va) == 0
        got.append(m.guest.read_u32(va + 4))
    assert got == list(range(NR_PIRQS_DOMU - 1, NR_IRQS_GSI - 1, -1)) + list(range(16, NR_IRQS_GSI))
    m.guest.write(va, struct.pack("<iI", 0, 0))
    assert call(m, X.HYPERVISOR_physdev_op, 23, va) == -28                       # none left
    m.guest.write_u32(va, NR_PIRQS_DOMU - 1)
    assert call(m, X.HYPERVISOR_physdev_op, 12, va) == 0, "eoi of an allocated PIRQ"
    assert call(m, X.HYPERVISOR_physdev_op, 23, 0x1000) == -14
