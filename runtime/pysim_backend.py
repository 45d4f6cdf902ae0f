"""pysim backend: executes a host script on the pNPU in Amaranth's built-in simulator."""

from amaranth.sim import Simulator

from hw.npu import NPU

__all__ = ["PysimBackend"]


def _to_signed(value):
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def _pack(words):
    return sum((int(w) & 0xFFFFFFFF) << (32 * i) for i, w in enumerate(words))


def _unpack(value, count):
    return [_to_signed(value >> (32 * i)) for i in range(count)]


class PysimBackend:
    """Runs each host script from reset on a fresh simulation of ``NPU(config)``.

    ``run`` waits until the NPU reports no running context, checking every ``poll`` cycles
    (the hardware counters, not the poll, give the cycle counts), or ``max_cycles``.
    """

    name = "pysim"

    def __init__(self, config, *, vcd=None, poll=16):
        self.config, self.vcd, self.poll = config, vcd, poll

    def execute(self, script):
        cfg = self.config
        npu = NPU(cfg)
        results = []
        lanes, per_line = cfg.ve_lanes, cfg.hbm_words_per_cycle

        async def host(ctx):
            csr = npu.csr
            for op in script:
                kind = op[0]
                if kind == "csr_write":
                    ctx.set(csr.addr, op[1])
                    ctx.set(csr.wdata, op[2])
                    ctx.set(csr.we, 1)
                    await ctx.tick()
                    ctx.set(csr.we, 0)
                elif kind == "csr_read":
                    ctx.set(csr.addr, op[1])
                    ctx.set(csr.re, 1)
                    await ctx.tick()
                    ctx.set(csr.re, 0)
                    results.append(ctx.get(csr.rdata))
                elif kind == "spad_write":
                    request = npu.spad_wr.req
                    ctx.set(request.payload.addr, op[1])
                    ctx.set(request.payload.data, [_to_signed(v) for v in op[2]])
                    ctx.set(request.payload.mask, (1 << lanes) - 1)
                    ctx.set(request.valid, 1)
                    await ctx.tick().until(request.ready)
                    ctx.set(request.valid, 0)
                elif kind == "spad_read":
                    request = npu.spad_rd.req
                    ctx.set(request.payload, op[1])
                    ctx.set(request.valid, 1)
                    await ctx.tick().until(request.ready)
                    ctx.set(request.valid, 0)
                    results.append(_unpack(ctx.get(npu.spad_rd.resp.as_value()), lanes))
                elif kind in ("hbm_write", "hbm_read"):
                    request = npu.hbm.req
                    ctx.set(request.payload.line, op[1])
                    ctx.set(request.payload.write, kind == "hbm_write")
                    if kind == "hbm_write":
                        ctx.set(request.payload.data, [v & 0xFFFFFFFF for v in op[2]])
                        ctx.set(request.payload.mask, op[3])
                    ctx.set(request.valid, 1)
                    await ctx.tick().until(request.ready)
                    ctx.set(request.valid, 0)
                    if kind == "hbm_read":
                        await ctx.tick().until(npu.hbm.resp_valid)
                        results.append(_unpack(ctx.get(npu.hbm.resp.as_value()), per_line))
                elif kind == "run":
                    waited = 0
                    await ctx.tick()          # the START write takes effect
                    while ctx.get(npu.busy) and waited < op[1]:
                        await ctx.tick().repeat(self.poll)
                        waited += self.poll
                    results.append((waited, bool(ctx.get(npu.busy))))
                else:
                    raise ValueError(f"unknown host operation {kind!r}")

        sim = Simulator(npu)
        sim.add_clock(1e-6)
        sim.add_testbench(host)
        if self.vcd:
            with sim.write_vcd(self.vcd):
                sim.run()
        else:
            sim.run()
        return results
