"""``xen_version`` and ``vm_assist`` (Xen's ``common/kernel.c``)."""

from __future__ import annotations

import struct

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, EINVAL, ENODATA, ENOSYS

XEN_MAJOR, XEN_MINOR = 4, 17
EXTRAVERSION = b".0-xendbg"
CHANGESET = b"xendbg"
COMPILE_INFO = (b"xendbg", b"python", b"xendbg", b"2026-11-25")   # compiler, by, domain, date

# Features a PV domU sees (``XENVER_get_features`` submap 0).
PV_FEATURES = (1 << X.XENFEAT_writable_page_tables) | (1 << X.XENFEAT_writable_descriptor_tables) \
    | (1 << X.XENFEAT_mmu_pt_update_preserve_ad) | (1 << X.XENFEAT_gnttab_map_avail_bits) \
    | (1 << X.XENFEAT_highmem_assist) | (1 << X.XENFEAT_pae_pgdir_above_4gb) \
    | (1 << X.XENFEAT_linux_rsdp_unrestricted)

# vm_assist types a PV guest may enable (Xen's VM_ASSIST_VALID for PV).
VM_ASSIST_VALID_64 = (1 << X.VMASST_TYPE_4gb_segments) | (1 << X.VMASST_TYPE_4gb_segments_notify) \
    | (1 << X.VMASST_TYPE_writable_pagetables) | (1 << X.VMASST_TYPE_pae_extended_cr3) \
    | (1 << X.VMASST_TYPE_architectural_iopl) | (1 << X.VMASST_TYPE_runstate_update_flag) \
    | (1 << X.VMASST_TYPE_m2p_strict)
VM_ASSIST_VALID_32 = VM_ASSIST_VALID_64 & ~(1 << X.VMASST_TYPE_m2p_strict)


def capabilities(m) -> bytes:
    return b"xen-3.0-x86_64 xen-3.0-x86_32p" if m.abi.bits == 64 else b"xen-3.0-x86_32p"


def do_xen_version(m, cmd: int, arg: int) -> int:
    g = m.guest
    word = m.abi.word
    if cmd == X.XENVER_version:
        return XEN_MAJOR << 16 | XEN_MINOR
    if cmd == X.XENVER_extraversion:
        return 0 if g.write(arg, EXTRAVERSION.ljust(16, b"\0")) else -EFAULT
    if cmd == X.XENVER_compile_info:
        data = b"".join(s.ljust(64, b"\0") for s in COMPILE_INFO)
        return 0 if g.write(arg, data) else -EFAULT
    if cmd == X.XENVER_capabilities:
        return 0 if g.write(arg, capabilities(m).ljust(1024, b"\0")) else -EFAULT
    if cmd == X.XENVER_changeset:
        return 0 if g.write(arg, CHANGESET.ljust(64, b"\0")) else -EFAULT
    if cmd == X.XENVER_platform_parameters:
        virt_start = m.abi.hypervisor_start
        return 0 if g.write(arg, virt_start.to_bytes(word, "little")) else -EFAULT
    if cmd == X.XENVER_get_features:
        raw = g.read(arg, 8)
        if raw is None:
            return -EFAULT
        submap_idx, _ = struct.unpack("<II", raw)
        if submap_idx >= X.XENFEAT_NR_SUBMAPS:
            return -EINVAL
        return 0 if g.write(arg + 4, struct.pack("<I", PV_FEATURES)) else -EFAULT
    if cmd == X.XENVER_pagesize:
        return 4096
    if cmd == X.XENVER_guest_handle:
        return 0 if g.write(arg, bytes(16)) else -EFAULT
    if cmd == X.XENVER_commandline:
        return 0 if g.write(arg, b"".ljust(1024, b"\0")) else -EFAULT
    if cmd == X.XENVER_build_id:
        return -ENODATA         # this hypervisor carries no build id
    return -ENOSYS


def do_vm_assist(m, cmd: int, assist_type: int) -> int:
    valid = VM_ASSIST_VALID_64 if m.abi.bits == 64 else VM_ASSIST_VALID_32
    if assist_type >= 64 or not valid >> assist_type & 1:
        return -EINVAL
    if cmd == X.VMASST_CMD_enable:
        m.domain.vm_assist |= 1 << assist_type
        return 0
    if cmd == X.VMASST_CMD_disable:
        m.domain.vm_assist &= ~(1 << assist_type)
        return 0
    return -ENOSYS
