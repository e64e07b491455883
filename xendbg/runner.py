"""Headless runs: ``xendbg run KERNEL …`` — the guest console on stdout, an exit status for scripts.

Exit status: 0 when the guest powered off or ``--until`` matched; 1 when the domain crashed,
rebooted, shut down otherwise, or blocked with nothing to wake it (the reason on stderr); 2 for bad
usage or a bad input file; 3 when ``--timeout`` expired.

With ``--script FILE`` the run is driven by debugger commands (:mod:`xendbg.debugger.script`): they
run in order, before and between stops, and the run ends after the last one. Status 0 when every
command succeeded, 4 when one failed (its error printed; the script stops there), 3 on --timeout,
2 for bad usage (an unreadable script or --symbols file).
"""

from __future__ import annotations

import codecs
import json
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from xendbg.machine.abi.xen import SHUTDOWN_poweroff
from xendbg.machine.builder import BuildConfig, BuildError, memory_limit_mib
from xendbg.machine.clock import ClockConfig
from xendbg.machine.loader import ImageError, KernelImage, load_kernel
from xendbg.machine.machine import Event, Machine

EXIT_OK, EXIT_GUEST, EXIT_USAGE, EXIT_TIMEOUT, EXIT_SCRIPT = 0, 1, 2, 3, 4


class UsageError(Exception):
    """Bad command-line input; str() is the one-line message."""


def parse_escapes(text: str) -> bytes:
    r"""C-style escapes of ``--input``: ``\n \r \t \\ \0 \e \xNN``; anything else is literal."""
    out = bytearray()
    i = 0
    simple = {"n": 10, "r": 13, "t": 9, "\\": 92, "0": 0, "e": 27, "a": 7, "b": 8, "'": 39, '"': 34}
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2:i + 4] or ""):
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
                continue
        out += ch.encode()
        i += 1
    return bytes(out)


@dataclass
class RunOptions:
    kernel: str
    cmdline: str = ""
    ramdisk: str | None = None
    memory: int | None = None
    until: str | None = None
    timeout: float | None = None
    input: str | None = None
    stats: bool = False
    trace: str | None = None
    p2m: str = "shuffled"
    vcpus: int = 1
    script: str | None = None         # debugger commands to run (xendbg.debugger.script)
    symbols: str | None = None        # a System.map for the debugger
    tsc_khz: int | None = None        # virtual TSC frequency (None: ClockConfig's, 2 GHz)
    start_date: str | None = None     # ISO 8601 wallclock start, UTC (None: ClockConfig's fixed date)


def default_memory(image: KernelImage) -> int:
    """Enough for the kernel's start-of-day layout, at least 128 MiB (Linux wants more).

    Never more than the builder accepts: a kernel that spans more than that gets the limit, and
    the builder says in one line that the kernel does not fit.
    """
    span = (image.virt_kend - image.virt_base) >> 20
    return min(memory_limit_mib(image.abi), max(128, 1 << (span + 64).bit_length()))


def clock_config(opts: RunOptions) -> ClockConfig:
    """``--tsc-khz`` and ``--start-date`` as a ClockConfig; UsageError naming the bad flag."""
    try:
        ClockConfig.from_options(tsc_khz=opts.tsc_khz)
    except ValueError as exc:
        raise UsageError(f"--tsc-khz {opts.tsc_khz}: {exc}") from None
    try:
        return ClockConfig.from_options(tsc_khz=opts.tsc_khz, start_date=opts.start_date)
    except ValueError as exc:
        raise UsageError(f"--start-date: {exc}") from None


