"""`neu10 experiment`: a matrix of serving points, run in parallel, resumable, reported.

A *matrix* is mixes of tenants (e.g. ncf + dlrm) x policies x loads (open loop) and
closed-loop depths x seeds, with one request count, NPU config, backend and time slice.
Each *point* of it (one mix, policy, load or depth, seed) is one `serve` run
(runtime.apps.serve) and is independent of the others, so points run on a local process
pool (``jobs``) or on a Ray cluster (``ray``). Results go to ``reports/NAME/``:
``results.json`` and ``results.csv`` (one row per point and tenant, rewritten after each
point, so an interrupted run keeps what it finished), ``summary.md`` and PNG plots
(runtime.apps.experiment_report). Running the same matrix again skips the points already
in the results (a point that raised an error is tried again).

Presets: ``quick`` (the README's experiment on Verilator, minutes on two cores) and
``paper`` (every pair of the four full-size models, same-model pairs included, on the
``tpu-shared`` NPU and the timing model: a load and a closed loop, one seed, 10 requests
of the slowest tenant; about an hour on two cores, and larger on ``--ray``). A TOML file
gives a matrix of one's own (``load_matrix``).
"""

import csv
import hashlib
import json
import os
import sys
import time
import tomllib
import traceback
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from itertools import combinations_with_replacement
from pathlib import Path

from isa.config import ConfigError, NPUConfig
from runtime.host.driver import POLICIES, TIMED_BACKENDS
from runtime.backends.verilog import source_digest
from runtime.compiler.models import is_file
from .serve import SLO_FACTORS, ServeError, check_load, parse_tenant, serve

__all__ = ["ExperimentError", "Matrix", "Point", "PRESETS", "ROW_FIELDS", "load_matrix",
           "run_point", "run_experiment", "read_results"]


class ExperimentError(ValueError):
    """Bad experiment input (matrix, folder, Ray address); the message names the value."""


@dataclass(frozen=True)
class Point:
    """One serving run of a matrix: a mix of tenants under one policy, open loop at
    ``load`` or closed loop with ``closed`` requests of each tenant outstanding."""
    mix: tuple                     # tenant specs as text, e.g. ("ncf", "dlrm:2,2")
    policy: str
    load: float | None
    closed: int | None
    seed: int

    @property
    def label(self):
        how = f"load {self.load:g}" if self.closed is None else f"closed {self.closed}"
        return f"{'+'.join(self.mix)} {self.policy} {how} seed {self.seed}"


@dataclass(frozen=True)
class Matrix:
    name: str
    mixes: tuple                   # of tuples of tenant specs as text
    policies: tuple = POLICIES
    loads: tuple = (0.3, 0.6, 0.9)
    closed: tuple = (2,)           # closed-loop depths; () for none
    seeds: tuple = (1, 2)
    requests: int = 300            # of each mix's slowest tenant (serve.request_counts)
    config: str = "default"        # preset name or config file
    backend: str = "verilator"
    time_slice: int | None = None  # temporal policy; None: the hardware's reset value

    def points(self):
        """Every point, mix by mix and load by load (so a partial run has whole mixes).
        A closed loop runs with the first seed only: it has no random arrivals, and the
        NPU's timing does not depend on data (the seed's weights and inputs), so other
        seeds would repeat it cycle for cycle."""
        hows = [(load, None, self.seeds) for load in self.loads] + \
            [(None, depth, self.seeds[:1]) for depth in self.closed]
        return [Point(mix, policy, load, depth, seed) for mix in self.mixes
                for load, depth, seeds in hows for seed in seeds for policy in self.policies]

    @cached_property
    def config_digest(self):
        """The config's values, hashed: a config file edited between runs is another one."""
        values = json.dumps(asdict(NPUConfig.load(self.config)), sort_keys=True)
        return hashlib.sha256(values.encode()).hexdigest()[:12]

    def key(self, point):
        """What identifies a point's rows in a results file, this matrix's settings and the
        code that runs it included (so a run with other settings, or after a change of the
        RTL, compiler or host, never takes them for its own)."""
        return ("+".join(point.mix), point.policy, point.load, point.closed, point.seed,
                self.requests, self.config, self.config_digest, self.backend, self.time_slice,
                code_digest(point.mix))


#: What a point's results depend on: the RTL, the ISA, the compiler, the backends, the host
#: and the serving loop (not the reports drawn from them).
CODE = ("hw", "isa", "runtime/compiler", "runtime/backends", "runtime/host",
        "runtime/apps/serve.py", "runtime/apps/inference.py", "runtime/apps/experiment.py")
