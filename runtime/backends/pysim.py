"""pysim backend: executes host scripts on the pNPU in Amaranth's built-in simulator."""

from amaranth import ClockDomain, Elaboratable, Module
from amaranth.sim import Simulator

from hw.npu import NPU, activity_bits
from isa.regmap import Status
from . import script as ops
from .hbm_storage import HBMStorage
from .host_loop import serve_loop
from .words import to_signed32, unpack_words

__all__ = ["PysimBackend"]


class _Harness(Elaboratable):
    """The NPU in an explicit clock domain, so a testbench can pulse its reset."""

    def __init__(self, config):
        self.npu = NPU(config)
        self.domain = ClockDomain("sync")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.domain
        m.submodules.npu = self.npu
        return m


class _Session:
    """One simulation that serves many scripts: between scripts it pulses reset and zeroes
    every memory, so each script starts from the state of a fresh NPU. Building and
    compiling the simulation is what costs seconds; this pays it once per configuration."""

    def __init__(self, config, poll, vcd=None, trace=False, timeline=False):
        self.config, self.poll, self.trace = config, poll, trace
        self.trace_events = []
        self.harness = _Harness(config)
        self.sim = Simulator(self.harness)
        self.sim.add_clock(1e-6)
        self.sim.add_testbench(self._server)
        self.hbm = HBMStorage(config)
        self.sim.add_process(self._hbm)
        #: While a Serve with a timeline runs: (cycle, engine, activity) changes.
        self.timeline = None
        if timeline:                 # a process waking every cycle: only where asked for
            self.sim.add_process(self._timeline)
        self.vcd = vcd
        self.job = None
        self.results = None
        self.error = None
        self.progress = None         # called with the cycles run so far, every 4096 cycles

    def execute(self, script):
        self.job, self.results, self.error = script, None, None
        if self.vcd:
            with self.sim.write_vcd(self.vcd):
                self._advance()
        else:
            self._advance()
        if self.error:
            raise self.error
        results, self.results = self.results, None
        return results

    def _advance(self):
        while self.results is None and self.error is None:
            self.sim.advance()

    def _memories(self):
        npu = self.harness.npu
        for memory in list(npu.spad.banks) + list(npu.dispatcher.imems):
            yield memory

    async def _hbm(self, ctx):
        await self.hbm.serve(ctx, self.harness.npu.hbm_storage)

    async def _server(self, ctx):
        while True:
            if self.job is None:
                await ctx.tick()
                continue
            script, self.job, self.timeline = self.job, None, None
            ctx.set(self.harness.domain.rst, 1)
            await ctx.tick()
            ctx.set(self.harness.domain.rst, 0)
            for memory in self._memories():
                for index in range(memory.depth):
                    ctx.set(memory.data[index], 0)
            self.hbm.clear()
            try:
                self.results = await self._run_script(ctx, script)
            except Exception as error:    # reported to the caller of execute()
                self.error = error

    async def _timeline(self, ctx):
        """Each engine's activity at every clock edge (before it), kept on change, as the
        Verilator harness's sample() does."""
        npu = self.harness.npu
        bits, n = activity_bits(self.config), len(npu.engines)
        recording = last = None
        async for _, _, cycle, activity in ctx.tick().sample(npu.cycle, npu.activity):
            if self.timeline is None:
                continue
            if self.timeline is not recording:         # a new Serve: record every engine
                recording, last = self.timeline, [None] * n
            for e in range(n):
                value = activity >> (e * bits) & ((1 << bits) - 1)
                if value != last[e]:
                    last[e] = value
                    self.timeline.append((cycle, e, value))

    async def _run_script(self, ctx, script):
        npu = self.harness.npu
        cfg = self.config
        lanes = cfg.ve_lanes
        results = []
        for op in script:
            match op:
                case ops.CsrWrite(address, value):
                    await self._csr_write(ctx, address, value)
                case ops.CsrRead(address):
                    results.append(await self._csr_read(ctx, address))
                case ops.SpadWrite(row, values):
                    request = npu.spad_wr.req
                    ctx.set(request.payload.addr, row)
                    ctx.set(request.payload.data, [to_signed32(v) for v in values])
                    ctx.set(request.payload.mask, (1 << lanes) - 1)
                    ctx.set(request.valid, 1)
                    await ctx.tick().until(request.ready)
                    ctx.set(request.valid, 0)
                case ops.HbmLoad(address, words):
                    self.hbm.write(address, words)
                case ops.SpadRead(row):
                    request = npu.spad_rd.req
                    ctx.set(request.payload, row)
                    ctx.set(request.valid, 1)
                    await ctx.tick().until(request.ready)
                    ctx.set(request.valid, 0)
                    results.append(unpack_words(ctx.get(npu.spad_rd.resp.as_value()), lanes))
                case ops.HbmWrite(line, values, mask):
                    request = npu.hbm.req
                    ctx.set(request.payload.line, line)
                    ctx.set(request.payload.write, 1)
                    ctx.set(request.payload.data, [v & 0xFFFFFFFF for v in values])
                    ctx.set(request.payload.mask, mask)
                    ctx.set(request.valid, 1)
                    await ctx.tick().until(request.ready)
                    ctx.set(request.valid, 0)
                case ops.HbmRead(line):
                    results.append(await self._hbm_read(ctx, line))
                case ops.Run(max_cycles, timeline):
                    waited, mark = 0, ctx.get(npu.cycle)
                    if timeline:
                        self.timeline = []
                    await ctx.tick()          # the START write takes effect
                    if self.trace:
                        waited = await self._traced_run(ctx, max_cycles)
                    while ctx.get(npu.busy) and waited < max_cycles:
                        await ctx.tick().repeat(self.poll)
                        waited += self.poll
                        if self.progress and waited % 4096 < self.poll:
                            self.progress(waited)
                    results.append((waited, bool(ctx.get(npu.busy)))
                                   + ((self._end_timeline(mark),) if timeline else ()))
                case ops.Serve():
                    results.append(await self._serve(ctx, op))
                case _:
                    raise ValueError(f"the pysim backend cannot execute {op!r}")
        return results


    async def _csr_write(self, ctx, address, value):
        csr = self.harness.npu.csr
        ctx.set(csr.addr, address)
        ctx.set(csr.wdata, value)
        ctx.set(csr.we, 1)
        await ctx.tick()
        ctx.set(csr.we, 0)

    async def _hbm_read(self, ctx, line):
        """One HBM line through the host port; the line is valid for one cycle: it is
        sampled at that edge."""
        npu = self.harness.npu
        request = npu.hbm.req
        ctx.set(request.payload.line, line)
        ctx.set(request.payload.write, 0)
        ctx.set(request.valid, 1)
        await ctx.tick().until(request.ready)
        ctx.set(request.valid, 0)
        (value,) = await ctx.tick().sample(npu.hbm.resp.as_value()).until(npu.hbm.resp_valid)
        return unpack_words(value, self.config.hbm_words_per_cycle)

    async def _hbm_burst(self, ctx, first, count):
        """``count`` HBM lines from ``first``, pipelined like the Verilator harness's: a
        request each cycle the port takes one, the lines collected as they arrive."""
        npu = self.harness.npu
        request = npu.hbm.req
        issued, words, got = 0, [], 0
        while got < count:
            if issued < count:
                ctx.set(request.payload.line, first + issued)
                ctx.set(request.payload.write, 0)
            ctx.set(request.valid, issued < count)
            _, _, ready, valid, value = await ctx.tick().sample(
                request.ready, npu.hbm.resp_valid, npu.hbm.resp.as_value())
            if valid:
                words += unpack_words(value, self.config.hbm_words_per_cycle)
                got += 1
            if issued < count and ready:
                issued += 1
        ctx.set(request.valid, 0)
        return words

    async def _serve(self, ctx, op):
        """The Serve operation (runtime/backends/script.py): the host loop of host_loop.py,
        in the same cycles as the Verilator harness's."""
        npu = self.harness.npu
        mark = ctx.get(npu.cycle)
        if op.timeline:
            self.timeline = []
        loop = serve_loop(op, self.poll, self.config.hbm_words_per_cycle)
        reply = None
        while True:
            try:
                step = loop.send(reply)
            except StopIteration as done:
                served = done.value
                break
            match step:
                case ("cycle",):
                    reply = ctx.get(npu.cycle)
                case ("write", address, value):
                    reply = await self._csr_write(ctx, address, value)
                case ("read", address):
                    reply = await self._csr_read(ctx, address)
                case ("burst", first, count):
                    reply = await self._hbm_burst(ctx, first, count)
                case ("wait", cycles):
                    reply = await ctx.tick().repeat(cycles)
        timeline = self._end_timeline(mark) if op.timeline else None
        return mark, ctx.get(npu.cycle) - mark, bool(ctx.get(npu.busy)), served, timeline

    def _end_timeline(self, mark):
        """Stop recording the timeline; its events, cycles counted from ``mark``."""
        timeline = [(cycle - mark, e, value) for cycle, e, value in self.timeline]
        self.timeline = None
        return timeline

    async def _csr_read(self, ctx, address):
        """One register read: the value is there after the clock edge."""
        csr = self.harness.npu.csr
        ctx.set(csr.addr, address)
        ctx.set(csr.re, 1)
        await ctx.tick()
        ctx.set(csr.re, 0)
        return ctx.get(csr.rdata)

    async def _traced_run(self, ctx, max_cycles):
        """Run cycle by cycle, recording the dispatcher's decisions (slow: opt-in)."""
        dispatcher = self.harness.npu.dispatcher
        n_ctx = self.config.n_ctx
        n_engines = len(dispatcher.engines)
        samples = ([dispatcher.issue_valid[c] for c in range(n_ctx)]
                   + [dispatcher.issue_engine[c] for c in range(n_ctx)]
                   + [dispatcher.candidate[c] for c in range(n_ctx)]
                   + [dispatcher.control.ctx_state[c].status for c in range(n_ctx)]
                   + [dispatcher.engine_activity[e] for e in range(n_engines)]
                   + [dispatcher.engine_abort[e] for e in range(n_engines)]
                   + [dispatcher.ctx_on_me, dispatcher.ctx_on_any, dispatcher.retiring,
                      self.harness.npu.busy])
        self.trace_events = []
        for cycle in range(max_cycles):
            _, _, *values = await ctx.tick().sample(*samples)
            fields = [values[i * n_ctx:(i + 1) * n_ctx] for i in range(4)]
            valid, engine, candidate, status = fields
            rest = values[4 * n_ctx:]
            activity, abort = rest[:n_engines], rest[n_engines:2 * n_engines]
            on_me, on_any, retiring, busy = rest[2 * n_engines:]
            self.trace_events.append({
                "cycle": cycle,
                "issues": [(c, engine[c]) for c in range(n_ctx) if valid[c]],
                "candidates": list(candidate), "ctx_on_me": on_me, "ctx_on_any": on_any,
                "retiring": retiring,
                # What the host reads in STATUS this cycle; per engine, 0 idle or c + 1
                # while it runs a µTOp of context c; the engines held in reset (bit e).
                "status": [Status(s) for s in status], "activity": list(activity),
                "abort": sum(a << e for e, a in enumerate(abort))})
            if not busy:
                return cycle + 1
        return max_cycles


