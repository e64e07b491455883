"""The emulator in a process of its own: the TUI's default way to run the machine.

Why a process: a hypercall-heavy guest needs Python (and so the GIL) for every call, and drawing
a live refresh holds the GIL for tens of milliseconds; in one process the guest stood still while
the screen was drawn (0.64 of its headless speed on the demo guest). In its own process it shares
nothing with the UI but a socket, and what the TUI adds there — ticks, live snapshots, sending
the console and hypercall streams — is about 3% of a hypercall-heavy run (``bench/bench_tui.py``).

:class:`EngineProcess` is what the screen holds; it has the :class:`~xendbg.views.driver.Driver`'s
interface (``serve``, ``submit``, ``pause``, ``console_input``, ``set_view``, ``refresh``,
``shown``, ``show_address``, ``symbols_matching``, ``run_for``, ``close``). The child process runs
an ordinary Driver (:func:`_engine_main`): its emulator thread is the child's main thread, a second
thread reads the UI's requests and calls the Driver's thread-safe entry points, and every message
the Driver posts is sent back whole — ``serve`` in the UI process posts it to the screen.
Messages are Textual :class:`~textual.message.Message` objects; they cross the pipe as their class
and their own fields (:func:`encode`/:func:`decode`), not Textual's bookkeeping.

The child's stdout and stderr go to a log file (the terminal belongs to the UI); when the child
dies, the screen is told why, with the log's last line.
"""

from __future__ import annotations

import faulthandler
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from itertools import count, repeat
from multiprocessing.connection import Connection
from pathlib import Path

from textual.message import Message

from xendbg.machine.machine import Event
from xendbg.messages import (
    CommandFinished,
    HypercallsTraced,
    LoadFailed,
    RunStateChanged,
    SnapshotReady,
)
from xendbg.runner import RunOptions
from xendbg.views.driver import Batch, Driver, loader

REPLY_TIMEOUT = 2.0          # seconds the UI waits for a synchronous answer (symbol completion)
CLOSE_TIMEOUT = 5.0          # seconds the child gets to end by itself before it is killed


def encode(message: Message) -> tuple:
    """A message as (class, its fields), ready to pickle; a :class:`Batch`'s messages too."""
    fields = dict(vars(message))        # Textual's own attributes are slots: not in here
    if isinstance(message, Batch):
        fields["messages"] = tuple(encode(m) for m in message.messages)
    elif isinstance(message, HypercallsTraced):
        fields["events"] = _encode_events(message.events)
    return type(message), fields


def _encode_events(events: tuple) -> tuple:
    """Thousands of hypercall events a second, each with the same fields: sent as columns
    (insns, then one list per field), which pickle in a fraction of the time of as many Events
    or dicts; the UI's process builds the dicts. Events of other shapes go as they are."""
    if not events:
        return ("events", ())
    keys = tuple(events[0].data)
    datas = [e.data for e in events]
    try:
        columns = [[d[k] for d in datas] for k in keys]
    except KeyError:
        columns = None
    if columns is None or any(len(d) != len(keys) for d in datas) or \
            any(e.kind != "hypercall" for e in events):
        return ("events", events)
    return ("columns", [e.insns for e in events], keys, columns)


def _decode_events(encoded: tuple) -> tuple:
    if encoded[0] == "events":
        return tuple(encoded[1])
    _, insns, keys, columns = encoded
    datas = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
    return tuple(map(Event, repeat("hypercall"), insns, datas))


def decode(item: tuple) -> Message:
    """The message :func:`encode` described, made afresh in this process."""
    cls, fields = item
    message = cls.__new__(cls)
    Message.__init__(message)
    message.__dict__.update(fields)
    if cls is Batch:
        message.messages = tuple(decode(m) for m in fields["messages"])
    elif cls is HypercallsTraced:
        message.events = _decode_events(fields["events"])
    return message


