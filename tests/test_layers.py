"""Architecture rules that are easy to break silently."""

from __future__ import annotations

import ast
from pathlib import Path

import xendbg

ROOT = Path(xendbg.__file__).resolve().parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_machine_never_imports_the_ui():
    offenders = []
    for path in (ROOT / "machine").rglob("*.py"):
        bad = _imports(path) & {"textual", "rich"}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders


def test_machine_never_prints():
    offenders = []
    for path in (ROOT / "machine").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


def test_hypercall_table_rows_resolve():
    from xendbg.machine import hypercalls
    from xendbg.machine.abi.xen import HYPERCALL_NAMES
    seen = set()
    for row in hypercalls.TABLE:
        assert row.nr not in seen
        seen.add(row.nr)
        assert HYPERCALL_NAMES[row.nr] == row.name
        assert row.handler is None or callable(row.handler)
    # every do_* handler module function that exists is reachable from the table
    handlers = {row.handler for row in hypercalls.TABLE} | {row.handler32 for row in hypercalls.TABLE}
    for mod in ("callback", "descriptor_tables", "iret", "kernel", "sched"):
        module = __import__(f"xendbg.machine.{mod}", fromlist=["x"])
        for name in dir(module):
            if name.startswith("do_") and name not in ("do_sched_op_compat",):
                fn = getattr(module, name)
                assert fn in handlers or name == "do_update_descriptor", f"{mod}.{name} not in the table"
