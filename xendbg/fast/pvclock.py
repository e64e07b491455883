"""Selector for the pvclock scaling (see ``_pvclock_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import export_twin

if TYPE_CHECKING:                              # for type checkers: the twin's signatures
    from xendbg.fast._pvclock_py import (
        TscHook,
        pvclock_read,
        scale_delta,
        scale_reciprocal,
        set_time_scale,
        tsc_for_ns,
    )

__all__ = [
    "TscHook",
    "scale_delta",
    "set_time_scale",
    "scale_reciprocal",
    "pvclock_read",
    "tsc_for_ns",
    "IMPLEMENTATION",
]

IMPLEMENTATION = export_twin("pvclock", globals())
