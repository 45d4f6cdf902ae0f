"""The `neu10` command line, a thin layer over the Python API."""

import argparse
import io
import os
import sys
from pathlib import Path

from isa.config import ConfigError, NPUConfig
from isa.asm import AsmError, assemble, bytes_to_words, disassemble, words_to_bytes
from runtime.host.driver import BACKENDS, TIMED_BACKENDS
from runtime.host.execute import MAX_RUN_CYCLES

__all__ = ["main"]


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Argument errors are one line ``neu10: error: ...`` (exit code 2) like every other bad
    input, not argparse's usage block; subparsers are made of this class too."""

    def error(self, message):
        command = self.prog.removeprefix("neu10").strip()   # a subcommand's prog: "neu10 asm"
        raise UsageError(f"{command}: {message}" if command else message)


def _read(path, mode="r"):
    try:
        return Path(path).read_text() if mode == "r" else Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory, expected a file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror}") from None


def _write(path, data):
    try:
        if isinstance(data, bytes):
            Path(path).write_bytes(data)
        else:
            Path(path).write_text(data)
    except OSError as error:
        raise UsageError(f"{path}: cannot write: {error.strerror}") from None


def _emit(output, text):
    """Write text to the file ``output``, or to stdout when no file is given."""
    if output:
        _write(output, text)
    else:
        sys.stdout.write(text)


def _config(spec):
    try:
        return NPUConfig.load(spec)
    except ConfigError as error:
        raise UsageError(str(error)) from None


def cmd_asm(args):
    config = _config(args.config)
    words = assemble(_read(args.source), source=args.source, config=config)
    output = args.output or str(Path(args.source).with_suffix(".bin"))
    _write(output, words_to_bytes(words))
    print(f"{output}: {len(words)} words")
    return 0


def cmd_disasm(args):
    words = bytes_to_words(_read(args.binary, "rb"), source=args.binary)
    _emit(args.output, disassemble(words, source=args.binary))
    return 0


