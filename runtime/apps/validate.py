"""`neu10 validate`: the timing model (``--backend perf``) against the RTL on Verilator, case
by case, so a fast model that drifts from the hardware is seen at once.

Every case runs the same host script on both backends and compares what a researcher
reads off a run:

- ``conformance``: every ISA conformance case under every policy: each context's CYCLES.
- ``models``: the built-in models, alone on the whole NPU: the inference's cycles.
- ``serving``: the serving points of an experiment matrix (``quick`` by default, each mix
  under every policy at one load and the closed loop): per tenant the mean and p99
  latency and the throughput, the NPU's ME and VE utilization, and harvest's ratios to
  each baseline (throughput, p99 per tenant, utilization).
- ``large``: the built-in models on a larger NPU (32x32 arrays), where the matrix
  engine's array is 16 times the default's.

Errors are (perf - verilator) / verilator. The summary gives, per kind of figure, the
median and the worst absolute error over the cases. The goals (issue "Paper-scale
experiments"): median <= 1% and worst <= 5% on cycles and latencies; harvest's ratios
within 3%.
"""

import statistics
import time
from dataclasses import asdict, dataclass, field

from isa.config import NPUConfig
from isa.regmap import Policy

__all__ = ["Comparison", "ValidationReport", "GROUPS", "validate", "format_report"]

GROUPS = ("conformance", "models", "serving", "large")
_MODELS = ("ncf", "resnet", "bert", "dlrm")
#: The larger NPU: the default's with 32x32 arrays (and rows wide enough to feed them),
#: and the built-in models widened to fill them.
LARGE = dict(array_rows=32, array_cols=32, ve_lanes=32)
_LARGE_MODELS = ("ncf[dim=32]", "resnet[channels=32]", "bert[width=64,heads=2,tokens=32]",
                 "dlrm[dim=32,dense=32]")


@dataclass
class Comparison:
    """One figure of one case, on both backends."""
    group: str
    case: str
    figure: str                      # "cycles", "latency_mean", "p99", "throughput", ...
    kind: str                        # what the summary groups it by
    verilator: float
    perf: float

    @property
    def error(self):
        if self.verilator == 0:
            return 0.0 if self.perf == 0 else float("inf")
        return (self.perf - self.verilator) / self.verilator


@dataclass
class ValidationReport:
    comparisons: list = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: {"perf": 0.0, "verilator": 0.0})

    def summary(self):
        """Per kind: (cases, median |error|, worst |error|, the worst case)."""
        kinds = {}
        for c in self.comparisons:
            kinds.setdefault(c.kind, []).append(c)
        out = {}
        for kind, rows in kinds.items():
            errors = [abs(r.error) for r in rows]
            worst = max(rows, key=lambda r: abs(r.error))
            out[kind] = {"cases": len(rows), "median": statistics.median(errors),
                         "worst": abs(worst.error), "worst_case": f"{worst.group} {worst.case} "
                                                                  f"{worst.figure}"}
        return out

    def to_dict(self):
        return {"comparisons": [dict(asdict(c), error=c.error) for c in self.comparisons],
                "summary": self.summary(), "seconds": self.seconds,
                "speedup": self.speedup()}

    def speedup(self):
        perf = self.seconds["perf"]
        return self.seconds["verilator"] / perf if perf else None


def _timed(report, which, function, *args, **kwargs):
    """``function(*args, backend=which, **kwargs)``, its wall time added to ``which``'s."""
    start = time.perf_counter()
    try:
        return function(*args, backend=which, **kwargs)
    finally:
        report.seconds[which] += time.perf_counter() - start


def _conformance(report, paths, policies):
    from .conformance import load_case, run_case
    for path in paths:
        case = load_case(path)
        for policy in policies:
            runs = {b: _timed(report, b, run_case, case, policy=policy).run
                    for b in ("verilator", "perf")}
            for index, (v, p) in enumerate(zip(runs["verilator"].contexts,
                                               runs["perf"].contexts)):
                report.comparisons.append(Comparison(
                    "conformance", f"{case.name} [{policy}]", f"context {index} cycles",
                    "cycles", v.cycles, p.cycles))


def _models(report, group, config, models):
    from runtime.compiler.models import compile_model
    from .inference import execute
    for name in models:
        model = compile_model(name, config)
        cycles = {}
        for backend in ("verilator", "perf"):
            _, run = _timed(report, backend, execute, model.graph, model.program)
            cycles[backend] = run.makespan
        report.comparisons.append(Comparison(group, name, "cycles", "cycles",
                                             cycles["verilator"], cycles["perf"]))


