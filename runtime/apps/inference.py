"""Models on vNPUs: one inference (compile, size the vNPU, run, check, report), and
compiled models run alone or side by side (`execute`, `run_models`).

The report carries the latency in cycles, the utilization of the vNPU's engines, whether
the output equals the compiler's integer reference bit for bit, and the accuracy of the
int8 result against the float32 reference.
"""

from dataclasses import asdict, dataclass, field

import numpy as np

from runtime.compiler.models import accuracy, compile_model
from runtime.host.allocator import allocate, estimate, measured
from runtime.host.execute import MAX_RUN_CYCLES, run_tenants
from .operators import OperatorProfile, format_operators, operator_profiles, utop_table

__all__ = ["InferenceReport", "infer", "parse_vnpu", "execute", "run_models"]


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
    spad_peak: int = 0                # scratchpad rows the program uses
    hbm_words: int = 0                # HBM words: weights, inputs, outputs, spills
    spills: int = 0                   # activations stored to HBM for want of room ...
    spill_bytes: int = 0
    reload_bytes: int = 0             # ... and loaded back
    macs: int = 0                     # real multiply-accumulates (Conv, MatMul, Gemm)
    cycles: int | None = None         # timed backends only
    #: Timed backends: macs / (the whole NPU's MACs per cycle x cycles).
    mac_utilization: float | None = None
    utilization: dict = field(default_factory=dict)   # of its vNPU's engines (DMA: of all)
    measured_busy: dict = field(default_factory=dict)
    borrowed: dict = field(default_factory=dict)      # engine-cycles on engines it does not own
    #: Timed backends: per operator (operators.OperatorProfile), measured on the activity port.
    operators: list = field(default_factory=list)

    def to_dict(self):
        return asdict(self)

    def text(self):
        lines = [f"model {self.model} on {self.backend}: vNPU of {self.n_me} ME + {self.n_ve} VE"
                 f" ({self.policy})",
                 f"  program     {self.program_words} words, µTOps {self.utops}, compiled in "
                 + (f"{self.compile_seconds:.1f} s" if self.compile_seconds >= 1
                    else f"{self.compile_seconds * 1000:.1f} ms"),
                 f"  memory      scratchpad {self.spad_peak} rows, HBM {self.hbm_words} words; "
                 + (f"{self.spills} activations spilled to HBM ({self.spill_bytes} B stored, "
                    f"{self.reload_bytes} B loaded back)" if self.spills
                    else "no activation spilled"),
                 f"  estimate    busy engine-cycles {self.estimated_busy}"]
        if self.cycles is not None:
            util = ", ".join(f"{k} {v:.1%}" for k, v in self.utilization.items())
            lines.append(f"  latency     {self.cycles} cycles; utilization of its engines {util}"
                         + ("; borrowed idle engines for " + ", ".join(
                             f"{v} {k.upper()}-cycles" for k, v in self.borrowed.items() if v)
                            if any(self.borrowed.values()) else ""))
        if self.mac_utilization is not None:
            lines.append(f"  MACs        {self.macs / 1e6:.1f} M real MACs: "
                         f"{self.mac_utilization:.1%} of the NPU's MAC peak over the run")
        lines.append(f"  output      {'equals' if self.exact else 'DIFFERS from'} the "
                     f"integer reference bit for bit; {self.metric.replace('_', ' ')} vs float32: "
                     f"{self.accuracy:.4f}")
        if self.operators:
            lines += ["  operators   measured on the activity port (cycles: first µTOp start "
                      "to last end; share: of all engine-cycles):",
                      format_operators([OperatorProfile(**p) for p in self.operators])]
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
          price_ve=1.0, policy="harvest", seed=0, progress=None, input_shapes=None,
          calibration=None, per_channel=False, max_cycles=MAX_RUN_CYCLES):
    """Run one inference of model reference ``name`` (see models.py); ``vnpu=(n_me, n_ve)``
    or a ``budget`` for the allocator (default: the whole NPU)."""
    model = compile_model(name, config, seed=seed, input_shapes=input_shapes,
                          calibration=calibration, per_channel=per_channel)
    profile = estimate(model.program.words, config)
    if vnpu is not None:
        n_me, n_ve = vnpu
    elif budget is not None:
        choice = allocate(profile, config, budget=budget, price_me=price_me, price_ve=price_ve)
        n_me, n_ve = choice.n_me, choice.n_ve
    else:
        n_me, n_ve = config.n_me, config.n_ve
    outputs, run = execute(model.graph, model.program, backend=backend, n_me=n_me, n_ve=n_ve,
                           policy=policy, progress=progress, timeline=backend != "golden",
                           max_cycles=max_cycles)
    out = outputs[model.name]
    metric, value = accuracy(model, out)
    report = InferenceReport(
        model.name, backend, n_me, n_ve, policy, bool(np.array_equal(out, model.expected)), metric,
        value, model.compile_seconds, len(model.program.words), model.program.per_engine,
        {"me": profile.me, "ve": profile.ve, "dma": profile.dma},
        model.graph.builder.spad_peak, model.graph.builder.hbm_top, model.graph.spills,
        model.graph.spill_bytes, model.graph.reload_bytes, model.source.macs())
    if run.timed:
        busy = measured(run, config)
        report.cycles = run.makespan
        report.mac_utilization = report.macs / (
            config.n_me * config.array_rows * config.array_cols * run.makespan)
        report.measured_busy = {"me": busy.me, "ve": busy.ve, "dma": busy.dma}
        # Its vNPU has the lowest-numbered engines of each type (the device's first fit on
        # an empty NPU); under harvest it may also borrow the others while they are idle.
        own = {"me": sum(e["BUSY"] for e in run.engines[:n_me]),
               "ve": sum(e["BUSY"] for e in run.engines[config.n_me:config.n_me + n_ve])}
        report.borrowed = {"me": busy.me - own["me"], "ve": busy.ve - own["ve"]}
        report.utilization = {"me": own["me"] / (n_me * run.makespan),
                              "ve": own["ve"] / (n_ve * run.makespan),
                              "dma": busy.dma / (config.n_dma * run.makespan)}
        table = utop_table(config, model.program.words, model.graph.ops, model.graph.op_ends)
        report.operators = [p.to_dict() for p in operator_profiles(table, [run.utop_runs()])]
    return report


