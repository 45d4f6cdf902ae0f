"""Matrix engine: executes ME µTOps (ldw, mm) on a systolic array, reading and writing the scratchpad."""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import Out

from isa.encoding import BY_MNEMONIC, Engine, Fault
from .decode import field, is_instr, is_legal_for
from .engine_shell import engine_shell
from .ports import (engine_members, SpadReadSignature,
                    SpadWriteSignature, row_layout, spad_addr_shape)
from .systolic_array import SystolicArray
from .utop_front_end import attach_front_end

__all__ = ["MatrixEngine"]


class MatrixEngine(wiring.Component):
    """One matrix engine (ME).

    A µTOp starts with a ``cmd`` (context, scratchpad segment, body length), then its body
    words arrive on ``instr``; ``done`` reports its retirement (all writes visible) and
    its fault. Inside:

    - the *sequencer* decodes one instruction at a time, checks it (opcode, operands,
      segment bounds: a faulting instruction has no effect) and dispatches it; an
      ``mmloop`` keeps its ``ldw`` and ``mm`` as they arrive and replays them (with their
      source rows moved by the strides, the ``mm`` accumulating) through the front end;
    - the *weight loader* runs ``ldw``: it clears the idle weight buffer and fills it row
      by row from the scratchpad (column by column with ``t``) while the other buffer keeps
      streaming;
    - the *streamer* runs ``mm``: one input row read per cycle on ``rd_in`` into the
      array, limited by credits so the output FIFO can never overflow (the array never
      stalls);
    - the *writer* drains the output FIFO through three stages: read the old row for
      ``acc`` on ``rd_aux``, add, write. A read of a row still being written waits.

    Reads of rows that an in-flight ``mm`` still has to write (an ``ldw`` or ``mm`` that
    depends on an earlier ``mm`` of the same µTOp) wait until those writes are done, so
    instructions of a body take effect in order.
    """

    def __init__(self, config):
        self.config = config
        rows, cols = config.array_rows, config.array_cols
        #: Output FIFO depth = credits: covers the ~latency+6 cycles a row holds a credit
        #: (read, array, FIFO, three writer stages), so rows stream back to back.
        self.out_depth = rows + cols + 8
        super().__init__(engine_members(
            config,
            rd_in=Out(SpadReadSignature(config)),
            rd_aux=Out(SpadReadSignature(config)),
            wr=Out(SpadWriteSignature(config)),
        ))

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        rows, cols = cfg.array_rows, cfg.array_cols
        addr_shape = spad_addr_shape(cfg)

        m.submodules.array = array = SystolicArray(rows, cols)

        # --- µTOp state -----------------------------------------------------------------
        front = attach_front_end(m, self)
        spad_base, spad_size = front.segment.spad_base, front.segment.spad_size
        fault, ir, ir_valid = front.fault, front.ir, front.ir_valid
        weights_loaded = Signal()
        current_buffer = Signal()

        # --- shared status between the units ---------------------------------------------
        load_busy = Signal()
        load_buffer = Signal()
        stream_busy = Signal()
        stream_buffer = Signal()
        outstanding = Signal(range(self.out_depth + 1))
        in_flight = [Signal(range(self.out_depth + 1), name=f"in_flight{b}") for b in range(2)]
        rows_shape = range(cfg.spad_rows + 1)      # segment-relative rows, and row counts
        rel = signed(40)          # segment-relative rows with loop offsets: never wraps
        write_lo = Signal(rows_shape)   # segment-relative rows an in-flight mm may still write
        write_hi = Signal(rows_shape)
        writes_pending = Signal()
        m.d.comb += writes_pending.eq(stream_busy | (outstanding != 0))

        def overlaps_pending_writes(lo, hi):
            return writes_pending & (lo < write_hi) & (write_lo < hi)

        # --- mmloop: the pair is kept as it arrives (iteration 0), then replayed -------------
        loop_active = Signal()
        loop_capture = Signal()
        loop_pos = Signal()           # 0: the ldw is next, 1: the mm
        loop_left = Signal(range(BY_MNEMONIC["mmloop"].field("count").max + 1))
        loop_later = Signal()         # iteration >= 1: the mm accumulates
        w_offset, x_offset = Signal(rel), Signal(rel)
        w_stride, x_stride = Signal(signed(16)), Signal(signed(16))
        loop_words = [Signal(64, name=f"loop_word{i}") for i in range(2)]
        m.d.comb += [front.hold.eq(loop_active),
                     front.local_valid.eq(loop_active & ~loop_capture),
                     front.local_word.eq(Mux(loop_pos, loop_words[1], loop_words[0]))]
        with m.If(front.fetched & loop_capture):
            with m.If(loop_pos):
                m.d.sync += loop_words[1].eq(self.instr.payload)
            with m.Else():
                m.d.sync += loop_words[0].eq(self.instr.payload)

        # --- the µTOp: retires when every unit is idle --------------------------------------
        m.d.comb += front.idle.eq(~load_busy & ~stream_busy & (outstanding == 0))
        with m.If(front.start):
            m.d.sync += [weights_loaded.eq(0), loop_active.eq(0), loop_capture.eq(0)]

        # --- decode and dispatch ----------------------------------------------------------
        is_ldw, is_mm = is_instr(ir, "ldw"), is_instr(ir, "mm")
        is_loop = is_instr(ir, "mmloop")
        ldw_src, ldw_k = Signal(rel), field(ir, "ldw", "k")
        ldw_t = field(ir, "ldw", "t")
        mm_src, mm_dst = Signal(rel), field(ir, "mm", "dst")
        mm_m = field(ir, "mm", "m")
        mm_acc = field(ir, "mm", "acc") | (loop_active & loop_later)
        m.d.comb += [ldw_src.eq(field(ir, "ldw", "src") + Mux(loop_active, w_offset, 0)),
                     mm_src.eq(field(ir, "mm", "src") + Mux(loop_active, x_offset, 0))]
        # In a loop, only its ldw then its mm may come.
        out_of_place = loop_active & Mux(loop_pos, ~is_mm, ~is_ldw)
        next_buffer = ~current_buffer

        dispatch_ldw = Signal()
        dispatch_mm = Signal()
        with m.If(ir_valid & (fault == 0)):
            with m.If(~is_legal_for(ir, Engine.ME)):
                m.d.comb += front.raise_fault.eq(Fault.ILLEGAL_OPCODE)
                m.d.sync += loop_active.eq(0)
            with m.Elif(out_of_place | (is_loop & (front.words_left < 2))):
                m.d.comb += front.raise_fault.eq(Fault.ILLEGAL_OPERAND)
                m.d.sync += loop_active.eq(0)
            with m.Elif(is_loop):
                m.d.comb += front.consume.eq(1)
                m.d.sync += [loop_active.eq(1), loop_capture.eq(1), loop_pos.eq(0),
                             loop_left.eq(field(ir, "mmloop", "count")), loop_later.eq(0),
                             w_offset.eq(0), x_offset.eq(0),
                             w_stride.eq(field(ir, "mmloop", "w_stride")),
                             x_stride.eq(field(ir, "mmloop", "x_stride"))]
            with m.Elif(is_ldw):
                with m.If((ldw_k == 0) | (ldw_k > Mux(ldw_t, cols, rows))):
                    m.d.comb += front.raise_fault.eq(Fault.ILLEGAL_OPERAND)
                    m.d.sync += loop_active.eq(0)
                with m.Elif((ldw_src < 0) | (ldw_src + ldw_k > spad_size)):
                    m.d.comb += front.raise_fault.eq(Fault.SPAD_OOB)
                    m.d.sync += loop_active.eq(0)
                # The idle buffer must be free of rows in flight, and the rows it reads must
                # not be waiting for writes of an earlier mm.
                with m.Elif(~load_busy & ~(stream_busy & (stream_buffer == next_buffer))
                            & (Mux(next_buffer, in_flight[1], in_flight[0]) == 0)
                            & ~overlaps_pending_writes(ldw_src, ldw_src + ldw_k)):
                    m.d.comb += dispatch_ldw.eq(1)
            with m.Else():  # mm
                with m.If(~weights_loaded):
                    m.d.comb += front.raise_fault.eq(Fault.UNLOADED_STATE)
                    m.d.sync += loop_active.eq(0)
                with m.Elif((mm_src < 0) | (mm_src + mm_m > spad_size)
                            | (mm_dst + mm_m > spad_size)):
                    m.d.comb += front.raise_fault.eq(Fault.SPAD_OOB)
                    m.d.sync += loop_active.eq(0)
                with m.Elif(~stream_busy & ~(load_busy & (load_buffer == current_buffer))
                            & ~overlaps_pending_writes(mm_src, mm_src + mm_m)):
                    m.d.comb += dispatch_mm.eq(1)

        # The loop moves on with each instruction of its pair that dispatches.
        with m.If(loop_active & dispatch_ldw):
            m.d.sync += loop_pos.eq(1)
        with m.If(loop_active & dispatch_mm):
            m.d.sync += [loop_pos.eq(0), loop_capture.eq(0)]
            with m.If(loop_left == 1):
                m.d.sync += loop_active.eq(0)
            with m.Else():
                m.d.sync += [loop_left.eq(loop_left - 1), loop_later.eq(1),
                             w_offset.eq(w_offset + w_stride), x_offset.eq(x_offset + x_stride)]

        # --- weight loader ----------------------------------------------------------------
        load_addr = Signal(addr_shape)
        load_issue_left = Signal(range(max(rows, cols) + 1))
        load_row = Signal(range(max(rows, cols)))     # a weight row, or a column with t
        load_transposed = Signal()
        aux_for_load = Signal()       # the rd_aux response this cycle is a weight row
        writer_wants_aux = Signal()

        with m.If(dispatch_ldw):
            m.d.comb += front.consume.eq(1)
            m.d.sync += [load_busy.eq(1), load_buffer.eq(next_buffer),
                         load_addr.eq(spad_base + ldw_src), load_issue_left.eq(ldw_k),
                         load_row.eq(0), load_transposed.eq(ldw_t),
                         current_buffer.eq(next_buffer), weights_loaded.eq(1)]
            m.d.comb += [array.w_clear.eq(1), array.w_buf.eq(next_buffer)]
        # Weight rows go first on rd_aux: the next tile's weights are then in before the
        # current mm ends (the writer's reads of old rows for acc wait a cycle per row).
        load_request = Signal()
        m.d.comb += load_request.eq(load_busy & (load_issue_left != 0))
        with m.If(load_request & self.rd_aux.req.ready):
            m.d.sync += [load_addr.eq(load_addr + 1), load_issue_left.eq(load_issue_left - 1)]
        m.d.sync += aux_for_load.eq(load_request & self.rd_aux.req.ready)
        with m.If(aux_for_load & self.rd_aux.resp_valid):
            m.d.comb += [array.w_write.eq(1), array.w_buf.eq(load_buffer),
                         array.w_column.eq(load_transposed), array.w_index.eq(load_row)]
            m.d.comb += [array.w_data[i].eq(self.rd_aux.resp[i][:8])
                         for i in range(max(rows, cols))]
            m.d.sync += load_row.eq(load_row + 1)
        # The loader is done when its last response arrived.
        load_responses_left = Signal(range(max(rows, cols) + 1))
        with m.If(dispatch_ldw):
            m.d.sync += load_responses_left.eq(ldw_k)
        with m.Elif(aux_for_load & self.rd_aux.resp_valid):
            m.d.sync += load_responses_left.eq(load_responses_left - 1)
            with m.If(load_responses_left == 1):
                m.d.sync += load_busy.eq(0)

        # --- streamer -----------------------------------------------------------------------
        stream_src = Signal(addr_shape)
        stream_dst = Signal(addr_shape)
        stream_left = Signal(rows_shape)
        stream_acc = Signal()
        with m.If(dispatch_mm):
            m.d.comb += front.consume.eq(1)
            m.d.sync += [stream_busy.eq(1), stream_buffer.eq(current_buffer),
                         stream_src.eq(spad_base + mm_src), stream_dst.eq(spad_base + mm_dst),
                         stream_left.eq(mm_m), stream_acc.eq(mm_acc)]
            with m.If(writes_pending):
                m.d.sync += [write_lo.eq(Mux(mm_dst < write_lo, mm_dst, write_lo)),
                             write_hi.eq(Mux(mm_dst + mm_m > write_hi, mm_dst + mm_m, write_hi))]
            with m.Else():
                m.d.sync += [write_lo.eq(mm_dst), write_hi.eq(mm_dst + mm_m)]

        stream_request = Signal()
        m.d.comb += [
            stream_request.eq(stream_busy & (outstanding < self.out_depth)),
            self.rd_in.req.valid.eq(stream_request),
            self.rd_in.req.payload.eq(stream_src),
        ]
        row_issued = Signal()
        m.d.comb += row_issued.eq(stream_request & self.rd_in.req.ready)
        entry_dst = Signal(addr_shape)
        entry_acc = Signal()
        entry_buffer = Signal()
        with m.If(row_issued):
            m.d.sync += [stream_src.eq(stream_src + 1), stream_dst.eq(stream_dst + 1),
                         stream_left.eq(stream_left - 1)]
            with m.If(stream_left == 1):
                m.d.sync += stream_busy.eq(0)
        m.d.sync += [entry_dst.eq(stream_dst), entry_acc.eq(stream_acc),
                     entry_buffer.eq(stream_buffer)]

        # The row read last cycle enters the array now.
        entering = self.rd_in.resp_valid
        m.d.comb += [array.x[r].eq(Mux(entering, self.rd_in.resp[r][:8], 0)) for r in range(rows)]
        m.d.comb += array.x_sel.eq(entry_buffer)

        # Tags travel beside the array, aligned with its latency.
        tag_layout = data.StructLayout({"valid": 1, "dst": addr_shape, "acc": 1, "buffer": 1})
        tag = Signal(tag_layout)
        m.d.comb += [tag.valid.eq(entering), tag.dst.eq(entry_dst), tag.acc.eq(entry_acc),
                     tag.buffer.eq(entry_buffer)]
        for stage in range(array.latency):
            delayed = Signal(tag_layout, name=f"tag{stage}")
            m.d.sync += delayed.eq(tag)
            tag = delayed

        # --- output FIFO and writer ------------------------------------------------------------
        entry_layout = data.StructLayout({"y": data.ArrayLayout(unsigned(32), cols),
                                          "dst": addr_shape, "acc": 1})
        m.submodules.out_fifo = out_fifo = fifo.SyncFIFOBuffered(
            width=entry_layout.size, depth=self.out_depth)
        pushed = Signal(entry_layout)
        m.d.comb += [pushed.y.eq(array.y.as_value()), pushed.dst.eq(tag.dst),
                     pushed.acc.eq(tag.acc),
                     out_fifo.w_data.eq(pushed.as_value()), out_fifo.w_en.eq(tag.valid)]
        head = data.View(entry_layout, out_fifo.r_data)

        # Stage B (the old row arrives) and stage C (the write).
        b_valid, b_fresh = Signal(), Signal()
        b_entry = Signal(entry_layout)
        b_old = Signal(row_layout(cfg))
        c_valid = Signal()
        c_dst = Signal(addr_shape)
        c_row = Signal(data.ArrayLayout(unsigned(32), cols))

        c_free = ~c_valid | self.wr.req.ready
        b_moves = b_valid & c_free
        b_free = ~b_valid | b_moves
        hazard = (b_valid & (b_entry.dst == head.dst)) | (c_valid & (c_dst == head.dst))
        a_ready = out_fifo.r_rdy & b_free & ~(head.acc & hazard)
        m.d.comb += writer_wants_aux.eq(a_ready & head.acc & ~load_request)
        a_moves = a_ready & (~head.acc | writer_wants_aux & self.rd_aux.req.ready)

        m.d.comb += [
            self.rd_aux.req.valid.eq(writer_wants_aux | load_request),
            self.rd_aux.req.payload.eq(Mux(load_request, load_addr, head.dst)),
            out_fifo.r_en.eq(a_moves),
        ]
        with m.If(a_moves):
            m.d.sync += [b_valid.eq(1), b_fresh.eq(1), b_entry.eq(head)]
        with m.Elif(b_moves):
            m.d.sync += b_valid.eq(0)
        # The old row arrives in B's first cycle; keep it if B has to wait for C.
        with m.If(b_valid & b_fresh & ~b_moves):
            m.d.sync += [b_fresh.eq(0), b_old.eq(self.rd_aux.resp)]
        old = Mux(b_fresh, self.rd_aux.resp.as_value(), b_old.as_value())
        old_view = data.View(row_layout(cfg), old)
        with m.If(b_moves):
            m.d.sync += [c_valid.eq(1), c_dst.eq(b_entry.dst)]
            m.d.sync += [c_row[c].eq(b_entry.y[c] + Mux(b_entry.acc, old_view[c], 0))
                         for c in range(cols)]
        with m.Elif(self.wr.req.ready):
            m.d.sync += c_valid.eq(0)

        wr = self.wr.req
        m.d.comb += [wr.valid.eq(c_valid), wr.payload.addr.eq(c_dst),
                     wr.payload.mask.eq((1 << cols) - 1)]
        m.d.comb += [wr.payload.data[c].eq(c_row[c]) for c in range(cols)]

        # Credits and per-buffer occupancy.
        written = c_valid & self.wr.req.ready
        m.d.sync += outstanding.eq(outstanding + row_issued - written)
        for b in range(2):
            m.d.sync += in_flight[b].eq(in_flight[b] + (row_issued & (stream_buffer == b))
                                        - (tag.valid & (tag.buffer == b)))

        # Work = MAC cycles: rows entering the array.
        return engine_shell(self, m, active=front.active, work=entering,
                            requests=[self.rd_in.req, self.rd_aux.req, self.wr.req],
                            responses=[self.rd_in.resp_valid, self.rd_aux.resp_valid])