def _serving(report, matrix, requests):
    from .experiment import load_matrix
    from .serve import parse_tenant, serve
    matrix = load_matrix(matrix)
    config = NPUConfig.load(matrix.config)
    hows = [dict(load=matrix.loads[len(matrix.loads) // 2])] + \
        [dict(closed=depth) for depth in matrix.closed[:1]]
    for mix in matrix.mixes:
        specs = [parse_tenant(t) for t in mix]
        for how in hows:
            label = "+".join(mix) + (f" load {how['load']:g}" if "load" in how
                                     else f" closed {how['closed']}")
            points = {b: {p.policy: p for p in _timed(
                report, b, serve, config, specs, policies=matrix.policies,
                requests=requests, seed=matrix.seeds[0], **how)}
                for b in ("verilator", "perf")}
            for policy in matrix.policies:
                v, p = points["verilator"][policy], points["perf"][policy]
                case = f"{label} [{policy}]"
                for tv, tp in zip(v.tenants, p.tenants):
                    for figure, kind in (("latency_mean", "latency"), ("latency_p99", "latency"),
                                         ("throughput", "throughput")):
                        report.comparisons.append(Comparison(
                            "serving", case, f"{tv.name} {figure}", kind,
                            getattr(tv, figure), getattr(tp, figure)))
                for engine in ("me", "ve"):
                    report.comparisons.append(Comparison(
                        "serving", case, f"{engine} utilization", "utilization",
                        v.utilization[engine], p.utilization[engine]))
            for base in matrix.policies:
                if base == "harvest" or "harvest" not in matrix.policies:
                    continue
                case = f"{label} harvest/{base}"
                ratios = {b: _ratios(points[b]["harvest"], points[b][base]) for b in points}
                for figure in ratios["verilator"]:
                    report.comparisons.append(Comparison(
                        "serving", case, figure, "harvest ratio",
                        ratios["verilator"][figure], ratios["perf"][figure]))


def _ratios(harvest, base):
    """Harvest's figures over a baseline's: total throughput, each tenant's p99 (base over
    harvest: > 1 is better), ME+VE utilization."""
    out = {"throughput": sum(t.throughput for t in harvest.tenants)
           / sum(t.throughput for t in base.tenants)}
    for th, tb in zip(harvest.tenants, base.tenants):
        out[f"{th.name} p99"] = tb.latency_p99 / th.latency_p99
    out["utilization"] = ((harvest.utilization["me"] + harvest.utilization["ve"])
                          / (base.utilization["me"] + base.utilization["ve"]))
    return out


def validate(groups=GROUPS, *, matrix="quick", requests=60, conformance_paths=None,
             models=_MODELS, progress=None):
    """Run the groups of cases on perf and Verilator; returns a ValidationReport."""
    from .conformance import default_case_paths
    report = ValidationReport()
    for group in groups:
        if progress:
            progress(group)
        if group == "conformance":
            _conformance(report, conformance_paths or default_case_paths(),
                         [p.name.lower() for p in Policy])
        elif group == "models":
            _models(report, group, NPUConfig.preset("default"), models)
        elif group == "large":
            _models(report, group, NPUConfig.preset("default").replace(**LARGE), _LARGE_MODELS)
        elif group == "serving":
            _serving(report, matrix, requests)
        else:
            raise ValueError(f"unknown validation group {group!r}; expected one of "
                             f"{', '.join(GROUPS)}")
    return report


def format_report(report, *, every=False):
    """The summary table (and with ``every``, one line per comparison)."""
    lines = []
    if every:
        lines.append(f"{'group':<12} {'case':<44} {'figure':<26} {'verilator':>11} "
                     f"{'perf':>11} {'error':>8}")
        for c in report.comparisons:
            lines.append(f"{c.group:<12} {c.case[:44]:<44} {c.figure[:26]:<26} "
                         f"{c.verilator:>11.4g} {c.perf:>11.4g} {c.error:>+8.2%}")
        lines.append("")
    lines.append(f"{'figure':<16} {'cases':>6} {'median':>8} {'worst':>8}  worst case")
    for kind, s in report.summary().items():
        lines.append(f"{kind:<16} {s['cases']:>6} {s['median']:>8.2%} {s['worst']:>8.2%}  "
                     f"{s['worst_case']}")
    speedup = report.speedup()
    lines.append(f"wall time: verilator {report.seconds['verilator']:.1f} s, perf "
                 f"{report.seconds['perf']:.1f} s"
                 + (f" ({speedup:.1f}x)" if speedup else ""))
    return "\n".join(lines)