def cmd_conformance(args):
    from .conformance import (BackendUnavailable, CaseError, default_case_paths, load_case,
                              run_case)
    paths = args.cases or default_case_paths()
    if not paths:
        raise UsageError("no conformance cases found")
    if args.vcd and (args.backend == "golden" or len(paths) != 1 or args.policy == "all"):
        raise UsageError("--vcd needs an RTL backend, exactly one case and one policy")
    from isa.regmap import Policy
    policies = [p.name.lower() for p in Policy] if args.policy == "all" else [args.policy]
    passed = failed = 0
    for path in paths:
        try:
            case = load_case(path)
        except CaseError as error:
            raise UsageError(str(error)) from None
        # Policies only matter for the RTL: the golden model runs a case once.
        for policy in policies if args.backend != "golden" else policies[:1]:
            label = case.name + (f" [{policy}]" if args.backend != "golden" else "")
            try:
                outcome = run_case(case, args.backend, policy, vcd=args.vcd)
            except (CaseError, BackendUnavailable) as error:
                raise UsageError(str(error)) from None
            if outcome.passed:
                passed += 1
                print(f"PASS {label}", flush=True)
            else:
                failed += 1
                # One line per mismatch: the first after the case, the others indented.
                print(f"FAIL {label}: " + "\n    ".join(outcome.failures), flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_fuzz(args):
    import json
    from .fuzz import FuzzError, run_campaign
    for option, value, low in (("--programs", args.programs, 1), ("--seed", args.seed, 0),
                               ("--cross-check", args.cross_check, 0)):
        if value < low:
            raise UsageError(f"fuzz: {option} must be at least {low}, not {value}")
    if args.cross_check and args.backend == "golden":
        raise UsageError("fuzz: --cross-check needs an RTL backend (--backend pysim or "
                         "verilator)")
    if args.cross_check > args.programs:
        raise UsageError(f"fuzz: --cross-check {args.cross_check} is more than --programs "
                         f"{args.programs}")
    config = _config(args.config)
    step = max(1, args.programs // 10)

    def progress(done, total):
        if done % step == 0 and done < total:
            print(f"  ... {done}/{total} programs", file=sys.stderr, flush=True)

    try:
        report = run_campaign(config, args.backend, args.programs, args.seed, args.policy,
                              args.cross_check, config_name=args.config,
                              progress=None if args.json else progress)
    except FuzzError as error:
        raise UsageError(str(error)) from None
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0 if report.passed else 1


def cmd_spec(args):
    from isa.spec import generate_spec
    _emit(args.output, generate_spec())
    return 0


def _summary(config):
    """One line: the engines and memories of a configuration."""
    def count(n, what):
        return f"{n} {what}{'s' if n != 1 else ''}"
    return (f"{count(config.n_me, 'ME')} of {config.array_rows}x{config.array_cols}, "
            f"{count(config.n_ve, 'VE')} of {config.ve_lanes} lanes, "
            f"{count(config.n_dma, 'DMA engine')}, {count(config.n_ctx, 'context')}, "
            f"{config.spad_rows} scratchpad rows, {config.hbm_words} HBM words")


def cmd_config(args):
    from isa.config import PRESETS
    if args.list:
        if args.config is not None:
            raise UsageError(f"give a config or --list, not both (got {args.config!r})")
        width = max(len(name) for name in PRESETS)
        for name, config in PRESETS.items():
            print(f"{name:<{width}}  {_summary(config)}")
        return 0
    spec = "default" if args.config is None else args.config
    config = _config(spec)
    # A comment line names what is shown; the rest is a TOML file that gives it back.
    print(f"# preset {spec}" if spec in PRESETS else f"# {spec}")
    for name, value in config.to_dict().items():
        print(f"{name} = {value}")
    return 0


def cmd_bench(args):
    import json
    from .bench import format_report, run_benchmarks
    config = _config(args.config)
    results = run_benchmarks(config)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    else:
        print(format_report(results, config))
    return 0


def cmd_validate(args):
    import json
    from .validate import GROUPS, format_report, validate
    groups = args.only.split(",") if args.only else list(GROUPS)
    for group in groups:
        if group not in GROUPS:
            raise UsageError(f"--only {args.only}: unknown group {group!r}; expected some of "
                             f"{', '.join(GROUPS)}")
    if args.requests < 1:
        raise UsageError(f"--requests must be a positive integer, not {args.requests}")
    report = validate(groups, matrix=args.matrix, requests=args.requests,
                      progress=None if args.json else lambda g: print(f"[{g}]", flush=True))
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    else:
        print(format_report(report, every=args.every))
    return 0


def cmd_verilog(args):
    from runtime.backends.verilog import ToolError, generate, lint
    config = _config(args.config)
    text = generate(config, args.block)
    _write(args.output, text)
    print(f"{args.output}: neu10_{args.block}, {text.count(chr(10))} lines")
    if args.lint:
        try:
            lint(args.output, f"neu10_{args.block}")
        except ToolError as error:
            raise UsageError(str(error)) from None
        print(f"{args.output}: verilator --lint-only -Wall: clean (waivers: hw/lint_waivers.vlt)")
    return 0


def _load_npy(path):
    from runtime.compiler.models import ModelError, read_arrays
    try:
        array = read_arrays(path)
    except ModelError as error:
        raise UsageError(str(error)) from None
    if not hasattr(array, "shape"):
        raise UsageError(f"{path}: an .npz file of several arrays; expected one .npy array")
    return array


def cmd_matmul(args):
    import numpy as np
    from runtime.host.driver import DriverError
    from .matmul import MatmulError, matmul
    a, b = _load_npy(args.a), _load_npy(args.b)
    # np.save appends .npy to a name without it: name the file it really writes.
    output = args.output if args.output.endswith(".npy") else args.output + ".npy"
    try:
        c, run = matmul(a, b, config=_config(args.config), backend=args.backend)
    except (MatmulError, DriverError) as error:
        raise UsageError(str(error)) from None
    try:
        np.save(output, c.astype(np.int32))
    except OSError as error:
        raise UsageError(f"{output}: cannot write: {error.strerror}") from None
    detail = f", {run.makespan} cycles on {args.backend}" if run.timed else " (golden model)"
    print(f"{output}: int32 {c.shape[0]}x{c.shape[1]}{detail}")
    return 0


def _input_shapes(items):
    """--input-shape NAME=D,D,.. (or D,D,.. for a model with one input) -> {name: shape}."""
    shapes = {}
    for item in items or ():
        name, eq, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not shape or any(d < 1 for d in shape):
            raise UsageError(f"--input-shape {item!r}: expected NAME=D,D,... (positive "
                             f"integers), e.g. x=1,3,32,32")
        shapes[name if eq else None] = shape
    return shapes


def _model_args(args):
    """compile_model's keyword arguments from --input-shape and --calibrate."""
    if (args.input_shape or args.calibrate) and not str(args.model).endswith(".onnx"):
        raise UsageError(f"--input-shape and --calibrate apply to .onnx models, not "
                         f"{args.model!r}")
    return {"input_shapes": _input_shapes(args.input_shape), "calibration": args.calibrate,
            "per_channel": getattr(args, "per_channel", False)}


def _warn_random_calibration(args):
    from runtime.compiler.models import load_model
    from runtime.compiler.onnx_import import unquantized_values
    if not str(args.model).endswith(".onnx") or args.calibrate:
        return
    shapes = tuple((k, tuple(v)) for k, v in _input_shapes(args.input_shape).items())
    model = load_model(args.model, 0, shapes, None)          # cached: compiled already
    missing = unquantized_values(model)
    if model.extra.get("qdq_scales"):
        if missing:
            print(f"neu10: warning: {len(missing)} values of this pre-quantized model have no "
                  f"QDQ scale (first {missing[0]!r}): they were calibrated on seeded random "
                  f"batches; give --calibrate inputs", file=sys.stderr)
    else:
        print("neu10: warning: no --calibrate inputs: activation scales were calibrated on "
              "seeded random batches (floats ~ N(0, 1), indices uniform); accuracy on real "
              "data needs real calibration inputs", file=sys.stderr)


def cmd_run(args):
    import json
    from runtime.host.allocator import AllocationError
    from runtime.host.driver import DriverError
    from runtime.host.execute import ExecutionError
    from .inference import infer, parse_vnpu
    from runtime.compiler.builder import CompileError
    from runtime.compiler.models import compile_model
    from runtime.compiler.onnx_import import OnnxError
    config = _config(args.config)
    compile_args = _model_args(args)
    try:
        vnpu = parse_vnpu(args.vnpu, config) if args.vnpu is not None else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    if vnpu and args.budget is not None:
        raise UsageError("give --vnpu or --budget, not both")
    if args.max_cycles < 1:
        raise UsageError(f"--max-cycles must be a positive integer, not {args.max_cycles}")

    def progress(cycles):
        print(f"  ... {cycles} cycles simulated", file=sys.stderr, flush=True)

    try:
        if args.listing:
            _write(args.listing, compile_model(args.model, config, **compile_args).program.listing)
        report = infer(args.model, config, backend=args.backend, vnpu=vnpu, budget=args.budget,
                       price_me=args.price_me, price_ve=args.price_ve, policy=args.policy,
                       progress=None if args.json else progress, max_cycles=args.max_cycles,
                       **compile_args)
    except (AllocationError, CompileError, DriverError, ExecutionError, OnnxError) as error:
        raise UsageError(str(error)) from None
    _warn_random_calibration(args)
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0 if report.exact else 1


def cmd_import(args):
    from runtime.compiler.builder import CompileError
    from runtime.compiler.models import accuracy, compile_model, save_quantized
    from runtime.compiler.onnx_import import OnnxError
    from .inference import execute
    if not str(args.model).endswith(".onnx"):
        raise UsageError(f"{args.model}: expected an .onnx file")
    config = _config(args.config)
    compile_args = _model_args(args)
    output = args.output or str(Path(args.model).with_suffix(".neu10"))
    try:
        compiled = compile_model(args.model, config, **compile_args)
        outputs, _ = execute(compiled.graph, compiled.program)
    except (CompileError, OnnxError) as error:
        raise UsageError(str(error)) from None
    model = compiled.source
    try:
        save_quantized(model, output)
    except OSError as error:
        raise UsageError(f"{output}: cannot write: {error.strerror}") from None
    _warn_random_calibration(args)
    metric, value = accuracy(compiled, outputs[compiled.name])
    ops = {}
    for kind, _ in compiled.graph.ops:
        ops[kind] = ops.get(kind, 0) + 1
    print(f"{output}: {len(model.nodes)} nodes lowered to "
          f"{', '.join(f'{n} {k}' for k, n in ops.items())}")
    print(f"  program   {len(compiled.program.words)} words, µTOps {compiled.program.per_engine} "
          f"on {args.config}")
    print(f"  golden    {metric.replace('_', ' ')} vs float32 {value:.4f} (calibrated on "
          f"{args.calibrate or 'seeded random batches'})")
    return 0


def cmd_accuracy(args):
    import json
    from runtime.compiler.builder import CompileError
    from runtime.compiler.onnx_import import OnnxError
    from .accuracy import measure_accuracy
    if args.batches < 1:
        raise UsageError(f"--batches {args.batches}: expected a positive number of input "
                         f"batches")
    config = _config(args.config)
    try:
        report = measure_accuracy(args.model, config, args.batches, **_model_args(args))
    except (CompileError, OnnxError) as error:
        raise UsageError(str(error)) from None
    print(json.dumps(report.to_dict()) if args.json else report.text())
    return 0 if report.bit_exact == report.batches else 1


def cmd_export(args):
    import onnx
    from runtime.compiler import zoo
    from runtime.compiler.models import ModelError, parse_builtin
    try:
        name, sizes = parse_builtin(args.model)
        proto = zoo.build(name, args.seed, **sizes)
    except (ModelError, ValueError) as error:
        raise UsageError(str(error)) from None
    output = args.output or f"{name}.onnx"
    try:
        onnx.save(proto, output)
    except OSError as error:
        raise UsageError(f"{output}: cannot write: {error.strerror}") from None
    print(f"{output}: {len(proto.graph.node)} nodes, opset {proto.opset_import[0].version}")
    return 0


def cmd_demo(args):
    from .demo import run_demo
    from runtime.host.driver import DriverError
    try:
        return run_demo(_config(args.config), backend=args.backend)
    except DriverError as error:
        raise UsageError(str(error)) from None


def cmd_serve(args):
    import dataclasses
    import json
    from runtime.host.driver import POLICIES
    from .serve import ServeError, format_points, parse_tenant, serve
    config = _config(args.config)
    try:
        specs = [parse_tenant(text) for text in args.tenants]
        if args.priority is not None:
            try:
                priorities = [int(p) for p in args.priority.split(",")]
            except ValueError:
                raise ServeError(f"--priority {args.priority!r}: expected one integer per "
                                 f"tenant, e.g. 0,3") from None
            if len(priorities) != len(specs) or not all(0 <= p <= 15 for p in priorities):
                raise ServeError(f"--priority {args.priority!r}: expected {len(specs)} values "
                                 f"from 0 to 15, one per tenant")
            specs = [dataclasses.replace(s, priority=p) for s, p in zip(specs, priorities)]
        policies = POLICIES if args.policy == "all" else (args.policy,)

        def progress(cycles):
            print(f"  ... {cycles} cycles simulated", file=sys.stderr, flush=True)

        points = serve(config, specs, policies=policies, load=args.load, closed=args.closed,
                       requests=args.requests, seed=args.seed, backend=args.backend,
                       time_slice=args.time_slice, trace_out=args.trace_out,
                       replay=args.replay,
                       progress=progress if args.backend == "pysim" and not args.json else None,
                       log=lambda text: print(text, file=sys.stderr, flush=True))
    except ServeError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps([p.to_dict() for p in points]))
    else:
        print(format_points(points))
        for point in points:
            if point.trace:
                print(f"{point.trace}: the {point.policy} timeline (open in ui.perfetto.dev)")
    return 0 if not any(p.problems for p in points) else 1


def cmd_experiment(args):
    from dataclasses import replace
    from runtime.backends.verilog import ToolError
    from .experiment import ExperimentError, load_matrix, read_results, row_key, run_experiment
    try:
        if args.jobs is not None and args.ray:
            raise ExperimentError("--jobs and --ray: give one (Ray runs a point per CPU of "
                                  "its cluster)")
        matrix = load_matrix(args.matrix)
        if args.name:
            matrix = replace(matrix, name=args.name)
        if args.backend:
            matrix = replace(matrix, backend=args.backend)
        if args.list:
            for point in matrix.points():
                print(point.label)
            return 0
        try:
            folder, rows = run_experiment(matrix, reports=args.reports, jobs=args.jobs,
                                          ray=args.ray)
        except KeyboardInterrupt:
            results = Path(args.reports) / matrix.name / "results.json"
            try:
                saved = len({row_key(r) for r in read_results(results.parent)
                             if r["status"] != "error"} & {matrix.key(p) for p in matrix.points()})
            except ExperimentError:
                saved = "?"
            print(f"neu10: interrupted; {saved} of {len(matrix.points())} points are saved in "
                  f"{results}: the same command goes on from there", file=sys.stderr)
            return 130
    except (ExperimentError, ToolError) as error:
        raise UsageError(str(error)) from None
    bad = sorted({(r["mix"], r["policy"], r["load"], r["closed"], r["seed"])
                  for r in rows if r["status"] != "ok"}, key=str)
    print(f"{folder / 'summary.md'}: {len(matrix.points()) - len(bad)} of "
          f"{len(matrix.points())} points ran cleanly"
          + (f"; {len(bad)} failed or had problems (listed there)" if bad else ""))
    return 1 if bad else 0


def cmd_synth(args):
    import json
    from runtime.backends.verilog import ToolError
    from .synth import check_scaling, format_report, pnpu_report
    config = _config(args.config)

    def log(text):
        if not args.json:
            print(text, file=sys.stderr, flush=True)

    try:
        report = pnpu_report(config, None if args.block == "all" else [args.block], log=log)
        if args.check_scaling:
            report["scaling_error"] = check_scaling(
                config, None if args.block == "all" else [args.block], log=log)
    except ToolError as error:
        raise UsageError(str(error)) from None
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(args.config, report))
        for block, error in report.get("scaling_error", {}).items():
            print(f"scaling check, {block}: the quadratic through 2, 4, 8 lanes misses "
                  f"the synthesized 16 by {error:+.2%}")
    return 0


