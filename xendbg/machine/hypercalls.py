"""The hypercall table, declared as data (like Xen's ``hypercall-defs.c``).

One row per hypercall number: its name, its handler (``None``: not implemented → ``-ENOSYS``, counted
and visible in the trace), its argument names (how many registers it takes, and how the trace shows
them), and an optional decoder that reads the structures the arguments point to. The same rows serve
the dispatcher, the ``--trace`` writer, ``--stats`` and the debugger's panels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import xendbg.machine.vcpu_op as vcpu_op
from xendbg.machine import callback, descriptor_tables, grant_table, iret, kernel, multicall, physdev, sched
from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, ENOSYS
from xendbg.machine.mmu import memory_op, mmu_update, mmuext


class HypercallRow(NamedTuple):
    """What the dispatcher needs of one hypercall number for one ABI, resolved once."""

    name: str
    handler: Callable | None
    nargs: int                      # how many argument registers it takes
    arg_names: tuple[str, ...]


@dataclass(frozen=True)
class HypercallDef:
    nr: int
    name: str
    handler: Callable | None
    args: tuple[str, ...]
    handler32: Callable | None = None     # when the 32-bit ABI passes arguments differently
    args32: tuple[str, ...] | None = None
    # ABI bits → HypercallRow, derived from the fields above (and again by dataclasses.replace).
    rows: dict[int, HypercallRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = {bits: HypercallRow(self.name, self.handler_for(bits), len(self.args_for(bits)),
                                   self.args_for(bits)) for bits in (32, 64)}
        object.__setattr__(self, "rows", rows)

    def handler_for(self, bits: int) -> Callable | None:
        return self.handler32 if bits == 32 and self.handler32 is not None else self.handler

    def args_for(self, bits: int) -> tuple[str, ...]:
        return self.args32 if bits == 32 and self.args32 is not None else self.args


# --- thin adapters from registers to mechanisms ------------------------------------------------

def do_console_io(m, cmd: int, count: int, buf: int) -> int:
    if cmd == X.CONSOLEIO_write:
        if count > 1 << 20:
            count = 1 << 20          # Xen would make a continuation; one MiB per call is plenty
        data = m.guest.read(buf, count)
        if data is None:
            return -EFAULT
        m.console.write_from_hypercall(data)
        return 0
    if cmd == X.CONSOLEIO_read:
        if count == 0:
            return 0
        # Check the buffer first, so that a bad pointer does not eat input.
        if not m.guest.accessible(buf, count) or m.guest.translate(buf, True) is None:
            return -EFAULT
        data = m.console.take_input(min(count, 4096))
        if data and not m.guest.write(buf, data):
            return -EFAULT
        return len(data)
    return -ENOSYS


def do_event_channel_op(m, cmd: int, arg: int) -> int:
    def read(n: int) -> bytes | None:
        return m.guest.read(arg, n)

    def write(off: int, data: bytes) -> bool:
        return m.guest.write(arg + off, data)

    return m.evtchn.op(cmd, read, write)


def do_event_channel_op_compat(m, arg: int) -> int:
    """The old form: one ``struct evtchn_op {u32 cmd; union u}`` (28 bytes)."""
    return m.evtchn.op_compat(lambda n: m.guest.read(arg, n),
                              lambda off, data: m.guest.write(arg + off, data))


def _unimplemented(name: str, *args: str) -> HypercallDef:
    return HypercallDef(getattr(X, f"HYPERVISOR_{name}"), name, None, args)


TABLE: tuple[HypercallDef, ...] = (
    HypercallDef(0, "set_trap_table", callback.do_set_trap_table, ("traps",)),
    HypercallDef(1, "mmu_update", mmu_update.do_mmu_update, ("req", "count", "done", "foreigndom")),
    HypercallDef(2, "set_gdt", descriptor_tables.do_set_gdt, ("frame_list", "entries")),
    HypercallDef(3, "stack_switch", callback.do_stack_switch, ("ss", "sp")),
    HypercallDef(4, "set_callbacks", callback.do_set_callbacks,
                 ("event_address", "failsafe_address", "syscall_address"),
                 args32=("event_cs", "event_eip", "failsafe_cs", "failsafe_eip")),
    HypercallDef(5, "fpu_taskswitch", callback.do_fpu_taskswitch, ("set",)),
    HypercallDef(6, "sched_op_compat", sched.do_sched_op_compat, ("cmd", "arg")),
    _unimplemented("platform_op", "op"),
    HypercallDef(8, "set_debugreg", callback.do_set_debugreg, ("reg", "value")),
    HypercallDef(9, "get_debugreg", callback.do_get_debugreg, ("reg",)),
    HypercallDef(10, "update_descriptor", descriptor_tables.do_update_descriptor, ("ma", "desc"),
                 handler32=descriptor_tables.do_update_descriptor32,
                 args32=("ma_lo", "ma_hi", "desc_lo", "desc_hi")),
    HypercallDef(12, "memory_op", memory_op.do_memory_op, ("cmd", "arg")),
    HypercallDef(13, "multicall", multicall.do_multicall, ("call_list", "nr_calls")),
    HypercallDef(14, "update_va_mapping", mmu_update.do_update_va_mapping, ("va", "val", "flags"),
                 handler32=mmu_update.do_update_va_mapping32,
                 args32=("va", "val_lo", "val_hi", "flags")),
    HypercallDef(15, "set_timer_op", vcpu_op.do_set_timer_op, ("timeout",),
                 handler32=vcpu_op.do_set_timer_op32, args32=("timeout_lo", "timeout_hi")),
    HypercallDef(16, "event_channel_op_compat", do_event_channel_op_compat, ("op",)),
    HypercallDef(17, "xen_version", kernel.do_xen_version, ("cmd", "arg")),
    HypercallDef(18, "console_io", do_console_io, ("cmd", "count", "buf")),
    HypercallDef(19, "physdev_op_compat", physdev.do_physdev_op_compat, ("op",)),
    HypercallDef(20, "grant_table_op", grant_table.do_grant_table_op, ("cmd", "uop", "count")),
    HypercallDef(21, "vm_assist", kernel.do_vm_assist, ("cmd", "type")),
    HypercallDef(22, "update_va_mapping_otherdomain", mmu_update.do_update_va_mapping_otherdomain,
                 ("va", "val", "flags", "domid"),
                 handler32=mmu_update.do_update_va_mapping_otherdomain32,
                 args32=("va", "val_lo", "val_hi", "flags", "domid")),
    HypercallDef(23, "iret", iret.do_iret, ()),
    HypercallDef(24, "vcpu_op", vcpu_op.do_vcpu_op, ("cmd", "vcpuid", "extra")),
    HypercallDef(25, "set_segment_base", descriptor_tables.do_set_segment_base, ("which", "base")),
    HypercallDef(26, "mmuext_op", mmuext.do_mmuext_op, ("op", "count", "done", "foreigndom")),
    _unimplemented("xsm_op", "op"),
    _unimplemented("nmi_op", "cmd", "arg"),
    HypercallDef(29, "sched_op", sched.do_sched_op, ("cmd", "arg")),
    HypercallDef(30, "callback_op", callback.do_callback_op, ("cmd", "arg")),
    _unimplemented("xenoprof_op", "op", "arg"),
    HypercallDef(32, "event_channel_op", do_event_channel_op, ("cmd", "arg")),
    HypercallDef(33, "physdev_op", physdev.do_physdev_op, ("cmd", "arg")),
    _unimplemented("hvm_op", "op", "arg"),
    _unimplemented("sysctl", "op"),
    _unimplemented("domctl", "op"),
    _unimplemented("kexec_op", "op", "arg"),
    _unimplemented("tmem_op", "op"),
    _unimplemented("argo_op", "cmd", "arg1", "arg2", "arg3", "arg4"),
    _unimplemented("xenpmu_op", "op", "arg"),
    _unimplemented("dm_op", "domid", "nr_bufs", "bufs"),
    _unimplemented("hypfs_op", "cmd", "arg1", "arg2", "arg3", "arg4"),
)

BY_NR: dict[int, HypercallDef] = {d.nr: d for d in TABLE}
NR_HYPERCALLS = X.NR_HYPERCALLS


def name_of(nr: int) -> str:
    d = BY_NR.get(nr)
    return d.name if d else X.HYPERCALL_NAMES.get(nr, f"hypercall_{nr}")


def row_of(nr: int, bits: int) -> HypercallRow:
    """The dispatcher's view of ``nr``: a number without a row takes no arguments and has no
    handler (-ENOSYS). Looked up in BY_NR on every call, so a replaced row takes effect at once."""
    d = BY_NR.get(nr) if nr < NR_HYPERCALLS else None
    if d is not None:
        return d.rows[bits]
    return HypercallRow(name_of(nr), None, 0, ())
