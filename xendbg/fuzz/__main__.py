"""``python -m xendbg.fuzz hypercalls|files …``: run a fuzzer, print its summary and every finding.

Exit status: 0 when nothing was found, 1 when something was (each finding is printed with the
command that replays it), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys


def _hypercalls(args) -> int:
    from xendbg.fuzz.hypercalls import fuzz_hypercalls

    guests = args.guest or ["hello-pv64", "hello-pv32"]
    per_guest = max(1, args.calls // len(guests))
    found = 0
    out = []
    for guest in guests:
        shown = [0]

        def progress(done: int, report, guest=guest, shown=shown) -> None:
            if not args.quiet and done - shown[0] >= 50000:
                shown[0] = done
                print(f"xendbg fuzz: {guest}: {done} calls, {report.calls_per_s:.0f}/s, "
                      f"{len(report.unknown)} new findings", file=sys.stderr)

        report = fuzz_hypercalls(guest, args.seed, per_guest, lifetime=args.lifetime,
                                 stop_on_first=args.stop_on_first, progress=progress)
        print(report.summary())
        seen: set[tuple[str, str]] = set()
        for f in report.findings:
            if (f.kind, f.message) in seen:
                continue
            seen.add((f.kind, f.message))
            print(f.describe())
        found += report.new_count
        out.append({"guest": guest, "seed": args.seed, "calls": report.calls,
                    "domains": report.domains, "elapsed": report.elapsed,
                    "calls_per_s": report.calls_per_s, "digest": report.digest,
                    "known": dict(report.known), "new_findings": report.new_count,
                    "findings": [f.describe() for f in report.unknown]})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 1 if found else 0


def _files(args) -> int:
    from xendbg.fuzz.files import FORMATS, fuzz_files

    formats = args.format or list(FORMATS)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        print(f"xendbg fuzz: unknown format {unknown[0]!r} (known: {', '.join(FORMATS)})",
              file=sys.stderr)
        return 2
    found = 0
    out = []
    for fmt in formats:
        report = fuzz_files(fmt, args.seed, args.cases, cli_cases=args.cli,
                            memory_limit_mib=args.memory_limit)
        print(report.summary())
        for f in report.unknown[:20]:
            print(f.describe())
        for key, count in report.known.items():
            print(f"  known issue {key}: {count} cases")
        found += report.new_count
        out.append(report.as_dict())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xendbg.fuzz",
                                description="xendbg's robustness fuzzers (reproducible by seed).")
    sub = p.add_subparsers(dest="what", required=True, metavar="hypercalls|files")
    h = sub.add_parser("hypercalls", help="random hypercalls made by live lab guests")
    h.add_argument("--guest", action="append", metavar="NAME",
                   help="lab guest to fuzz (repeatable; default hello-pv64 and hello-pv32)")
    h.add_argument("--seed", type=int, default=1)
    h.add_argument("--calls", type=int, default=20000, help="total, split between the guests")
    h.add_argument("--lifetime", type=int, default=2000,
                   help="calls after which a domain is replaced by a fresh one")
    h.add_argument("--stop-on-first", action="store_true")
    h.add_argument("--quiet", action="store_true")
    h.add_argument("--json", metavar="FILE")
    f = sub.add_parser("files", help="mutated kernel images through the loader and the builder")
    f.add_argument("--format", action="append", metavar="NAME", help="repeatable; default all")
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--cases", type=int, default=1000, help="mutations per format")
    f.add_argument("--cli", type=int, default=0, metavar="N",
                   help="also run N of the cases per format through `xendbg run`")
    f.add_argument("--memory-limit", type=int, default=1536, metavar="MIB",
                   help="address-space limit for this process while fuzzing (0: none)")
    f.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    return _hypercalls(args) if args.what == "hypercalls" else _files(args)


if __name__ == "__main__":
    raise SystemExit(main())
