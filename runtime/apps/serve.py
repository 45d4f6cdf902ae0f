"""`neu10 serve`: request streams of several tenants on one pNPU, one experiment point.

Each tenant is a model on its own vNPU (spatially mapped: engines no other tenant owns).
Its requests arrive over time (open loop: seeded Poisson arrivals at a *load*, the
fraction of the tenant's isolated saturation throughput), queue in its context's
DOORBELL, and run one after another; the hardware stamps when each arrived and ended.

Inputs and outputs: the tenant's HBM segment holds ``queue_depth`` + 2 *slots*, each a
whole copy of the model's HBM image (weights, input, output), and a request's doorbell
offset selects its slot. Requests go round the slots, and the slots alternate between two
different input batches, so a stale output or a missed restart shows. The host places
every slot before the stream and reads each request's output as soon as it sees it
completed (runtime.host.driver.Driver.serve), and every output is compared bit for bit
with the compiler's integer reference for that input. A request waits in the host's queue
while its context holds ``queue_depth`` + 1 requests (so none is refused as QUEUE_FULL).
Its latency is the hardware's end stamp minus the cycle it arrived at the host: waiting in
the host's queue and the NPU's, and running. It does not include placing inputs (they are
in HBM beforehand); the host's reads of outputs share HBM with the engines, as a real
host's would.

Isolated figures (for the load, SLOs, STP and ANTT) come from the same tenant alone on
the same vNPU under the static policy: its latency is that of a request that finds the
NPU idle, its service time the spacing of back-to-back requests.
"""

import bisect
import functools
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from runtime.compiler.builder import CompileError
from runtime.compiler.models import ModelError, compile_model, is_file, parse_builtin
from runtime.compiler.onnx_import import OnnxError
from runtime.host.allocator import AllocationError, allocate, estimate
from runtime.host.device import Device, MappingError
from runtime.host.driver import POLICIES, DriverError
from runtime.host.loadgen import LoadError, closed_loop, open_loop, read_trace
from .operators import (HBM_WORD_BYTES, UtopTable, flushed_runs, operator_profiles,
                        program_fetch_bytes, utop_table)
from .perfetto import write_chrome_trace

__all__ = ["ServeError", "check_load", "TenantSpec", "PointReport", "TenantReport",
           "RequestRecord", "parse_tenant", "serve",
           "format_points", "engine_cycles", "request_counts", "SLO_FACTORS"]

#: SLO attainment is reported at these multiples of the tenant's isolated latency.
SLO_FACTORS = (2, 5, 10)
#: Open loop's load when none is given, and the largest accepted (twice saturation: the
#: queues only grow beyond it).
DEFAULT_LOAD, MAX_LOAD = 0.6, 2.0
#: Different input batches each tenant's requests go round.
INPUTS = 2


class ServeError(ValueError):
    """Bad serving input (tenant, load, sizes); the message names the value."""


@dataclass(frozen=True)
class TenantSpec:
    """A tenant as given: a model and, optionally, its vNPU's engines and priority."""
    model: str
    n_me: int | None = None
    n_ve: int | None = None
    priority: int = 0


def parse_tenant(text):
    """'MODEL' or 'MODEL:ME,VE' -> TenantSpec; MODEL is a built-in (with optional sizes,
    'bert[tokens=64]'), an .onnx or a .neu10 file. ServeError names what is wrong."""
    model, colon, size = text.rpartition(":")
    if not colon or "/" in size or "]" in size:      # a colon inside a path or sizes
        model, colon, size = text, "", ""
    try:
        if is_file(model):
            if not Path(model).is_file():
                raise ServeError(f"tenant {text!r}: no file {model}")
        else:
            parse_builtin(model)
    except ModelError as error:
        raise ServeError(f"tenant {text!r}: {error}") from None
    if not colon:
        return TenantSpec(model)
    try:
        n_me, n_ve = (int(part) for part in size.split(","))
    except ValueError:
        raise ServeError(f"tenant {text!r}: expected MODEL:ME,VE (e.g. {model}:2,2)") from None
    if n_me < 0 or n_ve < 0 or n_me + n_ve == 0:
        raise ServeError(f"tenant {text!r}: a vNPU needs at least one matrix or vector engine "
                         f"and no negative count")
    return TenantSpec(model, n_me, n_ve)


