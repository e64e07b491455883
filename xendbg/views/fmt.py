"""Small formatting helpers shared by the panels (no Textual, no machine access)."""

from __future__ import annotations

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import errno_name
from xendbg.messages import View


def owner_name(owner: int, domid: int) -> str:
    if owner == domid:
        return f"dom{owner}"
    if owner == X.DOMID_XEN:
        return "xen"
    if owner == X.DOMID_INVALID:
        return "free"
    if owner == X.DOMID_IO:
        return "io"
    return f"dom{owner}"


def hexw(value: int, bits: int) -> str:
    """``value`` in hex, zero-padded to the guest's word width."""
    return f"{value & ((1 << bits) - 1):0{bits // 4}x}"


def result_text(result: int | None) -> str:
    if result is None:
        return "-"
    if -4096 < result < 0:
        return f"{result} {errno_name(result)}"
    return f"{result:#x}" if result > 9 else str(result)


def vtime_text(view: View) -> str:
    """Virtual time as the clock gives it (ns), else the TSC (instructions)."""
    snap = view.snap
    if snap.vtime_ns is not None:
        return f"{snap.vtime_ns / 1e9:.6f} s"
    return f"tsc {snap.tsc}"


def changed(view: View, get) -> bool:
    """Whether ``get(snapshot)`` differs from the snapshot of the previous stop."""
    if view.before is None:
        return False
    try:
        return get(view.snap) != get(view.before)
    except (AttributeError, IndexError, KeyError, TypeError):
        return False
