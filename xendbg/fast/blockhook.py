"""Selector for the block counter (see ``_blockhook_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import PURE_PYTHON

if TYPE_CHECKING or PURE_PYTHON:
    from xendbg.fast._blockhook_py import STOP_BUDGET, STOP_NONE, STOP_REQUEST, BlockCounter
    IMPLEMENTATION = "python"
else:
    try:
        from xendbg.fast._blockhook_c import (  # type: ignore[no-redef]
            STOP_BUDGET,
            STOP_NONE,
            STOP_REQUEST,
            BlockCounter,
        )
        IMPLEMENTATION = "cython"
    except ImportError:
        from xendbg.fast._blockhook_py import STOP_BUDGET, STOP_NONE, STOP_REQUEST, BlockCounter
        IMPLEMENTATION = "python"

__all__ = ["BlockCounter", "STOP_NONE", "STOP_BUDGET", "STOP_REQUEST", "IMPLEMENTATION"]