def build_parser():
    parser = _Parser(
        prog="neu10",
        description="neu10: an open, virtualizable NPU (Neu10-style µTOp ISA) in Amaranth HDL.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("asm", help="assemble NeuISA source to a binary")
    p.add_argument("source", help="assembly file (.s)")
    p.add_argument("-o", "--output", help="binary to write (default: SOURCE with .bin)")
    p.add_argument("--config", default="default",
                   help="preset or .toml file whose dep_window and max_body bound the program")
    p.set_defaults(func=cmd_asm)

    p = sub.add_parser("disasm", help="disassemble a NeuISA binary")
    p.add_argument("binary")
    p.add_argument("-o", "--output", help="write assembly here instead of stdout")
    p.set_defaults(func=cmd_disasm)

    p = sub.add_parser("conformance", help="run ISA conformance cases")
    p.add_argument("cases", nargs="*", help="case files (default: sim_tests/conformance/*.toml)")
    p.add_argument("--backend", default="golden", choices=BACKENDS)
    p.add_argument("--policy", default="harvest",
                   choices=["static", "harvest", "temporal", "v10", "all"],
                   help="sharing policy on RTL backends; 'all' runs every case under each")
    p.add_argument("--vcd", metavar="FILE", help="write a waveform of the run (one case)")
    p.set_defaults(func=cmd_conformance)

    p = sub.add_parser("fuzz", help="fuzz tenant isolation: hostile programs next to a victim")
    p.add_argument("--backend", default="golden", choices=BACKENDS)
    p.add_argument("--programs", type=int, default=100, help="runs (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run; run i uses "
                   "SEED+i, so one replays with --seed SEED+i --programs 1")
    p.add_argument("--policy", default="all",
                   choices=["static", "harvest", "temporal", "v10", "all"],
                   help="sharing policy; 'all' (default) takes the policy of seed s from "
                   "static, harvest, temporal, v10 in turn (s mod 4)")
    p.add_argument("--config", default="tiny", help="preset or .toml file (default: tiny)")
    p.add_argument("--cross-check", type=int, default=0, metavar="K",
                   help="the first K runs also run on the other RTL backend, which must "
                   "agree exactly")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_fuzz)

    p = sub.add_parser("spec", help="print the NeuISA specification (Markdown)")
    p.add_argument("-o", "--output", help="write it here instead of stdout")
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("config", help="show a configuration (preset or .toml file)")
    p.add_argument("config", nargs="?", help="preset or .toml file (default: preset default)")
    p.add_argument("--list", action="store_true", help="list the presets, one line each")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("matmul", help="int8 matrix multiply on the NPU: C = A @ B (int32)")
    p.add_argument("--a", required=True, help="A.npy, int8 values, M x K")
    p.add_argument("--b", required=True, help="B.npy, int8 values, K x N")
    p.add_argument("-o", "--output", required=True,
                   help="C.npy to write (int32, M x N; .npy is appended when missing)")
    p.add_argument("--backend", default="golden", choices=BACKENDS)
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.set_defaults(func=cmd_matmul)

    from runtime.compiler.models import MODELS
    model_help = (f"a built-in model ({', '.join(MODELS)}), with optional sizes as in "
                  f"'bert[tokens=64,width=64]', an ONNX file or a .neu10 from `neu10 import`")

    def onnx_options(p):
        p.add_argument("--input-shape", action="append", metavar="NAME=D,D,..",
                       help="fix a dynamic input shape of an ONNX model (repeatable; NAME= "
                       "may be left out when the model has one input)")
        p.add_argument("--calibrate", metavar="INPUTS.npy|.npz", help="calibration inputs of "
                       "an ONNX model (default: a seeded random batch, with a warning)")

    p = sub.add_parser("run", help="one inference of a model on a vNPU, with a report")
    p.add_argument("model", help=model_help)
    onnx_options(p)
    p.add_argument("--vnpu", metavar="ME,VE", help="engines of the vNPU (default: all, or "
                   "what --budget buys)")
    p.add_argument("--budget", type=float, help="price per cycle the tenant pays: the "
                   "allocator picks ME,VE from the model's profile")
    p.add_argument("--price-me", type=float, default=1.0, help="price of an ME per cycle")
    p.add_argument("--price-ve", type=float, default=1.0, help="price of a VE per cycle")
    p.add_argument("--backend", default="golden", choices=BACKENDS)
    p.add_argument("--policy", default="harvest", choices=["static", "harvest", "temporal", "v10"])
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--listing", metavar="FILE", help="also write the compiled program as "
                   "assembly, each µTOp named after the operator it belongs to")
    p.add_argument("--per-channel", action="store_true", help="quantize weights with a "
                   "scale per output channel (requantized per lane by `vrqr`), not per tensor")
    p.add_argument("--max-cycles", type=int, default=MAX_RUN_CYCLES, help="cycles a timed "
                   f"backend may run before the run is called unfinished (default "
                   f"{MAX_RUN_CYCLES}: ResNet-50 takes about 64M on `default`)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("import", help="an ONNX model quantized (int8, post-training), "
                       "compiled and checked on the golden model, saved as .neu10")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", metavar="MODEL.neu10", help="default: next to the model")
    p.add_argument("--config", default="default", help="preset or .toml file to check it on")
    onnx_options(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("accuracy", help="a model's int8 accuracy over many input batches "
                       "(golden), each output checked bit for bit")
    p.add_argument("model", help=model_help)
    onnx_options(p)
    p.add_argument("--batches", type=int, default=100, help="input batches (default 100)")
    p.add_argument("--per-channel", action="store_true", help="weights with a scale per "
                   "output channel")
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_accuracy)

    p = sub.add_parser("export", help="a built-in model as an ONNX file")
    p.add_argument("model", help=f"{', '.join(MODELS)}, with optional sizes as in "
                   f"'bert[tokens=64]'")
    p.add_argument("-o", "--output", metavar="FILE.onnx", help="default: NAME.onnx")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights (default 0)")
    p.set_defaults(func=cmd_export)

    from runtime.backends.verilog import BLOCKS
    p = sub.add_parser("verilog", help="write the pNPU (or one block) as Verilog")
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.add_argument("--block", default="npu", choices=BLOCKS)
    p.add_argument("-o", "--output", required=True, help="Verilog file to write")
    p.add_argument("--lint", action="store_true", help="then lint it with verilator -Wall")
    p.set_defaults(func=cmd_verilog)

    p = sub.add_parser("bench", help="engine throughput and simulator speed")
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("validate", help="the timing model (--backend perf) against the RTL on "
                                        "Verilator: errors per case and their summary")
    p.add_argument("--only", metavar="GROUP,..", help="some of: conformance, models, "
                   "serving, large (default: all)")
    p.add_argument("--matrix", default="quick", help="experiment whose serving points to "
                   "compare (default quick)")
    p.add_argument("--requests", type=int, default=60,
                   help="requests of each serving point's slowest tenant (default 60)")
    p.add_argument("--every", action="store_true", help="a line per comparison, then the summary")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("serve", help="serve request streams of several tenants: latency, "
                       "throughput, utilization per policy")
    p.add_argument("tenants", nargs="+", metavar="MODEL[:ME,VE]",
                   help="a tenant: a model and its vNPU's engines (default: the allocator's "
                   "choice for an equal share of the NPU)")
    p.add_argument("--policy", default="harvest", choices=["static", "harvest", "temporal",
                                                           "v10", "all"])
    p.add_argument("--load", type=float, help="arrival rate as a fraction of each tenant's "
                   "isolated saturation throughput, up to 2 (default 0.6; not with --closed "
                   "or --replay)")
    p.add_argument("--closed", type=int, metavar="N", help="closed loop instead: N requests "
                   "of each tenant outstanding (saturated throughput)")
    p.add_argument("--replay", metavar="TRACE.csv", help="arrivals from a CSV file instead: "
                   "a 'cycle,tenant' header, then a row per request in time order (tenants "
                   "numbered from 0 as given)")
    p.add_argument("--requests", type=int, default=100, help="requests of the slowest tenant; each other "
                   "tenant gets as many as arrive in the same time (default 100)")
    p.add_argument("--seed", type=int, default=1, help="seed of the arrivals (default 1)")
    p.add_argument("--priority", metavar="P,P,..", help="each tenant's priority, 0..15 "
                   "(temporal and v10 policies)")
    p.add_argument("--time-slice", type=int, help="temporal policy: cycles before the NPU may "
                   "switch tenants (default 4096)")
    p.add_argument("--backend", default="verilator", choices=TIMED_BACKENDS,
                   help="simulator (default verilator: streams are millions of cycles)")
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.add_argument("--json", action="store_true", help="print one JSON list (a point per policy)")
    p.add_argument("--trace-out", metavar="FILE.json", help="write the timeline (engines and "
                   "requests) in the Chrome trace-event format, for ui.perfetto.dev; with "
                   "several policies one file each (FILE.POLICY.json)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("experiment", help="a matrix of serving points (mixes x policies x "
                       "loads x seeds): results, summary and plots in reports/NAME")
    p.add_argument("matrix", nargs="?", default="quick", metavar="PRESET|FILE.toml",
                   help="quick (default; minutes), paper (hours of CPU) or a TOML matrix")
    p.add_argument("--name", help="folder under --reports (default: the preset's name or "
                   "the file's stem)")
    p.add_argument("--reports", default="reports", help="parent folder (default reports)")
    p.add_argument("--jobs", type=int, help="points run at once on this machine (default: "
                   "one per CPU)")
    p.add_argument("--ray", metavar="ADDRESS", help="run the points on a Ray cluster instead: "
                   "its address, 'auto' for the cluster this machine is in, or 'local' to "
                   "start one here")
    p.add_argument("--backend", choices=TIMED_BACKENDS, help="simulator of every point "
                   "(default: the matrix's, verilator for the presets)")
    p.add_argument("--list", action="store_true", help="print the points and stop")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("synth", help="area, flip-flops, memory and logic depth per block "
                       "(Yosys), and the share of Neu10's additions")
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.add_argument("--block", default="all", choices=["all", "matrix_engine", "systolic_array",
                                                      "vector_engine", "dma_engine", "scratchpad",
                                                      "dispatcher", "host_interface",
                                                      "body_fifo"])
    p.add_argument("--check-scaling", action="store_true", help="also measure the error of "
                   "extrapolating arrays and vector widths (synthesizes each at 2, 4, 8, 16 lanes)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="two tenants sharing one NPU")
    p.add_argument("--config", default="default", help="preset or .toml file")
    p.add_argument("--backend", default="pysim", choices=TIMED_BACKENDS)
    p.set_defaults(func=cmd_demo)
    return parser


class _ReaderMayLeave(io.TextIOBase):
    """stdout for a reader that may go away (`neu10 serve ... | head -1`): once the pipe is
    broken, the rest of the output goes to devnull and the command runs to its end, so its
    exit code says how the command went (1: a faulted point), never whether the reader
    waited for the last line."""

    def __init__(self, stream):
        super().__init__()
        self.stream, self.gone = stream, False

    def write(self, text):
        if not self.gone:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self):
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_left()

    def _reader_left(self):
        self.gone = True
        # Python flushes stdout again at exit: point its file at devnull (the recipe of the
        # signal module's docs).
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError):  # stdout is no file (captured): nothing to flush
            pass

    def isatty(self):
        return self.stream.isatty()

    def writable(self):
        return True

    def fileno(self):
        return self.stream.fileno()

    @property
    def encoding(self):
        return self.stream.encoding

    def __getattr__(self, name):         # buffer, errors, ...: the stream's own
        return getattr(self.stream, name)


def main(argv=None):
    stdout = sys.stdout
    sys.stdout = _ReaderMayLeave(stdout)
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except (UsageError, AsmError, ConfigError) as error:
        print(f"neu10: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neu10: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
