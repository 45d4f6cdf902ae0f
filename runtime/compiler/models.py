"""Models by reference, compiled for an NPU: a built-in name with optional sizes
(``bert``, ``bert[tokens=64,width=64]``, see zoo.py), an ONNX file (``model.onnx``) or a
quantized model written by `neu10 import` (``model.neu10``).

Every model is an ONNX graph lowered by the importer (onnx_import.py). Post-training
quantization: the float reference (onnx_reference.py) runs on a *calibration* batch and
every activation's int8 scale is its largest magnitude there (from `--calibrate` inputs
for an imported model, or a seeded random batch); the program is then compiled for an
*evaluation* batch. The int8 result is compared with the float reference on that batch
(`accuracy`): top-1 agreement for resnet, relative L2 error otherwise.
"""

import functools
import json
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import google.protobuf.message
import numpy as np
import onnx

from . import zoo
from .builder import Program
from .graph import Graph
from .onnx_import import OnnxError, OnnxModel, calibrate, load, lower, random_inputs

__all__ = ["MODELS", "CompiledModel", "ModelError", "compile_model", "accuracy", "compare",
           "load_model", "save_quantized", "model_name"]

#: The built-in models' names.
MODELS = tuple(zoo.MODELS)

_REF = re.compile(r"^(?P<name>[a-z][a-z0-9-]*)(\[(?P<sizes>[^\]]*)\])?$")


class ModelError(OnnxError):
    """A model reference or file that cannot be used; the message names it."""


@dataclass
class CompiledModel:
    name: str
    graph: Graph
    program: Program
    float_ref: np.ndarray         # float32 reference output (rows x columns, real values)
    metric: str                   # "top1" or "relerr"
    columns: int                  # meaningful output columns (the rest is padding)
    compile_seconds: float
    source: OnnxModel             # the calibrated model it was compiled from

    @property
    def expected(self):
        """The exact integers the NPU must produce (rows x padded columns); the graph's
        output carries the model's name."""
        return self.graph.outputs[self.name][1].ref

    @property
    def scale(self):
        return self.graph.outputs[self.name][1].scale


def compare(model, out_int):
    """The int8 output against the float32 reference: (rows whose argmax agrees, rows,
    relative L2 error)."""
    real = np.asarray(out_int, np.float64)[:, :model.columns] * model.scale
    ref = model.float_ref[:, :model.columns].astype(np.float64)
    agree = int(np.sum(real.argmax(axis=1) == ref.argmax(axis=1)))
    return agree, len(ref), float(np.linalg.norm(real - ref) / max(np.linalg.norm(ref), 1e-12))


def accuracy(model, out_int):
    """(metric name, value): top-1 agreement or relative L2 error of the int8 output."""
    agree, rows, error = compare(model, out_int)
    if model.metric == "top1":
        return "top1_agreement", agree / rows
    return "relative_error", error


def is_file(ref):
    return str(ref).endswith((".onnx", ".neu10"))


def model_name(ref):
    """A model's display name: the reference of a built-in, a file's stem."""
    return Path(ref).stem if is_file(ref) else str(ref)


def parse_builtin(ref):
    """'bert[tokens=64,layers=2]' -> ('bert', {'tokens': 64, 'layers': 2})."""
    match = _REF.match(str(ref))
    if not match or match["name"] not in zoo.BUILTIN:
        raise ModelError(f"unknown model {ref!r}; expected one of {', '.join(zoo.BUILTIN)} (with "
                         f"optional sizes, e.g. bert[tokens=64,width=64]), or a .onnx or "
                         f".neu10 file")
    sizes = {}
    for item in filter(None, (match["sizes"] or "").split(",")):
        key, eq, value = item.partition("=")
        if not eq or not value.strip().isdigit():
            raise ModelError(f"{ref!r}: size {item!r} should be KEY=INTEGER; {match['name']} "
                             f"takes {', '.join(f'{k}={v}' for k, v in zoo.SIZES[match['name']].items())}")
        sizes[key.strip()] = int(value)
    try:
        zoo.check_sizes(match["name"], sizes)
    except ValueError as error:
        raise ModelError(str(error)) from None
    return match["name"], sizes


@functools.lru_cache(maxsize=32)
def load_model(ref, seed=0, input_shapes=None, calibration=None):
    """The calibrated OnnxModel of a reference (cached). ``input_shapes``: a tuple of
    (name, shape) fixing dynamic dimensions; ``calibration``: a .npy/.npz file of inputs."""
    shapes = dict(input_shapes or ())
    if str(ref).endswith(".neu10"):
        return _load_quantized(ref, shapes)
    if is_file(ref):
        model = load(ref, input_shapes=shapes)
        batches = (_calibration_batches(model, calibration) if calibration else
                   _random_batches(model, seed))
        model.extra["calibration"] = calibration or "random"
    else:
        name, sizes = parse_builtin(ref)
        try:
            proto = zoo.build(name, seed, **sizes)
        except ValueError as error:
            raise ModelError(str(error)) from None
        model = load(proto, name=str(ref))
        model.metric = zoo.BUILTIN[name][1]
        batches = _random_batches(model, seed)
        model.extra["calibration"] = "builtin"
    model.scales = calibrate(model, batches)
    return model


#: Random calibration batches: the scales are the largest magnitudes over all of them, so
#: an evaluation batch rarely saturates (one batch: GlobalAveragePool's test model has a
#: relative error of 0.15 on another batch; 8 batches: see test_onnx.py).
CALIBRATION_BATCHES = 8


