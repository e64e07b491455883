"""Selector for the page walk (see ``_walk_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import PURE_PYTHON

if TYPE_CHECKING or PURE_PYTHON:
    from xendbg.fast._walk_py import (
        WALK_BAD_FRAME,
        WALK_NONCANONICAL,
        WALK_NOT_PRESENT,
        WALK_OK,
        walk,
    )
    IMPLEMENTATION = "python"
else:
    try:
        from xendbg.fast._walk_c import (  # type: ignore[no-redef]
            WALK_BAD_FRAME,
            WALK_NONCANONICAL,
            WALK_NOT_PRESENT,
            WALK_OK,
            walk,
        )
        IMPLEMENTATION = "cython"
    except ImportError:
        from xendbg.fast._walk_py import (
            WALK_BAD_FRAME,
            WALK_NONCANONICAL,
            WALK_NOT_PRESENT,
            WALK_OK,
            walk,
        )
        IMPLEMENTATION = "python"

__all__ = ["walk", "WALK_OK", "WALK_NOT_PRESENT", "WALK_BAD_FRAME", "WALK_NONCANONICAL",
           "IMPLEMENTATION"]
