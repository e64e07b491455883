"""The TUI's costs (issue 7): guest speed with the TUI open and refreshing, pause latency in the
TUI, and the time to render the pfn→mfn panel for 65536 pages. Each against a baseline measured in
this run:

* guest speed — the same guest, run headless (``Machine.run`` with a timer that pauses it) for the
  same wall time, against ``continue`` in the TUI with its panels refreshing (the app runs under
  Textual's headless driver, which composes every frame but writes no terminal; the machine in
  its own process, as ``xendbg`` runs it, and — for comparison — in a thread of the UI's);
* the TUI's work in the emulator's process — the time its driver spends on ticks, live snapshots
  and sending the streams, against the run's time (both from the same run: a share that a noisy
  host does not move, where the speed rows above swing by ±15% from one run to the next);
* pause latency — ``Session.pause()`` from another thread with no UI (as ``bench_pause.py``),
  against F6 in the TUI until the status bar says "stopped" (through the driver, the session and
  the message queue);
* the pfn→mfn panel — a Textual ``DataTable`` given the same 65536 rows (a widget that stores its
  rows), against the Line API table, which renders only the rows on screen. Both are timed from
  "here is the data" to the screen's lines rendered, then again after jumping to the last page.

    python bench/bench_tui.py          (XENDBG_BENCH_QUICK=1: shorter runs)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from pathlib import Path

QUICK = bool(os.environ.get("XENDBG_BENCH_QUICK"))
SPEED_SECONDS = 2.0 if QUICK else 3.0
# Speed runs alternate (bare, session, TUI, TUI in process) this many times; a ratio is the median
# of the rounds' ratios (the runs of a round share the host's mood): on a shared host one run
# differs from the next by ±15%, more than the TUI's cost being measured.
SPEED_ROUNDS = 1 if QUICK else 8
PAUSE_ROUNDS = 5 if QUICK else 15
SIZE = (160, 48)


def _machine(name: str, memory: int):
    from xendbg.guests import lab_image
    from xendbg.machine.builder import BuildConfig
    from xendbg.machine.loader import load_kernel
    from xendbg.machine.machine import Machine
    return Machine(load_kernel(lab_image(name)), BuildConfig(memory_mib=memory))


def headless_speed(name: str, memory: int, seconds: float, session: bool) -> tuple[float, float]:
    """(M instructions per wall second, per CPU second of the emulating thread) of ``name`` run
    headless for ``seconds``: the bare machine (``xendbg run``), or under a debugger session's
    ``continue`` (what the TUI drives, without the UI)."""
    m = _machine(name, memory)
    if session:
        from xendbg.debugger import Session, symbols_for_image
        s = Session(m, symbols_for_image(m.image))
        go, stop = (lambda: s.execute("continue")), s.pause
    else:
        go, stop = m.run, m.pause
    timer = threading.Timer(seconds, stop)
    start, cpu = time.perf_counter(), time.thread_time()
    timer.start()
    go()
    wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
    timer.cancel()
    return m.insns / wall / 1e6, m.insns / cpu / 1e6


def _app(name: str, memory: int, in_process: bool = False):
    from xendbg.app import XendbgApp
    from xendbg.guests import lab_image
    from xendbg.runner import RunOptions
    return XendbgApp(RunOptions(kernel=str(lab_image(name)), memory=memory), show_speed=True,
                     in_process=in_process)


async def _until(pilot, condition, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the TUI did not get there")
        await pilot.pause(0.005)


async def _tui_speed(name: str, memory: int, seconds: float, in_process: bool) -> dict:
    app = _app(name, memory, in_process)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await _until(pilot, lambda: screen.stops >= 1)
        driver = screen.driver
        # The UI's CPU: this process's, less the emulator thread's when it lives here.
        ui_time = time.thread_time if in_process else time.process_time
        emu_cpu, ui_cpu = driver.emulator_cpu_seconds(), ui_time()
        start = time.perf_counter()
        await pilot.press("f5")
        await asyncio.sleep(seconds)
        screen.action_pause()
        await _until(pilot, lambda: screen.stops >= 2 and not screen.running)
        wall = time.perf_counter() - start
        insns = screen.view.snap.insns
        return {"mips": insns / wall / 1e6,
                "per_cpu": insns / (driver.emulator_cpu_seconds() - emu_cpu) / 1e6,
                "ui_busy": (ui_time() - ui_cpu) / wall,
                "refreshes": driver.live_views}


def tui_speed(name: str, memory: int, seconds: float, in_process: bool = False) -> dict:
    """``name`` under ``continue`` in the TUI: M instructions per wall second and per CPU second
    of the emulator (its process, or its thread ``in_process``), the UI's busy share, the live
    refreshes it drew."""
    return asyncio.run(_tui_speed(name, memory, seconds, in_process))


def headless_pause(name: str, memory: int, rounds: int) -> list[float]:
    from xendbg.debugger import Session, symbols_for_image
    m = _machine(name, memory)
    s = Session(m, symbols_for_image(m.image))
    out = []
    for _ in range(rounds):
        done = threading.Event()
        t = threading.Thread(target=lambda d=done: (s.execute("continue"), d.set()))
        t.start()
        time.sleep(0.3)
        start = time.perf_counter()
        s.pause()
        done.wait(60)
        out.append(time.perf_counter() - start)
        t.join()
    return out


async def _press(app, key: str) -> None:
    """A key as the terminal driver delivers it (Pilot.press also waits for the whole process
    to go idle, which it never does while the emulator thread runs: it would time Pilot)."""
    from textual import events
    app._driver.send_message(events.Key(key, None))


async def _shown(screen) -> None:
    """Until the screen has been drawn after what is queued now (the next compositor refresh)."""
    drawn = asyncio.get_running_loop().create_future()
    screen.call_after_refresh(lambda: drawn.done() or drawn.set_result(None))
    await drawn


async def _tui_pause(name: str, memory: int, rounds: int) -> list[float]:
    app = _app(name, memory)
    out = []
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await _until(pilot, lambda: screen.stops >= 1)
        for i in range(rounds):
            await _press(app, "f5")
            await _until(pilot, lambda: screen.running)
            await asyncio.sleep(0.3)
            start = time.perf_counter()
            await _press(app, "f6")
            while screen.running or screen.stops < i + 2:
                await asyncio.sleep(0.001)
            await _shown(screen)
            out.append(time.perf_counter() - start)
    return out


def tui_pause(name: str, memory: int, rounds: int) -> list[float]:
    """F6 → the screen shows the stop (status bar and panels updated and drawn), per round."""
    return asyncio.run(_tui_pause(name, memory, rounds))


async def _p2m_render() -> dict:
    from textual.widgets import DataTable

    from xendbg.views.fmt import owner_name
    from xendbg.views.p2m import P2mTable
    app = _app("demo", 256)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await _until(pilot, lambda: screen.stops >= 1)
        screen.show_tab("tab-p2m")
        table = screen.query_one(P2mTable)
        await _until(pilot, lambda: table.row_count() == 65536)
        view = screen.view
        ft = view.snap.frames

        def draw(widget) -> None:
            for y in range(widget.size.height):
                widget.render_line(y)

        line_api, line_api_end = [], []
        for _ in range(5):
            table.view = None
            await pilot.pause()
            start = time.perf_counter()
            table.view = view
            draw(table)
            line_api.append(time.perf_counter() - start)
            start = time.perf_counter()
            table.move_cursor(65535)
            draw(table)
            line_api_end.append(time.perf_counter() - start)
            table.move_cursor(0)
        # The baseline: the same rows in a DataTable, mounted in the same pane.
        rows = []
        start = time.perf_counter()
        for pfn in range(len(ft.p2m)):
            mfn = int(ft.p2m[pfn])
            t = int(ft.page_type[mfn]) if ft.page_type is not None else 0
            rows.append((f"{pfn:x}", f"{mfn:x}", owner_name(int(ft.owner[mfn]), ft.domid),
                         ft.type_names.get(t, ""), str(int(ft.type_count[mfn])),
                         str(int(ft.count[mfn])), "pinned" if ft.pinned[mfn] else "",
                         f"{int(ft.m2p[mfn]):x}"))
        grid = DataTable(id="bench-grid")
        await screen.query_one("#p2m").mount(grid)
        grid.add_columns("pfn", "mfn", "owner", "type", "tcount", "count", "pinned", "m2p")
        grid.add_rows(rows)
        await pilot.pause()
        draw(grid)
        datatable = time.perf_counter() - start
        start = time.perf_counter()
        grid.move_cursor(row=65535)
        await pilot.pause()
        draw(grid)
        datatable_end = time.perf_counter() - start
        return {"line_api": statistics.median(line_api),
                "line_api_end": statistics.median(line_api_end),
                "datatable": datatable, "datatable_end": datatable_end, "pages": len(ft.p2m)}


def p2m_render() -> dict:
    return asyncio.run(_p2m_render())


def live_work(name: str, memory: int, seconds: float) -> dict:
    """The engine's own work on the emulator thread while the guest runs — the ticks, the live
    snapshots, flushing the console and hypercall streams, encoding and pickling what goes to
    the UI — against the run's time, both measured in the same run: a Driver as the engine runs
    it (its messages pickled as the engine's socket pickles them; each live view acknowledged at
    once, as by a screen that keeps up). Everything else the TUI does is in the UI's process."""
    import pickle

    from xendbg.guests import lab_image
    from xendbg.messages import RunStateChanged, SnapshotReady
    from xendbg.runner import RunOptions
    from xendbg.views.driver import Batch, Driver, loader
    from xendbg.views.engine import encode
    stopped = threading.Event()
    box: dict = {}

    def post(message) -> None:
        pickle.dumps(("message", encode(message)), protocol=pickle.HIGHEST_PROTOCOL)
        for m in (message.messages if isinstance(message, Batch) else (message,)):
            if isinstance(m, SnapshotReady) and m.view.live:
                box["driver"].shown()
            if isinstance(m, RunStateChanged) and not m.running:
                stopped.set()

    driver = Driver(loader(RunOptions(kernel=str(lab_image(name)), memory=memory)), post)
    box["driver"] = driver
    spent = [0.0]
    on_tick = driver._on_tick

    def timed_tick(event) -> None:
        start = time.perf_counter()
        on_tick(event)
        spent[0] += time.perf_counter() - start

    driver._on_tick = timed_tick            # before serve(): it subscribes this one
    thread = threading.Thread(target=driver.serve, daemon=True)
    thread.start()
    driver.ready.wait(60)
    start = time.perf_counter()
    driver.submit("continue")
    time.sleep(seconds)
    driver.pause()
    stopped.wait(60)
    wall = time.perf_counter() - start
    driver.close()
    thread.join(60)
    return {"spent": spent[0], "wall": wall, "refreshes": driver.live_views}


