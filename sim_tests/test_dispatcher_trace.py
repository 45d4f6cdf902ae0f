"""The dispatcher, cycle by cycle, pinned: a refactor that changes any output in any cycle fails.

A seeded random stimulus (programs with random headers, dependencies, bodies, a few bad
headers and short PROG_LENs, some longer than the instruction buffer, in an HBM model that
the dispatcher fetches them from; engines that take body words at random, retire after random
delays, sometimes fault or hang; STARTs and refused STARTs at random times; random
ownership, priorities and time slices; each policy) drives the dispatcher alone. Every
output (engine commands and body words, context states and counters, engine occupancy,
aborts, observation points) is recorded every cycle and hashed. The digests were recorded
from the design as it is; a change of behaviour that is meant must re-pin them:

    NEU10_REPIN=1 .venv/bin/python -m pytest sim_tests/test_dispatcher_trace.py

(and say so in the commit). Names and widths of outputs may change freely: values are
recorded by name, without the ``control.`` and ``segment.`` levels.
"""

import fcntl
import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from amaranth import Elaboratable, Module
from amaranth.lib import data, wiring
from amaranth.sim import Simulator

from isa.config import NPUConfig
from hw.dispatcher import Dispatcher, engine_types
from hw.hbm import HBM
from isa.encoding import UTop, encode_header, program_hbm_words
from runtime.backends.hbm_storage import HBMStorage

DIGESTS = Path(__file__).with_name("dispatcher_trace_digests.json")
CYCLES = 1500
SEEDS = range(4)       # seed % 4 is the policy


def _leaves(value, name):
    if isinstance(value, data.View):
        layout = data.Layout.cast(value.shape())
        if isinstance(layout, data.ArrayLayout):
            for i in range(layout.length):
                yield from _leaves(value[i], f"{name}.{i}")
        else:
            for field, _ in layout:
                inner = name if field == "segment" else f"{name}.{field}"
                yield from _leaves(getattr(value, field), inner)
    else:
        yield name, value


def _outputs(dut):
    found = []
    for path, member, value in dut.signature.flatten(dut):
        if member.flow == wiring.Out:
            name = ".".join(str(p) for p in path if p != "control")
            found.extend(_leaves(value, name))
    return sorted(found, key=lambda item: item[0])


class _WithHBM(Elaboratable):
    """The dispatcher and an HBM model for its instruction fetch alone."""

    def __init__(self, config):
        self.dispatcher = Dispatcher(config)
        self.hbm = HBM(config, n_ports=config.n_ctx)
        self.hbm_storage = HBMStorage(config)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dispatcher, m.submodules.hbm = self.dispatcher, self.hbm
        for c, port in enumerate(self.dispatcher.hbm):
            wiring.connect(m, port, self.hbm.port[c])
        return m


#: Where context c's program lives in HBM (a region of PROG_ROOM words each).
PROG_AREA, PROG_ROOM = 4096, 1024


