"""Selector for the pvclock scaling (see ``_pvclock_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import PURE_PYTHON

if TYPE_CHECKING or PURE_PYTHON:
    from xendbg.fast._pvclock_py import (
        TscHook,
        pvclock_read,
        scale_delta,
        scale_reciprocal,
        set_time_scale,
        tsc_for_ns,
    )
    IMPLEMENTATION = "python"
else:
    try:
        from xendbg.fast._pvclock_c import (  # type: ignore[no-redef]
            TscHook,
            pvclock_read,
            scale_delta,
            scale_reciprocal,
            set_time_scale,
            tsc_for_ns,
        )
        IMPLEMENTATION = "cython"
    except ImportError:
        from xendbg.fast._pvclock_py import (
            pvclock_read,
            scale_delta,
            scale_reciprocal,
            set_time_scale,
            tsc_for_ns,
        )
        IMPLEMENTATION = "python"

__all__ = ["TscHook", "scale_delta", "set_time_scale", "scale_reciprocal", "pvclock_read", "tsc_for_ns",
           "IMPLEMENTATION"]