class EngineProcess:
    """Run the machine in a child process for the TUI (see the module docstring).

    ``post(message)`` must be thread-safe (``Screen.post_message``): :meth:`serve` calls it from
    the thread it runs in.
    """

    def __init__(self, opts: RunOptions, symbols_file: str | None,
                 post: Callable[[Message], object]) -> None:
        self._opts = opts
        self._symbols_file = symbols_file
        self._post = post
        self._process = None
        self._conn = None
        self._send_lock = threading.Lock()
        self._pending: list[tuple] = []      # requests made before the child existed
        self._ended = False
        self._replies: dict[int, queue.SimpleQueue] = {}
        self._ids = count(1)
        self._log_path: Path | None = None
        self.closed = False
        self.live_views = 0                  # live views received (benchmarks count them)
        self.internal_errors: list[str] = []  # the child driver's own bugs, sent when it ends
        self.exit_code: int | None = None

    # -- the UI's requests (any thread) -----------------------------------------------------------
    def submit(self, line: str) -> None:
        """Run a command line of the debugger's language."""
        if line.strip():
            self._send("submit", line)

    def pause(self) -> None:
        """Stop the running guest at the next block boundary."""
        self._send("pause")

    def console_input(self, data: bytes) -> None:
        self._send("console_input", data)

    def set_view(self, **want) -> None:
        self._send("set_view", want)

    def refresh(self) -> None:
        self._send("refresh")

    def shown(self) -> None:
        self._send("shown")

    def show_address(self, what: str, text: str) -> None:
        self._send("show_address", what, text)

    def run_for(self, insns: int) -> None:
        self._send("run_for", insns)

    def symbols_matching(self, prefix: str, limit: int = 50) -> list[str]:
        """The guest's symbols starting with ``prefix``: asked of the child, which has the table
        (an empty list if it does not answer within :data:`REPLY_TIMEOUT`)."""
        if not prefix or self._conn is None:
            return []
        ident = next(self._ids)
        box: queue.SimpleQueue = queue.SimpleQueue()
        self._replies[ident] = box
        try:
            if not self._send("symbols", ident, prefix, limit):
                return []
            return box.get(timeout=REPLY_TIMEOUT)
        except queue.Empty:
            return []
        finally:
            self._replies.pop(ident, None)

    def close(self) -> None:
        """Ask the child to stop the guest and end; :meth:`serve` returns when it has."""
        self.closed = True
        self._send("close")

    def emulator_cpu_seconds(self) -> float:
        """CPU time the child has used so far (user + system; Linux's /proc)."""
        if self._process is None:
            return 0.0
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _send(self, *request) -> bool:
        """Send a request; before the child exists, keep it for when it does (the UI never
        waits for the child to start)."""
        with self._send_lock:
            if self._conn is None:
                if self._ended:
                    return False
                self._pending.append(request)
                return True
            try:
                self._conn.send(request)
                return True
            except (OSError, ValueError):    # the child is gone: serve() says so
                return False

    # -- the UI process's reader (the screen's worker thread) -----------------------------------
    def serve(self) -> None:
        """Start the child, then post what it sends until it ends."""
        if self.closed:                      # closed before it started: nothing to run
            self._ended = True
            return
        fd, log = tempfile.mkstemp(prefix="xendbg-engine-", suffix=".log")
        self._log_path = Path(log)
        parent, child = socket.socketpair()
        try:
            # A fresh interpreter running this module (not multiprocessing's spawn, which would
            # import the caller's __main__ again); its own session, so that signals the
            # terminal sends the UI do not reach it.
            self._process = subprocess.Popen(
                [sys.executable, "-m", "xendbg.views.engine", str(child.fileno())],
                pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                start_new_session=True)
        except OSError as exc:
            parent.close()
            self._log_path.unlink(missing_ok=True)
            self._ended = True
            self._post(LoadFailed(f"cannot start the emulator process: {exc.strerror or exc}"))
            return
        finally:
            os.close(fd)
            child.close()
        conn = Connection(parent.detach())
        with self._send_lock:
            try:
                conn.send(("start", self._opts, self._symbols_file))
                for request in self._pending:
                    conn.send(request)
            except OSError:
                pass                         # the child died at once: the reader finds out
            self._pending.clear()
            self._conn = conn
        loaded = clean = False
        try:
            while True:
                try:
                    kind, *payload = self._conn.recv()
                except (EOFError, OSError):
                    break
                if kind == "message":
                    message = decode(payload[0])
                    loaded = loaded or not isinstance(message, LoadFailed)
                    self._count_live(message)
                    self._post(message)
                elif kind == "reply":
                    box = self._replies.get(payload[0])
                    if box is not None:
                        box.put(payload[1])
                elif kind == "exit":
                    self.internal_errors.extend(payload[0])
                    clean = True
        finally:
            self._finish(loaded, clean)

    def _count_live(self, message: Message) -> None:
        for m in (message.messages if isinstance(message, Batch) else (message,)):
            if isinstance(m, SnapshotReady) and m.view.live:
                self.live_views += 1

    def _finish(self, loaded: bool, clean: bool) -> None:
        process = self._process
        try:
            process.wait(CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(CLOSE_TIMEOUT)
        self.exit_code = process.returncode
        with self._send_lock:
            self._ended = True
            self._conn.close()
        if clean or self.closed:
            self._log_path.unlink(missing_ok=True)
            return
        why = f"the emulator process ended unexpectedly (exit code {self.exit_code})"
        last = _last_line(self._log_path)
        if last:
            why += f": {last}"
        why += f" — its output is in {self._log_path}"
        if loaded:
            self._post(CommandFinished("", False, why))
            self._post(RunStateChanged(False, "", "crash", why))
        else:
            self._post(LoadFailed(why))


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


# -- the child process ----------------------------------------------------------------------------
def _engine_main(fd: int) -> int:
    """The child (``python -m xendbg.views.engine FD``): the first request on the socket ``FD``
    says what to load; then a Driver serves on this (main) thread, requests read on another.
    stdout and stderr are the UI's log file already."""
    conn = Connection(fd)
    try:
        kind, opts, symbols_file = conn.recv()
    except (EOFError, OSError):
        return 1
    if kind != "start":
        return 1
    faulthandler.enable()                            # a crash inside Unicorn leaves a trace
    lock = threading.Lock()

    def send(*item) -> None:
        try:
            with lock:
                conn.send(item)
        except (OSError, ValueError):                # the UI is gone: nothing to tell
            driver.close()

    driver = Driver(loader(opts, symbols_file), lambda message: send("message", encode(message)))
    threading.Thread(target=_read_requests, args=(conn, driver, send), daemon=True,
                     name="xendbg-engine-requests").start()
    driver.serve()
    send("exit", driver.internal_errors)
    conn.close()
    return 0


def _read_requests(conn, driver: Driver, send: Callable) -> None:
    """The child's request thread: each request calls the Driver entry point of its name."""
    calls = {"submit": driver.submit, "pause": driver.pause,
             "console_input": driver.console_input, "refresh": driver.refresh,
             "shown": driver.shown, "show_address": driver.show_address,
             "run_for": driver.run_for, "close": driver.close}
    while True:
        try:
            kind, *args = conn.recv()
        except (EOFError, OSError):                  # the UI process ended: so do we
            driver.close()
            return
        if kind == "set_view":
            driver.set_view(**args[0])
        elif kind == "symbols":
            ident, prefix, limit = args
            send("reply", ident, driver.symbols_matching(prefix, limit))
        else:
            calls[kind](*args)
        if kind == "close":
            return


if __name__ == "__main__":
    sys.exit(_engine_main(int(sys.argv[1])))
