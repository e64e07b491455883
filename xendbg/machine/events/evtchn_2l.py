"""The 2-level event-channel ABI: pending and mask bitmaps in shared_info.

Port ``p`` lives in word ``p // W`` bit ``p % W`` of ``evtchn_pending[]`` and ``evtchn_mask[]``,
``W`` being the guest's word size in bits. Raising a port (Xen's ``evtchn_2l_set_pending``):

1. set its pending bit; if it was already set, stop — the guest has not consumed the last one, and
   an event is never delivered twice;
2. if the port is masked, stop — it stays pending until unmasked;
3. set bit ``p // W`` of the target vCPU's ``evtchn_pending_sel`` and its ``evtchn_upcall_pending``;
   the upcall itself is made when the vCPU's ``evtchn_upcall_mask`` is clear.

Unmasking a masked, pending port re-runs step 3 (``evtchn_2l_unmask``). The bitmaps are guest memory, so the
guest may change them at any time; this module only ever does the atomic bit operations Xen does.
"""

from __future__ import annotations

from xendbg.machine.abi.layout import Abi
from xendbg.machine.memory import MachineMemory


class Evtchn2L:
    """Pending/mask bit operations for one domain's shared_info page."""

    def __init__(self, memory: MachineMemory, abi: Abi, shared_info_ma: int) -> None:
        self.memory = memory
        self.abi = abi
        self.base = shared_info_ma
        self.bits = abi.word * 8
        self.nr_ports = abi.nr_event_channels

    def _word_ma(self, table: int, port: int) -> int:
        return self.base + table + (port // self.bits) * self.abi.word

    def _test_and_set(self, ma: int, bit: int) -> bool:
        word = self.abi.word
        value = int.from_bytes(self.memory.view[ma:ma + word], "little")
        old = bool(value >> bit & 1)
        if not old:
            value |= 1 << bit
            self.memory.view[ma:ma + word] = value.to_bytes(word, "little")
        return old

    def _test(self, ma: int, bit: int) -> bool:
        word = self.abi.word
        return bool(int.from_bytes(self.memory.view[ma:ma + word], "little") >> bit & 1)

    def _clear(self, ma: int, bit: int) -> None:
        word = self.abi.word
        value = int.from_bytes(self.memory.view[ma:ma + word], "little") & ~(1 << bit)
        self.memory.view[ma:ma + word] = value.to_bytes(word, "little")

    def is_pending(self, port: int) -> bool:
        return self._test(self._word_ma(self.abi.evtchn_pending, port), port % self.bits)

    def is_masked(self, port: int) -> bool:
        return self._test(self._word_ma(self.abi.evtchn_mask, port), port % self.bits)

    def clear_pending(self, port: int) -> None:
        self._clear(self._word_ma(self.abi.evtchn_pending, port), port % self.bits)

    def mask(self, port: int) -> None:
        self._test_and_set(self._word_ma(self.abi.evtchn_mask, port), port % self.bits)

    def set_pending(self, port: int, vcpu_info_ma: int) -> bool:
        """Raise ``port``; True if this made the vCPU's upcall pending (steps 1–3 above)."""
        if self._test_and_set(self._word_ma(self.abi.evtchn_pending, port), port % self.bits):
            return False
        if self.is_masked(port):
            return False
        return self._mark_vcpu(port, vcpu_info_ma)

    def unmask(self, port: int, vcpu_info_ma: int) -> bool:
        """Clear the mask; if it was set and the port is pending, signal the vCPU. True if it did.

        Only a port that was masked is re-raised (``evtchn_2l_unmask`` test-and-clears the mask):
        unmasking an unmasked pending port does not deliver it a second time.
        """
        mask_ma = self._word_ma(self.abi.evtchn_mask, port)
        bit = port % self.bits
        if not self._test(mask_ma, bit):
            return False
        self._clear(mask_ma, bit)
        if not self.is_pending(port):
            return False
        return self._mark_vcpu(port, vcpu_info_ma)

    def _mark_vcpu(self, port: int, vcpu_info_ma: int) -> bool:
        sel = vcpu_info_ma + self.abi.vcpu_pending_sel
        if self._test_and_set(sel, port // self.bits):
            return False
        self.memory.view[vcpu_info_ma] = 1      # evtchn_upcall_pending
        return True

    def pending_ports(self) -> list[int]:
        """Every port whose pending bit is set (for the debugger)."""
        words = self.nr_ports // self.bits
        fmt = "<u8" if self.abi.word == 8 else "<u4"
        start = self.base + self.abi.evtchn_pending
        raw = self.memory.bytes[start:start + words * self.abi.word].view(fmt)
        ports = []
        for w, value in enumerate(raw.tolist()):
            while value:
                low = value & -value
                ports.append(w * self.bits + low.bit_length() - 1)
                value ^= low
        return ports
