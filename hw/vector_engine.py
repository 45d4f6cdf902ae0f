"""Vector engine: executes VE µTOps (ALU, requantize, lookup table, reductions, pooling, loops)."""

import enum

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import Out

from isa.config import VREGS
from isa.encoding import BY_MNEMONIC, Engine, Fault
from .decode import field, is_instr, is_legal_for
from .engine_shell import engine_shell
from .utop_front_end import attach_front_end
from .ports import (engine_members, SpadReadSignature,
                    SpadWriteSignature, row_layout, spad_addr_shape)

__all__ = ["VectorEngine"]

_ALU_OPS = ["add", "sub", "mul", "min", "max", "shl", "sra", "srl"]
_ALU_FORMS = ["", "r", "i"]


class _Op(enum.IntEnum):
    """What the execute stage does with one row (0..7 are the ALU ops, in _ALU_OPS order)."""
    RQ = 8       # requantize
    LUT = 9      # table lookup
    LSUM = 10    # lane reductions, broadcast
    LMAX = 11
    LMIN = 12
    RSUM = 13    # row reductions (and pooling) into an accumulator row
    RMAX = 14
    RMIN = 15
    VLD = 16     # row -> vector register
    VST = 17     # vector register -> row
    LDLUT = 18   # row -> lookup table row


class _BForm(enum.IntEnum):
    ROW = 0
    VREG = 1
    IMM = 2


def _alu_layout_checks():
    """The decoder derives (op, form, sat) from the opcode: check the table's order."""
    base = BY_MNEMONIC["vadd"].opcode
    for o, op in enumerate(_ALU_OPS):
        for f, form in enumerate(_ALU_FORMS):
            for sat in range(2):
                defn = BY_MNEMONIC[f"v{op}{form}" + (".s8" if sat else "")]
                assert defn.opcode == base + o * 6 + f * 2 + sat, defn.mnemonic
                assert [(x.name, x.lsb) for x in defn.fields[:2]] == [("dst", 8), ("a", 24)]
    return base


