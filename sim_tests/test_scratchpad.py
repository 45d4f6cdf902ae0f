# amaranth: UnusedElaboratable=no
"""Banked scratchpad: random multi-client traffic against a cycle-level Python model."""

import random

import pytest

from isa.config import NPUConfig
from hw.scratchpad import Scratchpad
from simutil import convert, simulate


def lanes_of(value, lanes):
    return [((value >> (32 * l)) & 0xFFFFFFFF) for l in range(lanes)]


@pytest.mark.parametrize("banks, read_ports, n_read, n_write, seed", [
    (4, 2, 5, 3, 0), (1, 1, 3, 2, 1), (2, 1, 4, 4, 2), (8, 2, 7, 5, 3),
])
def test_random_traffic_matches_model(banks, read_ports, n_read, n_write, seed):
    cfg = NPUConfig(ve_lanes=4, array_rows=4, array_cols=4, spad_rows=64, spad_banks=banks)
    dut = Scratchpad(cfg, n_read=n_read, n_write=n_write, read_ports=read_ports)
    rng = random.Random(seed)
    model = [[0] * 4 for _ in range(cfg.spad_rows)]
    stats = {"reads": 0, "writes": 0, "stalls": 0}

    async def bench(ctx):
        pending_rd = [None] * n_read      # address being requested
        pending_wr = [None] * n_write     # (address, data, mask)
        expect_resp = [None] * n_read     # row expected on the response this cycle
        for cycle in range(400):
            for c in range(n_read):
                if pending_rd[c] is None and rng.random() < 0.6:
                    # Hot rows make conflicts likely.
                    pending_rd[c] = rng.choice([rng.randrange(cfg.spad_rows), rng.randrange(4)])
                ctx.set(dut.rd[c].req.valid, pending_rd[c] is not None)
                ctx.set(dut.rd[c].req.payload, pending_rd[c] or 0)
            for c in range(n_write):
                if pending_wr[c] is None and rng.random() < 0.5:
                    pending_wr[c] = (rng.choice([rng.randrange(cfg.spad_rows), rng.randrange(4)]),
                                     [rng.getrandbits(32) for _ in range(4)], rng.getrandbits(4))
                req = dut.wr[c].req
                ctx.set(req.valid, pending_wr[c] is not None)
                if pending_wr[c] is not None:
                    address, words, mask = pending_wr[c]
                    ctx.set(req.payload.addr, address)
                    ctx.set(req.payload.data, [w - (1 << 32) if w >> 31 else w for w in words])
                    ctx.set(req.payload.mask, mask)
            signals = [p.req.ready for p in dut.rd] + [p.resp_valid for p in dut.rd] + \
                      [p.resp.as_value() for p in dut.rd] + [p.req.ready for p in dut.wr]
            _, _, *values = await ctx.tick().sample(*signals)
            rd_ready = values[:n_read]
            resp_valid = values[n_read:2 * n_read]
            resp = values[2 * n_read:3 * n_read]
            wr_ready = values[3 * n_read:]
            # Responses to last cycle's grants.
            for c in range(n_read):
                assert bool(resp_valid[c]) == (expect_resp[c] is not None), (cycle, c)
                if expect_resp[c] is not None:
                    assert lanes_of(resp[c], 4) == expect_resp[c], (cycle, c)
                expect_resp[c] = None
            # Reads see the memory before this cycle's writes.
            per_bank = {}
            granted_reads = [None] * n_read
            for c in range(n_read):
                if pending_rd[c] is not None:
                    bank = pending_rd[c] % banks
                    granted_reads[c] = bank
                    per_bank[bank] = per_bank.get(bank, 0) + 1
                    if rd_ready[c]:
                        expect_resp[c] = list(model[pending_rd[c]])
                        pending_rd[c] = None
                        stats["reads"] += 1
                    else:
                        stats["stalls"] += 1
            granted_per_bank = {}
            for c in range(n_write):
                if pending_wr[c] is not None and wr_ready[c]:
                    address, words, mask = pending_wr[c]
                    bank = address % banks
                    assert bank not in granted_per_bank, "two writes granted on one bank"
                    granted_per_bank[bank] = c
                    for lane in range(4):
                        if mask >> lane & 1:
                            model[address][lane] = words[lane]
                    pending_wr[c] = None
                    stats["writes"] += 1
            # Every bank that was asked grants as many reads as it has ports.
            for bank, count in per_bank.items():
                granted = sum(1 for c in range(n_read) if rd_ready[c] and expect_resp[c] is not None
                              and granted_reads[c] == bank)
                assert granted == min(count, read_ports), (cycle, bank)
        conflicts = sum(ctx.get(dut.read_conflicts[b]) for b in range(banks))
        assert (conflicts > 0) == (stats["stalls"] > 0)

    simulate(dut, bench)
    assert stats["reads"] > 150 and stats["writes"] > 80 and stats["stalls"] > 0
    convert(dut)


