"""The ``xendbg`` command.

    xendbg [KERNEL]            open the debugger (no KERNEL: the built-in demo guest)
    xendbg run KERNEL …        run headless; the guest console goes to stdout
    xendbg guests list         the guests xendbg knows by name
    xendbg guests fetch NAME   download a Debian guest into the cache; print its image path
    xendbg lab [N] [--check]   the labs: list, read a guide, judge a lab's guests
"""

from __future__ import annotations

import argparse
import sys

from xendbg import __version__

SUBCOMMANDS = ("run", "guests", "lab")


def _add_machine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cmdline", default="", metavar="S", help="the guest kernel's command line")
    p.add_argument("--ramdisk", metavar="FILE",
                   help="a module (initrd) for the guest: a file, or busybox-initramfs")
    p.add_argument("--memory", type=int, metavar="MIB",
                   help="guest memory in MiB (default: enough for the image, at least 128)")
    p.add_argument("--p2m", choices=("shuffled", "linear"), default="shuffled",
                   help="how guest frames map to machine frames (default: shuffled, not the "
                        "identity, as on a real Xen host)")
    p.add_argument("--vcpus", type=int, default=1, metavar="N",
                   help="number of vCPUs (default 1; only 1 is supported so far — SMP guests "
                        "are refused with a clear message)")
    from xendbg.machine.clock import DEFAULT_START, ClockConfig
    p.add_argument("--tsc-khz", type=_tsc_khz, metavar="KHZ",
                     help=f"the virtual TSC frequency in kHz (default {ClockConfig.tsc_khz}). "
                          "Time is virtual: the TSC advances with executed instructions, about "
                          "one per virtual nanosecond at any frequency (round(GHz) ticks each, at "
                          "least 1), never with the host's clock")
    p.add_argument("--start-date", type=_start_date, metavar="DATE",
                     help="the wallclock at boot, an ISO 8601 date or date/time, UTC unless it "
                          "names a zone (2030-06-01, 2030-06-01T12:00:00Z; default "
                          f"{DEFAULT_START:%Y-%m-%dT%H:%M:%SZ}, fixed so that runs repeat)")



def _tsc_khz(text: str) -> int:
    from xendbg.machine.clock import ClockConfig
    try:
        khz = int(text)
        ClockConfig.from_options(tsc_khz=khz)
    except ValueError as exc:
        reason = "not a whole number of kHz" if "invalid literal" in str(exc) else str(exc)
        raise argparse.ArgumentTypeError(f"{text!r}: {reason}") from None
    return khz


def _start_date(text: str) -> str:
    from xendbg.machine.clock import parse_start_date
    try:
        parse_start_date(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xendbg",
        usage="xendbg [KERNEL] [options]   open the debugger on KERNEL (default: the demo "
              "guest)\n       xendbg KERNEL --help        the debugger's options\n"
              "       xendbg COMMAND ...          one of the commands below",
        description="A debugger that owns an emulated Xen machine and boots Xen PV guests.",
        epilog="KERNEL is a file (ELF, gzip'd ELF or Linux bzImage) or the name of a known "
               "guest (see `xendbg guests list`).")
    parser.add_argument("--version", action="version", version=f"xendbg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a guest headless, its console on stdout",
                         description="Run KERNEL headless and stream its console to stdout. "
                                     "Exit status: 0 the guest powered off or --until matched; "
                                     "1 the domain crashed, rebooted or blocked forever; "
                                     "2 bad usage or a bad input file; 3 --timeout expired.")
    run.add_argument("kernel", metavar="KERNEL")
    _add_machine_options(run)
    run.add_argument("--until", metavar="REGEX",
                     help="stop with status 0 once the console output matches this Python "
                          "regular expression (multiline), matched against the lines as a "
                          "terminal shows them: a line break written with a CR in any order "
                          "(GRUB's \\n\\r, \\r\\r\\n) counts as \\r\\n")
    run.add_argument("--timeout", type=float, metavar="SECONDS",
                     help="stop with status 3 after this much wall-clock time")
    run.add_argument("--input", metavar="TEXT",
                     help=r"console input for the guest, with C escapes (\n \r \t \xNN)")
    run.add_argument("--stats", action="store_true",
                     help="print the image's Xen notes and layout first, and counts at the end "
                          "(stderr)")
    run.add_argument("--trace", metavar="FILE",
                     help="write one JSON object per hypercall (name, arguments, result, "
                          "instruction count)")
    run.add_argument("--script", metavar="FILE",
                     help="run debugger commands from FILE (one per line, # comments) before and "
                          "between stops; the run ends after the last one. Exit status 0 if all "
                          "succeeded, 4 if one failed (see `help` in a script)")
    run.add_argument("--symbols", metavar="FILE",
                     help="a System.map for the debugger (added to the image's own symbols)")
    guests = sub.add_parser("guests", help="list known guests, fetch Debian ones")
    gsub = guests.add_subparsers(dest="guests_command", metavar="ACTION", required=True)
    gsub.add_parser("list", help="the guests xendbg knows, and whether each is here")
    fetch = gsub.add_parser("fetch", help="download a Debian guest (apt-get download) into the "
                                          "cache; the image path is printed last")
    fetch.add_argument("name", metavar="NAME")

    lab = sub.add_parser("lab", help="the labs: list them, read a guide, check a lab's guests",
                         description="Without LAB: list the labs. With LAB (number or name): "
                                     "print its guide, or with --check run its guests and "
                                     "judge their CHECK lines (exit 0 when all pass).")
    lab.add_argument("lab", metavar="LAB", nargs="?")
    lab.add_argument("--check", action="store_true", help="run the lab's guests and judge them")
    return parser