def load(opts: RunOptions, progress=None) -> tuple[Machine, KernelImage, Path]:
    """Resolve, load and build; raise UsageError with a one-line reason on any bad input."""
    from xendbg.guests import GuestError, resolve_kernel
    clock = clock_config(opts)              # a bad flag is reported before anything is fetched
    try:
        path = resolve_kernel(opts.kernel, progress=progress)
    except GuestError as exc:
        raise UsageError(str(exc)) from None
    try:
        image = load_kernel(path)
    except ImageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    ramdisk = None
    if opts.ramdisk:
        from xendbg.guests import resolve_ramdisk
        try:
            ramdisk = resolve_ramdisk(opts.ramdisk, progress=progress).read_bytes()
        except GuestError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"--ramdisk {opts.ramdisk}: {exc.strerror or exc}") from None
    memory = opts.memory if opts.memory is not None else default_memory(image)
    if opts.vcpus != 1:
        raise UsageError(f"--vcpus {opts.vcpus}: xendbg runs one vCPU so far (SMP guests are "
                         "not implemented yet)" if opts.vcpus > 1 else
                         f"--vcpus {opts.vcpus}: a domain needs at least one vCPU")
    config = BuildConfig(memory_mib=memory, cmdline=opts.cmdline, ramdisk=ramdisk, p2m=opts.p2m,
                         clock=clock)
    try:
        machine = Machine(image, config)
    except BuildError as exc:
        raise UsageError(f"{path}: {exc}") from None
    return machine, image, path


def describe_image(image: KernelImage, machine: Machine, out) -> None:
    notes = image.notes
    print(f"xendbg: {image.path}: {image.container}, {image.abi}, entry {image.entry:#x}", file=out)
    print(f"xendbg: Xen notes from {notes.source}:", file=out)
    for name, value in notes.entries:
        shown = f"{value:#x}" if isinstance(value, int) else repr(value)
        print(f"xendbg:   {name:<20} {shown}", file=out)
    lay = machine.layout
    print(f"xendbg: domain {machine.domain.domid}: {machine.domain.nr_pages} pages, "
          f"{lay.machine_frames} machine frames", file=out)
    for region in lay.regions:
        print(f"xendbg:   {region.name:<15} va {region.va:#x} pfn {region.pfn:#x} "
              f"({region.pages} pages)", file=out)


# A maximal run of CRs and LFs between two other characters. When it holds at least one CR and
# one LF, a terminal ends one line per LF and leaves the cursor at column 0 whatever the order (a
# CR at column 0 does nothing): the run renders exactly as that many CR LF pairs.
_BREAK_RUN = re.compile(r"[\r\n]+")
_TRAILING_BREAKS = re.compile(r"[\r\n]*\Z")


def _render_run(match: re.Match) -> str:
    run = match.group()
    if "\r" in run and "\n" in run:
        return "\r\n" * run.count("\n")
    return run


def render_line_breaks(text: str) -> str:
    r"""The console text with each line break written as a terminal renders it.

    xenconsoled copies the ring to the pty byte for byte and ``xl console`` puts the terminal in
    raw mode, so the guest's bytes reach the terminal unchanged. GRUB ends its lines with
    ``\n\r``, which a terminal shows exactly as ``\r\n`` (so is ``\r\r\n``; ``\n\n\r`` as two
    ``\r\n``). A run of line breaks that holds a CR becomes ``\r\n`` per LF; a run without one
    (bare ``\n``, which a raw terminal does not return to column 0) and a CR inside a line are
    kept as sent.
    """
    return _BREAK_RUN.sub(_render_run, text)


class _TraceWriter:
    """``--trace``: one JSON object per hypercall, ``{"insns", "nr", "name", "args", "result",
    "error"}``, ``args`` keyed by the table's argument names.

    Written exactly as ``json.dumps`` writes the record, but with the part that only depends on the
    hypercall (number, name, argument names) turned into a format string once: ``json.dumps`` per
    call was the largest cost of a traced hypercall. Anything unexpected in a record (not a plain
    int, a repeated name) takes ``json.dumps`` itself.
    """

    def __init__(self, f) -> None:
        self.f = f
        self._formats: dict[tuple, tuple[str, int] | None] = {}
        self._errors: dict[str, str] = {}

    @staticmethod
    def record(event: Event) -> dict:
        d = event.data
        return {"insns": event.insns, "nr": d["nr"], "name": d["name"],
                "args": dict(zip(d["arg_names"], d["args"], strict=False)),
                "result": d["result"], "error": d["error"]}

    @staticmethod
    def _format_for(nr, name, names: tuple, nargs: int) -> tuple[str, int] | None:
        used = names[:nargs]             # zip() stops at the shorter of names and args
        if (type(nr) is not int or type(name) is not str or len(set(used)) != len(used)
                or any(type(n) is not str for n in used)):
            return None
        args = ", ".join(f"{json.dumps(n).replace('%', '%%')}: %d" for n in used)
        head = f'"nr": {nr}, "name": {json.dumps(name)}'.replace("%", "%%")
        return '{"insns": %d, ' + head + ', "args": {' + args + '}, "result": %s, "error": %s}\n', \
            len(used)

    def write(self, event: Event) -> None:
        d = event.data
        args, result, error = d["args"], d["result"], d["error"]
        key = (d["nr"], d["name"], d["arg_names"], len(args))
        fmt = self._formats.get(key, False)
        if fmt is False:
            fmt = self._formats[key] = self._format_for(*key)
        if (fmt is None or type(event.insns) is not int
                or not (result is None or type(result) is int)
                or not (error is None or type(error) is str)
                or any(type(a) is not int for a in args)):
            self.f.write(json.dumps(self.record(event)) + "\n")
            return
        text, n = fmt
        if error is None:
            error_text = "null"
        else:
            error_text = self._errors.get(error)
            if error_text is None:
                error_text = self._errors[error] = json.dumps(error)
        self.f.write(text % (event.insns, *args[:n], "null" if result is None else result,
                             error_text))


