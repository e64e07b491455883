"""Selector for the block counter (see ``_blockhook_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import export_twin

if TYPE_CHECKING:                              # for type checkers: the twin's signatures
    from xendbg.fast._blockhook_py import (
        STOP_BUDGET,
        STOP_NONE,
        STOP_REQUEST,
        BlockCounter,
    )

__all__ = [
    "BlockCounter",
    "STOP_NONE",
    "STOP_BUDGET",
    "STOP_REQUEST",
    "IMPLEMENTATION",
]

IMPLEMENTATION = export_twin("blockhook", globals())
