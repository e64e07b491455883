"""The L1 validation loop, compiled when a compiled twin exists (see ``fast/_validate_py``).

``xendbg.fast.validate`` is the selector the fast path provides once ``_validate_c`` exists; until
then (or with ``XENDBG_PURE_PYTHON=1``, which that selector honours) the Python twin is used.
"""

from __future__ import annotations

try:
    from xendbg.fast.validate import devalidate_l1, validate_l1  # type: ignore[import-not-found]
except ImportError:
    from xendbg.fast._validate_py import devalidate_l1, validate_l1

from xendbg.fast._validate_py import (
    BAD_FLAGS,
    F_ALLOCATED,
    F_PINNED,
    F_VALIDATED,
    F_XEN_HEAP,
    INVALID_MFN,
    NO_SUCH_FRAME,
    NOT_OWNER,
    OK,
    T_L1,
    T_L2,
    T_L3,
    T_L4,
    T_NONE,
    T_PAE_XEN_L2,
    T_SEG_DESC,
    T_WRITABLE,
    WRITABLE_TYPE,
)

__all__ = ["validate_l1", "devalidate_l1", "OK", "BAD_FLAGS", "NO_SUCH_FRAME", "INVALID_MFN",
           "NOT_OWNER", "WRITABLE_TYPE", "T_NONE", "T_L1", "T_L2", "T_L3", "T_L4", "T_SEG_DESC",
           "T_WRITABLE", "T_PAE_XEN_L2", "F_VALIDATED", "F_PINNED", "F_ALLOCATED", "F_XEN_HEAP"]