def _host_image(graph):
    """(HBM address, words) the host writes before a run: weights and inputs."""
    return list(graph.builder.hbm_image.items()) + [
        (region.start, values.reshape(-1)) for region, values in graph.inputs.values()]


def _outputs(graph):
    """(name, region, tensor) of each output of a compiled graph."""
    return [(name, region, x) for name, (region, x) in graph.outputs.items()]


def _tenant(model_graph, program, n_me, n_ve, whole=False):
    """A tenant for run_tenants: segments of what the program uses (the whole scratchpad of
    the vNPU it was compiled for, with ``whole``); its program goes beside them in HBM."""
    builder = model_graph.builder
    spad_rows = builder.spad_rows if whole else max(1, builder.spad_peak)
    hbm_words = max(1, builder.hbm_top)
    return (program.words, n_me, n_ve, spad_rows, hbm_words, _host_image(model_graph),
            [(region.start, region.size) for _, region, _ in _outputs(model_graph)])


def execute(graph, program, *, backend="golden", n_me=None, n_ve=None, policy="harvest",
            max_cycles=MAX_RUN_CYCLES, progress=None, timeline=False):
    """Run a compiled graph on a vNPU of ``n_me`` MEs and ``n_ve`` VEs (default: all) under
    ``policy``; returns (outputs by name as rows x cols int arrays, the driver's RunResult,
    with the run's timeline with ``timeline``). ``progress(cycles)`` is called during long
    pysim runs."""
    [values], run = run_tenants(graph.config, [_tenant(graph, program, n_me, n_ve, whole=True)],
                                backend=backend, policy=policy, max_cycles=max_cycles,
                                progress=progress, names=["the program"], timeline=timeline)
    return {name: graph.read_output(name, words)
            for (name, _, _), words in zip(_outputs(graph), values)}, run


def run_models(config, tenants, *, backend="verilator", policy="harvest",
               max_cycles=MAX_RUN_CYCLES):
    """Run compiled models side by side: ``tenants`` are (CompiledModel, n_me, n_ve), each
    on its own vNPU with segments sized to its program. Returns (each tenant's output as
    rows x cols, the driver's RunResult)."""
    runs = [_tenant(model.graph, model.program, n_me, n_ve) for model, n_me, n_ve in tenants]
    values, run = run_tenants(config, runs, backend=backend, policy=policy,
                              max_cycles=max_cycles,
                              names=[f"{model.name}#{i}" for i, (model, _, _) in
                                     enumerate(tenants)])
    outputs = []
    for (model, _, _), words in zip(tenants, values):
        index = list(model.graph.outputs).index(model.name)
        outputs.append(model.graph.read_output(model.name, words[index]))
    return outputs, run