def build_tui_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xendbg",
        description="Open the debugger (a terminal UI) on KERNEL (default: the built-in demo "
                    "guest), stopped at the guest's first instruction. F5 continue, F6 pause, "
                    "F7 stepi, F8 step to the next hypercall, F9 finish it, F2 toggle a "
                    "breakpoint, F4 the command line (`help` lists its commands), ctrl+q quit. "
                    "The machine runs in a process of its own. Other commands: `xendbg run`, "
                    "`xendbg guests`, `xendbg lab` (`xendbg --help`).")
    parser.add_argument("kernel", metavar="KERNEL", nargs="?", default=None)
    _add_machine_options(parser)
    parser.add_argument("--symbols", metavar="FILE",
                        help="a System.map for the debugger (added to the image's own symbols)")
    parser.add_argument("--version", action="version", version=f"xendbg {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS or argv[:1] in (["-h"], ["--help"]):
        args = build_parser().parse_args(argv)
        if args.command == "run":
            from xendbg.runner import RunOptions, run
            return run(RunOptions(kernel=args.kernel, cmdline=args.cmdline, ramdisk=args.ramdisk,
                                  memory=args.memory, until=args.until, timeout=args.timeout,
                                  input=args.input, stats=args.stats, trace=args.trace,
                                  p2m=args.p2m, script=args.script, symbols=args.symbols,
                                  vcpus=args.vcpus, tsc_khz=args.tsc_khz,
                                  start_date=args.start_date))
        if args.command == "guests":
            return _guests(args)
        if args.command == "lab":
            return _lab(args)
        build_parser().print_help()
        return 0
    args = build_tui_parser().parse_args(argv)
    from xendbg.app import run_app
    return run_app(args)


def _lab(args) -> int:
    from xendbg.guests import guest_info
    from xendbg.labs import LABS, find
    if args.lab is None:
        for lab in LABS:
            status = ", ".join(f"{g}: {guest_info(g).status}" for g in lab.guests)
            print(f"lab {lab.number}  {lab.title}")
            print(f"       {status}")
        return 0
    lab = find(args.lab)
    if lab is None:
        print(f"xendbg: no lab {args.lab!r}; `xendbg lab` lists them", file=sys.stderr)
        return 2
    if not args.check:
        print(lab.guide.read_text(), end="")
        return 0
    from xendbg.labs.check import run_guest
    ok = True
    for guest in lab.guests:
        run = run_guest(guest)
        if run.error:
            print(f"{guest}: cannot run: {run.error}")
            ok = False
            continue
        for name, passed, why in run.checks:
            print(f"{guest}: {name:<24} {'ok' if passed else 'FAIL ' + why}")
        verdict = "PASS" if run.passed else "FAIL"
        print(f"{guest}: {verdict} ({len(run.checks)} checks, {run.ended})")
        ok = ok and run.passed
    return 0 if ok else 1


def _guests(args) -> int:
    from xendbg.guests import GuestError, fetch_any, list_guests
    if args.guests_command == "list":
        rows = list_guests()
        width = max(len(g.name) for g in rows)
        for g in rows:
            abi = g.abi or "-"
            print(f"{g.name:<{width}}  {g.kind:<6}  {abi:<7}  {g.status}")
            print(f"{'':<{width}}  {g.description}")
        return 0
    try:
        path = fetch_any(args.name, lambda msg: print(f"xendbg: {msg}", file=sys.stderr))
    except GuestError as exc:
        print(f"xendbg: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
