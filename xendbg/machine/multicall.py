"""``multicall``: a batch of hypercalls in one trap (Xen's ``common/multicall.c``).

The guest passes an array of ``struct multicall_entry {op, result, args[6]}`` (xen_ulong_t each:
64 bytes on pv64, 32 on pv32). Xen runs the entries in order through the same hypercall table and
writes each one's return value into its ``result`` field — and nothing else: the guest must depend
only on ``result``. A failing entry does not stop the batch; an entry that cannot be read or whose
result cannot be written fails the whole call with ``-EFAULT``. Some hypercalls make no sense inside a
batch and get ``-ENOSYS`` there, as in Xen's PV multicall table: ``iret`` and ``multicall`` itself.
A batch stops early if an entry crashed or shut down the domain.

The last batch (each entry decoded, with its result) is kept in ``Multicalls.last`` for the debugger.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from xendbg.machine.abi import xen as X
from xendbg.machine.abi.errno import EFAULT, ENOSYS

NOT_IN_MULTICALL = frozenset({X.HYPERVISOR_iret, X.HYPERVISOR_multicall})
MAX_BATCH = 1 << 16


@dataclass
class MulticallEntry:
    index: int
    op: int
    args: tuple[int, ...]
    result: int | None = None


@dataclass
class Multicalls:
    last: list[MulticallEntry] = field(default_factory=list)
    batches: int = 0


def do_multicall(m, call_list: int, nr_calls: int) -> int:
    word = m.abi.word
    size = m.abi.multicall_entry_size
    fmt = "<8Q" if word == 8 else "<8I"
    state: Multicalls = m.multicalls
    state.batches += 1
    state.last = []
    ip = m.cpu.ip
    for i in range(min(nr_calls, MAX_BATCH)):
        va = call_list + i * size
        raw = m.guest.read(va, size)
        if raw is None:
            return -EFAULT
        op, _result, *args = struct.unpack(fmt, raw)
        entry = MulticallEntry(i, op, tuple(args))
        state.last.append(entry)
        if op in NOT_IN_MULTICALL:
            result = -ENOSYS
        else:
            result = m.dispatch(op, list(args), ip, multicall=i)
        if not isinstance(result, int):
            result = -ENOSYS
        entry.result = result
        if not m.guest.write(va + word, (result & ((1 << (8 * word)) - 1)).to_bytes(word, "little")):
            return -EFAULT
        if m.domain.dying:
            break
    return 0
