"""V10-style sharing: engines shared by all, one context's ME operator gang-issued on every ME."""

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..arbitration import first_in_order, pairwise_order
from ..ports import ctx_shape
from .signatures import OP_ID_BITS

__all__ = ["V10Policy"]


class V10Policy(wiring.Component):
    """``me_ok[c]``: context c may issue its ME candidate (VE and DMA µTOps issue freely).

    The gang holder runs one ME operator on all MEs: only that operator's ME µTOps issue
    until its eoo µTOp has retired and its ME work has drained. When no gang is held and
    the MEs are idle, the context with the least ME time used (``me_used >> priority``,
    the lowest-numbered on a tie) that bids takes the gang with its next ME µTOp.
    Operators gang in program order: a context bids with its oldest unfinished ME operator
    only (starting a later one first could leave the earlier one, and with it the gang,
    waiting for ever).
    """

    def __init__(self, config):
        self.config = config
        C = config.n_ctx
        super().__init__({
            "enabled": In(1),
            "running": In(C),
            "me_busy": In(1),                          # some ME is busy
            "on_me": In(C),                            # bit c: an ME runs one of c's µTOps
            "me_candidate": In(C),                     # bit c: c has a ready ME µTOp ...
            "me_op": In(OP_ID_BITS).array(C),          # ... of this operator ...
            "me_op_ended": In(C),                      # ... whose eoo µTOp has retired
            "oldest_me_op": In(OP_ID_BITS).array(C),
            "me_used": In(32).array(C),
            "priority": In(4).array(C),
            "me_issue": In(C),                         # bit c: c issues an ME µTOp
            "eoo_retiring": In(C),                     # bit c: c retires gang_op's eoo µTOp
            "gang_op": Out(OP_ID_BITS),
            "me_ok": Out(C),
        })

    def elaborate(self, platform):
        m = Module()
        C = self.config.n_ctx
        gang_valid = Signal()
        gang_ctx = Signal(ctx_shape(self.config))
        gang_op = self.gang_op
        gang_eoo_seen = Signal()
        # The winner: least key among the bidders, the lowest-numbered on a tie. Every pair
        # of keys is compared beside the bids (they come from registers), so a bid passes
        # through one AND to the choice.
        bids = []
        for c in range(C):
            wants = Signal(name=f"c{c}_gang_bid")
            m.d.comb += wants.eq(self.me_candidate[c] & (self.me_op[c] == self.oldest_me_op[c]))
            bids.append(wants)
        keys = [Signal(32, name=f"c{c}_gang_key") for c in range(C)]
        m.d.comb += [key.eq(self.me_used[c] >> self.priority[c]) for c, key in enumerate(keys)]
        wins = first_in_order(Cat(bids), pairwise_order(m, keys, "gang_key"))
        m.d.comb += self.me_ok.eq(Cat(
            (gang_valid & (gang_ctx == c) & ~gang_eoo_seen & (self.me_op[c] == gang_op))
            | (~gang_valid & ~self.me_busy & wins[c])
            for c in range(C)))

        for c in range(C):
            with m.If(self.me_issue[c] & self.enabled & ~gang_valid):
                m.d.sync += [gang_valid.eq(1), gang_ctx.eq(c), gang_op.eq(self.me_op[c]),
                             gang_eoo_seen.eq(self.me_op_ended[c])]
        # The gang ends once the operator's eoo µTOp has retired and the holder's ME work
        # has drained (or the holder stopped running).
        for c in range(C):
            holder = gang_valid & (gang_ctx == c)
            with m.If(holder & self.eoo_retiring[c]):
                m.d.sync += gang_eoo_seen.eq(1)
            with m.If(holder & (((gang_eoo_seen | self.eoo_retiring[c]) & ~self.on_me[c])
                                | ~self.running[c])):
                m.d.sync += gang_valid.eq(0)
        return m