class _Until:
    r"""``--until``: the regex is searched in the console text as a terminal renders its lines
    (:func:`render_line_breaks`), so ``(?m)^xen dbg\r?$`` matches GRUB's ``\n\rxen dbg\n\r``."""

    def __init__(self, pattern: str, machine: Machine) -> None:
        self.regex = re.compile(pattern, re.MULTILINE)
        self.machine = machine
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stable = ""    # rendered text up to the trailing run of CR/LF (it cannot change)
        self._tail = ""      # that trailing run, raw: the next chunk may continue it
        self.matched = False

    @property
    def text(self) -> str:
        return self._stable + render_line_breaks(self._tail)

    def feed(self, data: bytes) -> None:
        if self.matched:
            return
        raw = self._tail + self._decoder.decode(data)
        cut = _TRAILING_BREAKS.search(raw).start()
        self._stable += render_line_breaks(raw[:cut])
        self._tail = raw[cut:]
        if self.regex.search(self.text):
            self.matched = True
            self.machine.request_stop("until")


def run(opts: RunOptions) -> int:
    stdout = sys.stdout.buffer
    try:
        if opts.until is not None:
            re.compile(opts.until)
    except re.error as exc:
        print(f"xendbg: --until: bad regular expression: {exc}", file=sys.stderr)
        return EXIT_USAGE
    script_lines = None
    if opts.script is not None:
        if opts.until is not None:
            print("xendbg: --until cannot be combined with --script (use `break console REGEX` "
                  "in the script)", file=sys.stderr)
            return EXIT_USAGE
        from xendbg.debugger.script import read_script
        try:
            script_lines = read_script(Path(opts.script).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"xendbg: --script {opts.script}: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return EXIT_USAGE
    try:
        machine, image, _path = load(opts, progress=lambda msg: print(f"xendbg: {msg}",
                                                                      file=sys.stderr))
    except UsageError as exc:
        print(f"xendbg: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if opts.stats:
        describe_image(image, machine, sys.stderr)
    session = None
    if script_lines is not None or opts.symbols is not None:
        from xendbg.debugger import Session, SymbolError, symbols_for_image
        try:
            symbols = symbols_for_image(image, opts.symbols)
        except SymbolError as exc:
            print(f"xendbg: --symbols: {exc}", file=sys.stderr)
            return EXIT_USAGE
        session = Session(machine, symbols)
    if opts.input:
        machine.console.queue_input(parse_escapes(opts.input))
    until = _Until(opts.until, machine) if opts.until is not None else None
    trace_file = open(opts.trace, "w") if opts.trace else None  # noqa: SIM115 - closed below
    trace = _TraceWriter(trace_file) if trace_file is not None else None

    def on_event(event: Event) -> None:
        if event.kind == "console":
            data = event.data["data"]
            stdout.write(data)
            stdout.flush()
            if until is not None:
                until.feed(data)
        elif event.kind == "hypercall" and trace is not None:
            trace.write(event)

    # Only these kinds: the machine then builds no other event for this listener (hypercall
    # entries, page types, timers…), and none at all for hypercalls without --trace.
    on_event.event_kinds = frozenset({"console", "hypercall"} if trace is not None
                                     else {"console"})
    machine.listeners.append(on_event)
    timed_out = threading.Event()
    timer = None
    if opts.timeout is not None:
        def expire() -> None:
            timed_out.set()
            machine.pause()
        timer = threading.Timer(opts.timeout, expire)
        timer.daemon = True
        timer.start()
    start = time.perf_counter()
    outcome = None
    try:
        if session is not None and script_lines is not None:
            from xendbg.debugger.script import run_script

            def write(text: str) -> None:
                stdout.write(text.encode("utf-8", "replace"))
                stdout.flush()

            outcome = run_script(session, script_lines, write, timed_out.is_set)
            reason = "script"
        else:
            reason = machine.run()
    finally:
        if timer is not None:
            timer.cancel()
        if trace_file is not None:
            trace_file.close()
    wall = time.perf_counter() - start
    stdout.flush()
    if opts.stats:
        print_stats(machine, wall, sys.stderr)
    if outcome is not None:
        return _script_status(opts.script, script_lines, outcome, machine, timed_out.is_set())
    return _exit_status(machine, reason, until, timed_out.is_set())


def _script_status(path, lines, outcome, machine: Machine, timed_out: bool) -> int:
    if timed_out:
        print(f"\nxendbg: timeout: the script did not finish (the guest ran {machine.insns} "
              "instructions)", file=sys.stderr)
        return EXIT_TIMEOUT
    if not outcome.ok:
        command = dict(lines).get(outcome.failed_line, "")
        print(f"xendbg: {path}:{outcome.failed_line}: `{command}` failed: {outcome.error}",
              file=sys.stderr)
        return EXIT_SCRIPT
    return EXIT_OK


def _exit_status(machine: Machine, reason: str, until, timed_out: bool) -> int:
    d = machine.domain
    if until is not None and until.matched:
        return EXIT_OK
    if reason == "pause" and timed_out:
        print(f"\nxendbg: timeout: the guest ran for {machine.insns} instructions without "
              "finishing", file=sys.stderr)
        return EXIT_TIMEOUT
    if d.crashed:
        print(f"\nxendbg: domain crashed: {d.crashed}", file=sys.stderr)
        return EXIT_GUEST
    if d.shutdown is not None:
        if d.shutdown.reason == SHUTDOWN_poweroff:
            if until is not None:
                print("\nxendbg: the guest powered off before --until matched", file=sys.stderr)
                return EXIT_GUEST
            return EXIT_OK
        code = f" (code {d.shutdown.code})" if d.shutdown.code is not None else ""
        print(f"\nxendbg: domain shut down: {d.shutdown.name}{code}", file=sys.stderr)
        return EXIT_GUEST
    if reason == "blocked":
        print("\nxendbg: the domain blocked with nothing to wake it (no pending event, no timer)",
              file=sys.stderr)
        return EXIT_GUEST
    print(f"\nxendbg: stopped ({reason})", file=sys.stderr)
    return EXIT_GUEST


def print_stats(machine: Machine, wall: float, out) -> None:
    insns = machine.insns
    mips = insns / wall / 1e6 if wall > 0 else 0.0
    clock = machine.clock
    print(f"xendbg: instructions {insns}", file=out)
    # System time from the clock: it includes the time the vCPU spent blocked (fast-forwarded).
    print(f"xendbg: virtual time {clock.now_ns() / 1e9:.9f} s (virtual TSC {clock.tsc()} at "
          f"{clock.config.tsc_khz} kHz)", file=out)
    print(f"xendbg: wall time {wall:.3f} s ({mips:.1f} MIPS)", file=out)
    stats = machine.stats
    if stats.calls:
        print("xendbg: hypercalls        calls   errors", file=out)
        for name, count in sorted(stats.calls.items(), key=lambda kv: (-kv[1], kv[0])):
            extra = "  (not implemented: -ENOSYS)" if name in stats.unimplemented else ""
            print(f"xendbg:   {name:<22} {count:6d} {stats.errors.get(name, 0):6d}{extra}",
                  file=out)
