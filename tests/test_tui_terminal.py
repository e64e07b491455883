"""The real ``xendbg`` console script in a real terminal: started with no argument (the README's
first command: the debugger on the demo guest), driven with keys, its screen read back, quit.

Two terminals: tmux (when installed; its own server socket, so a user's tmux is never touched),
whose ``capture-pane`` gives the screen as text; and a bare pseudo-terminal from Python's ``pty``
(always), whose output stream is read with the escape sequences removed.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

COLUMNS, LINES = 160, 48
ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[A-Za-z~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][A-Z0-9]|"
                  rb"\x1b[=>78DEHM]")


def xendbg_script() -> str:
    path = shutil.which("xendbg") or str(Path(sys.executable).with_name("xendbg"))
    if not os.access(path, os.X_OK):
        pytest.skip("the xendbg console script is not installed (pip install -e .)")
    return path


def term_env() -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(COLUMNS), LINES=str(LINES))
    env.pop("TMUX", None)
    return env


def test_xendbg_in_tmux(tmp_path):
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed (the pty test below covers a plain terminal)")
    script = xendbg_script()
    sock = str(tmp_path / "tmux.sock")

    def tmux_cmd(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([tmux, "-S", sock, *args], capture_output=True, text=True,
                              check=check, env=term_env())

    def screen() -> str:
        return tmux_cmd("capture-pane", "-p", "-t", "xendbg", check=False).stdout

    def wait_for(*words: str, timeout: float = 90.0) -> str:
        end = time.monotonic() + timeout
        text = ""
        while time.monotonic() < end:
            text = screen()
            if all(w in text for w in words):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{words} not on the screen:\n{text}")

    tmux_cmd("new-session", "-d", "-s", "xendbg", "-x", str(COLUMNS), "-y", str(LINES), script)
    try:
        wait_for("STOPPED", "Code", "Registers", "f5 Continue", "Events", "pfn→mfn", "entry")
        tmux_cmd("send-keys", "-t", "xendbg", "F5")                       # continue
        text = wait_for("RUNNING", "demo: burst")
        tmux_cmd("send-keys", "-t", "xendbg", "F6")                       # pause
        text = wait_for("STOPPED", "Paused")
        assert "VIRQ_TIMER" in text                                     # the events panel
        tmux_cmd("send-keys", "-t", "xendbg", "C-q")                      # quit
        end = time.monotonic() + 30
        while tmux_cmd("has-session", "-t", "xendbg", check=False).returncode == 0:
            assert time.monotonic() < end, "xendbg did not quit on ctrl+q"
            time.sleep(0.2)
    finally:
        tmux_cmd("kill-server", check=False)


def test_xendbg_in_a_pty():
    script = xendbg_script()
    pid, fd = pty.fork()
    if pid == 0:                                                        # the child: the terminal app
        os.execve(script, [script], term_env())
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        output = bytearray()

        def read_until(*patterns: bytes, timeout: float = 90.0) -> bytes:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    try:
                        output.extend(os.read(fd, 65536))
                    except OSError:                                     # the child is gone
                        break
                plain = ANSI.sub(b"", bytes(output))
                if all(p in plain for p in patterns):
                    return plain
            raise AssertionError(f"{patterns!r} never appeared; the end of the output:\n"
                                 f"{ANSI.sub(b'', bytes(output))[-2000:].decode(errors='replace')}")

        read_until(b"STOPPED", b"Registers", b"Continue", b"entry")
        os.write(fd, b"\x11")                                           # ctrl+q
        end = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < end, "xendbg did not quit on ctrl+q"
            select.select([fd], [], [], 0.2)
            try:
                os.read(fd, 65536)
            except OSError:
                pass
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
