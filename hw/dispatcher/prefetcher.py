"""One context's instruction prefetcher: its program, line by line from HBM into a ring buffer."""

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..hbm import HBMPortSignature
from ..ports import hbm_addr_shape, prog_addr_shape

__all__ = ["Prefetcher", "BufferWriteSignature", "ring_rows"]


def ring_rows(config):
    """Rows of a context's instruction buffer: ``imem_words`` program words, one HBM line
    (``prog_words_per_line`` words) per row."""
    return config.imem_words // config.prog_words_per_line


class BufferWriteSignature(wiring.Signature):
    """A row write into the instruction buffer (one HBM line of program words)."""

    def __init__(self, config):
        super().__init__({
            "addr": Out(range(ring_rows(config))),
            "data": Out(64 * config.prog_words_per_line),
            "en": Out(1),
        })


class Prefetcher(wiring.Component):
    """Streams a context's program from HBM into its instruction buffer, ahead of decode.

    The program is ``prog_len`` 64-bit words from HBM word ``prog_base`` (a line boundary):
    one HBM line holds ``K = prog_words_per_line`` of them. The buffer is a ring of
    ``imem_words`` words, program word ``a`` in slot ``a % imem_words``. A line is
    requested only while the ring has room for it above ``keep``, the oldest program word
    still needed (the header of the context's oldest µTOp in its window, or the next header
    to decode): so a µTOp's body stays in the buffer until the µTOp retires, and a
    preempted µTOp can be streamed again. Lines arrive in order, ``hbm_latency`` cycles
    after HBM accepts them; fetches compete for HBM with the DMA engines and the host.

    ``visible``: words 0 .. visible - 1 of the program can be read from the buffer (the
    buffer's read ports are registered, so a row counts one cycle after it is written).
    ``start`` begins again at word 0; lines still in flight from before are dropped when
    they arrive. Requests stop while ``enable`` is low (the context fetches nothing more:
    it is done, faulted or not running).
    """

    def __init__(self, config):
        self.config = config
        super().__init__({
            "prog_base": In(hbm_addr_shape(config)),
            "prog_len": In(prog_addr_shape(config)),
            "start": In(1),
            "enable": In(1),
            "keep": In(prog_addr_shape(config)),
            "hbm": Out(HBMPortSignature(config)),
            "write": Out(BufferWriteSignature(config)),
            "visible": Out(prog_addr_shape(config)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        K = cfg.prog_words_per_line
        line_bits = (cfg.hbm_words_per_cycle - 1).bit_length()
        word_bits = (K - 1).bit_length()
        requested = Signal(prog_addr_shape(cfg))      # next word to request (a line's first)
        filled = Signal(prog_addr_shape(cfg))         # next word to arrive
        # At most hbm_latency lines are in flight (one accepted per cycle).
        outstanding = Signal(range(cfg.hbm_latency + 3))  # lines requested, not yet arrived
        stale = Signal.like(outstanding)                  # ... of them, from before a START
        req, resp_valid = self.hbm.req, self.hbm.resp_valid

        m.d.comb += [
            req.valid.eq(self.enable & (requested < self.prog_len)
                         & (requested + K <= self.keep + cfg.imem_words)),
            req.payload.line.eq((self.prog_base >> line_bits) + (requested >> word_bits)),
            req.payload.write.eq(0),
        ]
        accepted = req.valid & req.ready
        fresh = resp_valid & (stale == 0)
        m.d.comb += [
            self.write.addr.eq(filled[word_bits:]),      # modulo the ring's rows
            self.write.data.eq(self.hbm.resp.as_value()),
            self.write.en.eq(fresh),
        ]
        m.d.sync += outstanding.eq(outstanding + accepted - resp_valid)
        m.d.sync += self.visible.eq(filled)
        with m.If(accepted):
            m.d.sync += requested.eq(requested + K)
        with m.If(fresh):
            m.d.sync += filled.eq(filled + K)
        with m.If(resp_valid & (stale != 0)):
            m.d.sync += stale.eq(stale - 1)
        with m.If(self.start):
            # Every line in flight after this edge belongs to the previous run.
            m.d.sync += [requested.eq(0), filled.eq(0), self.visible.eq(0),
                         stale.eq(outstanding + accepted - resp_valid)]
        return m