_ROOT = Path(__file__).resolve().parents[2]
_CODE_DIGEST = None


def code_digest(mix=()):
    """A digest of the sources in CODE (their paths and contents), and of the model files
    (.onnx, .neu10) among the tenants of ``mix``: an edited model is another one."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        files = []
        for part in CODE:
            path = _ROOT / part
            files += [path] if path.is_file() else sorted(
                f for f in path.rglob("*") if f.is_file() and f.suffix in (".py", ".cpp", ".vlt"))
        _CODE_DIGEST = source_digest(files, _ROOT)[:12]
    models = sorted({Path(spec.model).resolve() for spec in map(parse_tenant, mix)
                     if is_file(spec.model)})
    if not models:
        return _CODE_DIGEST
    return _CODE_DIGEST + "+" + source_digest(models, Path("/"))[:12]


#: The fields of a results row: the point (KEY_FIELDS), how it went, the NPU's figures,
#: then one tenant's (a row per tenant; a point that raised an error has one row).
KEY_FIELDS = ("mix", "policy", "load", "closed", "seed", "requests", "config",
              "config_digest", "backend", "time_slice", "code_digest")
ROW_FIELDS = KEY_FIELDS + (
    "status", "error", "wall_seconds", "cycles", "util_me", "util_ve", "util_dma",
    "util_engines", "stp", "antt", "tenant", "model", "n_me", "n_ve", "tenant_requests",
    "completed", "refused", "faulted", "wrong", "throughput", "latency_mean", "latency_p50",
    "latency_p95", "latency_p99", "latency_p99_us", "isolated_latency", "isolated_service",
    *(f"slo_{f}x" for f in SLO_FACTORS), "own_util_me", "own_util_ve", "harvested_engine_cycles",
    "ntt", "preemptions", "flushed_engine_cycles", "hbm_bytes", "hbm_share")


#: requests.csv: a row per request of every point (the point's KEY_FIELDS first).
REQUEST_FIELDS = ("tenant", "model", "request", "arrival", "rung", "start", "end", "latency",
                  "status", "preempted")


def row_key(row):
    return tuple(row.get(name) for name in KEY_FIELDS)


#: The paper-scale experiment's tenants: full-size models (runtime/compiler/zoo.py).
_MODELS = ("resnet50", "bert-base", "dlrm-mlperf", "ncf-mlperf")

PRESETS = {
    "quick": Matrix("quick", mixes=(("ncf", "dlrm"), ("ncf", "ncf"))),
    # Every pair of full-size models on the TPU-like core (its scratchpad doubled so that
    # two of them fit), on the timing model: about an hour on 2 cores.
    "paper": Matrix("paper", mixes=tuple(combinations_with_replacement(_MODELS, 2)),
                    loads=(0.6,), closed=(2,), seeds=(1,), requests=10, config="tpu-shared",
                    backend="perf"),
}


def _check(matrix):
    """ExperimentError for any value of ``matrix`` a run could not use."""
    name = matrix.name
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ExperimentError(f"experiment name {name!r}: expected a folder name")
    try:
        config = NPUConfig.load(matrix.config)
    except ConfigError as error:
        raise ExperimentError(f"{name}: {error}") from None
    if not matrix.mixes:
        raise ExperimentError(f"{name}: no mixes; expected e.g. mixes = [[\"ncf\", \"dlrm\"]]")
    for key in ("mixes", "policies", "loads", "closed", "seeds"):
        values = list(getattr(matrix, key))
        repeated = sorted({"+".join(v) if key == "mixes" else str(v)
                           for v in values if values.count(v) > 1})
        if repeated:
            raise ExperimentError(f"{name}: {key} lists {', '.join(repeated)} more than once")
    for mix in matrix.mixes:
        if not mix:
            raise ExperimentError(f"{name}: an empty mix; expected a list of tenants")
        try:
            specs = [parse_tenant(tenant) for tenant in mix]
        except ServeError as error:
            raise ExperimentError(f"{name}: {error}") from None
        if len(mix) > config.n_ctx:
            raise ExperimentError(f"{name}: mix {'+'.join(mix)} has {len(mix)} tenants; the "
                                  f"NPU has {config.n_ctx} contexts")
        for kind in ("me", "ve"):
            wanted = sum(getattr(s, f"n_{kind}") or 0 for s in specs)
            if wanted > getattr(config, f"n_{kind}"):
                raise ExperimentError(f"{name}: mix {'+'.join(mix)} needs {wanted} "
                                      f"{kind.upper()}s side by side; the NPU has "
                                      f"{getattr(config, f'n_{kind}')}")
    for policy in matrix.policies:
        if policy not in POLICIES:
            raise ExperimentError(f"{name}: unknown policy {policy!r}; expected some of "
                                  f"{', '.join(POLICIES)}")
    if "harvest" not in matrix.policies:
        raise ExperimentError(f"{name}: the policies must include harvest (the summary "
                              f"compares it with the others)")
    for load in matrix.loads:
        try:
            check_load(load)
        except ServeError as error:
            raise ExperimentError(f"{name}: {error}") from None
    for depth in matrix.closed:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ExperimentError(f"{name}: closed-loop depth {depth!r}: expected an integer >= 1")
    if not matrix.loads and not matrix.closed:
        raise ExperimentError(f"{name}: no loads and no closed-loop depths: nothing to run")
    if not matrix.seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                   for s in matrix.seeds):
        raise ExperimentError(f"{name}: seeds {list(matrix.seeds)!r}: expected integers")
    if isinstance(matrix.requests, bool) or not isinstance(matrix.requests, int) \
            or matrix.requests < 1:
        raise ExperimentError(f"{name}: requests {matrix.requests!r}: expected an integer >= 1")
    if matrix.backend not in TIMED_BACKENDS:
        raise ExperimentError(f"{name}: backend {matrix.backend!r}: expected one of "
                              f"{', '.join(TIMED_BACKENDS)}")
    if matrix.time_slice is not None and (isinstance(matrix.time_slice, bool) or
                                          not isinstance(matrix.time_slice, int)
                                          or matrix.time_slice < 1):
        raise ExperimentError(f"{name}: time_slice {matrix.time_slice!r}: expected an "
                              f"integer >= 1")
    return matrix


def load_matrix(spec):
    """A Matrix from a preset name or a TOML file; TOML keys are Matrix's fields (all but
    ``mixes`` optional, ``name`` defaulting to the file's stem), e.g.::

        mixes = [["ncf", "dlrm"], ["resnet:2,2", "bert:2,2"]]
        policies = ["harvest", "static", "temporal", "v10"]
        loads = [0.2, 0.5, 0.8]
        closed = [2]
        seeds = [1, 2, 3]
        requests = 500
    """
    if spec in PRESETS:
        return _check(PRESETS[spec])
    path = Path(spec)
    if path.suffix != ".toml":
        raise ExperimentError(f"matrix {spec!r}: expected a preset ({', '.join(PRESETS)}) or "
                              f"a .toml file")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{spec}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ExperimentError(f"{spec}: cannot read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ExperimentError(f"{spec}: not valid TOML: {error}") from None
    known = {f.name for f in fields(Matrix)}
    for key in table:
        if key not in known:
            raise ExperimentError(f"{spec}: unknown key {key!r}; expected some of "
                                  f"{', '.join(sorted(known))}")
    if "mixes" not in table:
        raise ExperimentError(f"{spec}: no 'mixes'; expected e.g. mixes = [[\"ncf\", \"dlrm\"]]")
    values = dict(table, name=table.get("name", path.stem))
    for key in ("mixes", "policies", "loads", "closed", "seeds"):
        if key in values:
            if not isinstance(values[key], list):
                raise ExperimentError(f"{spec}: {key} = {values[key]!r}: expected a list")
            values[key] = tuple(values[key])
    if not all(isinstance(mix, list) and all(isinstance(t, str) for t in mix)
               for mix in values["mixes"]):
        raise ExperimentError(f"{spec}: mixes = {table['mixes']!r}: expected a list of lists "
                              f"of tenants such as \"ncf\" or \"bert:2,2\"")
    values["mixes"] = tuple(tuple(mix) for mix in values["mixes"])
    if "config" in values and not isinstance(values["config"], str):
        raise ExperimentError(f"{spec}: config = {values['config']!r}: expected a preset "
                              f"name or a config file")
    if values.get("config", "").endswith(".toml"):   # a config file beside the matrix's
        values["config"] = str((path.parent / values["config"]).resolve())
    return _check(Matrix(**values))


def run_point(matrix, point):
    """Serve one point; its results rows (a row per tenant, or one row with the error).
    Never raises: a point that fails is a result too."""
    base = dict(zip(KEY_FIELDS, matrix.key(point)))
    start = time.perf_counter()
    try:
        config = NPUConfig.load(matrix.config)
        specs = [parse_tenant(text) for text in point.mix]
        [report] = serve(config, specs, policies=(point.policy,), load=point.load,
                         closed=point.closed, requests=matrix.requests, seed=point.seed,
                         backend=matrix.backend, time_slice=matrix.time_slice)
    except Exception as error:        # reported with the point, never lost with the others
        if isinstance(error, ServeError):
            detail = str(error)
        else:
            frame = traceback.extract_tb(error.__traceback__)[-1]
            detail = (f"{type(error).__name__}: {' '.join(str(error).split())} (at "
                      f"{frame.filename}:{frame.lineno})")
        return _error_rows(matrix, point, detail, round(time.perf_counter() - start, 2))
    n_me, n_ve = config.n_me, config.n_ve
    point_fields = base | {
        "status": "problems" if report.problems else "ok",
        "error": "; ".join(report.problems[:5]) or None,
        "wall_seconds": round(time.perf_counter() - start, 2), "cycles": report.cycles,
        "util_me": report.utilization["me"], "util_ve": report.utilization["ve"],
        "util_dma": report.utilization["dma"],
        "util_engines": (report.utilization["me"] * n_me + report.utilization["ve"] * n_ve)
        / (n_me + n_ve),
        "stp": report.stp, "antt": report.antt}
    rows = []
    for t in report.tenants:
        rows.append(dict.fromkeys(ROW_FIELDS) | point_fields | {
            "tenant": t.name, "model": t.model, "n_me": t.n_me, "n_ve": t.n_ve,
            "tenant_requests": t.requests, "completed": t.completed, "refused": t.refused,
            "faulted": t.faulted, "wrong": t.wrong, "throughput": t.throughput,
            "latency_mean": t.latency_mean, "latency_p50": t.latency_p50,
            "latency_p95": t.latency_p95, "latency_p99": t.latency_p99,
            "latency_p99_us": t.latency_p99_us, "isolated_latency": t.isolated_latency,
            "isolated_service": t.isolated_service,
            **{f"slo_{f}x": t.slo[f] for f in SLO_FACTORS},
            "own_util_me": t.utilization_own["me"], "own_util_ve": t.utilization_own["ve"],
            "harvested_engine_cycles": t.harvested_engine_cycles, "ntt": t.ntt,
            "preemptions": t.preemptions, "flushed_engine_cycles": t.flushed_engine_cycles,
            "hbm_bytes": t.hbm_bytes, "hbm_share": t.hbm_share,
            # Kept in results.json, written out as requests.csv.
            "request_records": [[r[k] for k in REQUEST_FIELDS[2:]] for r in report.requests
                                if r["tenant"] == t.name]})
    return rows


def read_results(folder):
    """The rows of ``folder``/results.json ([] when there is none)."""
    path = Path(folder) / "results.json"
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ExperimentError(f"{path}: cannot read the earlier results ({error}); move it "
                              f"away to start afresh") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"mix", "policy", "status"}
                                             <= set(r) for r in rows):
        raise ExperimentError(f"{path}: not a results file of neu10 experiment")
    return rows


def _write_results(folder, rows):
    """results.json and results.csv, each replaced whole (never left half written)."""
    rows = sorted(rows, key=lambda r: tuple(str(v) for v in row_key(r)) + (str(r.get("tenant")),))
    for name, write in (("results.json", lambda f: json.dump(rows, f, indent=1)),
                        ("results.csv", lambda f: _write_csv(f, rows)),
                        ("requests.csv", lambda f: _write_requests(f, rows))):
        temporary = folder / f".{name}.tmp"
        with temporary.open("w", newline="") as file:
            write(file)
        os.replace(temporary, folder / name)


def _write_requests(file, rows):
    writer = csv.writer(file)
    writer.writerow(KEY_FIELDS + REQUEST_FIELDS)
    for row in rows:
        for record in row.get("request_records") or ():
            writer.writerow([("" if row[k] is None else row[k]) for k in KEY_FIELDS]
                            + [row["tenant"], row["model"]]
                            + ["" if v is None else v for v in record])


def _write_csv(file, rows):
    writer = csv.DictWriter(file, ROW_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


class Progress:
    """A progress bar with the time left, on stderr: redrawn in place on a terminal, a line
    per point otherwise (logs). Points that did not go well always get a line of their own."""

    def __init__(self, total, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = self.stream.isatty()

    def update(self, point, rows):
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        width = 24
        filled = width * self.done // self.total
        status = rows[0]["status"]
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{_duration(elapsed)} elapsed, ETA {_duration(left)}  {point.label}: {status}")
        if status != "ok":
            line += f" ({rows[0]['error']})"
        if self.tty:
            end = "\n" if status != "ok" or self.done == self.total else ""
            self.stream.write(f"\r\x1b[K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def _run_local(matrix, points, jobs, done, work=run_point):
    """``work(matrix, point)`` -> rows for each point, on ``jobs`` processes; ``done(point,
    rows)`` as each finishes."""
    if jobs == 1:
        for point in points:
            done(point, work(matrix, point))
        return
    # A worker that dies (killed for memory, say) breaks the whole pool: the points it left
    # unfinished run again in a new one; the last time each alone in a pool of its own, so
    # only a point that kills its worker every time is reported as failed.
    for _ in range(2):
        points = _pool_round(matrix, points, jobs, done, work)
        if not points:
            return
    for point in points:
        if _pool_round(matrix, [point], 1, done, work):
            done(point, _error_rows(matrix, point, "its worker process died (3 times; out of "
                                    "memory?)"))


def _pool_round(matrix, points, jobs, done, work):
    """Run ``points`` on a pool of ``jobs`` processes; the points left unfinished when a
    worker died. On an interrupt (Ctrl-C) the workers are stopped at once."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
    try:
        futures = {pool.submit(work, matrix, point): point for point in points}
        unfinished = set(futures)
        for future in as_completed(futures):
            point = futures[future]
            try:
                rows = future.result()
            except BrokenProcessPool:
                return [futures[f] for f in futures if f in unfinished]
            except Exception as error:      # run_point raises nothing; e.g. pickling
                rows = _error_rows(matrix, point, f"{type(error).__name__}: {error}")
            unfinished.discard(future)
            done(point, rows)
        return []
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True)