@pytest.mark.parametrize("banks, read_ports, n_read, n_write, readers, writers", [
    (4, 2, 5, 3, None, None), (1, 1, 3, 2, None, None), (2, 1, 4, 4, None, None),
    (8, 2, 7, 5, None, None),
    pytest.param(4, 1, 5, 3, (1, 3, 4), (0, 2), id="some-clients-contend"),
])
def test_sustained_contention_starves_no_client(banks, read_ports, n_read, n_write, readers,
                                                writers):
    """Clients that keep their request valid (a new row of bank 0 after every grant) all
    fight for bank 0. The arbiters' priority pointer visits every client once per
    ``n_read`` (``n_write``) cycles, and the client it points at wins the first port, so a
    requesting client waits at most that many cycles for a grant: with every client
    contending that is the number of contenders, and each gets ``read_ports`` (one) of
    every ``n_read`` (``n_write``) grants: equal shares."""
    cfg = NPUConfig(ve_lanes=4, array_rows=4, array_cols=4, spad_rows=64, spad_banks=banks)
    dut = Scratchpad(cfg, n_read=n_read, n_write=n_write, read_ports=read_ports)
    readers = range(n_read) if readers is None else readers
    writers = range(n_write) if writers is None else writers
    rng = random.Random(n_read * 10 + n_write)
    cycles = 4 * n_read * n_write
    read_grants = {c: [] for c in readers}      # cycles in which each client was granted
    write_grants = {c: [] for c in writers}
    bank0_row = lambda: rng.randrange(cfg.spad_rows // banks) * banks

    async def bench(ctx):
        for c in readers:
            ctx.set(dut.rd[c].req.valid, 1)
            ctx.set(dut.rd[c].req.payload, bank0_row())
        for c in writers:
            ctx.set(dut.wr[c].req.valid, 1)
            ctx.set(dut.wr[c].req.payload.addr, bank0_row())
            ctx.set(dut.wr[c].req.payload.mask, 0xF)
        for cycle in range(cycles):
            signals = [p.req.ready for p in dut.rd] + [p.req.ready for p in dut.wr]
            _, _, *ready = await ctx.tick().sample(*signals)
            rd_ready, wr_ready = ready[:n_read], ready[n_read:]
            assert not any(rd_ready[c] for c in range(n_read) if c not in readers)
            assert not any(wr_ready[c] for c in range(n_write) if c not in writers)
            # Work-conserving: every port of the bank is used.
            assert sum(rd_ready) == min(len(readers), read_ports), (cycle, rd_ready)
            assert sum(wr_ready) == 1, (cycle, wr_ready)
            for c in readers:
                if rd_ready[c]:
                    read_grants[c].append(cycle)
                    ctx.set(dut.rd[c].req.payload, bank0_row())     # next row, still valid
            for c in writers:
                if wr_ready[c]:
                    write_grants[c].append(cycle)
                    ctx.set(dut.wr[c].req.payload.addr, bank0_row())
        assert ctx.get(dut.read_conflicts[0]) == (cycles if len(readers) > read_ports else 0)
        assert ctx.get(dut.write_conflicts[0]) == (cycles if len(writers) > 1 else 0)

    simulate(dut, bench)
    for kind, grants, bound, contending, ports in (
            ("read", read_grants, n_read, readers, read_ports),
            ("write", write_grants, n_write, writers, 1)):
        for c, granted in grants.items():
            # Granted within `bound` cycles of the start, of its last grant, and of the end.
            waits = [b - a for a, b in zip([-1] + granted, granted + [cycles])]
            assert max(waits) <= bound, f"{kind} client {c} waited {max(waits)} cycles " \
                                        f"(bound {bound}); granted in cycles {granted}"
        counts = [len(granted) for granted in grants.values()]
        if len(contending) == bound:          # everyone contends: equal shares
            assert counts == [cycles * ports // bound] * bound, f"{kind} grants {counts}"
        else:
            assert min(counts) >= cycles // bound, f"{kind} grants {counts}"


def test_background_clients_yield_but_are_never_starved():
    """Read clients 0 and 1 (foreground) and 2 (background, a borrowed engine's traffic)
    all keep asking for bank 0 of a one-port bank. Foreground clients win while the
    background one is young; once it has waited ``background_age`` cycles it competes as a
    foreground client, so its wait is bounded by the age plus one round of the pointer."""
    cfg = NPUConfig(ve_lanes=4, array_rows=4, array_cols=4, spad_rows=64, spad_banks=1)
    dut = Scratchpad(cfg, n_read=3, n_write=1, read_ports=1)
    age, cycles = Scratchpad.background_age, 400
    grants = {c: [] for c in range(3)}

    async def bench(ctx):
        ctx.set(dut.rd_background, 0b100)
        for c in range(3):
            ctx.set(dut.rd[c].req.valid, 1)
            ctx.set(dut.rd[c].req.payload, c)
        for cycle in range(cycles):
            _, _, *ready = await ctx.tick().sample(*(p.req.ready for p in dut.rd))
            assert sum(ready) == 1
            for c in range(3):
                if ready[c]:
                    grants[c].append(cycle)

    simulate(dut, bench)
    waits = [b - a for a, b in zip([-1] + grants[2], grants[2] + [cycles])]
    assert max(waits) <= age + 3, (max(waits), grants[2][:5])
    assert max(waits) > age                      # it did yield: younger, it never won
    # The foreground clients get the rest (the pointer moves every cycle, so not equally).
    assert min(len(grants[0]), len(grants[1])) >= cycles // 4
    assert len(grants[2]) <= cycles // age + 1

