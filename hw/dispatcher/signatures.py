"""What the dispatcher's parts exchange: engine links, the host's control link, context layouts."""

from amaranth import Cat, Const, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from isa.encoding import Engine, Fault
from ..ports import CommandLayout, DoneLayout, SegmentLayout, hbm_addr_shape, prog_addr_shape
from isa.regmap import Policy, Status

__all__ = ["COUNTERS", "engine_types", "EngineLinkSignature", "ContextConfigLayout",
           "ContextStateLayout", "ControlSignature", "CandidateLayout", "seq_shape", "OP_ID_BITS",
           "engine_group", "owned_engines"]

#: Per-context counters, in the order of the register map.
COUNTERS = ("cycles", "issued", "retired", "own_cycles", "harvest_cycles", "dep_wait",
            "engine_wait", "dma_cycles", "preempted", "fetched")

#: µTOp sequence numbers (program order within a context run).
seq_shape = unsigned(32)
#: Operator numbers: µTOps up to and including an eoo µTOp form one operator.
OP_ID_BITS = 8


def engine_types(config):
    """Engine numbering: MEs, then VEs, then DMA engines."""
    return [Engine.ME] * config.n_me + [Engine.VE] * config.n_ve + [Engine.DMA] * config.n_dma


class EngineLinkSignature(wiring.Signature):
    """The dispatcher's link to one engine: a µTOp command, its body words, and its retirement."""

    def __init__(self, config):
        super().__init__({
            "cmd": Out(stream.Signature(CommandLayout(config))),
            "instr": Out(stream.Signature(unsigned(64))),
            "done": In(stream.Signature(DoneLayout(config))),
        })


class ContextConfigLayout(data.StructLayout):
    """A context's settings as the dispatcher uses them (valid whenever the context runs)."""

    def __init__(self, config):
        super().__init__({
            "prog_base": hbm_addr_shape(config), "prog_len": prog_addr_shape(config),
            "segment": SegmentLayout(config),
            "me_mask": unsigned(config.n_me), "ve_mask": unsigned(config.n_ve),
            "priority": unsigned(4),
        })


class ContextStateLayout(data.StructLayout):
    def __init__(self, config):
        super().__init__({
            "status": Status, "fault": Fault, "fault_pc": prog_addr_shape(config),
            **{name: unsigned(32) for name in COUNTERS},
        })


class CandidateLayout(data.StructLayout):
    """A context's oldest ready µTOp of one engine type: its window slot and age (distance
    from the oldest slot), and whether it may be lent an engine of another context."""

    def __init__(self, config):
        super().__init__({
            "valid": 1, "slot": range(config.dep_window), "age": range(config.dep_window),
            "restartable": 1,
        })


class ControlSignature(wiring.Signature):
    """The host interface's link to the dispatcher, seen from the host: settings and starts
    out; context states and engine occupancy counters in."""

    def __init__(self, config, n_engines):
        super().__init__({
            "ctx_config": Out(ContextConfigLayout(config)).array(config.n_ctx),
            "ctx_state": In(ContextStateLayout(config)).array(config.n_ctx),
            "policy": Out(Policy),
            "time_slice": Out(32, init=4096),
            "start": Out(config.n_ctx),
            "config_fault": Out(config.n_ctx),
            "engine_busy": In(32).array(n_engines),
            "engine_busy_by_ctx": In(32).array(n_engines, config.n_ctx),
        })


def engine_group(config, engine_type):
    """The engines of one type, as a mask over all engines."""
    return Const(sum(1 << e for e, t in enumerate(engine_types(config)) if t == engine_type),
                 len(engine_types(config)))


def owned_engines(config, settings, engine_type):
    """The engines of one type a context owns (its ME_MASK / VE_MASK; every DMA engine),
    as a mask over all engines."""
    if engine_type == Engine.ME:
        return Cat(settings.me_mask, Const(0, config.n_ve + config.n_dma))
    if engine_type == Engine.VE:
        return Cat(Const(0, config.n_me), settings.ve_mask, Const(0, config.n_dma))
    return engine_group(config, engine_type)
