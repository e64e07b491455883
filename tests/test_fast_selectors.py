"""The fast-path selectors (``xendbg/fast/<name>.py``): where the compiled module is missing (a
machine without a compiler), each falls back to its Python twin with every name it exports."""

from __future__ import annotations

import importlib
import sys

import pytest

import xendbg.fast

TWINS = ["blockhook", "pvclock", "walk", "validate"]


@pytest.mark.parametrize("name", TWINS)
def test_without_the_compiled_module_every_name_comes_from_the_twin(name, monkeypatch):
    monkeypatch.setattr(xendbg.fast, "PURE_PYTHON", False)
    monkeypatch.setitem(sys.modules, f"xendbg.fast._{name}_c", None)    # import fails: not built
    selector = importlib.import_module(f"xendbg.fast.{name}")
    twin = importlib.import_module(f"xendbg.fast._{name}_py")
    try:
        importlib.reload(selector)
        assert selector.IMPLEMENTATION == "python"
        for exported in selector.__all__[:-1]:
            assert getattr(selector, exported) is getattr(twin, exported), exported
    finally:
        monkeypatch.undo()
        importlib.reload(selector)              # back to what the rest of the suite imported


@pytest.mark.parametrize("name", TWINS)
def test_pure_python_asks_for_the_twin(name, monkeypatch):
    monkeypatch.setattr(xendbg.fast, "PURE_PYTHON", True)
    module, kind = xendbg.fast.load_twin(name)
    assert kind == "python" and module.__name__ == f"xendbg.fast._{name}_py"
