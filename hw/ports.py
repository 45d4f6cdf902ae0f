"""Port signatures shared by the blocks: scratchpad read/write ports and µTOp command/done streams."""

from amaranth import unsigned, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Fault

__all__ = ["row_layout", "spad_addr_shape", "ctx_shape", "body_length_shape", "prog_addr_shape", "hbm_addr_shape",
           "SpadReadSignature", "SpadWriteSignature", "SpadWriteLayout", "SegmentLayout",
           "CommandLayout", "DoneLayout", "engine_members", "refused"]


def row_layout(config):
    """One scratchpad row: ``ve_lanes`` signed 32-bit words."""
    return data.ArrayLayout(signed(32), config.ve_lanes)


def spad_addr_shape(config):
    """A physical scratchpad row address."""
    return unsigned(max(1, (config.spad_rows - 1).bit_length()))


class SpadWriteLayout(data.StructLayout):
    def __init__(self, config):
        super().__init__({
            "addr": spad_addr_shape(config),
            "data": row_layout(config),
            "mask": unsigned(config.ve_lanes),   # one write enable per lane
        })


class SpadReadSignature(wiring.Signature):
    """A client's read port, seen from the client: a request stream of row addresses, and
    the row one cycle after the request is accepted (``resp_valid``); no backpressure on
    the response."""

    def __init__(self, config):
        super().__init__({
            "req": Out(stream.Signature(spad_addr_shape(config))),
            "resp": In(row_layout(config)),
            "resp_valid": In(1),
        })


class SpadWriteSignature(wiring.Signature):
    """A client's write port, seen from the client: a stream of (row, data, lane mask)."""

    def __init__(self, config):
        super().__init__({
            "req": Out(stream.Signature(SpadWriteLayout(config))),
        })


def ctx_shape(config):
    """A context number."""
    return unsigned(max(1, (config.n_ctx - 1).bit_length()))


def body_length_shape(config):
    """A µTOp's body length in words (0..max_body)."""
    return range(config.max_body + 1)


def prog_addr_shape(config):
    """A word address in a context's program, or a program length (0..max_prog_words)."""
    return range(config.max_prog_words + 1)


def hbm_addr_shape(config):
    """A physical HBM word address (0..hbm_words - 1)."""
    return range(config.hbm_words)


class SegmentLayout(data.StructLayout):
    """A context's memory segments: scratchpad rows [spad_base, spad_base + spad_size) and
    HBM words [hbm_base, hbm_base + hbm_size), each within its memory."""

    def __init__(self, config):
        super().__init__({
            "spad_base": range(config.spad_rows + 1),
            "spad_size": range(config.spad_rows + 1),
            "hbm_base": range(config.hbm_words + 1),
            "hbm_size": range(config.hbm_words + 1),
        })


class CommandLayout(data.StructLayout):
    """Starts a µTOp on an engine: who runs it, its body length, and where its segments are."""

    def __init__(self, config):
        super().__init__({
            "ctx": ctx_shape(config),
            "length": body_length_shape(config),
            "segment": SegmentLayout(config),
        })


class DoneLayout(data.StructLayout):
    """A µTOp retired: every write it made is visible. ``fault`` is Fault.NONE or why it stopped."""

    def __init__(self, config):
        super().__init__({
            "ctx": ctx_shape(config),
            "fault": Fault,
        })


def engine_members(config, **extra):
    """The members every engine has (µTOp command, body words, retirement, flush (abort) and
    progress for the watchdog, common counters), plus its own ``extra`` ones.

    ``work`` counts what the engine does: MAC cycles (ME), rows executed (VE), words moved
    (DMA)."""
    return {
        "cmd": In(stream.Signature(CommandLayout(config))),
        "instr": In(stream.Signature(unsigned(64))),
        "done": Out(stream.Signature(DoneLayout(config))),
        "flush": In(1),
        "progress": Out(1),
        **extra,
        "busy_cycles": Out(32),
        "stall_cycles": Out(32),
        "utops_done": Out(32),
        "work": Out(32),
    }


def refused(*requests):
    """1 in a cycle where any of the request streams is valid and not granted (a stall)."""
    stalled = 0
    for request in requests:
        stalled = stalled | (request.valid & ~request.ready)
    return stalled
