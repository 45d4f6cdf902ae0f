"""DMA engine: executes DMA µTOps (strided copies and gathers between HBM and the scratchpad)."""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import Out

from isa.encoding import Engine, Fault
from .decode import field, is_instr, is_legal_for
from .hbm import HBMPortSignature
from .engine_shell import engine_shell
from .utop_front_end import attach_front_end
from .ports import (engine_members, SpadReadSignature,
                    SpadWriteSignature, row_layout, spad_addr_shape)

__all__ = ["DMAEngine"]


class DMAEngine(wiring.Component):
    """One DMA engine.

    A row of a copy spans ``len`` HBM words, or ceil(len / 4) with `dcfg`'s i8 (int8
    elements packed four per word: the assembler sign-extends each byte into its lane, the
    emitter packs the low byte of each lane). Instructions start in order. A store or gather starts only when everything before it
    is done; a load (and a shape change) may start while only the tail of earlier loads
    is in flight, since HBM reads never conflict and the assembler writes rows in order:
    so consecutive loads stream back to back, and no copy overtakes an earlier one. Within an instruction rows are pipelined: the *row
    generator* walks the strided (or gathered) rows; for loads it requests every HBM line
    a row touches, up to ``credits`` lines in flight, and the *assembler* aligns the
    returned words into the row (zero past ``len``) and writes it; for stores it reads the
    scratchpad row and the *emitter* writes its words to the lines they fall in.
    """

    def __init__(self, config):
        self.config = config
        self.credits = config.hbm_latency + 6
        super().__init__(engine_members(
            config,
            rd=Out(SpadReadSignature(config)),
            wr=Out(SpadWriteSignature(config)),
            hbm=Out(HBMPortSignature(config)),
        ))

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        lanes, words = cfg.ve_lanes, cfg.hbm_words_per_cycle
        line_bits = (words - 1).bit_length()
        addr_shape = spad_addr_shape(cfg)
        hbm_addr_shape = unsigned(33)
        wide = signed(72)     # HBM arithmetic with a signed gather index: never wraps

        # --- µTOp state -----------------------------------------------------------------
        front = attach_front_end(m, self)
        segment = front.segment
        spad_base, spad_size = segment.spad_base, segment.spad_size
        hbm_base, hbm_size = segment.hbm_base, segment.hbm_size
        fault, ir, ir_valid = front.fault, front.ir, front.ir_valid
        length = Signal(range(lanes + 1))
        packed = Signal()           # dcfg i8: int8 elements, four per HBM word
        span = Signal(range(lanes + 1))     # HBM words per row
        hstride = Signal(24)
        sstride = Signal(16)
        gbase = Signal(32)
        exec_busy = Signal()
        load_tail_only = Signal()   # only earlier loads' responses are still in flight

        m.d.comb += front.idle.eq(~exec_busy)
        with m.If(front.start):
            m.d.sync += [length.eq(lanes), packed.eq(0), hstride.eq(lanes), sstride.eq(1),
                         gbase.eq(0)]
        m.d.comb += span.eq(Mux(packed, (length + 3) >> 2, length))

        # --- decode and checks ----------------------------------------------------------
        is_load, is_store = is_instr(ir, "dload"), is_instr(ir, "dstore")
        is_gather = is_instr(ir, "dgather")
        rows = Mux(is_load, field(ir, "dload", "rows"),
                   Mux(is_store, field(ir, "dstore", "rows"), field(ir, "dgather", "rows")))
        spad_first = Mux(is_load, field(ir, "dload", "dst"),
                         Mux(is_store, field(ir, "dstore", "src"), field(ir, "dgather", "dst")))
        hbm_first = Mux(is_load, field(ir, "dload", "hbm"), field(ir, "dstore", "hbm"))
        spad_last = spad_first + (rows - 1) * sstride
        hbm_end = hbm_first + (rows - 1) * hstride + span
        index_first = field(ir, "dgather", "idx")
        index_last = index_first + ((rows - 1) >> (lanes - 1).bit_length())
        new_len = field(ir, "dcfg", "len")

        start = Signal()
        with m.If(ir_valid & (fault == 0)):
            with m.If(~is_legal_for(ir, Engine.DMA)):
                m.d.comb += front.raise_fault.eq(Fault.ILLEGAL_OPCODE)
            # The running copy reads the shape registers: change them only when it is done.
            with m.Elif(is_instr(ir, "dcfg")):
                with m.If((new_len == 0) | (new_len > lanes)):
                    m.d.comb += front.raise_fault.eq(Fault.ILLEGAL_OPERAND)
                with m.Elif(~exec_busy | load_tail_only):
                    m.d.sync += [length.eq(new_len), packed.eq(field(ir, "dcfg", "i8")),
                                 hstride.eq(field(ir, "dcfg", "hstride")),
                                 sstride.eq(field(ir, "dcfg", "sstride"))]
                    m.d.comb += front.consume.eq(1)
            with m.Elif(is_instr(ir, "dbase")):
                with m.If(~exec_busy | load_tail_only):
                    m.d.sync += [gbase.eq(field(ir, "dbase", "hbm"))]
                    m.d.comb += front.consume.eq(1)
            with m.Elif(is_gather & (index_last >= spad_size)):
                m.d.comb += front.raise_fault.eq(Fault.SPAD_OOB)
            with m.Elif(spad_last >= spad_size):
                m.d.comb += front.raise_fault.eq(Fault.SPAD_OOB)
            with m.Elif(~is_gather & (hbm_end > hbm_size)):
                m.d.comb += front.raise_fault.eq(Fault.HBM_OOB)
            with m.Elif(~exec_busy | (is_load & load_tail_only)):
                m.d.comb += [start.eq(1), front.consume.eq(1)]

        # --- row generator ----------------------------------------------------------------
        job_active = Signal()
        job_load = Signal()         # load or gather (HBM -> scratchpad)
        job_gather = Signal()
        rows_left = Signal(9)
        spad_row = Signal(addr_shape)
        hbm_addr = Signal(hbm_addr_shape)     # physical, loads and stores
        index_row = Signal(addr_shape)
        index_lane = Signal(range(lanes))
        index_cached = Signal()
        index_data = Signal(row_layout(cfg))
        index_pending = Signal()
        with m.If(start):
            m.d.sync += [job_active.eq(1), job_load.eq(~is_store), job_gather.eq(is_gather),
                         rows_left.eq(rows), spad_row.eq(spad_base + spad_first),
                         hbm_addr.eq(hbm_base + hbm_first),
                         index_row.eq(spad_base + index_first), index_lane.eq(0),
                         index_cached.eq(0)]

        # The HBM address of the current row: strided, or from the gathered index.
        gathered = Signal(wide)
        m.d.comb += gathered.eq(gbase + index_data[index_lane] * hstride)
        row_hbm = Signal(hbm_addr_shape)
        row_ready = Signal()
        m.d.comb += [row_hbm.eq(Mux(job_gather, hbm_base + gathered, hbm_addr)),
                     row_ready.eq(job_active & (rows_left != 0) & (~job_gather | index_cached))]
        gather_bad = job_gather & index_cached & (rows_left != 0) & (
            (gathered < 0) | (gathered + span > hbm_size))

        # Gather: fetch the row of indices (one spad read per ve_lanes rows).
        index_request = job_active & job_gather & ~index_cached & ~index_pending & (rows_left != 0)
        with m.If(index_request & self.rd.req.ready):
            m.d.sync += index_pending.eq(1)
        with m.If(index_pending & self.rd.resp_valid):
            m.d.sync += [index_pending.eq(0), index_cached.eq(1), index_data.eq(self.rd.resp)]

        offset = row_hbm[:line_bits] if line_bits else 0
        first_line = row_hbm >> line_bits
        n_lines = (offset + span + words - 1) >> line_bits
        line_k = Signal(range(lanes + 2))
        outstanding = Signal(range(self.credits + 1))

        desc_layout = data.StructLayout({"row": addr_shape, "offset": range(words),
                                         "lines": range(lanes + 2), "length": range(lanes + 1),
                                         "packed": 1})
        m.submodules.desc_fifo = desc_fifo = fifo.SyncFIFOBuffered(
            width=desc_layout.size, depth=self.credits)
        m.submodules.resp_fifo = resp_fifo = fifo.SyncFIFOBuffered(
            width=32 * words, depth=self.credits)

        # Store rows waiting for their lines to be written.
        store_layout = data.StructLayout({"data": row_layout(cfg), "hbm": hbm_addr_shape})
        m.submodules.store_fifo = store_fifo = fifo.SyncFIFOBuffered(
            width=store_layout.size, depth=4)
        store_reads = Signal(range(6))     # store rows read or being read, not yet emitted
        store_read_pending = Signal()
        store_read_hbm = Signal(hbm_addr_shape)

        hbm_req = self.hbm.req
        load_issue = row_ready & job_load & ~gather_bad & (outstanding < self.credits)
        store_issue = job_active & ~job_load & (rows_left != 0) & (store_reads < 4)

        # Row advance (shared by loads, gathers and stores).
        row_done = Signal()
        with m.If(row_done):
            m.d.sync += [rows_left.eq(rows_left - 1), spad_row.eq(spad_row + sstride),
                         hbm_addr.eq(hbm_addr + hstride)]
            with m.If(job_gather):
                m.d.sync += index_lane.eq(index_lane + 1)
                with m.If(index_lane == lanes - 1):
                    m.d.sync += [index_lane.eq(0), index_cached.eq(0),
                                 index_row.eq(index_row + 1)]
        with m.If(gather_bad):
            m.d.comb += front.raise_fault.eq(Fault.HBM_OOB)      # older than any decode fault
            m.d.sync += rows_left.eq(0)
        with m.If(job_active & (rows_left == 0) & ~index_pending & ~store_read_pending):
            m.d.sync += job_active.eq(0)

        # Loads: one line request per cycle.
        line_accepted = Signal()
        m.d.comb += line_accepted.eq(load_issue & hbm_req.ready)
        with m.If(line_accepted):
            with m.If(line_k + 1 == n_lines):
                m.d.sync += line_k.eq(0)
                m.d.comb += [row_done.eq(1), desc_fifo.w_en.eq(1)]
            with m.Else():
                m.d.sync += line_k.eq(line_k + 1)
        desc_in = Signal(desc_layout)
        m.d.comb += [desc_in.row.eq(spad_row), desc_in.offset.eq(offset),
                     desc_in.lines.eq(n_lines), desc_in.length.eq(length),
                     desc_in.packed.eq(packed),
                     desc_fifo.w_data.eq(desc_in.as_value())]

        # Stores: read the row, then emit its lines.
        with m.If(store_issue & self.rd.req.ready):
            m.d.comb += row_done.eq(1)
            m.d.sync += [store_read_pending.eq(1), store_read_hbm.eq(hbm_addr)]
        with m.Elif(self.rd.resp_valid & store_read_pending):
            m.d.sync += store_read_pending.eq(0)
        store_in = Signal(store_layout)
        m.d.comb += [store_in.data.eq(self.rd.resp), store_in.hbm.eq(store_read_hbm),
                     store_fifo.w_data.eq(store_in.as_value()),
                     store_fifo.w_en.eq(store_read_pending & self.rd.resp_valid)]
        m.d.comb += [self.rd.req.valid.eq(index_request | store_issue),
                     self.rd.req.payload.eq(Mux(job_gather, index_row, spad_row))]

        store_head = data.View(store_layout, store_fifo.r_data)
        emit_k = Signal(range(lanes + 2))
        store_offset = store_head.hbm[:line_bits] if line_bits else 0
        store_lines = (store_offset + span + words - 1) >> line_bits
        # i8: the row's lanes as bytes, four per word (lanes at or past len give 0).
        n_packed = (lanes + 3) // 4
        packed_row = Signal(data.ArrayLayout(unsigned(32), n_packed))
        for lane in range(lanes):
            m.d.comb += packed_row[lane // 4][8 * (lane % 4):8 * (lane % 4) + 8].eq(
                Mux(lane < length, store_head.data[lane][:8], 0))
        emitting = store_fifo.r_rdy
        store_line = Signal(data.ArrayLayout(unsigned(32), words))
        store_mask = Signal(words)
        for j in range(words):
            position = Signal(signed(16), name=f"store_pos{j}")
            m.d.comb += position.eq(emit_k * words + j - store_offset)
            with m.If((position >= 0) & (position < span)):
                lane_word = (store_head.data[position[:max(1, (lanes - 1).bit_length())]]
                             if lanes > 1 else store_head.data[0])
                byte_word = (packed_row[position[:max(1, (n_packed - 1).bit_length())]]
                             if n_packed > 1 else packed_row[0])
                m.d.comb += [store_line[j].eq(Mux(packed, byte_word, lane_word)),
                             store_mask[j].eq(1)]
        store_accepted = emitting & hbm_req.ready & ~job_load
        with m.If(store_accepted):
            with m.If(emit_k + 1 == store_lines):
                m.d.sync += emit_k.eq(0)
                m.d.comb += store_fifo.r_en.eq(1)
            with m.Else():
                m.d.sync += emit_k.eq(emit_k + 1)
        m.d.sync += store_reads.eq(store_reads + (store_issue & self.rd.req.ready)
                                   - (store_accepted & (emit_k + 1 == store_lines)))

        with m.If(job_load | ~emitting):
            m.d.comb += [hbm_req.valid.eq(load_issue), hbm_req.payload.line.eq(first_line + line_k),
                         hbm_req.payload.write.eq(0)]
        with m.Else():
            m.d.comb += [hbm_req.valid.eq(1), hbm_req.payload.line.eq((store_head.hbm >> line_bits) + emit_k),
                         hbm_req.payload.write.eq(1), hbm_req.payload.data.eq(store_line),
                         hbm_req.payload.mask.eq(store_mask)]

        # --- assembler (loads) ------------------------------------------------------------
        m.d.comb += [resp_fifo.w_data.eq(self.hbm.resp.as_value()),
                     resp_fifo.w_en.eq(self.hbm.resp_valid)]
        desc = data.View(desc_layout, desc_fifo.r_data)
        line = data.View(data.ArrayLayout(unsigned(32), words), resp_fifo.r_data)
        asm_k = Signal(range(lanes + 2))
        assembled = Signal(row_layout(cfg))
        w_valid = Signal()
        w_addr = Signal(addr_shape)
        w_data = Signal(row_layout(cfg))
        w_free = ~w_valid | self.wr.req.ready
        last_line = asm_k + 1 == desc.lines
        consume = desc_fifo.r_rdy & resp_fifo.r_rdy & (~last_line | w_free)
        m.d.comb += resp_fifo.r_en.eq(consume)
        placed = Signal(row_layout(cfg))
        for lane in range(lanes):
            # The word holding the lane's element: word lane, or lane / 4 with i8.
            position = Signal(signed(16), name=f"load_pos{lane}")
            m.d.comb += position.eq(Mux(desc.packed, lane // 4, lane) + desc.offset
                                    - asm_k * words)
            with m.If((position >= 0) & (position < words)):
                word = line[position[:max(1, line_bits)]] if words > 1 else line[0]
                byte = word[8 * (lane % 4):8 * (lane % 4) + 8].as_signed()
                m.d.comb += placed[lane].eq(Mux(desc.packed, byte, word))
            with m.Else():
                m.d.comb += placed[lane].eq(assembled[lane])
        with m.If(consume):
            with m.If(last_line):
                m.d.sync += [asm_k.eq(0), w_valid.eq(1), w_addr.eq(desc.row)]
                m.d.sync += [w_data[lane].eq(Mux(lane < desc.length, placed[lane], 0))
                             for lane in range(lanes)]
                m.d.comb += desc_fifo.r_en.eq(1)
            with m.Else():
                m.d.sync += [asm_k.eq(asm_k + 1), assembled.eq(placed)]
        with m.If(~(consume & last_line) & self.wr.req.ready):
            m.d.sync += w_valid.eq(0)
        m.d.comb += [self.wr.req.valid.eq(w_valid), self.wr.req.payload.addr.eq(w_addr),
                     self.wr.req.payload.data.eq(w_data),
                     self.wr.req.payload.mask.eq((1 << lanes) - 1)]
        m.d.sync += outstanding.eq(outstanding + line_accepted - consume)

        m.d.comb += exec_busy.eq(job_active | (outstanding != 0) | desc_fifo.r_rdy | w_valid
                                 | (store_reads != 0) | store_fifo.r_rdy)
        m.d.comb += load_tail_only.eq(~job_active & job_load & (store_reads == 0)
                                      & ~store_fifo.r_rdy)

        # Work = words moved: a row's words, when the row is done.
        return engine_shell(self, m, active=front.active, work=Mux(row_done, span, 0),
                            requests=[self.rd.req, self.wr.req, hbm_req],
                            responses=[self.rd.resp_valid, self.hbm.resp_valid])
