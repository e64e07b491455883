"""The command language headless: ``xendbg run KERNEL --script FILE`` end to end (issue #6's
acceptance list), and its exit statuses."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from xendbg.machine.mmu import Mmu

XENDBG = [sys.executable, "-m", "xendbg"]
NEEDS_MMU = pytest.mark.xfail(not hasattr(Mmu, "frame_info"), strict=False,
                              reason="needs the PV MMU (update_va_mapping, mmuext_op: issue #3)")


def run_script(tmp_path, kernel: str, script: str, *extra: str, timeout: int = 300):
    path = tmp_path / "commands.xdb"
    path.write_text(script)
    return subprocess.run([*XENDBG, "run", kernel, "--script", str(path), *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_script_runs_commands_between_stops(tmp_path):
    r = run_script(tmp_path, "hello-pv64", """
# comments and blank lines are skipped

break step2_magic
continue
info registers
step-hypercall
finish-hypercall
break hypercall event_channel_op
continue
finish-hypercall
info evtchn
""")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "(xendbg) break step2_magic\nBreakpoint 1: 0xffffffff800021af <step2_magic>" in out
    assert "Breakpoint 1, 0xffffffff800021af <step2_magic>" in out
    assert "rip    0xffffffff800021af  <step2_magic>" in out
    assert "Hypercall entry: console_io(cmd=0x0" in out and "'CHECK magic: ok\\n'" in out
    assert "console_io returned 0" in out
    assert "EVTCHNOP_send {port=2}" in out
    assert re.search(r"port 2: .*sends 0 → 1", out)
    assert "RESULT" not in out            # the run ends after the last command
    assert out.index("hello-pv64: magic=") < out.index("Breakpoint 1, ")   # console interleaved


def test_a_failing_command_ends_the_script_with_status_4(tmp_path):
    r = run_script(tmp_path, "hello-pv64", "break main\nbreak no_such_symbol\ncontinue\n")
    assert r.returncode == 4
    assert "error: no symbol 'no_such_symbol'" in r.stdout
    assert "(xendbg) continue" not in r.stdout
    assert "commands.xdb:2: `break no_such_symbol` failed" in r.stderr
    assert "Traceback" not in r.stderr


def test_script_usage_errors_exit_2(tmp_path):
    r = subprocess.run([*XENDBG, "run", "hello-pv64", "--script", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--script" in r.stderr
    (tmp_path / "s").write_text("info vcpu\n")
    r = subprocess.run([*XENDBG, "run", "hello-pv64", "--script", str(tmp_path / "s"), "--until",
                        "x"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--until" in r.stderr
    (tmp_path / "bad.map").write_text("not a map\n")
    r = subprocess.run([*XENDBG, "run", "hello-pv64", "--script", str(tmp_path / "s"),
                        "--symbols", str(tmp_path / "bad.map")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "line 1" in r.stderr


def test_symbols_from_a_system_map(tmp_path):
    (tmp_path / "System.map").write_text("ffffffff80002000 T my_main_alias\n")
    r = run_script(tmp_path, "hello-pv64", "info symbol my_main_alias\nbreak my_main_alias\n",
                   "--symbols", str(tmp_path / "System.map"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "my_main_alias = 0xffffffff80002000 (type T, from System.map)" in r.stdout


def test_timeout_ends_a_script_with_status_3(tmp_path):
    from xendbg.guests import lab_image
    r = run_script(tmp_path, str(lab_image("spin-pv64")), "continue\ninfo vcpu\n",
                   "--timeout", "1")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "Paused" in r.stdout and "timeout" in r.stderr


@NEEDS_MMU
def test_acceptance_events_pv64_break_event_any(tmp_path):
    """Acceptance 1: stops at the upcall, shows the pending ports and the mask state."""
    r = run_script(tmp_path, "events-pv64", "break event any\ncontinue\ninfo vcpu\ninfo evtchn\n")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    stop = re.search(r"Breakpoint 1 \(event any\): upcall to 0x[0-9a-f]+ <(\w+)> interrupting "
                     r".*; pending ports \[([0-9, ]+)\]", out)
    assert stop, out
    pending = [int(p) for p in stop.group(2).split(",")]
    assert "evtchn_upcall_mask 1 (events masked)" in out        # Xen masked it for the upcall
    assert f"pending ports: {pending}" in out
    for port in pending:
        assert re.search(rf"^{port}\s+\S+\s+0\s.*\byes\b", out, re.MULTILINE), out


@NEEDS_MMU
def test_acceptance_mmu_pv64_pin_l4_stepped_and_shown(tmp_path):
    """Acceptance 2: the decoded PIN_L4_TABLE with its mfn at the call's entry; after it, the
    frame is pinned as L4 and its history says by which call."""
    first = run_script(tmp_path, "mmu-pv64",
                       "break hypercall mmuext_op\ncontinue\nstep-hypercall\n")
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"\[0\] PIN_L4_TABLE mfn 0x[0-9a-f]+ \(pfn", first.stdout)
    assert first.stdout.count("Hypercall entry:") == 2
    # The guest's first PIN_L4_TABLE is refused (the frame is still mapped writable); its third
    # mmuext_op pins the same frame for good.
    r = run_script(tmp_path, "mmu-pv64", "break hypercall mmuext_op\nignore 1 2\ncontinue\n")
    mfn = re.search(r"\[0\] PIN_L4_TABLE mfn (0x[0-9a-f]+)", r.stdout).group(1)
    r = run_script(tmp_path, "mmu-pv64", f"""break hypercall mmuext_op
ignore 1 2
continue
finish-hypercall
info frame {mfn}
""")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "mmuext_op returned 0" in out
    assert re.search(rf"page_type: mfn={mfn}, old=\w+, new=L4", out)
    assert "page type: L4 pinned" in out
    assert re.search(r"insn \d+: mmuext_op PIN_L4_TABLE → 0", out)


def test_acceptance_grub_breakpoint_on_grub_main(tmp_path, debian_guest):
    """Acceptance 3: GRUB's core is stripped; grub_main (the call in its entry code) and its
    exported functions are named, a breakpoint there stops, and disassembly is symbolized."""
    image = debian_guest("grub-x86_64")
    r = run_script(tmp_path, str(image), """info symbol grub_main
info symbol grub_malloc
break grub_main
continue
disassemble
""")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"grub_main = (0x[0-9a-f]+) \(type T, from derived\)", out)
    assert "grub_malloc = 0x" in out and "from grub-exports" in out
    addr = re.search(r"grub_main = (0x[0-9a-f]+)", out).group(1)
    assert f"Breakpoint 1, {addr} <grub_main>" in out
    assert f"=> {addr} <grub_main>:" in out
    assert re.search(r"<grub_main\+0x[0-9a-f]+>:", out)
    assert re.search(r"    <grub_\w+>", out)               # an operand named after a symbol


def test_acceptance_linux_kallsyms(tmp_path, debian_guest):
    """Acceptance 4: start_kernel from the image's own kallsyms; break start_kernel accepted."""
    image = debian_guest("linux-cloud")
    r = run_script(tmp_path, str(image), "info symbol start_kernel\nbreak start_kernel\n"
                   "info symbol start_kernel+0x10\n")
    assert r.returncode == 0, r.stdout + r.stderr
    found = re.search(r"start_kernel = (0xffffffff8[0-9a-f]+) \(type T, from kallsyms\)", r.stdout)
    assert found, r.stdout
    assert f"Breakpoint 1: {found.group(1)} <start_kernel>" in r.stdout
    assert "is start_kernel+0x10" in r.stdout
