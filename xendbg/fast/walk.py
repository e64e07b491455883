"""Selector for the page walk (see ``_walk_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import export_twin

if TYPE_CHECKING:                              # for type checkers: the twin's signatures
    from xendbg.fast._walk_py import (
        WALK_BAD_FRAME,
        WALK_NONCANONICAL,
        WALK_NOT_PRESENT,
        WALK_OK,
        walk,
    )

__all__ = [
    "walk",
    "WALK_OK",
    "WALK_NOT_PRESENT",
    "WALK_BAD_FRAME",
    "WALK_NONCANONICAL",
    "IMPLEMENTATION",
]

IMPLEMENTATION = export_twin("walk", globals())
