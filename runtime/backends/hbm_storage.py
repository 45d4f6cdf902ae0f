"""HBM's lines for Amaranth's simulator: the memory behind the pNPU's ``hbm_storage`` port.

The RTL holds the HBM controller (arbitration, bandwidth, latency, hw/hbm.py); the lines
live here, in a dict of the lines ever written, so a config's HBM can be gigabytes while
the simulation holds only what a run touches. The Verilator harness keeps the same memory
in C++ (verilator_harness.cpp, ``Storage``).
"""

import numpy as np


__all__ = ["HBMStorage"]


class HBMStorage:
    """The lines of one config's HBM, all zero until written; ``serve`` is the process that
    answers the controller's port, cycle by cycle (see ``HBMStorageSignature``)."""

    def __init__(self, config):
        self.config = config
        self.line_words = config.hbm_words_per_cycle
        self.lines = {}            # line -> the line's bits (word w at bit 32 * w)
        self._masks = {}           # write enables -> bit mask

    def clear(self):
        self.lines.clear()

    def _mask(self, enables):
        mask = self._masks.get(enables)
        if mask is None:
            mask = sum(0xFFFF_FFFF << 32 * w for w in range(self.line_words) if enables >> w & 1)
            self._masks[enables] = mask
        return mask

    def _check(self, address, count):
        if address < 0 or count < 0 or address + count > self.config.hbm_words:
            raise ValueError(f"HBM words {address}..{address + count - 1} are outside HBM's "
                             f"{self.config.hbm_words} words")

    def _line_array(self, line):
        return np.frombuffer(self.lines.get(line, 0).to_bytes(4 * self.line_words, "little"),
                             dtype="<u4")

    def write(self, address, values):
        """Back door: HBM words ``address``.. take ``values`` (signed or unsigned 32-bit)."""
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        self._check(address, len(values))
        if not len(values):
            return
        w = self.line_words
        first, last = address // w, -(-(address + len(values)) // w)
        padded = np.zeros((last - first) * w, dtype="<u4")
        padded[:w] = self._line_array(first)             # the partial lines at both ends
        padded[-w:] = self._line_array(last - 1)
        start = address - first * w
        padded[start:start + len(values)] = values.astype(np.uint32)
        data = padded.tobytes()
        size = 4 * w
        for i, line in enumerate(range(first, last)):
            self.lines[line] = int.from_bytes(data[i * size:(i + 1) * size], "little")

    def read(self, address, count):
        """Back door: ``count`` HBM words from ``address`` (int64, signed 32-bit values)."""
        self._check(address, count)
        if not count:
            return np.zeros(0, dtype=np.int64)
        w = self.line_words
        first, last = address // w, -(-(address + count) // w)
        words = np.concatenate([self._line_array(line) for line in range(first, last)])
        start = address - first * w
        return words[start:start + count].view(np.int32).astype(np.int64)

    async def serve(self, ctx, port):
        """An ``add_process`` process: the storage behind ``port`` (an ``HBMStorageSignature``
        seen from the memory side), sampled at every clock edge."""
        lines = self.lines
        rdata = port.rdata.as_value()
        async for _, _, line, read, write, wdata in ctx.tick().sample(
                port.line, port.read, port.write, port.wdata.as_value()):
            if write:
                mask = self._mask(write)
                lines[line] = lines.get(line, 0) & ~mask | wdata & mask
            elif read:
                ctx.set(rdata, lines.get(line, 0))