def trace_digest(seed, cycles=CYCLES):
    rng = random.Random(seed)
    config = NPUConfig.preset("tiny").replace(watchdog_cycles=48)
    types = engine_types(config)
    top = _WithHBM(config)
    dut = top.dispatcher
    control = dut.control
    outputs = _outputs(dut)
    per_line = config.hbm_words_per_cycle
    E, C, W = len(types), config.n_ctx, config.dep_window
    kinds = sorted(set(types))

    def program():
        words = []
        n = rng.randint(1, 24) if rng.random() < 0.85 else rng.randint(60, 110)
        for i in range(n):
            utop = UTop(engine=rng.choice(kinds),
                        body=[rng.getrandbits(64) for _ in range(rng.randint(0, 4))],
                        deps=tuple(sorted(rng.sample(range(1, W + 1), rng.randint(0, 3)))),
                        eoo=rng.random() < 0.35, eop=(i == n - 1 and rng.random() < 0.95),
                        restartable=rng.random() < 0.5)
            draw = rng.random()
            if draw < 0.01:
                words.append(rng.getrandbits(64))                 # garbage header
            elif draw < 0.02:
                words.append(encode_header(utop) | 1 << 63)       # a reserved bit set
            else:
                words.append(encode_header(utop))
            words.extend(utop.body)
        length = len(words) if rng.random() < 0.95 else max(1, len(words) - rng.randint(1, 3))
        limit = PROG_ROOM // 2            # some are longer than the instruction buffer
        return words[:limit], min(length, limit)

    digest = hashlib.sha256()

    async def bench(ctx):
        ctx.set(control.policy, seed % 4)
        ctx.set(control.time_slice, rng.choice([1, 5, 40, 300]))
        for c in range(C):
            settings = control.ctx_config[c]
            ctx.set(settings.segment.spad_base, 256 * c)
            ctx.set(settings.segment.spad_size, 256)
            ctx.set(settings.segment.hbm_base, 1024 * c)
            ctx.set(settings.segment.hbm_size, 1024)
            ctx.set(settings.me_mask, rng.getrandbits(config.n_me))
            ctx.set(settings.ve_mask, rng.getrandbits(config.n_ve))
            ctx.set(settings.priority, rng.randrange(16))
        engines = [dict(state="idle", left=0, wait=0, hang=False, ctx=0) for _ in range(E)]
        writes = []          # HBM lines of a program, then the START
        status = [0] * C
        for _ in range(cycles):
            start = refused = 0
            if not writes:
                for c in range(C):
                    if status[c] != 1 and rng.random() < 0.2:
                        words, length = program()
                        halves = program_hbm_words(words)
                        halves += [0] * (-len(halves) % per_line)
                        lines = [sum(v << 32 * j for j, v in enumerate(halves[i:i + per_line]))
                                 for i in range(0, len(halves), per_line)]
                        base = (PROG_AREA + c * PROG_ROOM) // per_line
                        writes = [(c, base + i, line) for i, line in enumerate(lines)] \
                            + [(c, None, length)]
                        break
            if writes:
                c, addr, word = writes.pop(0)
                if addr is None:
                    ctx.set(control.ctx_config[c].prog_base, PROG_AREA + c * PROG_ROOM)
                    ctx.set(control.ctx_config[c].prog_len, word)
                    if rng.random() < 0.03:
                        refused = 1 << c
                    else:
                        start = 1 << c
                else:                 # (back door: a line per cycle)
                    top.hbm_storage.lines[addr] = word
            ctx.set(control.start, start)
            ctx.set(control.config_fault, refused)
            for e, engine in enumerate(engines):
                link = dut.engines[e]
                ready = int(engine["state"] == "receiving" and engine["left"] > 0
                            and rng.random() < 0.7)
                ctx.set(link.instr.ready, ready)
                if ready and ctx.get(link.instr.valid):
                    engine["left"] -= 1
                done = engine["state"] == "finishing" and engine["wait"] == 0 and not engine["hang"]
                ctx.set(link.done.valid, int(done))
                ctx.set(link.done.payload.ctx, engine["ctx"])
                ctx.set(link.done.payload.fault,
                        rng.choice([1, 2, 3, 4]) if done and rng.random() < 0.015 else 0)
                ctx.set(dut.engine_progress[e], int(engine["state"] != "idle"
                                                    and not engine["hang"] and rng.random() < 0.5))
            await ctx.tick()
            row = [int(getattr(ctx.get(signal), "value", ctx.get(signal))) for _, signal in outputs]
            digest.update(json.dumps(row).encode())
            status = [int(ctx.get(control.ctx_state[c].status)) for c in range(C)]
            for e, engine in enumerate(engines):
                if ctx.get(dut.engine_abort[e]):
                    engine.update(state="idle", left=0, wait=0, hang=False)
                elif engine["state"] == "finishing" and engine["wait"] == 0 and not engine["hang"]:
                    engine["state"] = "idle"
                elif engine["state"] == "finishing" and engine["wait"] > 0:
                    engine["wait"] -= 1
            for e, engine in enumerate(engines):
                link = dut.engines[e]
                if engine["state"] == "idle" and ctx.get(link.cmd.valid):
                    engine.update(state="receiving", left=int(ctx.get(link.cmd.payload.length)),
                                  ctx=int(ctx.get(link.cmd.payload.ctx)))
                if engine["state"] == "receiving" and engine["left"] == 0:
                    engine.update(state="finishing", wait=rng.randint(0, 5),
                                  hang=rng.random() < 0.003)

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)

    async def storage(ctx):
        await top.hbm_storage.serve(ctx, top.hbm.storage)
    sim.add_process(storage)
    sim.run()
    return digest.hexdigest()


@pytest.mark.parametrize("seed", SEEDS)
def test_dispatcher_trace_is_unchanged(seed):
    digest = trace_digest(seed)
    if os.environ.get("NEU10_REPIN"):
        # Read, change and write under a lock: pytest-xdist workers re-pin side by side.
        DIGESTS.touch()
        with DIGESTS.open("r+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            text = file.read()
            pinned = json.loads(text) if text else {}
            pinned[str(seed)] = digest
            file.seek(0)
            file.truncate()
            file.write(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
    assert pinned.get(str(seed)) == digest, (
        f"the dispatcher's outputs changed for stimulus seed {seed}; if the change is meant, "
        f"re-pin (see this module's docstring)")
