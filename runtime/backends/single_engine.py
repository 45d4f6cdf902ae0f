"""One engine alone on RTL (engine + scratchpad [+ HBM]) in pysim, with the testbench
playing the dispatcher: the engine tests drive it, and `neu10 bench` measures each engine's
throughput with it. The same program also runs on the golden model, so every run is checked.
"""

import random
import time

import numpy as np
from amaranth import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.hbm import HBM
from hw.ports import SpadReadSignature, SpadWriteSignature
from hw.scratchpad import Scratchpad
from isa.asm import assemble_program
from isa.encoding import Fault, decode_header
from isa.golden import ContextSpec, GoldenNPU, Segment
from .hbm_storage import HBMStorage
from .words import pack_words, unpack_words


__all__ = ["run_engine", "EngineTop", "COUNTERS"]

#: Counters an engine may expose; run_engine reports those it has.
COUNTERS = ("busy_cycles", "stall_cycles", "utops_done", "work")


class NoiseClient(wiring.Component):
    """Placeholder port bundle: a testbench drives it to contend for scratchpad banks."""

    def __init__(self, config):
        super().__init__({"rd": wiring.Out(SpadReadSignature(config)),
                          "wr": wiring.Out(SpadWriteSignature(config))})

    def elaborate(self, platform):
        return Module()


class EngineTop(Elaboratable):
    """An engine wired to a scratchpad, plus ``n_noise`` extra clients for contention."""

    def __init__(self, config, engine, read_ports, write_ports, n_noise=0):
        self.config, self.engine = config, engine
        self.read_ports, self.write_ports = read_ports, write_ports
        self.noise = [NoiseClient(config) for _ in range(n_noise)]
        self.spad = Scratchpad(config, n_read=len(read_ports) + n_noise,
                               n_write=len(write_ports) + n_noise)
        self.hbm = HBM(config, n_ports=1) if hasattr(engine, "hbm") else None
        #: HBM's lines (served by a simulation process, see HBMStorage).
        self.hbm_storage = HBMStorage(config) if self.hbm is not None else None

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = self.engine
        m.submodules.spad = self.spad
        for i, name in enumerate(self.read_ports):
            wiring.connect(m, getattr(self.engine, name), self.spad.rd[i])
        for i, name in enumerate(self.write_ports):
            wiring.connect(m, getattr(self.engine, name), self.spad.wr[i])
        if self.hbm is not None:
            m.submodules.hbm = self.hbm
            wiring.connect(m, self.engine.hbm, self.hbm.port[0])
        for i, noise in enumerate(self.noise):
            m.submodules[f"noise{i}"] = noise
            wiring.connect(m, noise.rd, self.spad.rd[len(self.read_ports) + i])
            wiring.connect(m, noise.wr, self.spad.wr[len(self.write_ports) + i])
        return m