_SESSIONS = {}


class PysimBackend:
    """Runs host scripts on ``NPU(config)`` in Amaranth's simulator.

    Simulations are cached per configuration (and reset between scripts); with ``vcd`` a
    private simulation writes the waveform. ``run`` polls the NPU's ``busy`` line every
    ``poll`` cycles; cycle counts come from the hardware counters, not from the poll.
    """

    name = "pysim"

    def __init__(self, config, *, vcd=None, poll=16, trace=False, progress=None):
        self.config, self.vcd, self.poll, self.trace = config, vcd, poll, trace
        self.progress = progress
        #: With ``trace``: per cycle of the last run, the dispatcher's issues (context,
        #: engine), each context's ready engine types (bit t), which contexts occupy MEs
        #: and engines, and which retire a µTOp (bit masks); each context's STATUS, what
        #: each engine runs (0 idle, c + 1 context c) and which are held in reset (bits).
        self.trace_events = []

    def execute(self, script):
        timeline = any(isinstance(op, (ops.Serve, ops.Run)) and op.timeline for op in script)
        if self.vcd:
            session = _Session(self.config, self.poll, self.vcd, self.trace, timeline=timeline)
            session.progress = self.progress
            results = session.execute(script)
            self.trace_events = session.trace_events
            return results
        key = (self.config, self.poll, self.trace, timeline)
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = _Session(self.config, self.poll, trace=self.trace,
                                                timeline=timeline)
        session.progress = self.progress
        try:
            results = session.execute(script)
            self.trace_events = session.trace_events
            return results
        except Exception:
            _SESSIONS.pop(key, None)     # a failed script leaves the session unusable
            raise
