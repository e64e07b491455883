"""Selector for the L1 validation loop (see ``_validate_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import export_twin

if TYPE_CHECKING:                              # for type checkers: the twin's signatures
    from xendbg.fast._validate_py import (
        devalidate_l1,
        validate_l1,
    )

__all__ = [
    "validate_l1",
    "devalidate_l1",
    "IMPLEMENTATION",
]

IMPLEMENTATION = export_twin("validate", globals())
