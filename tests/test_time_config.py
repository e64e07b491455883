"""Configuring virtual time (issue #5): ``BuildConfig.clock``, ``xendbg run --tsc-khz --start-date``.

The TSC frequency and the wallclock's start date are part of the configuration the machine is
built from (fixed defaults, so that runs repeat); ``xendbg run`` sets them from its flags, refuses a
bad value with a one-line reason (status 2), and ``--stats`` reports the clock's system time.
"""

from __future__ import annotations

import calendar
import re
import subprocess
import sys

import pytest

from xendbg.fast import pvclock
from xendbg.fast.blockhook import IMPLEMENTATION as COUNTER
from xendbg.machine.builder import BuildConfig
from xendbg.machine.clock import (
    DEFAULT_START,
    ClockConfig,
    parse_start_date,
    ticks_per_insn,
)
from xendbg.machine.clock.time_info import read_time_info, read_wallclock
from xendbg.machine.memory import PAGE_SHIFT
from xendbg.runner import RunOptions, UsageError, load

XENDBG = [sys.executable, "-m", "xendbg"]
SEC = 1_000_000_000
JUNE_2030_NOON = calendar.timegm((2030, 6, 1, 12, 0, 0))


def xendbg(*args, timeout=300):
    return subprocess.run([*XENDBG, *args], capture_output=True, text=True, timeout=timeout)


def wallclock(m) -> tuple[int, int, int]:
    return read_wallclock(m.memory.view, m.domain.shared_info_mfn << PAGE_SHIFT, m.abi)


# -- the configuration -----------------------------------------------------------------------------

def test_build_config_carries_a_fixed_default_clock():
    assert BuildConfig().clock == ClockConfig()
    assert ClockConfig().wallclock_ns == calendar.timegm(DEFAULT_START.utctimetuple()) * SEC


@pytest.mark.parametrize("name", ["hello-pv64", "hello-pv32"])
def test_machine_takes_its_clock_from_the_build_config(name, lab_machine):
    config = ClockConfig.from_options(tsc_khz=3_300_000, start_date="2030-06-01T12:00:00Z")
    m = lab_machine(name, clock=config)
    assert m.clock.config == config and m.clock.tsc_per_insn == 3
    _, rec = read_time_info(m.memory.view, m.vcpu.vcpu_info_ma + m.abi.vcpu_time)
    assert (rec.tsc_to_system_mul, rec.tsc_shift) == pvclock.set_time_scale(3_300_000_000)
    assert wallclock(m)[1:] == (JUNE_2030_NOON, 0)


@pytest.mark.parametrize("khz, ticks", [(2_000_000, 2), (1_000_000, 1), (999, 1), (2_499_999, 2),
                                        (2_500_000, 3), (3_000_000, 3)])
def test_ticks_per_instruction_keep_about_one_instruction_per_ns(khz, ticks):
    assert ticks_per_insn(khz) == ticks


@pytest.mark.parametrize("text, expected", [
    ("2030-06-01T12:00:00Z", JUNE_2030_NOON * SEC),
    ("2030-06-01T12:00:00", JUNE_2030_NOON * SEC),                 # no zone: UTC
    ("2030-06-01T14:00:00+02:00", JUNE_2030_NOON * SEC),
    ("2030-06-01 12:00:00.25", JUNE_2030_NOON * SEC + 250_000_000),
    ("1970-01-01", 0),
])
def test_start_dates(text, expected):
    assert parse_start_date(text) == expected


@pytest.mark.parametrize("text", ["tomorrow", "2030-02-30", "1969-12-31T23:59:59Z", ""])
def test_bad_start_dates(text):
    with pytest.raises(ValueError):
        parse_start_date(text)


def test_runner_refuses_bad_values_before_loading_anything():
    with pytest.raises(UsageError, match="--start-date"):
        load(RunOptions(kernel="no-such-guest", start_date="soon"))
    with pytest.raises(UsageError, match="--tsc-khz"):
        load(RunOptions(kernel="no-such-guest", tsc_khz=-5))


def test_runner_builds_the_machine_with_the_flags():
    m, _image, _path = load(RunOptions(kernel="hello-pv64", memory=16, tsc_khz=1_000_000,
                                       start_date="2030-06-01T12:00:00Z"))
    assert m.clock.config.tsc_khz == 1_000_000 and m.clock.tsc_per_insn == 1
    assert m.run() == "shutdown"
    version, sec, nsec = wallclock(m)
    assert version % 2 == 0 and (sec, nsec) == (JUNE_2030_NOON, 0)
    assert m.clock.wallclock_ns() == JUNE_2030_NOON * SEC + m.clock.now_ns()


# -- the command line ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, flag", [(["--tsc-khz", "fast"], "--tsc-khz"),
                                        (["--tsc-khz", "0"], "--tsc-khz"),
                                        (["--start-date", "2030-13-01"], "--start-date"),
                                        (["--start-date", "1900-01-01"], "--start-date")])
def test_bad_flags_exit_2_with_a_reason(args, flag):
    r = xendbg("run", "hello-pv64", *args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"argument {flag}:" in r.stderr.strip().splitlines()[-1]


def test_help_tells_the_defaults():
    r = xendbg("run", "--help")
    text = " ".join(r.stdout.split())
    assert f"default {ClockConfig.tsc_khz}" in text
    assert f"default {DEFAULT_START:%Y-%m-%dT%H:%M:%SZ}" in text


@pytest.mark.skipif(COUNTER != "cython", reason="1.2e9 instructions: minutes with the Python twin")
@pytest.mark.parametrize("guest", ["time-pv64", "time-pv32"])
def test_time_guest_passes_at_another_frequency_and_date(guest):
    r = xendbg("run", guest, "--stats", "--tsc-khz", "3000000", "--start-date",
               "2030-06-01T12:00:00Z")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "RESULT: PASS", r.stdout
    # the guest read the configured date from shared_info
    seen = re.search(r"wallclock at boot: (0x[0-9a-f]+|\d+) s since 1970", r.stdout)
    assert seen and int(seen.group(1), 0) == JUNE_2030_NOON
    # --stats: system time from the clock, which went past the instructions (the guest blocked)
    insns = int(re.search(r"instructions (\d+)", r.stderr).group(1))
    ns, tsc, khz = re.search(r"virtual time ([\d.]+) s \(virtual TSC (\d+) at (\d+) kHz\)",
                             r.stderr).groups()
    assert int(khz) == 3_000_000
    assert int(tsc) >= 3 * insns                   # 3 ticks per instruction, plus idle ticks
    assert abs(float(ns) * 1e9 - int(tsc) / 3) < 10    # 3 GHz: a third of the TSC in ns
    assert float(ns) * 1e9 > insns
