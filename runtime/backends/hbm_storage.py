"""HBM's lines for Amaranth's simulator: the memory behind the pNPU's ``hbm_storage`` port.

The RTL holds the HBM controller (arbitration, bandwidth, latency, hw/hbm.py); the lines
live here, in a dict of the lines ever written, so a config's HBM can be gigabytes while
the simulation holds only what a run touches. The Verilator harness keeps the same memory
in C++ (verilator_harness.cpp, ``Storage``).
"""

import numpy as np

from .words import pack_words, unpack_words

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

    def write(self, address, values):
        """Back door: HBM words ``address``.. take ``values`` (signed or unsigned 32-bit)."""
        values = np.asarray(values, dtype=np.int64).reshape(-1)
        self._check(address, len(values))
        w = self.line_words
        first, last = address // w, -(-(address + len(values)) // w)
        padded = np.zeros((last - first) * w, dtype=np.int64)
        start = address - first * w
        for line in range(first, last):
            padded[(line - first) * w:(line - first + 1) * w] = unpack_words(
                self.lines.get(line, 0), w)
        padded[start:start + len(values)] = values
        for line in range(first, last):
            self.lines[line] = pack_words(padded[(line - first) * w:(line - first + 1) * w])

    def read(self, address, count):
        """Back door: ``count`` HBM words from ``address`` (int64, signed 32-bit values)."""
        self._check(address, count)
        w = self.line_words
        first, last = address // w, -(-(address + count) // w)
        words = np.concatenate([unpack_words(self.lines.get(line, 0), w)
                                for line in range(first, last)]) if count else np.zeros(0)
        start = address - first * w
        return np.asarray(words[start:start + count], dtype=np.int64)

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
