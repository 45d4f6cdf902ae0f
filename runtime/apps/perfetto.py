"""Timelines of a serving run in the Chrome trace-event format (open in ui.perfetto.dev).

Process "pNPU engines": a track per engine (ME0.., VE0.., DMA0..), a slice per run of a
µTOp (hw.npu's activity port, recorded every cycle by the backend), named after the
tenant, with its operator and header address; its category says whether the engine is
the tenant's own ("own"), another tenant's (harvested: "harvested") or a shared DMA engine
("shared"); a run that was flushed (preempted: the µTOp ran again) says so in its args.
Process "operators": a track per tenant ("NAME operators"), a slice per operator of each
request (the operator in its args), from its first µTOp's start to its last one's end
(operators overlap).
Process "requests": a track per tenant (async slices named after it), a slice per request
from its arrival at the host to its end (overlapping slices are requests queued behind
each other), with its index, rung cycle and latency; a refused request is an instant.
Times are microseconds at the config's clock_mhz; every event also carries its cycles.
"""

import json

from .operators import flushed_runs, operator_spans

__all__ = ["chrome_trace", "write_chrome_trace"]

ENGINES, REQUESTS, OPERATORS = 1, 2, 3    # the trace's processes


def _engine_names(config):
    return ([f"ME{i}" for i in range(config.n_me)] + [f"VE{i}" for i in range(config.n_ve)]
            + [f"DMA{i}" for i in range(config.n_dma)])


def chrome_trace(config, run, requests, tenants, runs, *, title=""):
    """The trace as a dict. ``run``: a RunResult with a timeline; ``requests``: its
    RequestResults; ``tenants``: (name, vNPU, UtopTable) per context used by the requests;
    ``runs``: per request, its µTOp runs (serve's _runs_by_request)."""
    mhz = config.clock_mhz             # cycles / MHz = microseconds
    names = _engine_names(config)
    by_ctx = {vnpu.ctx: (name, vnpu) for name, vnpu, _ in tenants}
    tables = {vnpu.ctx: table for _, vnpu, table in tenants}
    # pids 1, 2, 3 (Perfetto treats pid 0 as the kernel's idle task); tid e + 1 for engine e.
    events = [{"ph": "M", "pid": ENGINES, "name": "process_name",
               "args": {"name": f"pNPU engines{f' ({title})' if title else ''}"}},
              {"ph": "M", "pid": REQUESTS, "name": "process_name", "args": {"name": "requests"}},
              {"ph": "M", "pid": OPERATORS, "name": "process_name", "args": {"name": "operators"}}]
    for e, name in enumerate(names):
        events += [{"ph": "M", "pid": ENGINES, "tid": e + 1, "name": "thread_name",
                    "args": {"name": name}},
                   {"ph": "M", "pid": ENGINES, "tid": e + 1, "name": "thread_sort_index",
                    "args": {"sort_index": e}}]
    # Every run of a µTOp, whether or not a request owns it (a stream cut short by its
    # budget still shows what ran); the flushed ones are known per request.
    flushed = {r for request_runs in runs for r in flushed_runs(request_runs)}
    for utop_run in run.utop_runs():
        events.append(_utop_event(config, utop_run, by_ctx, tables, utop_run in flushed))
    for index, (r, request_runs) in enumerate(zip(requests, runs)):
        table = tables.get(r.ctx)
        if table is None:
            continue
        for op, (first, end) in sorted(operator_spans(table, request_runs).items()):
            kind, op_name = table.operators[op]
            # Async slices of one name share a track: one track per tenant, the operator in
            # the args.
            tenant = by_ctx.get(r.ctx, (f"context {r.ctx}", None))[0]
            common = {"pid": OPERATORS, "tid": r.ctx + 1, "cat": "operator",
                      "id": f"{index}.{op}", "name": f"{tenant} operators"}
            events += [common | {"ph": "b", "ts": first / mhz,
                                 "args": {"operator": op_name, "kind": kind, "request": index,
                                          "first_cycle": first, "end_cycle": end}},
                       common | {"ph": "e", "ts": end / mhz}]
    for index, r in enumerate(requests):
        if r.arrival is None:
            continue
        name = by_ctx.get(r.ctx, (f"context {r.ctx}", None))[0]
        args = {"request": index, "arrival_cycle": r.arrival, "rung_cycle": r.rung,
                "end_cycle": r.end, "latency_cycles": r.latency if r.end is not None else None,
                "faulted": r.faulted, "refused": r.refused.name if r.refused else None,
                "preempted": len(flushed_runs(runs[index]))}
        if r.refused is not None:
            events.append({"ph": "i", "s": "p", "pid": REQUESTS, "tid": r.ctx + 1,
                           "name": f"{name} refused", "ts": r.arrival / mhz, "args": args})
            continue
        # Async slices of one name share a track in Perfetto: one track per tenant, with
        # overlapping slices for requests queued behind each other.
        end = r.end if r.end is not None else run.cycles
        common = {"pid": REQUESTS, "tid": r.ctx + 1, "cat": "request", "id": index,
                  "name": name}
        events += [common | {"ph": "b", "ts": r.arrival / mhz, "args": args},
                   common | {"ph": "e", "ts": end / mhz}]
    # "cycles" is what `neu10 serve` reports: to the last request's end. The host goes on
    # reading that request's output after it: "simulated_cycles".
    span = max((r.end for r in requests if r.end is not None), default=0)
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"clock_mhz": config.clock_mhz, "cycles": span,
                          "simulated_cycles": run.cycles, "title": title}}


def _utop_event(config, utop_run, by_ctx, tables, flushed):
    """A slice on an engine's track: one run of a µTOp."""
    engine, ctx, pc, start, end = utop_run
    mhz = config.clock_mhz
    name, vnpu = by_ctx.get(ctx, (f"context {ctx}", None))
    if engine >= config.n_me + config.n_ve:
        kind = "shared"
    elif vnpu is None:
        kind = "own"
    else:
        mask, index = ((vnpu.me_mask, engine) if engine < config.n_me
                       else (vnpu.ve_mask, engine - config.n_me))
        kind = "own" if mask >> index & 1 else "harvested"
    table = tables.get(ctx)
    operator = (table.operators[table.operator[pc]][1]
                if table is not None and pc in table.operator else None)
    return {"ph": "X", "pid": ENGINES, "tid": engine + 1, "name": name, "cat": kind,
            "ts": start / mhz, "dur": (end - start) / mhz,
            "args": {"context": ctx, "first_cycle": start, "end_cycle": end,
                     "engine": "shared DMA" if kind == "shared" else kind,
                     "operator": operator, "pc": pc, "flushed": flushed}}


def write_chrome_trace(path, config, run, requests, tenants, runs, *, title=""):
    with open(path, "w") as file:
        json.dump(chrome_trace(config, run, requests, tenants, runs, title=title), file)