@dataclass
class _Tenant:
    """A compiled tenant: its program, per input its HBM image and expected output."""
    name: str
    spec: TenantSpec
    words: list
    images: list                   # per input: [(address, words)] relative to a slot
    expected: list                 # per input: the output words, flat
    output: tuple                  # (address, count) of the output in a slot
    spad_rows: int
    slot_words: int
    n_me: int
    n_ve: int
    table: UtopTable               # its µTOps and operators, by header address


def _compile(config, specs, seed):
    """The tenants compiled for the whole scratchpad, or, when their scratchpads do not fit
    side by side that way (full-size models use all of it), each for an equal share."""
    tenants = _compile_for(config, specs, seed, None)
    if sum(t.spad_rows for t in tenants) > config.spad_rows:
        tenants = _compile_for(config, specs, seed, config.spad_rows // len(specs))
    return tenants


def _compile_for(config, specs, seed, spad_rows):
    tenants = []
    for index, spec in enumerate(specs):
        try:
            name, words, images, expected, output, rows, slot_words, table = \
                _compiled(spec.model, config, seed, spad_rows)
        except (CompileError, ModelError, OnnxError) as error:
            raise ServeError(f"tenant {index} ({spec.model}): {error}") from None
        tenants.append(_Tenant(f"{name}#{index}", spec, list(words), images, expected, output,
                               rows, slot_words, spec.n_me, spec.n_ve, table))
    return tenants


@functools.lru_cache(maxsize=16)
def _compiled(model, config, seed, spad_rows):
    """A model compiled for INPUTS input batches (for ``spad_rows`` of scratchpad, None: all
    of it): (name, program words, per input the HBM image and the expected output words,
    the output region, scratchpad rows, HBM words, its UtopTable).
    Cached: an experiment's points serve the same tenants again and again."""
    models = [compile_model(model, config, seed=seed, batch=b, spad_rows=spad_rows)
              for b in range(INPUTS)]
    words = models[0].program.words
    if any(m.program.words != words for m in models[1:]):
        raise ServeError(f"{model}: the program depends on its input; it cannot serve "
                         f"different inputs")
    graph = models[0].graph
    region, _ = graph.outputs[models[0].name]
    images = []
    for m in models:
        g = m.graph
        images.append(list(g.builder.hbm_image.items())
                      + [(r.start, v.reshape(-1)) for r, v in g.inputs.values()])
    builder = graph.builder
    return (models[0].name, tuple(words), images,
            [m.graph.output_words(m.expected) for m in models], (region.start, region.size),
            max(1, builder.spad_peak), max(1, builder.hbm_top),
            utop_table(config, words, graph.ops, graph.op_ends))


def _size(config, tenants):
    """Engines for tenants given without a size: the allocator's choice (lowest latency
    bound) within an equal share of each engine type; all must fit side by side."""
    share = config.replace(n_me=max(1, config.n_me // len(tenants)),
                           n_ve=max(1, config.n_ve // len(tenants)))
    for tenant in tenants:
        if tenant.n_me is None:
            try:
                choice = allocate(estimate(tenant.words, config), share,
                                  budget=share.n_me + share.n_ve)
            except AllocationError as error:
                raise ServeError(f"{tenant.name}: {error}") from None
            tenant.n_me, tenant.n_ve = choice.n_me, choice.n_ve
    for kind, total in (("me", config.n_me), ("ve", config.n_ve)):
        wanted = sum(getattr(t, f"n_{kind}") for t in tenants)
        if wanted > total:
            sizes = " ".join(f"{t.spec.model}:{t.n_me},{t.n_ve}" for t in tenants)
            raise ServeError(f"the vNPUs ({sizes}) need {wanted} {kind.upper()}s side by side; "
                             f"this NPU has {total}")


def _stream(config, tenants, arrivals, policy, backend, *, after=None, time_slice=None,
            max_cycles, progress=None):
    """Run ``arrivals`` ((cycle, tenant index); with ``after``, closed-loop requests arrive
    when an earlier one completes) on vNPUs of ``tenants``; returns (RunResult with its
    timeline, RequestResults, per request whether its output is bit-exact, the vNPUs)."""
    slots = config.queue_depth + 2
    options = {"progress": progress} if progress else {}
    if backend == "perf":
        options["replay"] = True         # compiled models: each input computed once
    device = Device(config, backend, policy, time_slice=time_slice, **options)
    try:
        vnpus = [device.create(t.n_me, t.n_ve, t.spad_rows, slots * t.slot_words,
                               priority=t.spec.priority, name=t.name) for t in tenants]
    except MappingError as error:
        raise ServeError(str(error)) from None
    driver = device.driver({t.name: t.words for t in tenants},
                           windows={t.name: t.slot_words for t in tenants})
    for tenant, vnpu in zip(tenants, vnpus):
        for slot in range(slots):
            base = vnpu.hbm.base + slot * tenant.slot_words
            for address, values in tenant.images[slot % INPUTS]:
                driver.load_hbm(base + address, values)
    count = [0] * len(tenants)
    offsets, outputs, slot_of = [], [], []
    for _, t in arrivals:
        slot = count[t] % slots
        count[t] += 1
        tenant, vnpu = tenants[t], vnpus[t]
        offsets.append(slot * tenant.slot_words)
        start, size = tenant.output
        outputs.append((vnpu.hbm.base + slot * tenant.slot_words + start, size))
        slot_of.append(slot)
    run, requests = driver.serve([(cycle, vnpus[t].ctx) for cycle, t in arrivals],
                                 offsets=offsets, outputs=outputs, after=after,
                                 max_cycles=max_cycles, timeline=True)
    exact = [r.output is not None and np.array_equal(r.output, tenants[t].expected[slot % INPUTS])
             for r, (_, t), slot in zip(requests, arrivals, slot_of)]
    return run, requests, exact, vnpus


@dataclass
class Isolated:
    latency: int                   # cycles of a request that finds the NPU idle
    service: float                 # cycles between back-to-back requests


def _isolated(config, tenant, backend, max_cycles):
    """The tenant alone on its vNPU (cached: it depends on nothing else)."""
    key = (config, tuple(tenant.words), tenant.n_me, tenant.n_ve, tenant.spec.priority,
           tenant.output, tenant.slot_words, backend, max_cycles,
           hashlib.blake2b(b"".join(np.asarray(e).tobytes() for e in tenant.expected)).digest())
    if key not in _ISOLATED:
        run, requests, exact, _ = _stream(config, [tenant], [(0, 0)] * 3, "static", backend,
                                          max_cycles=max_cycles)
        if run.timed_out or not all(exact) or any(r.faulted or r.end is None for r in requests):
            raise ServeError(f"{tenant.name} alone on its vNPU did not serve 3 requests cleanly")
        _ISOLATED[key] = Isolated(requests[0].latency, (requests[2].end - requests[0].end) / 2)
    return _ISOLATED[key]


_ISOLATED = {}


def _percentile(values, q):
    return float(np.percentile(values, q)) if values else None


@dataclass
class TenantReport:
    name: str
    model: str
    n_me: int
    n_ve: int
    requests: int
    completed: int
    refused: int
    faulted: int
    wrong: int                     # completed with an output that is not bit-exact
    throughput: float              # completed requests per million cycles, up to its last end
    latency_mean: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    latency_p99_us: float | None
    isolated_latency: int
    isolated_service: float
    slo: dict                      # factor -> fraction of requests within factor x isolated
    utilization_own: dict          # "me"/"ve" -> busy cycles on its own engines / (own x span)
    harvested_engine_cycles: int   # its µTOps' cycles on MEs/VEs other tenants own
    ntt: float | None              # mean latency / isolated latency
    # Measured on the activity port (runtime.apps.operators):
    preemptions: int = 0           # runs of its µTOps flushed (harvest took the engine back)
    flushed_engine_cycles: int = 0  # engine-cycles of those runs: work done twice
    hbm_bytes: int = 0             # its DMA µTOps' copies and its program fetches
    hbm_share: float = 0.0         # hbm_bytes / what HBM moves in the span (a line a cycle)
    operators: list = field(default_factory=list)   # OperatorProfile dicts, all requests


@dataclass
class PointReport:
    policy: str
    load: float | None             # open loop: the arrival rate / isolated throughput
    closed: int | None             # closed loop: requests of each tenant outstanding
    seed: int
    backend: str
    cycles: int                    # the stream's span: first arrival to last end
    timed_out: bool
    utilization: dict              # pNPU: "me"/"ve"/"dma" busy / (engines x span)
    stp: float                     # sum over tenants of throughput / isolated throughput
    antt: float | None
    exact: bool                    # every completed request's output bit-exact
    tenants: list = field(default_factory=list)
    #: What went wrong, one line each (faulted requests, wrong outputs, a timeout): a point
    #: with problems is reported, never averaged in as if it were fine.
    problems: list = field(default_factory=list)
    trace: str | None = None       # the timeline file written (serve's trace_out)
    replay: str | None = None      # the arrivals' CSV file, when replayed
    #: Every request in arrival order (RequestRecord as a dict): for CDFs and SLO curves.
    requests: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)


@dataclass
class RequestRecord:
    """One request of a point: cycles count from the stream's start (the hardware's
    stamps); ``status``: ok, faulted, refused, wrong (output not bit-exact) or unfinished."""
    tenant: str
    request: int                   # the tenant's request number, from 0
    arrival: int | None            # at the host (None: it never arrived, its leader failed)
    rung: int | None               # its doorbell written
    start: int | None              # its first µTOp began to run (the activity port)
    end: int | None
    latency: int | None            # end - arrival
    status: str
    preempted: int = 0             # runs of its µTOps flushed while it ran


def _records(tenants, arrivals, requests, exact, runs):
    records, count = [], [0] * len(tenants)
    for r, ok, (_, t), mine in zip(requests, exact, arrivals, runs):
        status = ("refused" if r.refused is not None else "faulted" if r.faulted
                  else "unfinished" if r.end is None else "ok" if ok else "wrong")
        start = min((first for *_, first, _ in mine), default=None)
        records.append(asdict(RequestRecord(tenants[t].name, count[t], r.arrival, r.rung,
                                            start, r.end, r.latency, status,
                                            len(flushed_runs(mine)))))
        count[t] += 1
    return records


def _runs_by_request(run, requests):
    """Per request, the runs (engine, ctx, pc, first, end) of its µTOps: a context runs its
    requests one after another, so those between the end of its previous request and the
    end of this one; what ran after a context's last end belongs to its first request that
    arrived, was not refused and did not end."""
    by_ctx = {}
    for utop_run in run.utop_runs():
        by_ctx.setdefault(utop_run[1], []).append(utop_run)
    result = [[] for _ in requests]
    for ctx, runs in by_ctx.items():
        mine = sorted((r.end, i) for i, r in enumerate(requests)
                      if r.ctx == ctx and r.end is not None)
        ends = [end for end, _ in mine]
        open_ = [i for i, r in enumerate(requests) if r.ctx == ctx and r.end is None
                 and r.arrival is not None and r.refused is None]
        for utop_run in runs:
            k = bisect.bisect_right(ends, utop_run[3])     # the first end after its start
            owner = mine[k][1] if k < len(mine) else open_[0] if open_ else None
            if owner is not None:
                result[owner].append(utop_run)
    return result


def engine_cycles(config, run, vnpu):
    """Cycles the engines ran the vNPU's µTOps: per type ("me", "ve") on the engines it
    owns, how many it owns, and in all on engines it does not own (harvested)."""
    own, owned, harvested = {}, {}, 0
    for kind, first, count, mask in (("me", 0, config.n_me, vnpu.me_mask),
                                     ("ve", config.n_me, config.n_ve, vnpu.ve_mask)):
        cycles = [run.engines[first + e][f"BUSY_CTX{vnpu.ctx}"] for e in range(count)]
        own[kind] = sum(c for e, c in enumerate(cycles) if mask >> e & 1)
        owned[kind] = mask.bit_count()
        harvested += sum(c for e, c in enumerate(cycles) if not mask >> e & 1)
    return own, owned, harvested


def _report(config, tenants, isolated, arrivals, run, requests, exact, vnpus, runs, *,
            policy, load, closed, seed, backend):
    """The PointReport of a stream; ``runs``: per request, its µTOp runs (_runs_by_request)."""
    ends = [r.end for r in requests if r.end is not None]
    span = max(ends, default=0)
    line_bytes = config.hbm_words_per_cycle * HBM_WORD_BYTES
    n = config.n_me + config.n_ve
    busy = {"me": run.engines[:config.n_me], "ve": run.engines[config.n_me:n],
            "dma": run.engines[n:]}
    utilization = {kind: sum(e["BUSY"] for e in engines) / (len(engines) * span) if span else 0.0
                   for kind, engines in busy.items()}
    reports = []
    for t, (tenant, alone, vnpu) in enumerate(zip(tenants, isolated, vnpus)):
        mine = [(r, ok) for r, ok, (_, who) in zip(requests, exact, arrivals) if who == t]
        done = [(r, ok) for r, ok in mine if r.end is not None and not r.faulted]
        latencies = [r.latency for r, _ in done]
        cycles, owned, harvested = engine_cycles(config, run, vnpu)
        own = {kind: cycles[kind] / (owned[kind] * span) if owned[kind] and span else 0.0
               for kind in cycles}
        mean = float(np.mean(latencies)) if latencies else None
        # Its own span (a closed loop's tenants finish at different times).
        own_span = max((r.end for r, _ in done), default=0)
        ran = [mine_runs for mine_runs, (_, who) in zip(runs, arrivals) if who == t and mine_runs]
        flushed = [f for request_runs in ran for f in flushed_runs(request_runs)]
        operators = operator_profiles(tenant.table, ran)
        hbm_bytes = (sum(o.hbm_bytes for o in operators)
                     + len(ran) * program_fetch_bytes(config, tenant.words))
        reports.append(TenantReport(
            tenant.name, tenant.spec.model, vnpu.n_me, vnpu.n_ve, len(mine), len(done),
            sum(r.refused is not None for r, _ in mine), sum(r.faulted for r, _ in mine),
            sum(not ok for _, ok in done), len(done) / own_span * 1e6 if own_span else 0.0, mean,
            _percentile(latencies, 50), _percentile(latencies, 95), _percentile(latencies, 99),
            None if not latencies else _percentile(latencies, 99) / config.clock_mhz,
            alone.latency, alone.service,
            {f: sum(lat <= f * alone.latency for lat in latencies) / len(mine) for f in SLO_FACTORS},
            own, harvested, None if mean is None else mean / alone.latency,
            len(flushed), sum(end - first for *_, first, end in flushed), hbm_bytes,
            hbm_bytes / (span * line_bytes) if span else 0.0,
            [o.to_dict() for o in operators]))
    stp = sum(r.throughput / (1e6 / alone.service) for r, alone in zip(reports, isolated))
    ntts = [r.ntt for r in reports if r.ntt is not None]
    problems = [f"still running after {run.cycles} cycles"] if run.timed_out else []
    for index, (r, ok, (_, t)) in enumerate(zip(requests, exact, arrivals)):
        what = ("faulted" if r.faulted else "did not end" if r.end is None and not r.refused
                else "output differs from the reference" if not r.refused and not ok else None)
        if what:
            problems.append(f"request {index} of {tenants[t].name} (arrived at cycle "
                            f"{r.arrival}): {what}")
    return PointReport(policy, load, closed, seed, backend, span, run.timed_out, utilization, stp,
                       float(np.mean(ntts)) if ntts else None,
                       all(ok for r, ok in zip(requests, exact) if r.end is not None
                           and not r.faulted), reports, problems,
                       requests=_records(tenants, arrivals, requests, exact, runs))


def request_counts(requests, services):
    """Requests per tenant so that every tenant's stream lasts about as long: ``requests``
    for the slowest (longest service time), proportionally more for faster ones. With equal
    counts a fast tenant would finish early and the slow one run the rest alone, which is
    not co-location."""
    slowest = max(services)
    return [max(1, round(requests * slowest / service)) for service in services]


def check_load(load):
    """ServeError unless ``load`` is an open loop's load: 0 < load <= MAX_LOAD."""
    if not isinstance(load, (int, float)) or isinstance(load, bool) or not 0 < load <= MAX_LOAD:
        hint = (f" (a percentage? {load:g}% is {load / 100:g})" if isinstance(load, (int, float))
                and 0 < load / 100 <= MAX_LOAD else "")
        raise ServeError(f"load {load!r}: expected a fraction of each tenant's isolated "
                         f"saturation throughput, above 0 and at most {MAX_LOAD:g} (1 is "
                         f"saturation){hint}")


def serve(config, specs, *, policies=("harvest",), load=None, closed=None, requests=100,
          seed=1, backend="verilator", time_slice=None, max_cycles=None, progress=None,
          trace_out=None, replay=None, log=None):
    """One experiment point per policy: ``specs`` (TenantSpec) served open loop at ``load``
    (or, with ``closed``, closed loop with that many requests of each tenant outstanding):
    ``requests`` of the slowest tenant (load None: DEFAULT_LOAD), and of each other as many as fit in the same time
    (request_counts); or, with ``replay``, the arrivals of a ``cycle,tenant`` CSV file
    (loadgen.read_trace; tenants numbered as ``specs``). Returns a PointReport per policy. ``trace_out``: a path to write
    each policy's timeline to (runtime.apps.perfetto; with several policies the policy's
    name goes before the suffix: trace.harvest.json). ``log(text)`` hears how far it got."""
    if not specs:
        raise ServeError("no tenants: give at least one MODEL[:ME,VE]")
    if len(specs) > config.n_ctx:
        raise ServeError(f"{len(specs)} tenants; this NPU has {config.n_ctx} contexts")
    if closed is not None and replay is not None:
        raise ServeError("a closed loop or a replayed trace: give one")
    if closed is not None and (isinstance(closed, bool) or not isinstance(closed, int)
                               or closed < 1):
        raise ServeError(f"closed loop of {closed!r}: outstanding requests must be a positive "
                         f"integer per tenant")
    replayed = None
    if replay is not None:
        try:
            replayed = [(a.cycle, a.tenant) for a in read_trace(replay, len(specs))]
        except LoadError as error:
            raise ServeError(str(error)) from None
    if closed is not None or replay is not None:
        if load is not None:
            what = "closed loop" if closed is not None else "replayed trace"
            raise ServeError(f"load {load!r} and a {what}: give one (the {what} sets when "
                             f"requests arrive)")
    elif load is None:
        load = DEFAULT_LOAD
    else:
        check_load(load)
    if not isinstance(requests, int) or requests < 1:
        raise ServeError(f"requests must be a positive integer per tenant, not {requests!r}")
    for policy in policies:
        if policy not in POLICIES:
            raise ServeError(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if trace_out is not None:
        folder = Path(trace_out).resolve().parent
        if Path(trace_out).is_dir():
            raise ServeError(f"--trace-out {trace_out}: is a folder; expected a file name")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ServeError(f"--trace-out {trace_out}: cannot write there ({folder} is not a "
                             f"writable folder)")
    log = log or (lambda text: None)
    started = time.perf_counter()
    tenants = _compile(config, specs, seed)
    _size(config, tenants)
    alone_cycles = max_cycles or 50 * max(t.slot_words for t in tenants) + 1_000_000
    try:
        log(f"serve: {len(tenants)} tenants compiled; each alone on its vNPU first (the "
            f"isolated figures), on {backend}")
        isolated = [_isolated(config, t, backend, alone_cycles) for t in tenants]
        counts = request_counts(requests, [alone.service for alone in isolated])
        work = sum(n * alone.service for n, alone in zip(counts, isolated))
        if replayed is not None:
            arrivals, after = replayed, None
            work = sum(isolated[t].service for _, t in arrivals)
            budget = int(2 * arrivals[-1][0] + 4 * work) + 100_000
        elif closed is None:
            rates = [load / alone.service for alone in isolated]
            arrivals = sorted((a.cycle, a.tenant) for a in open_loop(rates, counts, seed=seed))
            after = None
            budget = int(2 * arrivals[-1][0] + 4 * work) + 100_000
        else:
            arrivals, after = closed_loop(len(tenants), closed, counts)
            arrivals = [(a.cycle, a.tenant) for a in arrivals]
            budget = int(4 * work) + 100_000
        points = []
        for number, policy in enumerate(policies):
            log(f"serve: {policy} ({number + 1} of {len(policies)}), {len(arrivals)} requests, "
                f"{time.perf_counter() - started:.0f} s so far")
            run, results, exact, vnpus = _stream(config, tenants, arrivals, policy, backend,
                                                 after=after, time_slice=time_slice,
                                                 max_cycles=max_cycles or budget,
                                                 progress=progress)
            runs = _runs_by_request(run, results)
            points.append(_report(config, tenants, isolated, arrivals, run, results, exact,
                                  vnpus, runs, policy=policy, load=load, closed=closed,
                                  seed=seed, backend=backend))
            points[-1].replay = None if replay is None else str(replay)
            if trace_out:
                path = Path(trace_out)
                if len(policies) > 1:
                    path = path.with_name(f"{path.stem}.{policy}{path.suffix}")
                how = _how(load, closed, replay)
                try:
                    write_chrome_trace(path, config, run, results,
                                       [(t.name, v, t.table) for t, v in zip(tenants, vnpus)],
                                       runs,
                                       title=f"{policy}, {how}, seed {seed}")
                except OSError as error:
                    raise ServeError(f"{path}: cannot write the trace ({error.strerror})") \
                        from None
                points[-1].trace = str(path)
    except (DriverError, LoadError) as error:
        raise ServeError(str(error)) from None
    return points


def _how(load, closed, replay):
    return (f"replay of {replay}" if replay is not None else f"load {load:g}"
            if closed is None else f"closed loop of {closed}")


def format_points(points):
    """A table per point: one row per tenant, then the NPU's figures."""
    lines = []
    for p in points:
        how = _how(p.load, p.closed, p.replay)
        lines.append(f"policy {p.policy} at {how} (seed {p.seed}, {p.backend}): "
                     f"{p.cycles} cycles{' TIMED OUT' if p.timed_out else ''}; utilization ME "
                     f"{p.utilization['me']:.0%} VE {p.utilization['ve']:.0%} DMA "
                     f"{p.utilization['dma']:.0%}; STP {p.stp:.2f}"
                     + (f", ANTT {p.antt:.2f}" if p.antt is not None else "")
                     + ("; every output bit-exact" if p.exact else "; OUTPUTS WRONG"))
        lines.append(f"  {'tenant':<10} {'vNPU':>5} {'done':>9} {'req/Mcyc':>9} {'mean':>8} "
                     f"{'p50':>8} {'p95':>8} {'p99':>8} {'alone':>7} "
                     + " ".join(f"{f'SLO{f}x':>6}" for f in SLO_FACTORS)
                     + f" {'own ME/VE':>10} {'harvested':>9} {'preempt':>7} {'flushed':>8} "
                     f"{'HBM':>6}")
        for t in p.tenants:
            def cycles(value):
                return f"{value:>8.0f}" if value is not None else f"{'-':>8}"
            lines.append(
                f"  {t.name:<10} {f'{t.n_me},{t.n_ve}':>5} {f'{t.completed}/{t.requests}':>9} "
                f"{t.throughput:>9.1f} {cycles(t.latency_mean)} {cycles(t.latency_p50)} "
                f"{cycles(t.latency_p95)} {cycles(t.latency_p99)} {t.isolated_latency:>7} "
                + " ".join(f"{t.slo[f]:>6.0%}" for f in SLO_FACTORS)
                + f" {t.utilization_own['me']:>4.0%}/{t.utilization_own['ve']:<4.0%} "
                f"{t.harvested_engine_cycles:>9} {t.preemptions:>7} {t.flushed_engine_cycles:>8} "
                f"{t.hbm_share:>6.1%}"
                + (f"  ({t.refused} refused)" if t.refused else ""))
        lines += [f"  PROBLEM: {problem}" for problem in p.problems[:10]]
        if len(p.problems) > 10:
            lines.append(f"  ... and {len(p.problems) - 10} more problems")
    return "\n".join(lines)
