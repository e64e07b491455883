"""Selector for the L1 validation loop (see ``_validate_py`` for the documentation)."""

from typing import TYPE_CHECKING

from xendbg.fast import load_twin

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

# Every name comes from the one module load_twin chose: the compiled and the fallback case export
# the same set by construction.
_impl, IMPLEMENTATION = load_twin("validate")
globals().update((_name, getattr(_impl, _name)) for _name in __all__[:-1])
