"""Selector for the block counter (see ``_blockhook_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import load_twin

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

# Every name comes from the one module load_twin chose: the compiled and the fallback case export
# the same set by construction.
_impl, IMPLEMENTATION = load_twin("blockhook")
globals().update((_name, getattr(_impl, _name)) for _name in __all__[:-1])
