"""The guest console: the ``console_io`` hypercall and the console ring's backend (xenconsoled).

Two paths lead out of a PV guest:

* ``console_io(CONSOLEIO_write, count, buf)`` — Xen's own console. A release build of Xen refuses it
  to a domU; xendbg accepts it, as a debug hypervisor does, because early boot output (Linux's
  ``earlyprintk=xen``, GNU Mach before its console driver) goes there.
* the console ring (``xencons_interface`` in the page ``start_info.console.domU.mfn``) — what
  xenconsoled consumes. It is drained when the guest sends on the console event channel and when
  the guest yields or blocks (guests spin until ``out_cons`` catches up, so the backend must run).

Input goes the other way: bytes queued with :meth:`Console.queue_input` are copied into ``in[]``
(and the guest notified) as room allows.
"""

from __future__ import annotations

from collections.abc import Callable

from xendbg.machine.abi import layout as L
from xendbg.machine.memory import MachineMemory

CONSOLEIO_WRITE_MAX = 4096       # Xen copies in chunks; a huge count is just more chunks


class Console:
    def __init__(self, memory: MachineMemory, ring_ma: int,
                 emit: Callable[[str, bytes], None], notify_guest: Callable[[], None]) -> None:
        self.memory = memory
        self.ring_ma = ring_ma
        self.emit = emit                     # emit(source, data): "console_io" or "ring"
        self.notify_guest = notify_guest
        self.pending_input = bytearray()
        self.input_armed = False             # input is released once the guest reads its console
        self.output = bytearray()            # everything the guest printed, both paths
        self.ring_bytes_out = 0
        self.ring_bytes_in = 0

    def _u32(self, off: int) -> int:
        return self.memory.read_u32(self.ring_ma + off)

    def _set_u32(self, off: int, value: int) -> None:
        self.memory.write_u32(self.ring_ma + off, value)

    # -- output ---------------------------------------------------------------------------------
    def write_from_hypercall(self, data: bytes) -> None:
        self.output += data
        self.emit("console_io", data)

    def drain_ring(self) -> bool:
        """Consume ``out[]`` from ``out_cons`` to ``out_prod``; True if anything moved."""
        cons = self._u32(L.XENCONS_OUT_CONS)
        prod = self._u32(L.XENCONS_OUT_PROD)
        avail = (prod - cons) & 0xFFFFFFFF
        if avail == 0:
            return self._feed_input()
        if avail > L.XENCONS_OUT_SIZE:
            # A corrupt producer index: xenconsoled drops the ring's contents and resynchronises.
            self._set_u32(L.XENCONS_OUT_CONS, prod)
            return True
        out = bytearray()
        base = self.ring_ma + L.XENCONS_OUT
        while cons != prod:
            out.append(self.memory.view[base + (cons & (L.XENCONS_OUT_SIZE - 1))])
            cons = (cons + 1) & 0xFFFFFFFF
        self._set_u32(L.XENCONS_OUT_CONS, cons)
        self.ring_bytes_out += len(out)
        self.output += out
        self.emit("ring", bytes(out))
        self._feed_input()
        self.notify_guest()
        return True

    # -- input ----------------------------------------------------------------------------------
    def queue_input(self, data: bytes) -> None:
        self.pending_input += data

    def arm_input(self) -> None:
        """The guest has started using its console: release queued input from now on."""
        self.input_armed = True

    def take_input(self, n: int) -> bytes:
        """For ``CONSOLEIO_read``: up to ``n`` queued bytes."""
        self.input_armed = True
        data = bytes(self.pending_input[:n])
        del self.pending_input[:n]
        return data

    def _feed_input(self) -> bool:
        if not self.input_armed or not self.pending_input:
            return False
        cons = self._u32(L.XENCONS_IN_CONS)
        prod = self._u32(L.XENCONS_IN_PROD)
        used = (prod - cons) & 0xFFFFFFFF
        if used > L.XENCONS_IN_SIZE:
            return False                  # corrupt indices: leave the ring alone
        room = L.XENCONS_IN_SIZE - used
        n = min(room, len(self.pending_input))
        if n == 0:
            return False
        base = self.ring_ma + L.XENCONS_IN
        for i in range(n):
            self.memory.view[base + ((prod + i) & (L.XENCONS_IN_SIZE - 1))] = self.pending_input[i]
        del self.pending_input[:n]
        self._set_u32(L.XENCONS_IN_PROD, (prod + n) & 0xFFFFFFFF)
        self.ring_bytes_in += n
        self.notify_guest()
        return True
