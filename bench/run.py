"""Run every ``bench/bench_*.py`` and write ``bench/results.md`` and ``bench/results.json``.

Each module runs in a process of its own (``run.py --child MODULE OUT``) with a time limit; its
``run()`` returns rows (see ``bench/README.md``). A module that fails or times out becomes a FAIL
row, and the run goes on. Exit status 1 if any row failed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def host() -> dict:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import unicorn
        uc = unicorn.__version__
    except Exception:                              # noqa: BLE001
        uc = "?"
    try:
        from xendbg.fast.blockhook import IMPLEMENTATION
    except Exception:                              # noqa: BLE001
        IMPLEMENTATION = "?"
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                           capture_output=True, text=True).stdout.strip()
    short = (f"{os.cpu_count()} vCPU {cpu.replace('(R)', '').replace(' Processor', '')}, "
             f"py{platform.python_version()}, unicorn {uc}, fast path {IMPLEMENTATION}")
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "unicorn": uc, "fast_path": IMPLEMENTATION, "platform": platform.platform(),
            "commit": commit + ("+changes" if dirty else ""), "short": short}


def modules(only: list[str]) -> list[Path]:
    found = sorted(BENCH.glob("bench_*.py"))
    return [p for p in found if not only or any(o in p.stem for o in only)]


def child(path: str, out: str) -> int:
    sys.path[:0] = [str(BENCH), str(ROOT)]
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run()
    Path(out).write_text(json.dumps(rows, default=str))
    return 0


def run_module(path: Path, quick: bool, timeout: float) -> tuple[list[dict], float]:
    out = BENCH / f".{path.stem}.rows.json"
    out.unlink(missing_ok=True)
    env = dict(os.environ)
    if quick:
        env["XENDBG_BENCH_QUICK"] = "1"
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(path),
                               str(out)], env=env, timeout=timeout, capture_output=True,
                              text=True)
        err = None if proc.returncode == 0 else \
            (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        tail = proc.stderr
    except subprocess.TimeoutExpired:
        err, tail = f"no result within {timeout:.0f} s", ""
    took = time.perf_counter() - start
    if err is None and out.exists():
        rows = json.loads(out.read_text())
        out.unlink()
    else:
        rows = [{"what": f"{path.stem}: the module failed", "xendbg": "—", "ok": False,
                 "note": err or "no rows", "detail": tail[-3000:]}]
    for row in rows:
        row.setdefault("module", path.stem)
    return rows, took


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "—" if value is None else str(value)


def finish_row(row: dict, machine: str) -> dict:
    x, b = row.get("xendbg"), row.get("baseline")
    if "ratio" not in row:
        numeric = isinstance(x, (int, float)) and isinstance(b, (int, float)) and b
        row["ratio"] = x / b if numeric else None
    row.setdefault("machine", machine)
    row.setdefault("higher_is_better", True)
    return row


def markdown(rows: list[dict], info: dict, took: dict[str, float], quick: bool) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# xendbg benchmark results{' (short form)' if quick else ''}", "",
             f"{now}, commit {info['commit']}; host: {info['cpu']}, {info['cpus']} vCPUs, "
             f"{info['platform']}; Python {info['python']}, Unicorn {info['unicorn']}, "
             f"fast path: {info['fast_path']}.", "",
             "Every ratio is xendbg / baseline, both measured in this run (the arrow says which "
             "way is better). Checks have no ratio: ✓ or FAIL.", "",
             "| what | xendbg | baseline | ratio | machine |", "|---|---|---|---|---|"]
    for row in rows:
        unit = f" {row['unit']}" if row.get("unit") else ""
        base = _fmt(row.get("baseline"))
        if row.get("baseline_name"):
            base = f"{base}{unit} ({row['baseline_name']})" if row.get("baseline") is not None \
                else f"— ({row['baseline_name']})"
        elif row.get("baseline") is not None:
            base += unit
        if row.get("ratio") is not None:
            arrow = "↑" if row.get("higher_is_better", True) else "↓"
            ratio = f"{_fmt(float(row['ratio']))} {arrow}"
        else:
            ratio = ""
        if row.get("ok") is True:
            ratio = (ratio + " ✓").strip()
        elif row.get("ok") is False:
            ratio = (ratio + " **FAIL**").strip()
        what = row["what"] + (f" — {row['note']}" if row.get("note") else "")
        lines.append(f"| {what} | {_fmt(row.get('xendbg'))}{unit} | {base} | {ratio} | "
                     f"{row.get('machine', '')} |")
    lines += ["", "Time per module: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short forms only")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="run only modules whose name contains TEXT (repeatable)")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="per module, seconds")
    p.add_argument("--out", default=str(BENCH / "results"),
                   help="output path without extension (default bench/results)")
    p.add_argument("--update", action="store_true",
                   help="keep the rows of the modules not run this time from the existing report")
    p.add_argument("--child", nargs=2, metavar=("MODULE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child)
    info = host()
    rows: list[dict] = []
    took: dict[str, float] = {}
    for path in modules(args.only):
        print(f"bench: {path.stem} …", file=sys.stderr, flush=True)
        got, seconds = run_module(path, args.quick, args.timeout)
        took[path.stem] = seconds
        rows += [finish_row(r, info["short"]) for r in got]
        for r in got:
            flag = {True: "ok", False: "FAIL", None: ""}[r.get("ok")]
            print(f"bench:   {r['what']}: {_fmt(r.get('xendbg'))} {r.get('unit', '')} "
                  f"(baseline {_fmt(r.get('baseline'))}) {flag}", file=sys.stderr, flush=True)
    out = Path(args.out)
    if args.update and out.with_suffix(".json").exists():
        old = json.loads(out.with_suffix(".json").read_text())
        ran = set(took)
        kept = [r for r in old["rows"] if r.get("module") not in ran]
        for name, seconds in old.get("seconds", {}).items():
            took.setdefault(name, seconds)
        rows = sorted(kept + rows, key=lambda r: r.get("module", ""))
        took = dict(sorted(took.items()))
    out.with_suffix(".md").write_text(markdown(rows, info, took, args.quick))
    out.with_suffix(".json").write_text(json.dumps(
        {"host": info, "quick": args.quick, "seconds": took, "rows": rows}, indent=1,
        default=str))
    print(f"bench: wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}", file=sys.stderr)
    return 1 if any(r.get("ok") is False for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