def run_engine(config, make_engine, read_ports, write_ports, source, spad_init, *,
               segment=None, hbm_segment=None, n_noise=0, noise_rows=None, seed=0, hbm=None,
               before=None, after=None, max_cycles=100_000):
    """Run the µTOps of ``source`` (all of one engine type) on RTL and on the golden model.

    ``noise_rows`` is a list of physical rows the noise clients may write (keep it out of
    what the test checks); ``before``/``after`` are async hooks (ctx, top) run around the
    program, e.g. to load or read an HBM model. Returns a dict with the RTL scratchpad,
    the golden model, per-µTOp RTL faults, the golden result and the engine's counters.
    With an HBM, ``hbm`` holds the RTL's HBM words from 0 to the end of the HBM segment or of
    the last line the RTL wrote, whichever is later, and ``golden_hbm`` the golden model's.
    """
    program = assemble_program(source, config=config).words
    segment = segment or Segment(0, config.spad_rows)
    # The whole HBM, or its first 2^20 words on a config whose HBM is gigabytes.
    hbm_segment = hbm_segment or Segment(0, min(config.hbm_words, 1 << 20))
    golden = GoldenNPU(config)
    golden.spad[:len(spad_init)] = spad_init
    if hbm is not None:
        golden.hbm[:len(hbm)] = hbm
    [golden_result] = golden.run([ContextSpec(program, segment, hbm_segment)])

    engine = make_engine(config)
    top = EngineTop(config, engine, read_ports, write_ports, n_noise)
    lanes = config.ve_lanes
    rng = random.Random(seed)

    out = {"golden": golden, "golden_result": golden_result, "faults": [], "top": top}
    finished = []

    async def handshake(ctx, condition, what, *samples):
        """Wait for a clock edge at which ``condition`` holds, failing (not hanging) after
        max_cycles; returns ``samples`` as they were at that edge."""
        for _ in range(max_cycles):
            _, _, happened, *values = await ctx.tick().sample(condition, *samples)
            if happened:
                return values
        raise AssertionError(f"{what}: no handshake within {max_cycles} cycles")

    words = config.hbm_words_per_cycle

    async def dispatcher(ctx):
        for address, row in enumerate(spad_init):
            ctx.set(top.spad.row(address), pack_words(row))
        if hbm is not None:
            top.hbm_storage.write(0, hbm)
        if before:
            await before(ctx, top)
        out["sim_start"] = time.perf_counter()
        pc = 0
        while pc < len(program):
            utop, length = decode_header(program[pc])
            cmd = engine.cmd
            ctx.set(cmd.payload.ctx, 0)
            ctx.set(cmd.payload.length, length)
            ctx.set(cmd.payload.segment.spad_base, segment.base)
            ctx.set(cmd.payload.segment.spad_size, segment.size)
            ctx.set(cmd.payload.segment.hbm_base, hbm_segment.base)
            ctx.set(cmd.payload.segment.hbm_size, hbm_segment.size)
            ctx.set(cmd.valid, 1)
            await handshake(ctx, cmd.ready, f"command of the µTOp at word {pc}")
            ctx.set(cmd.valid, 0)
            for word in program[pc + 1:pc + 1 + length]:
                ctx.set(engine.instr.payload, word)
                ctx.set(engine.instr.valid, 1)
                await handshake(ctx, engine.instr.ready, f"body word of the µTOp at word {pc}")
            ctx.set(engine.instr.valid, 0)
            ctx.set(engine.done.ready, 1)
            (fault,) = await handshake(ctx, engine.done.valid, f"done of the µTOp at word {pc}",
                                       engine.done.payload.fault)
            ctx.set(engine.done.ready, 0)
            out["faults"].append(Fault(fault))
            pc += 1 + length
            if fault or utop.eop:
                break
        out["sim_seconds"] = time.perf_counter() - out.pop("sim_start")
        out["counters"] = {name: ctx.get(getattr(engine, name)) for name in COUNTERS
                           if hasattr(engine, name)}
        out["spad"] = np.array([unpack_words(ctx.get(top.spad.row(r)), lanes)
                                for r in range(config.spad_rows)])
        if top.hbm is not None:
            written = max(top.hbm_storage.lines, default=-1) + 1
            extent = max(hbm_segment.base + hbm_segment.size, written * words)
            out["hbm"] = top.hbm_storage.read(0, extent)
            out["golden_hbm"] = golden.hbm[:extent]
        if after:
            await after(ctx, top)
        finished.append(True)

    async def noise(ctx):
        while not finished:
            for client in top.noise:
                ctx.set(client.rd.req.valid, rng.random() < 0.5)
                ctx.set(client.rd.req.payload, rng.randrange(config.spad_rows))
                write = bool(noise_rows) and rng.random() < 0.5
                ctx.set(client.wr.req.valid, write)
                if write:
                    ctx.set(client.wr.req.payload.addr, rng.choice(noise_rows))
                    ctx.set(client.wr.req.payload.mask, (1 << lanes) - 1)
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(dispatcher)
    if top.hbm is not None:
        async def storage(ctx):
            await top.hbm_storage.serve(ctx, top.hbm.storage)
        sim.add_process(storage)
    if n_noise:
        sim.add_testbench(noise)
    sim.run()
    return out
