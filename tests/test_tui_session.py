"""The debugger session's per-event work, kept lean for the TUI's live runs (issue 7, "Live"),
must still record what the panels and commands show; and ``xendbg [KERNEL] --symbols FILE``.
"""

from __future__ import annotations

import pytest

from xendbg.debugger import Session, symbols_for_image
from xendbg.debugger.decode import decode_call


@pytest.mark.parametrize("guest", ["mmu-pv64", "mmu-pv32", "demo"])
def test_frame_history_is_what_the_decoder_names(lab_machine, guest):
    """The session reads only the command and frame of each mmu_update/mmuext_op request; the
    full decoder, run on the same calls at the same moment, names the same (command, frame)s."""
    m = lab_machine(guest, 64)
    s = Session(m, symbols_for_image(m.image))
    expected: dict[int, list[tuple[int, str]]] = {}

    def decode_each(e) -> None:
        d = e.data
        if e.kind != "hypercall" or d["name"] not in ("mmu_update", "mmuext_op"):
            return
        decoded = decode_call(m, d["name"], dict(zip(d["arg_names"], d["args"], strict=False)))
        for op in decoded.data.get("ops", decoded.data.get("requests", [])):
            if op.get("mfn") is not None:
                expected.setdefault(op["mfn"], []).append((e.insns, f"{d['name']} {op['cmd']}"))

    m.listeners.append(decode_each)
    s.resume(2_000_000)
    got = {mfn: [(n, text.split(" → ")[0]) for n, kind, text in h if kind == "call"]
           for mfn, h in s.frame_history.items()}
    got = {mfn: h for mfn, h in got.items() if h}
    assert expected, "the guest made no frame-naming call"
    assert got == expected


def test_console_text_and_console_breakpoint(lab_machine):
    """The console is kept in chunks; what the session shows and what a console breakpoint
    matches (across chunks) is the whole text."""
    m = lab_machine("demo", 64)
    s = Session(m, symbols_for_image(m.image))
    assert s.execute("break console burst 3: upcalls").ok
    stop = s.resume(5_000_000)
    assert stop.reason == "breakpoint", stop.text
    text = s.console_text
    assert "demo: burst 3: upcalls" in text
    assert s.console_text is text             # joined once, then kept as one chunk


def test_console_text_is_bounded(lab_machine):
    m = lab_machine("demo", 64)
    s = Session(m, symbols_for_image(m.image))
    from xendbg.machine.machine import Event
    chunk = b"x" * 4095 + b"\n"
    for _ in range(300):                       # 1.2 MiB
        s._on_event(Event("console", 0, {"data": chunk}))
    assert (1 << 19) <= len(s.console_text) <= 1 << 20
    assert s.console_text.endswith("x\n")


def test_tui_parser_takes_symbols():
    from xendbg.cli import build_tui_parser
    args = build_tui_parser().parse_args(["demo", "--symbols", "System.map"])
    assert args.symbols == "System.map" and args.kernel == "demo"


def test_tui_bad_symbols_file_is_bad_usage(tmp_path, capsys):
    """As `xendbg run --symbols`: exit 2, one line on stderr, before any screen opens."""
    from xendbg.app import run_app
    from xendbg.cli import build_tui_parser
    missing = tmp_path / "nope.map"
    assert run_app(build_tui_parser().parse_args(["--symbols", str(missing)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("xendbg: --symbols: ") and str(missing) in err
    bad = tmp_path / "bad.map"
    bad.write_text("zzzz T start\n")
    assert run_app(build_tui_parser().parse_args(["--symbols", str(bad)])) == 2
    assert "bad address" in capsys.readouterr().err