def _random_batches(model, seed):
    rng = np.random.default_rng(seed + 1)
    return [random_inputs(model, rng) for _ in range(CALIBRATION_BATCHES)]


def read_arrays(path):
    """The array of a .npy file or the arrays of an .npz file; ModelError (naming the file
    and what it is not) for anything else."""
    try:
        with open(path, "rb") as file:
            head = file.read(6)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, expected a .npy or .npz file") from None
    except OSError as error:
        raise ModelError(f"{path}: cannot read: {error.strerror}") from None
    if head != b"\x93NUMPY" and head[:4] != b"PK\x03\x04":
        raise ModelError(f"{path}: not a .npy or .npz file (numpy.save and numpy.savez write "
                         f"them)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        what = ("holds Python objects (pickled), expected arrays of numbers"
                if "pickle" in str(error) else f"a damaged .npy/.npz file ({error})")
        raise ModelError(f"{path}: {what}") from None


def _calibration_batches(model, path):
    """Input batches from a .npy (one input: one batch of its shape, or a stack of them)
    or .npz (arrays named after the inputs)."""
    try:
        data = read_arrays(path)
    except ModelError as error:
        raise ModelError(f"--calibrate {error}") from None
    arrays = dict(data) if isinstance(data, np.lib.npyio.NpzFile) else None
    if arrays is None:
        if len(model.inputs) != 1:
            raise ModelError(f"--calibrate {path}: the model has inputs "
                             f"{', '.join(model.inputs)}; give an .npz with one array each")
        arrays = {next(iter(model.inputs)): data}
    batches = None
    for name, (shape, dtype) in model.inputs.items():
        if name not in arrays:
            raise ModelError(f"--calibrate {path}: no array for input {name!r}")
        a = np.asarray(arrays[name])
        if a.shape == shape:
            a = a[None]
        if a.shape[1:] != shape:
            raise ModelError(f"--calibrate {path}: input {name!r} has shape {a.shape}; "
                             f"expected {shape} or (batches, {', '.join(map(str, shape))})")
        batches = batches or [{} for _ in range(len(a))]
        if len(a) != len(batches):
            raise ModelError(f"--calibrate {path}: inputs hold different numbers of batches")
        if a.dtype.kind not in "biuf":
            raise ModelError(f"--calibrate {path}: input {name!r} holds {a.dtype} values; "
                             f"expected numbers")
        for batch, value in zip(batches, a):
            batch[name] = value.astype(dtype)
    return batches


def save_quantized(model, path):
    """Write a calibrated model as .neu10: a zip of the folded ONNX graph and its scales."""
    meta = {"name": model.name, "metric": model.metric, "output": model.output,
            "calibration": model.extra.get("calibration"), "scales": model.scales,
            "qdq_scales": model.extra.get("qdq_scales", {}),
            "weight_scales": {name: [scale.tolist(), axis] for name, (scale, axis)
                              in model.extra.get("weight_scales", {}).items()},
            "per_channel": model.extra.get("per_channel", False)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", model.to_proto().SerializeToString())
        archive.writestr("quantization.json", json.dumps(meta, indent=1, sort_keys=True))


def _load_quantized(path, shapes):
    try:
        with zipfile.ZipFile(path) as archive:
            proto = onnx.load_from_string(archive.read("model.onnx"))
            meta = json.loads(archive.read("quantization.json"))
        metric, scales = meta["metric"], meta["scales"]
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile,
            google.protobuf.message.DecodeError) as error:
        raise ModelError(f"{path}: not a model written by `neu10 import` ({error!r})") from None
    model = load(proto, input_shapes=shapes, name=Path(path).stem)
    model.metric, model.scales = metric, scales
    model.extra["calibration"] = meta.get("calibration")
    model.extra["qdq_scales"] = meta.get("qdq_scales", {})
    model.extra["weight_scales"] = {name: (np.asarray(scale, np.float64), axis) for
                                    name, (scale, axis) in meta.get("weight_scales", {}).items()}
    model.extra["per_channel"] = meta.get("per_channel", False)
    return model


def compile_model(ref, config, *, seed=0, batch=0, spad_rows=None, hbm_words=None,
                  input_shapes=None, calibration=None, per_channel=False):
    """Weights from ``seed`` (built-ins), scales calibrated on batch ``seed+1`` (or the
    ``calibration`` file), compiled for input batch ``seed+2+batch`` (the program does not
    depend on the input: ``batch`` changes only the HBM image and the expected output).
    ``per_channel``: weights quantized with a scale per output channel, not per tensor
    (always so for a pre-quantized model whose weights have them).
    Raises ModelError (an OnnxError) or CompileError, both ValueErrors naming the problem."""
    model = load_model(ref, seed, tuple((k, tuple(v)) for k, v in (input_shapes or {}).items()),
                       calibration)
    inputs = random_inputs(model, np.random.default_rng(seed + 2 + batch))
    try:
        reference, values = model.reference(inputs)
    except (ValueError, IndexError, TypeError) as error:
        raise ModelError(f"the float reference fails on a random batch: {error}") from None
    start = time.perf_counter()
    per_channel = per_channel or model.extra.get("per_channel", False)
    graph = Graph(config, spad_rows=spad_rows, hbm_words=hbm_words, per_channel=per_channel)
    out = lower(graph, model, model.scales, inputs, values)
    name = model_name(ref)
    graph.output(name, out.t)
    program = graph.build()
    seconds = time.perf_counter() - start
    float_ref = reference.reshape(out.t.rows, out.cols)
    return CompiledModel(name, graph, program, float_ref, model.metric, out.cols, seconds,
                         model)
