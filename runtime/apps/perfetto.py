"""Timelines of a serving run in the Chrome trace-event format (open in ui.perfetto.dev).

Process "pNPU engines": a track per engine (ME0.., VE0.., DMA0..), a slice per stretch it
ran one tenant's µTOps (hw.npu's activity port, recorded every cycle by the backend),
named after the tenant; its category says whether the engine is the tenant's own
("own"), another tenant's (harvested: "harvested") or a shared DMA engine ("shared").
Process "requests": a track per tenant (async slices named after it), a slice per request
from its arrival at the host to its end (overlapping slices are requests queued behind
each other), with its index, rung cycle and latency; a refused request is an instant.
Times are microseconds at the config's clock_mhz; every event also carries its cycles.
"""

import json

__all__ = ["chrome_trace", "write_chrome_trace"]

ENGINES, REQUESTS = 1, 2          # the trace's processes


def _engine_names(config):
    return ([f"ME{i}" for i in range(config.n_me)] + [f"VE{i}" for i in range(config.n_ve)]
            + [f"DMA{i}" for i in range(config.n_dma)])


def chrome_trace(config, run, requests, tenants, *, title=""):
    """The trace as a dict. ``run``: a RunResult with a timeline; ``requests``: its
    RequestResults; ``tenants``: (name, vNPU) per context index used by the requests."""
    mhz = config.clock_mhz             # cycles / MHz = microseconds
    names = _engine_names(config)
    by_ctx = {vnpu.ctx: (name, vnpu) for name, vnpu in tenants}
    # pids 1 and 2 (Perfetto treats pid 0 as the kernel's idle task); tid e + 1 for engine e.
    events = [{"ph": "M", "pid": ENGINES, "name": "process_name",
               "args": {"name": f"pNPU engines{f' ({title})' if title else ''}"}},
              {"ph": "M", "pid": REQUESTS, "name": "process_name", "args": {"name": "requests"}}]
    for e, name in enumerate(names):
        events += [{"ph": "M", "pid": ENGINES, "tid": e + 1, "name": "thread_name",
                    "args": {"name": name}},
                   {"ph": "M", "pid": ENGINES, "tid": e + 1, "name": "thread_sort_index",
                    "args": {"sort_index": e}}]
    for engine, ctx, start, end in run.busy_intervals():
        name, vnpu = by_ctx.get(ctx, (f"context {ctx}", None))
        if engine >= config.n_me + config.n_ve:
            kind = "shared"
        elif vnpu is None:
            kind = "own"
        else:
            mask, index = ((vnpu.me_mask, engine) if engine < config.n_me
                           else (vnpu.ve_mask, engine - config.n_me))
            kind = "own" if mask >> index & 1 else "harvested"
        events.append({"ph": "X", "pid": ENGINES, "tid": engine + 1, "name": name, "cat": kind,
                       "ts": start / mhz, "dur": (end - start) / mhz,
                       "args": {"context": ctx, "first_cycle": start, "end_cycle": end,
                                "engine": "shared DMA" if kind == "shared" else kind}})
    for index, r in enumerate(requests):
        if r.arrival is None:
            continue
        name = by_ctx.get(r.ctx, (f"context {r.ctx}", None))[0]
        args = {"request": index, "arrival_cycle": r.arrival, "rung_cycle": r.rung,
                "end_cycle": r.end, "latency_cycles": r.latency if r.end is not None else None,
                "faulted": r.faulted, "refused": r.refused.name if r.refused else None}
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
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"clock_mhz": config.clock_mhz, "cycles": run.cycles,
                          "title": title}}


def write_chrome_trace(path, config, run, requests, tenants, *, title=""):
    with open(path, "w") as file:
        json.dump(chrome_trace(config, run, requests, tenants, title=title), file)
