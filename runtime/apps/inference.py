"""One inference of a model on a vNPU: compile, size the vNPU, run, check, report.

The report carries the latency in cycles, the utilization of the vNPU's engines, whether
the output equals the compiler's integer reference bit for bit, and the accuracy of the
int8 result against the float32 reference.
"""

from dataclasses import asdict, dataclass, field

import numpy as np

from runtime.host.allocator import allocate, estimate, measured
from runtime.host.execute import execute
from runtime.compiler.models import accuracy, compile_model

__all__ = ["InferenceReport", "infer", "parse_vnpu"]


@dataclass
class InferenceReport:
    model: str
    backend: str
    n_me: int
    n_ve: int
    policy: str
    exact: bool                       # output == the compiler's integer reference
    metric: str
    accuracy: float
    compile_seconds: float
    program_words: int
    utops: dict
    estimated_busy: dict              # compiler's profile, engine-cycles per type
    cycles: int | None = None         # RTL backends only
    utilization: dict = field(default_factory=dict)
    measured_busy: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)

    def text(self):
        lines = [f"model {self.model} on {self.backend}: vNPU of {self.n_me} ME + {self.n_ve} VE"
                 f" ({self.policy})",
                 f"  program     {self.program_words} words, µTOps {self.utops}, compiled in "
                 f"{self.compile_seconds * 1000:.1f} ms",
                 f"  estimate    busy engine-cycles {self.estimated_busy}"]
        if self.cycles is not None:
            util = ", ".join(f"{k} {v:.1%}" for k, v in self.utilization.items())
            lines.append(f"  latency     {self.cycles} cycles; utilization {util}")
        lines.append(f"  output      {'equals' if self.exact else 'DIFFERS from'} the "
                     f"integer reference bit for bit; {self.metric.replace('_', ' ')} vs float32: "
                     f"{self.accuracy:.4f}")
        return "\n".join(lines)


def parse_vnpu(text, config):
    """'ME,VE' -> (n_me, n_ve), checked against the NPU; ValueError names the problem."""
    try:
        n_me, n_ve = (int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--vnpu {text!r}: expected ME,VE (two integers, e.g. 2,1)") from None
    for name, value, limit in (("ME", n_me, config.n_me), ("VE", n_ve, config.n_ve)):
        if not 1 <= value <= limit:
            raise ValueError(f"--vnpu {text!r}: {value} {name}s requested; this NPU has "
                             f"1..{limit}")
    return n_me, n_ve


def infer(name, config, *, backend="golden", vnpu=None, budget=None, price_me=1.0,
          price_ve=1.0, policy="harvest", seed=0, progress=None):
    """Run one inference; ``vnpu=(n_me, n_ve)`` or a ``budget`` for the allocator
    (default: the whole NPU)."""
    model = compile_model(name, config, seed=seed)
    profile = estimate(model.program.words, config)
    if vnpu is not None:
        n_me, n_ve = vnpu
    elif budget is not None:
        choice = allocate(profile, config, budget=budget, price_me=price_me, price_ve=price_ve)
        n_me, n_ve = choice.n_me, choice.n_ve
    else:
        n_me, n_ve = config.n_me, config.n_ve
    outputs, run = execute(model.graph, model.program, backend=backend, n_me=n_me, n_ve=n_ve,
                           policy=policy, progress=progress)
    out = outputs[name]
    metric, value = accuracy(model, out)
    report = InferenceReport(
        name, backend, n_me, n_ve, policy, bool(np.array_equal(out, model.expected)), metric,
        value, model.compile_seconds, len(model.program.words), model.program.per_engine,
        {"me": profile.me, "ve": profile.ve, "dma": profile.dma})
    if run.timed:
        busy = measured(run, config)
        report.cycles = run.makespan
        report.measured_busy = {"me": busy.me, "ve": busy.ve, "dma": busy.dma}
        report.utilization = {"me": busy.me / (n_me * run.makespan),
                              "ve": busy.ve / (n_ve * run.makespan),
                              "dma": busy.dma / (config.n_dma * run.makespan)}
    return report
