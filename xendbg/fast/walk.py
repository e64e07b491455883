"""Selector for the page walk (see ``_walk_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import load_twin

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

# Every name comes from the one module load_twin chose: the compiled and the fallback case export
# the same set by construction.
_impl, IMPLEMENTATION = load_twin("walk")
globals().update((_name, getattr(_impl, _name)) for _name in __all__[:-1])