def live_work_in_a_fresh_process(name: str, memory: int, seconds: float) -> dict:
    """:func:`live_work` in a new interpreter, as the engine runs: in this one, the heap the other
    benchmarks left (a 65536-row DataTable …) makes every garbage collection dearer."""
    import json
    import subprocess
    import sys
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import bench_tui; print(json.dumps(bench_tui.live_work({name!r}, {memory}, "
            f"{seconds})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def frame_table_copy() -> float:
    """The emulator thread's share: copying the frame table into a snapshot (65536 pages)."""
    from xendbg.machine.snapshot import frame_table
    m = _machine("demo", 256)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        frame_table(m)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run() -> list[dict]:
    rows = []
    load = os.getloadavg()[0]
    for name, memory, what in (("demo", 64, "demo guest (hypercall-heavy)"),
                               ("spin-pv64", 16, "spin-pv64 (a loop, no hypercalls)")):
        runs = []
        for _ in range(SPEED_ROUNDS):
            runs.append((headless_speed(name, memory, SPEED_SECONDS, session=False),
                         headless_speed(name, memory, SPEED_SECONDS, session=True),
                         tui_speed(name, memory, SPEED_SECONDS),
                         tui_speed(name, memory, SPEED_SECONDS, in_process=True)))
        plain = tuple(statistics.median(r[0][k] for r in runs) for k in (0, 1))
        session = tuple(statistics.median(r[1][k] for r in runs) for k in (0, 1))
        tui = {k: statistics.median(r[2][k] for r in runs) for k in runs[0][2]}
        threaded = {k: statistics.median(r[3][k] for r in runs) for k in runs[0][3]}
        vs_plain = statistics.median(r[2]["mips"] / r[0][0] for r in runs)
        vs_session = statistics.median(r[2]["mips"] / r[1][0] for r in runs)
        vs_threaded = statistics.median(r[3]["mips"] / r[0][0] for r in runs)
        cpu_vs_session = statistics.median(r[2]["per_cpu"] / r[1][1] for r in runs)
        rounds = f"{SPEED_SECONDS:.0f} s each, {SPEED_ROUNDS} rounds, ratio: the median of the " \
                 "rounds' ratios, rates: medians"
        note = (f"{rounds}; the machine in its own process: {tui['refreshes']:.0f} live "
                f"refreshes drawn, UI process busy {tui['ui_busy']:.0%}; per CPU-second of the "
                f"emulator: TUI {tui['per_cpu']:.3g}, session {session[1]:.3g}, bare "
                f"{plain[1]:.3g} M; with the machine in a thread of the UI's process "
                f"(in_process=True) {threaded['mips']:.3g} M/s, {vs_threaded:.2f}× headless; "
                f"host load average {load:.1f} on {os.cpu_count()} CPUs")
        rows.append({
            "what": f"guest speed with the TUI open and refreshing vs headless, {what}",
            "xendbg": round(tui["mips"], 4), "baseline": round(plain[0], 4),
            "ratio": vs_plain,
            "baseline_name": "the same guest headless (xendbg run: Machine.run), same wall time",
            "unit": "M instructions/s", "note": note})
        rows.append({
            "what": f"guest speed with the TUI vs the same debugger session without UI, {what}",
            "xendbg": round(tui["mips"], 4), "baseline": round(session[0], 4),
            "ratio": vs_session,
            "baseline_name": "Session 'continue' headless (xendbg run --script), same wall time",
            "unit": "M instructions/s",
            "note": f"{rounds}; the TUI's own cost: ticks, snapshots, sending them to the UI's "
                    f"process; per CPU-second of the emulator {cpu_vs_session:.2f}× the "
                    "session's"})
    for name, memory in (("spin-pv64", 16), ("demo", 64)):
        base = headless_pause(name, memory, PAUSE_ROUNDS)
        tui = tui_pause(name, memory, PAUSE_ROUNDS)
        rows.append({
            "what": f"pause latency in the TUI ({name}): F6 until the screen shows the stop "
                    "(the key as the terminal sends it; until the stop is drawn)",
            "xendbg": round(statistics.median(tui) * 1e3, 2),
            "baseline": round(statistics.median(base) * 1e3, 2),
            "baseline_name": "Session.pause() from another thread, no UI",
            "unit": "ms", "higher_is_better": False,
            "note": f"median of {PAUSE_ROUNDS}; TUI max {max(tui) * 1e3:.1f} ms, "
                    f"headless max {max(base) * 1e3:.1f} ms"})
    r = p2m_render()
    rows.append({
        "what": f"render the pfn→mfn panel for {r['pages']} pages (new data → screen lines)",
        "xendbg": round(r["line_api"] * 1e3, 2), "baseline": round(r["datatable"] * 1e3, 1),
        "baseline_name": "a Textual DataTable given the same rows", "unit": "ms",
        "higher_is_better": False,
        "note": "Line API: only the visible rows are rendered"})
    rows.append({
        "what": f"jump to the last of {r['pages']} pages in the pfn→mfn panel and render",
        "xendbg": round(r["line_api_end"] * 1e3, 2),
        "baseline": round(r["datatable_end"] * 1e3, 1),
        "baseline_name": "the DataTable with the same rows", "unit": "ms",
        "higher_is_better": False})
    for name, memory in (("demo", 64), ("spin-pv64", 16)):
        work = live_work_in_a_fresh_process(name, memory, SPEED_SECONDS * 2)
        rows.append({
            "what": f"the TUI's work in the emulator's process while {name} runs (ticks, live "
                    "snapshots, flushing and sending the console and hypercall streams)",
            "xendbg": round(work["spent"], 4), "baseline": round(work["wall"], 3),
            "baseline_name": "the run's wall time", "unit": "s", "higher_is_better": False,
            "note": f"{work['refreshes']} live refreshes; the rest of the TUI runs in the UI's "
                    "process; measured in one run, so the share does not depend on the host's "
                    "speed"})
    copy = frame_table_copy()
    rows.append({
        "what": "snapshot of the frame table for 65536 pages (emulator thread, per refresh)",
        "xendbg": round(copy * 1e3, 3), "baseline": None, "unit": "ms",
        "higher_is_better": False,
        "note": "p2m, owners, M2P and the MMU's type/count/pin arrays copied read-only; taken at "
                "stops, and while running only when a frame panel is shown"})
    return rows


if __name__ == "__main__":
    for row in run():
        ratio = ""
        if "ratio" in row:
            ratio = f"  ratio {row['ratio']:.3g}"
        elif isinstance(row.get("xendbg"), float | int) and isinstance(row.get("baseline"),
                                                                          float | int):
            ratio = f"  ratio {row['xendbg'] / row['baseline']:.3g}" if row["baseline"] else ""
        print(f"{row['what']}: {row['xendbg']} {row.get('unit', '')} vs {row.get('baseline')} "
              f"({row.get('baseline_name', '')}){ratio}  {row.get('note', '')}")
