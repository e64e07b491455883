"""Selector for the L1 validation loop (see ``_validate_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import PURE_PYTHON

if TYPE_CHECKING or PURE_PYTHON:
    from xendbg.fast._validate_py import devalidate_l1, validate_l1
    IMPLEMENTATION = "python"
else:
    try:
        from xendbg.fast._validate_c import (  # type: ignore[no-redef]
            devalidate_l1,
            validate_l1,
        )
        IMPLEMENTATION = "cython"
    except ImportError:
        from xendbg.fast._validate_py import devalidate_l1, validate_l1
        IMPLEMENTATION = "python"

__all__ = ["validate_l1", "devalidate_l1", "IMPLEMENTATION"]