class VectorEngine(wiring.Component):
    """One vector engine (VE): ``ve_lanes`` SIMD lanes of int32.

    Pipeline: the *sequencer* fetches and checks one instruction at a time (segment
    bounds including ``loop`` offsets, operands, state), replaying loop bodies from a
    loop buffer; the *issue* stage turns an instruction into row reads on ``rd_a`` (and
    ``rd_b`` for a second row operand), one row per cycle, limited by credits; the
    *execute* stage consumes rows in order (ALU, requantize, lookup, lane and row
    reductions, vector registers, lookup table loads); the *write* stage writes lanes
    below ``vl`` on ``wr``. An instruction that reads rows an earlier one has yet to
    write waits for those writes; ``vsetq``/``vsetvl`` wait until the pipeline is empty.
    """

    def __init__(self, config):
        self.config = config
        self.credits = 8
        super().__init__(engine_members(
            config,
            rd_a=Out(SpadReadSignature(config)),
            rd_b=Out(SpadReadSignature(config)),
            wr=Out(SpadWriteSignature(config)),
        ))

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        lanes = cfg.ve_lanes
        addr_shape = spad_addr_shape(cfg)
        alu_base = _alu_layout_checks()
        rel = signed(40)   # segment-relative rows with loop offsets: never wraps

        # --- µTOp state -----------------------------------------------------------------
        front = attach_front_end(m, self)
        spad_base, spad_size = front.segment.spad_base, front.segment.spad_size
        fault, ir, ir_valid = front.fault, front.ir, front.ir_valid
        vl = Signal(range(lanes + 1))
        vl_mask = Signal(lanes)
        mult = Signal(signed(32))
        shift = Signal(6)
        zp = Signal(signed(8))
        even = Signal()                  # vsetq's flag: exact halves round to even
        wide = Signal()                  # vsetq's flag: vrq saturates to int32, not int8
        lut_loaded = Signal()

        # Loop state.
        loop_active = Signal()
        loop_capture = Signal()          # iteration 0: words arrive on `instr` and are kept
        loop_pos = Signal(8)
        loop_len = Signal(8)
        loop_iters_left = Signal(range(BY_MNEMONIC["loop"].field("count").max + 1))
        dst_offset = Signal(rel)
        src_offset = Signal(rel)
        dst_stride = Signal(signed(16))
        src_stride = Signal(signed(16))
        m.submodules.loop_buffer = loop_buffer = memory.Memory(
            shape=unsigned(64), depth=max(2, cfg.max_body), init=[])
        loop_write = loop_buffer.write_port()
        loop_read = loop_buffer.read_port(domain="comb")

        # --- pipeline status --------------------------------------------------------------
        issue_busy = Signal()
        inflight = Signal(range(self.credits + 4))     # rows between issue and retirement
        write_lo = Signal(rel)
        write_hi = Signal(rel)
        writes_pending = Signal()
        m.d.comb += writes_pending.eq(issue_busy | (inflight != 0))
        pipeline_empty = ~issue_busy & (inflight == 0)

        # --- the µTOp: loop bodies replay from the loop buffer --------------------------------
        from_buffer = loop_active & ~loop_capture
        m.d.comb += [
            front.hold.eq(loop_active),
            front.idle.eq(pipeline_empty),
            front.local_valid.eq(from_buffer),
            front.local_word.eq(loop_read.data),
            loop_read.addr.eq(loop_pos),
            loop_write.addr.eq(loop_pos),
            loop_write.data.eq(self.instr.payload),
            loop_write.en.eq(front.fetched & loop_capture),
        ]
        with m.If(front.start):
            m.d.sync += [vl.eq(lanes), vl_mask.eq((1 << lanes) - 1),
                         mult.eq(1), shift.eq(0), zp.eq(0), even.eq(0), wide.eq(0),
                         lut_loaded.eq(0),
                         loop_active.eq(0), loop_capture.eq(0), loop_pos.eq(0),
                         dst_offset.eq(0), src_offset.eq(0)]   # a faulted loop leaves them set

        # --- decode ---------------------------------------------------------------------
        opcode = ir[:8]
        is_alu = (opcode >= alu_base) & (opcode < alu_base + 48)
        alu_index = (opcode - alu_base)[:6]
        alu_op = Signal(3)
        alu_form = Signal(2)
        with m.Switch(alu_index):
            for index in range(48):
                with m.Case(index):
                    m.d.comb += [alu_op.eq(index // 6), alu_form.eq(index % 6 // 2)]

        def dst_row(mnemonic, name="dst"):
            return field(ir, mnemonic, name) + dst_offset

        def src_row(mnemonic, name="src"):
            return field(ir, mnemonic, name) + src_offset

        # The descriptor handed to the issue stage, and the rows it reads and writes.
        desc_layout = data.StructLayout({
            "op": 5, "sat": 1, "bform": 2, "imm": signed(16), "vreg": 3,
            "has_a": 1, "has_b": 1, "writes": 1,
            "a": addr_shape, "b": addr_shape, "dst": addr_shape, "dst_step": 1,
            "n": 9, "kw": 5, "pitch": 16,
        })
        desc = Signal(desc_layout)
        read_lo, read_hi = Signal(rel), Signal(rel)       # rows read: [lo, hi]
        b_lo, b_hi = Signal(rel), Signal(rel)
        out_lo, out_hi = Signal(rel), Signal(rel)         # rows written: [lo, hi]
        kind_issue = Signal()      # goes to the issue stage
        kind_config = Signal()     # vsetq / vsetvl
        kind_loop = Signal()
        bad_operand = Signal()
        unloaded = Signal()

        a_alu = field(ir, "vadd", "a") + src_offset
        d_alu = field(ir, "vadd", "dst") + dst_offset
        n_alu = field(ir, "vadd", "n")
        m.d.comb += [b_lo.eq(0), b_hi.eq(-1)]   # empty unless a second row operand
        with m.If(is_alu):
            m.d.comb += [kind_issue.eq(1), desc.op.eq(alu_op), desc.sat.eq(ir[0]),
                         desc.bform.eq(alu_form), desc.has_a.eq(1),
                         desc.has_b.eq(alu_form == _BForm.ROW), desc.writes.eq(1),
                         desc.imm.eq(field(ir, "vaddi", "imm")),
                         desc.vreg.eq(field(ir, "vaddr", "vb")),
                         desc.dst_step.eq(1), desc.n.eq(n_alu), desc.kw.eq(1), desc.pitch.eq(1),
                         read_lo.eq(a_alu), read_hi.eq(a_alu + n_alu - 1),
                         out_lo.eq(d_alu), out_hi.eq(d_alu + n_alu - 1)]
            with m.If(alu_form == _BForm.ROW):
                b_alu = field(ir, "vadd", "b") + src_offset
                m.d.comb += [b_lo.eq(b_alu), b_hi.eq(b_alu + n_alu - 1)]
        for mnemonic, op in [("vrq", _Op.RQ), ("vrqr", _Op.RQ), ("vlut", _Op.LUT),
                             ("vlsum", _Op.LSUM), ("vlmax", _Op.LMAX), ("vlmin", _Op.LMIN)]:
            with m.If(is_instr(ir, mnemonic)):
                src, dst, n = src_row(mnemonic), dst_row(mnemonic), field(ir, mnemonic, "n")
                m.d.comb += [kind_issue.eq(1), desc.op.eq(op), desc.has_a.eq(1), desc.writes.eq(1),
                             desc.dst_step.eq(1), desc.n.eq(n), desc.kw.eq(1), desc.pitch.eq(1),
                             read_lo.eq(src), read_hi.eq(src + n - 1),
                             out_lo.eq(dst), out_hi.eq(dst + n - 1)]
                if op == _Op.LUT:
                    m.d.comb += unloaded.eq(~lut_loaded)
                if mnemonic == "vrqr":      # each lane's multiplier from a vector register
                    m.d.comb += [desc.bform.eq(_BForm.VREG), desc.vreg.eq(field(ir, "vrqr", "vb"))]
        for mnemonic, op in [("vrsum", _Op.RSUM), ("vrmax", _Op.RMAX), ("vrmin", _Op.RMIN)]:
            with m.If(is_instr(ir, mnemonic)):
                src, dst, n = src_row(mnemonic), dst_row(mnemonic), field(ir, mnemonic, "n")
                stride = field(ir, mnemonic, "stride")
                m.d.comb += [kind_issue.eq(1), desc.op.eq(op), desc.has_a.eq(1), desc.writes.eq(1),
                             desc.n.eq(n), desc.kw.eq(1), desc.pitch.eq(stride),
                             read_lo.eq(src), read_hi.eq(src + (n - 1) * stride),
                             out_lo.eq(dst), out_hi.eq(dst)]
        for mnemonic, op in [("vpoolmax", _Op.RMAX), ("vpoolsum", _Op.RSUM)]:
            with m.If(is_instr(ir, mnemonic)):
                src, dst = src_row(mnemonic), dst_row(mnemonic)
                kh, kw = field(ir, mnemonic, "kh"), field(ir, mnemonic, "kw")
                pitch = field(ir, mnemonic, "pitch")
                m.d.comb += [kind_issue.eq(1), desc.op.eq(op), desc.has_a.eq(1), desc.writes.eq(1),
                             desc.n.eq(kh * kw), desc.kw.eq(kw), desc.pitch.eq(pitch),
                             read_lo.eq(src), read_hi.eq(src + (kh - 1) * pitch + kw - 1),
                             out_lo.eq(dst), out_hi.eq(dst)]
        with m.If(is_instr(ir, "vld")):
            src = src_row("vld")
            m.d.comb += [kind_issue.eq(1), desc.op.eq(_Op.VLD), desc.has_a.eq(1),
                         desc.vreg.eq(field(ir, "vld", "vd")), desc.n.eq(1), desc.kw.eq(1),
                         read_lo.eq(src), read_hi.eq(src), out_lo.eq(0), out_hi.eq(-1)]
        with m.If(is_instr(ir, "vst")):
            dst = dst_row("vst")
            m.d.comb += [kind_issue.eq(1), desc.op.eq(_Op.VST), desc.writes.eq(1),
                         desc.vreg.eq(field(ir, "vst", "vs")), desc.n.eq(1), desc.kw.eq(1),
                         read_lo.eq(0), read_hi.eq(-1), out_lo.eq(dst), out_hi.eq(dst)]
        with m.If(is_instr(ir, "vldlut")):
            src = src_row("vldlut")
            m.d.comb += [kind_issue.eq(1), desc.op.eq(_Op.LDLUT), desc.has_a.eq(1),
                         desc.dst_step.eq(1), desc.n.eq(cfg.lut_rows), desc.kw.eq(1),
                         desc.pitch.eq(1), read_lo.eq(src), read_hi.eq(src + cfg.lut_rows - 1),
                         out_lo.eq(0), out_hi.eq(-1)]
        new_vl = field(ir, "vsetvl", "vl")
        with m.If(is_instr(ir, "vsetvl")):
            m.d.comb += [kind_config.eq(1), bad_operand.eq((new_vl == 0) | (new_vl > lanes))]
        with m.If(is_instr(ir, "vsetq")):
            m.d.comb += kind_config.eq(1)
        loop_len_field = field(ir, "loop", "len")
        with m.If(is_instr(ir, "loop")):
            m.d.comb += [kind_loop.eq(1),
                         bad_operand.eq(loop_active | (loop_len_field == 0)
                                        | (loop_len_field > front.words_left))]

        segment_ok = Signal()
        m.d.comb += segment_ok.eq(((read_hi < read_lo) | ((read_lo >= 0) & (read_hi < spad_size)))
                                  & ((b_hi < b_lo) | ((b_lo >= 0) & (b_hi < spad_size)))
                                  & ((out_hi < out_lo) | ((out_lo >= 0) & (out_hi < spad_size))))

        def overlaps(lo, hi):
            return writes_pending & (lo <= hi) & (lo < write_hi) & (write_lo <= hi)

        hazard = overlaps(read_lo, read_hi) | overlaps(b_lo, b_hi)

        # Physical addresses of the descriptor's rows.
        m.d.comb += [desc.a.eq(spad_base + read_lo), desc.b.eq(spad_base + b_lo),
                     desc.dst.eq(Mux(desc.op == _Op.LDLUT, 0, spad_base + out_lo))]

        consumed = Signal()         # the instruction in `ir` leaves the sequencer
        issue_take = Signal()       # ... into the issue stage
        issue_ready = Signal()
        with m.If(ir_valid & (fault == 0)):
            with m.If(~is_legal_for(ir, Engine.VE)):
                m.d.comb += front.raise_fault.eq(Fault.ILLEGAL_OPCODE)
                m.d.sync += loop_active.eq(0)
            with m.Elif(bad_operand):
                m.d.comb += front.raise_fault.eq(Fault.ILLEGAL_OPERAND)
                m.d.sync += loop_active.eq(0)
            with m.Elif(unloaded):
                m.d.comb += front.raise_fault.eq(Fault.UNLOADED_STATE)
                m.d.sync += loop_active.eq(0)
            with m.Elif(kind_issue & ~segment_ok):
                m.d.comb += front.raise_fault.eq(Fault.SPAD_OOB)
                m.d.sync += loop_active.eq(0)
            with m.Elif(kind_loop):
                m.d.comb += consumed.eq(1)
            with m.Elif(kind_config):
                with m.If(pipeline_empty):
                    m.d.comb += consumed.eq(1)
                    with m.If(is_instr(ir, "vsetvl")):
                        m.d.sync += [vl.eq(new_vl),
                                     vl_mask.eq(~(Const(-1, signed(lanes + 1))
                                                   << new_vl[:lanes.bit_length()]))]
                    with m.Else():
                        m.d.sync += [mult.eq(field(ir, "vsetq", "mult")),
                                     shift.eq(field(ir, "vsetq", "shift")),
                                     zp.eq(field(ir, "vsetq", "zp")),
                                     even.eq(field(ir, "vsetq", "even")),
                                     wide.eq(field(ir, "vsetq", "wide"))]
            with m.Elif(issue_ready & ~hazard):
                m.d.comb += [consumed.eq(1), issue_take.eq(1)]
                with m.If(is_instr(ir, "vldlut")):
                    m.d.sync += lut_loaded.eq(1)

        # Advance through the instruction stream and the loop.
        m.d.comb += front.consume.eq(consumed)
        with m.If(consumed):
            with m.If(kind_loop):
                m.d.sync += [loop_active.eq(1), loop_capture.eq(1), loop_pos.eq(0),
                             loop_len.eq(loop_len_field),
                             loop_iters_left.eq(field(ir, "loop", "count")),
                             dst_offset.eq(0), src_offset.eq(0),
                             dst_stride.eq(field(ir, "loop", "dst_stride")),
                             src_stride.eq(field(ir, "loop", "src_stride"))]
            with m.Elif(loop_active):
                with m.If(loop_pos + 1 == loop_len):
                    with m.If(loop_iters_left == 1):
                        m.d.sync += [loop_active.eq(0), dst_offset.eq(0), src_offset.eq(0)]
                    with m.Else():
                        m.d.sync += [loop_iters_left.eq(loop_iters_left - 1), loop_pos.eq(0),
                                     loop_capture.eq(0), dst_offset.eq(dst_offset + dst_stride),
                                     src_offset.eq(src_offset + src_stride)]
                with m.Else():
                    m.d.sync += loop_pos.eq(loop_pos + 1)
        with m.If(issue_take):
            with m.If(desc.writes & (out_lo <= out_hi)):
                with m.If(writes_pending):
                    m.d.sync += [write_lo.eq(Mux(out_lo < write_lo, out_lo, write_lo)),
                                 write_hi.eq(Mux(out_hi + 1 > write_hi, out_hi + 1, write_hi))]
                with m.Else():
                    m.d.sync += [write_lo.eq(out_lo), write_hi.eq(out_hi + 1)]

        # --- issue stage ---------------------------------------------------------------------
        cur = Signal(desc_layout)
        rows_left = Signal(9)
        column = Signal(5)          # position within a pooling window line
        line_base = Signal(addr_shape)
        b_addr = Signal(addr_shape)
        dst_addr = Signal(addr_shape)
        first = Signal()
        a_done, b_done = Signal(), Signal()    # this row's reads already granted

        meta_layout = data.StructLayout({
            "op": 5, "sat": 1, "bform": 2, "imm": signed(16), "vreg": 3, "dst": addr_shape,
            "first": 1, "last": 1, "has_a": 1, "has_b": 1, "writes": 1})
        m.submodules.meta_fifo = meta_fifo = fifo.SyncFIFOBuffered(
            width=meta_layout.size, depth=self.credits)
        m.submodules.a_fifo = a_fifo = fifo.SyncFIFOBuffered(width=32 * lanes, depth=self.credits)
        m.submodules.b_fifo = b_fifo = fifo.SyncFIFOBuffered(width=32 * lanes, depth=self.credits)

        credit_ok = inflight < self.credits
        need_a = issue_busy & cur.has_a & ~a_done & credit_ok
        need_b = issue_busy & cur.has_b & ~b_done & credit_ok
        m.d.comb += [
            self.rd_a.req.valid.eq(need_a), self.rd_a.req.payload.eq(line_base + column),
            self.rd_b.req.valid.eq(need_b), self.rd_b.req.payload.eq(b_addr),
        ]
        a_ok = ~cur.has_a | a_done | self.rd_a.req.ready
        b_ok = ~cur.has_b | b_done | self.rd_b.req.ready
        row_issued = Signal()
        m.d.comb += row_issued.eq(issue_busy & credit_ok & a_ok & b_ok)
        last_row = rows_left == 1
        m.d.comb += issue_ready.eq(~issue_busy | (row_issued & last_row))

        meta = Signal(meta_layout)
        m.d.comb += [meta.op.eq(cur.op), meta.sat.eq(cur.sat), meta.bform.eq(cur.bform),
                     meta.imm.eq(cur.imm), meta.vreg.eq(cur.vreg), meta.dst.eq(dst_addr),
                     meta.first.eq(first), meta.last.eq(last_row), meta.has_a.eq(cur.has_a),
                     meta.has_b.eq(cur.has_b), meta.writes.eq(cur.writes),
                     meta_fifo.w_data.eq(meta.as_value()), meta_fifo.w_en.eq(row_issued)]
        with m.If(self.rd_a.req.valid & self.rd_a.req.ready & ~row_issued):
            m.d.sync += a_done.eq(1)
        with m.If(self.rd_b.req.valid & self.rd_b.req.ready & ~row_issued):
            m.d.sync += b_done.eq(1)
        with m.If(row_issued):
            m.d.sync += [a_done.eq(0), b_done.eq(0), rows_left.eq(rows_left - 1), first.eq(0),
                         b_addr.eq(b_addr + 1), dst_addr.eq(dst_addr + cur.dst_step)]
            with m.If(column + 1 == cur.kw):
                m.d.sync += [column.eq(0), line_base.eq(line_base + cur.pitch)]
            with m.Else():
                m.d.sync += column.eq(column + 1)
            with m.If(last_row):
                m.d.sync += issue_busy.eq(0)
        with m.If(issue_take):
            m.d.sync += [issue_busy.eq(1), cur.eq(desc), rows_left.eq(desc.n), column.eq(0),
                         line_base.eq(desc.a), b_addr.eq(desc.b), dst_addr.eq(desc.dst),
                         first.eq(1), a_done.eq(0), b_done.eq(0)]
        # Read responses land in the operand FIFOs one cycle after their grant.
        m.d.comb += [a_fifo.w_data.eq(self.rd_a.resp.as_value()), a_fifo.w_en.eq(self.rd_a.resp_valid),
                     b_fifo.w_data.eq(self.rd_b.resp.as_value()), b_fifo.w_en.eq(self.rd_b.resp_valid)]

        # --- execute stage -------------------------------------------------------------------
        head = data.View(meta_layout, meta_fifo.r_data)
        a_row = data.View(row_layout(cfg), a_fifo.r_data)
        b_row = data.View(row_layout(cfg), b_fifo.r_data)
        w_valid = Signal()
        w_addr = Signal(addr_shape)
        w_data = Signal(row_layout(cfg))
        w_free = ~w_valid | self.wr.req.ready
        operands_ready = ((~head.has_a | a_fifo.r_rdy) & (~head.has_b | b_fifo.r_rdy))
        execute = Signal()
        m.d.comb += execute.eq(meta_fifo.r_rdy & operands_ready & (~head.writes | w_free))
        m.d.comb += [meta_fifo.r_en.eq(execute), a_fifo.r_en.eq(execute & head.has_a),
                     b_fifo.r_en.eq(execute & head.has_b)]

        vregs = [Signal(row_layout(cfg), name=f"v{i}") for i in range(VREGS)]
        # No state crosses a µTOp boundary: the registers read 0 at the start of every
        # µTOp, whoever ran on this engine before (the pipeline is empty by then).
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [vreg.eq(0) for vreg in vregs]
        vreg_b = Signal(row_layout(cfg))
        with m.Switch(head.vreg):
            for i in range(VREGS):
                with m.Case(i):
                    m.d.comb += vreg_b.eq(vregs[i])
        accumulator = Signal(row_layout(cfg))
        result = Signal(row_layout(cfg))

        m.submodules.lut = lut = memory.Memory(shape=unsigned(32 * lanes), depth=max(2, cfg.lut_rows),
                                               init=[])
        lut_write = lut.write_port()
        lut_reads = [lut.read_port(domain="comb") for _ in range(lanes)]

        int8_min, int8_max = -128, 127
        # The product bits a rounding shift drops below its half bit (2^(shift-1) - 1): a
        # tie is the half bit set and these clear.
        below_half = Signal(64)
        m.d.comb += below_half.eq(((Const(1, 64) << (shift - 1)[:6]) - 1)[:64])
        for lane in range(lanes):
            a = a_row[lane]
            b = Signal(signed(32), name=f"b{lane}")
            m.d.comb += b.eq(Mux(head.bform == _BForm.ROW, b_row[lane],
                                 Mux(head.bform == _BForm.VREG, vreg_b[lane], head.imm)))
            value = Signal(signed(32), name=f"value{lane}")
            amount = b[:5]
            with m.Switch(head.op):
                with m.Case(0):
                    m.d.comb += value.eq(a + b)
                with m.Case(1):
                    m.d.comb += value.eq(a - b)
                with m.Case(2):
                    m.d.comb += value.eq(a * b)
                with m.Case(3):
                    m.d.comb += value.eq(Mux(a < b, a, b))
                with m.Case(4):
                    m.d.comb += value.eq(Mux(a > b, a, b))
                with m.Case(5):
                    m.d.comb += value.eq(a << amount)
                with m.Case(6):
                    m.d.comb += value.eq(a >> amount)
                with m.Case(7):
                    m.d.comb += value.eq(a.as_unsigned() >> amount)
                with m.Case(_Op.RQ):
                    product = Signal(signed(64), name=f"product{lane}")
                    half = Signal(signed(64), name=f"half{lane}")      # p >> (shift - 1)
                    down = Signal(name=f"down{lane}")
                    rounded = Signal(signed(64), name=f"rounded{lane}")
                    # Ties round up, to (half + 1) >> 1; with `even`, a tie whose half >> 1
                    # is even (half bit 1 clear) rounds down to half >> 1 instead.
                    m.d.comb += [product.eq(a * Mux(head.bform == _BForm.VREG, vreg_b[lane], mult)),
                                 half.eq(product >> (shift - 1)[:6]),
                                 down.eq(even & half[0] & ~half[1]
                                         & ((product.as_unsigned() & below_half) == 0)),
                                 rounded.eq(Mux(shift == 0, product,
                                                Mux(down, half >> 1, (half + 1) >> 1)) + zp)]
                    low = Mux(wide, -(1 << 31), int8_min)
                    high = Mux(wide, (1 << 31) - 1, int8_max)
                    m.d.comb += value.eq(Mux(rounded < low, low, Mux(rounded > high, high, rounded)))
                with m.Case(_Op.LUT):
                    index = Signal(8, name=f"lut_index{lane}")
                    m.d.comb += index.eq(Mux(a < int8_min, 0, Mux(a > int8_max, 255, a + 128)))
                    port = lut_reads[lane]
                    lane_bits = (lanes - 1).bit_length()
                    m.d.comb += port.addr.eq(index >> lane_bits)
                    m.d.comb += value.eq(data.View(row_layout(cfg), port.data)[index[:lane_bits]]
                                         if lane_bits else port.data)
                with m.Case(_Op.RSUM):
                    m.d.comb += value.eq(Mux(head.first, a, accumulator[lane] + a))
                with m.Case(_Op.RMAX):
                    m.d.comb += value.eq(Mux(head.first | (a > accumulator[lane]), a,
                                             accumulator[lane]))
                with m.Case(_Op.RMIN):
                    m.d.comb += value.eq(Mux(head.first | (a < accumulator[lane]), a,
                                             accumulator[lane]))
                with m.Case(_Op.VST):
                    m.d.comb += value.eq(vreg_b[lane])
                with m.Default():
                    m.d.comb += value.eq(a)
            saturated = Mux(head.sat & (head.op < 8),
                            Mux(value < int8_min, int8_min, Mux(value > int8_max, int8_max, value)),
                            value)
            m.d.comb += result[lane].eq(saturated)

        # Lane reductions over the active lanes, broadcast.
        def lane_reduce(combine, identity):
            values = [Mux(vl_mask[lane], a_row[lane], identity) for lane in range(lanes)]
            while len(values) > 1:
                values = [combine(values[i], values[i + 1]) for i in range(0, len(values), 2)]
            return values[0]
        lane_sum = Signal(signed(32))
        lane_max = Signal(signed(32))
        lane_min = Signal(signed(32))
        m.d.comb += [
            lane_sum.eq(lane_reduce(lambda x, y: (x + y)[:32].as_signed(), 0)),
            lane_max.eq(lane_reduce(lambda x, y: Mux(x > y, x, y), -2**31)),
            lane_min.eq(lane_reduce(lambda x, y: Mux(x < y, x, y), 2**31 - 1)),
        ]
        row_out = Signal(row_layout(cfg))
        with m.Switch(head.op):
            for op, value in [(_Op.LSUM, lane_sum), (_Op.LMAX, lane_max), (_Op.LMIN, lane_min)]:
                with m.Case(op):
                    m.d.comb += [row_out[lane].eq(value) for lane in range(lanes)]
            with m.Default():
                m.d.comb += row_out.eq(result)

        with m.If(execute):
            with m.Switch(head.op):
                with m.Case(_Op.RSUM, _Op.RMAX, _Op.RMIN):
                    m.d.sync += accumulator.eq(result)
                with m.Case(_Op.VLD):
                    for i in range(VREGS):
                        with m.If(head.vreg == i):
                            for lane in range(lanes):
                                with m.If(vl_mask[lane]):
                                    m.d.sync += vregs[i][lane].eq(a_row[lane])
                with m.Case(_Op.LDLUT):
                    m.d.comb += [lut_write.en.eq(1), lut_write.addr.eq(head.dst),
                                 lut_write.data.eq(a_row.as_value())]
        write_now = execute & head.writes & (~head.op.matches(_Op.RSUM, _Op.RMAX, _Op.RMIN)
                                             | head.last)
        with m.If(write_now):
            m.d.sync += [w_valid.eq(1), w_addr.eq(head.dst), w_data.eq(row_out)]
        with m.Elif(self.wr.req.ready):
            m.d.sync += w_valid.eq(0)
        m.d.comb += [self.wr.req.valid.eq(w_valid), self.wr.req.payload.addr.eq(w_addr),
                     self.wr.req.payload.data.eq(w_data), self.wr.req.payload.mask.eq(vl_mask)]

        # A row retires when executed (no spad write) or when its write is granted.
        retired = Signal(2)
        m.d.comb += retired.eq((execute & ~write_now) + (w_valid & self.wr.req.ready))
        m.d.sync += inflight.eq(inflight + row_issued - retired)

        # Work = rows executed. An instruction consumed (from the loop buffer too) is progress.
        return engine_shell(self, m, active=front.active, work=execute, progress=[consumed],
                            requests=[self.rd_a.req, self.rd_b.req, self.wr.req],
                            responses=[self.rd_a.resp_valid, self.rd_b.resp_valid])
