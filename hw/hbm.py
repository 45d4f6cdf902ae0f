"""HBM controller: one line of ``hbm_bytes_per_cycle`` per cycle, after ``hbm_latency`` cycles, shared by the DMA engines, the host and the instruction prefetchers; the storage lives outside the RTL."""

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arbitration import round_robin
__all__ = ["HBM", "HBMPortSignature", "HBMRequestLayout", "HBMStorageSignature"]


def _line_words(config):
    return config.hbm_words_per_cycle


class HBMRequestLayout(data.StructLayout):
    """One line request: read (``write`` = 0) or write the words enabled in ``mask``."""

    def __init__(self, config):
        words = _line_words(config)
        super().__init__({
            "line": unsigned(max(1, (config.hbm_words // words - 1).bit_length())),
            "write": 1,
            "data": data.ArrayLayout(unsigned(32), words),
            "mask": unsigned(words),
        })


class HBMPortSignature(wiring.Signature):
    """A DMA engine's HBM port, seen from the DMA: line requests, and read lines returned in
    order ``hbm_latency`` cycles after their acceptance (no backpressure on responses)."""

    def __init__(self, config):
        super().__init__({
            "req": Out(stream.Signature(HBMRequestLayout(config))),
            "resp": In(data.ArrayLayout(unsigned(32), _line_words(config))),
            "resp_valid": In(1),
        })


class HBMStorageSignature(wiring.Signature):
    """The HBM's storage, seen from the controller: a synchronous memory of
    ``hbm_words // hbm_words_per_cycle`` lines that lives outside the RTL (the simulation
    harness holds it, sparsely, so HBM can be gigabytes without the design growing).

    At a clock edge where ``read`` is high, the storage puts line ``line`` on ``rdata``,
    where it stays until the next read. At a clock edge where ``write`` (one bit per word)
    is not zero, the enabled words of line ``line`` take ``wdata``. Reads and writes never
    happen at the same edge. Line i holds words i*W .. i*W+W-1.
    """

    def __init__(self, config):
        words = _line_words(config)
        super().__init__({
            "line": Out(HBMRequestLayout(config)["line"].shape),
            "read": Out(1),
            "write": Out(words),
            "wdata": Out(data.ArrayLayout(unsigned(32), words)),
            "rdata": In(data.ArrayLayout(unsigned(32), words)),
        })


class HBM(wiring.Component):
    """The controller of ``hbm_words`` words as lines of ``hbm_words_per_cycle`` words.

    Each cycle one request from one port is accepted (rotating priority): that is the
    bandwidth, ``hbm_bytes_per_cycle``. A write takes effect when accepted; a read samples
    the storage when accepted and its line arrives ``hbm_latency`` cycles later, so a read
    accepted after a write sees it. The lines themselves are behind ``storage``.
    """

    def __init__(self, config, *, n_ports):
        if n_ports < 1:
            raise ValueError(f"an HBM needs at least one port, not {n_ports!r}")
        self.config, self.n_ports = config, n_ports
        super().__init__({
            "port": In(HBMPortSignature(config)).array(n_ports),
            "storage": Out(HBMStorageSignature(config)),
            "reads": Out(32),
            "writes": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        words = _line_words(cfg)
        storage = self.storage

        pointer = Signal(range(self.n_ports))
        m.d.sync += pointer.eq(Mux(pointer == self.n_ports - 1, 0, pointer + 1))
        grant = round_robin(m, Cat(p.req.valid for p in self.port), pointer, self.n_ports, "hbm")
        chosen = Signal(HBMRequestLayout(cfg))
        chosen_port = Signal(range(self.n_ports))
        for i, port in enumerate(self.port):
            m.d.comb += port.req.ready.eq(grant[i])
            with m.If(grant[i]):
                m.d.comb += [chosen.eq(port.req.payload), chosen_port.eq(i)]
        accepted = grant.any()
        is_read = accepted & ~chosen.write
        m.d.comb += [
            storage.line.eq(chosen.line),
            storage.read.eq(is_read),
            storage.wdata.eq(chosen.data),
            storage.write.eq(Mux(accepted & chosen.write, chosen.mask, 0)),
        ]
        m.d.sync += [self.reads.eq(self.reads + is_read),
                     self.writes.eq(self.writes + (accepted & chosen.write))]

        # The storage's read adds one cycle; the rest of the latency is a delay line:
        # the valid bit and the port number in registers, the lines in a ring of
        # hbm_latency - 1 rows. A line written into row ``slot`` is read out of it
        # hbm_latency - 1 cycles later, in the cycle before the row is written again.
        valid, owner = Signal(), Signal(range(self.n_ports))
        m.d.sync += [valid.eq(is_read), owner.eq(chosen_port)]
        line = storage.rdata.as_value()
        delay = cfg.hbm_latency - 1
        for stage in range(delay):
            valid_next = Signal(name=f"delay{stage}_valid")
            owner_next = Signal(range(self.n_ports), name=f"delay{stage}_owner")
            m.d.sync += [valid_next.eq(valid), owner_next.eq(owner)]
            valid, owner = valid_next, owner_next
        if delay:
            m.submodules.ring = ring = memory.Memory(shape=unsigned(32 * words), depth=delay,
                                                     init=[])
            ring_write = ring.write_port()
            ring_read = ring.read_port(domain="comb")
            slot = Signal(range(delay))
            m.d.sync += slot.eq(Mux(slot == delay - 1, 0, slot + 1))
            m.d.comb += [ring_write.addr.eq(slot), ring_write.data.eq(line), ring_write.en.eq(1),
                         ring_read.addr.eq(slot)]
            line = ring_read.data
        for i, port in enumerate(self.port):
            m.d.comb += [port.resp.eq(line), port.resp_valid.eq(valid & (owner == i))]
        return m