def _run_ray(matrix, points, address, done):
    try:
        import ray
    except ImportError:
        raise ExperimentError("--ray needs Ray: pip install 'neu10[ray]'") from None
    local = address == "local"
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, **({"num_cpus": os.cpu_count()} if local else {}))
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise ExperimentError(f"--ray {address!r}: cannot connect: {error}") from None
    try:
        # One CPU per point; a node's first points build its Verilator model once (the
        # build is locked and cached per node, runtime.backends.verilator.build_model).
        remote = ray.remote(num_cpus=1, max_retries=0)(run_point)
        pending = {remote.remote(matrix, point): point for point in points}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                point = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except Exception as error:   # the worker or its node died
                    rows = _error_rows(matrix, point, f"{type(error).__name__}: {error}")
                done(point, rows)
    finally:
        ray.shutdown()


def _error_rows(matrix, point, message, seconds=None):
    """The one row of a point that did not run: its key, the error and the time it took."""
    return [dict.fromkeys(ROW_FIELDS) | dict(zip(KEY_FIELDS, matrix.key(point)))
            | {"status": "error", "error": message, "wall_seconds": seconds}]


def run_experiment(matrix, *, reports="reports", jobs=None, ray=None, stream=None, log=None):
    """Run the points of ``matrix`` not yet in ``reports``/NAME/results.json, writing the
    results after each, then the summary and plots. Returns (folder, rows of this matrix's
    points)."""
    from .experiment_report import write_report
    _check(matrix)
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ExperimentError(f"jobs {jobs!r}: expected an integer >= 1")
    log = log or (lambda text: print(text, file=stream or sys.stderr, flush=True))
    folder = Path(reports) / matrix.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ExperimentError(f"{folder}: cannot write the results there "
                              f"({error.strerror})") from None
    rows = read_results(folder)
    points = matrix.points()
    wanted = {matrix.key(p) for p in points}
    finished = {row_key(r) for r in rows if r["status"] != "error"}
    todo = [p for p in points if matrix.key(p) not in finished]
    rows = [r for r in rows if row_key(r) not in wanted or row_key(r) in finished]
    skipped = len(points) - len(todo)
    log(f"experiment {matrix.name}: {len(points)} points"
        + (f", {skipped} already in {folder / 'results.json'}" if skipped else "")
        + (f"; running {len(todo)} " + (f"on Ray ({ray})" if ray else
                                        f"with {jobs or os.cpu_count() or 1} jobs")
           if todo else ""))
    if todo:
        if matrix.backend == "verilator" and not ray:
            from runtime.backends.verilator import build_model
            build_model(NPUConfig.load(matrix.config), log=log)   # once, before the workers
        progress = Progress(len(todo), stream)

        def done(point, new):
            rows.extend(new)
            _write_results(folder, rows)
            progress.update(point, new)

        if ray:
            _run_ray(matrix, todo, ray, done)
        else:
            _run_local(matrix, todo, min(jobs or os.cpu_count() or 1, len(todo)), done)
    else:
        _write_results(folder, rows)
    mine = [r for r in rows if row_key(r) in wanted]
    write_report(matrix, mine, folder)
    return folder, mine

