"""ONNX import: the float reference against onnxruntime, every supported operator and three
exporter-style models bit-exact on the golden model (and the RTL) and close to float,
built-in models round-tripping through ONNX files, and one-line errors for bad input."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

import onnx_models as om
from isa.config import NPUConfig
from runtime.apps.cli import main
from runtime.apps.experiment import code_digest
from runtime.apps.inference import execute
from runtime.compiler import zoo
from runtime.compiler.models import MODELS, accuracy, compile_model
from runtime.compiler.onnx_import import load, random_inputs

DEFAULT = NPUConfig()

#: Relative L2 error of the int8 result against float, per test model (measured values are
#: in the closing note of issue 15; these leave about 2x room).
TOLERANCE = {"Softmax": 0.06, "MatMul-activations": 0.05, "Mul": 0.06, "AveragePool": 0.06,
             "LayerNormalization": 0.08, "Conv-7x7-stride2-pad3": 0.06,
             "Conv-stride2": 0.05, "Conv": 0.05, "mlp": 0.06, "cnn": 0.05, "encoder": 0.12}
WHOLE = {"mlp": om.mlp, "cnn": om.cnn, "encoder": om.encoder}


def save(tmp_path, proto, name="model"):
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path)
    return str(path)


def model_of(name):
    return WHOLE[name]() if name in WHOLE else om.single_op(name)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", om.SINGLE_OPS + tuple(WHOLE) + MODELS)
def test_reference_matches_onnxruntime(name, tmp_path):
    proto = zoo.build(name) if name in MODELS else model_of(name)
    path = save(tmp_path, proto)
    model = load(path)
    inputs = random_inputs(model, np.random.default_rng(3))
    ours, _ = model.reference(inputs)
    theirs = onnxruntime.InferenceSession(path).run(None, inputs)[0]
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() <= 1e-5 * max(np.abs(theirs).max(), 1e-6)


@pytest.mark.parametrize("name", om.SINGLE_OPS + tuple(WHOLE))
def test_golden_bit_exact_and_close_to_float(name, tmp_path):
    model = compile_model(save(tmp_path, model_of(name), name), DEFAULT)
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[name], model.expected)
    metric, value = accuracy(model, outputs[name])
    assert metric == "relative_error" and value < TOLERANCE.get(name, 0.04), value


@pytest.mark.parametrize("name", tuple(WHOLE))
def test_verilator_bit_exact(name, tmp_path):
    model = compile_model(save(tmp_path, model_of(name), name), DEFAULT)
    outputs, run_ = execute(model.graph, model.program, backend="verilator")
    assert np.array_equal(outputs[name], model.expected) and run_.makespan > 0


def test_patterns_lower_to_one_operator(tmp_path):
    """The Erf formula is one table lookup (fused into its MatMul), the decomposed
    LayerNormalization one layer norm, the heads' reshapes and transposes move no data
    (K's transpose too: the scores' MatMul loads K's rows as weight columns, ldw with t),
    and the per-head context is written in place (no concat)."""
    model = compile_model(save(tmp_path, om.encoder(), "encoder"), DEFAULT)
    kinds = [kind for kind, _ in model.graph.ops]
    assert kinds.count("layernorm") == 2 and "activation" not in kinds
    assert "transpose" not in kinds and "concat" not in kinds
    loads = [i for u in model.program.utops for i in u.body if i.op.mnemonic == "ldw"]
    assert sum(i.args["t"] for i in loads) > 0
    assert kinds.count("linear") == 6 and kinds.count("softmax") == 2
    erf = compile_model(save(tmp_path, om.single_op("Gelu-erf-pattern"), "g"), DEFAULT)
    assert [k for k, _ in erf.graph.ops] == ["input", "activation", "output"]


def test_encoder_at_opset_18(tmp_path):
    """ReduceMean takes its axes as an input from opset 18."""
    model = compile_model(save(tmp_path, om.encoder(opset=18), "e"), DEFAULT)
    assert [k for k, _ in model.graph.ops].count("layernorm") == 2
    assert accuracy(model, model.expected)[1] < TOLERANCE["encoder"]


@pytest.mark.parametrize("name", MODELS)
def test_builtin_round_trip_gives_the_same_program(name, tmp_path, capsys):
    path = tmp_path / f"{name}.onnx"
    assert run(capsys, "export", name, "-o", path)[0] == 0
    direct, imported = compile_model(name, DEFAULT), compile_model(str(path), DEFAULT)
    assert imported.program.words == direct.program.words
    assert imported.graph.builder.hbm_image.keys() == direct.graph.builder.hbm_image.keys()
    assert all(np.array_equal(imported.graph.builder.hbm_image[k], v)
               for k, v in direct.graph.builder.hbm_image.items())
    assert np.array_equal(imported.expected, direct.expected)


def test_import_writes_a_quantized_model(tmp_path, capsys):
    source = save(tmp_path, om.mlp(), "mlp")
    model = load(source)
    rng = np.random.default_rng(9)
    batches = np.stack([random_inputs(model, rng)["x"] for _ in range(4)])
    np.save(tmp_path / "cal.npy", batches)
    code, out, err = run(capsys, "import", source, "--calibrate", tmp_path / "cal.npy",
                         "-o", tmp_path / "mlp.neu10")
    assert code == 0 and not err and "mlp.neu10: 5 nodes lowered to" in out
    direct = compile_model(source, DEFAULT, calibration=str(tmp_path / "cal.npy"))
    stored = compile_model(str(tmp_path / "mlp.neu10"), DEFAULT)
    assert stored.program.words == direct.program.words
    assert np.array_equal(stored.expected, direct.expected)
    # A different calibration gives different scales, hence another program.
    assert direct.program.words != compile_model(source, DEFAULT).program.words
    code, out, err = run(capsys, "run", tmp_path / "mlp.neu10", "--json")
    report = json.loads(out)
    assert code == 0 and report["exact"] and report["model"] == "mlp"


def test_run_onnx_warns_about_random_calibration(tmp_path, capsys):
    code, out, err = run(capsys, "run", save(tmp_path, om.cnn(), "cnn"))
    assert code == 0 and "equals the integer reference bit for bit" in out
    assert err.startswith("neu10: warning: no --calibrate inputs")


def test_dynamic_shapes_need_input_shape(tmp_path, capsys):
    proto = om.mlp()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = save(tmp_path, proto, "dyn")
    code, _, err = run(capsys, "run", path)
    assert code == 2 and "input 'x' has dynamic shape ['batch', 24]; give --input-shape " \
        "x=N,24" in err and err.count("\n") == 1
    code, out, _ = run(capsys, "run", path, "--input-shape", "x=32,24", "--json")
    assert code == 0 and json.loads(out)["exact"]
    code, _, err = run(capsys, "run", path, "--input-shape", "x=32,25")
    assert code == 2 and "does not match the model's shape ['batch', 24]" in err


def _with(proto, **changes):
    for key, value in changes.items():
        setattr(proto, key, value)
    return proto


def _unsupported_op():
    n = om.Net()
    x = n.input("x", [8, 8])
    return n.model(n.op("Cos", [x]))


def _conv_with(**attrs):
    n = om.Net()
    x = n.input("x", [1, 8, 4, 4])
    y = n.op("Conv", [x, n.weight(8, 8, 3, 3)], kernel_shape=[3, 3], **attrs)
    return n.model(n.op("Flatten", [n.op("GlobalAveragePool", [y])]))


def _maxpool3():
    n = om.Net()
    x = n.input("x", [1, 8, 4, 4])
    y = n.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    return n.model(n.op("Flatten", [n.op("GlobalAveragePool", [y])]))


def _wide_mlp():
    """K = 16384: one weight panel (K rows and its bias row) is larger than the whole
    scratchpad, whatever runs by bands."""
    n = om.Net()
    x = n.input("x", [8, 16384])
    return n.model(n.op("MatMul", [x, n.weight(16384, 8)]))


def _huge_table():
    n = om.Net()
    ids = n.input("ids", [8], TensorProto.INT64)
    return n.model(n.op("Gather", [n.const(np.zeros((600_000, 64))), ids]))


def _softmax_after_unsqueeze():
    n = om.Net()
    x = n.input("x", [4, 16])
    return n.model(n.op("Softmax", [n.op("Unsqueeze", [x, n.const([2], np.int64)])], axis=-1))


def _sigmoid_image():
    n = om.Net()
    x = n.input("x", [1, 8, 4, 4])
    return n.model(n.op("Flatten", [n.op("GlobalAveragePool", [n.op("Sigmoid", [x])])]))


def _row_bias():
    n = om.Net()
    x = n.input("x", [16, 16])
    return n.model(n.op("Add", [n.op("MatMul", [x, n.weight(16, 16)]), n.const(np.ones((16, 1)))]))


def _broadcast_add():
    n = om.Net()
    a, b = n.input("a", [2, 1, 16]), n.input("b", [1, 2, 16])
    return n.model(n.op("Add", [a, b]))


def _reversed_gelu():
    n = om.Net()
    x = n.input("x", [8, 8])
    e = n.op("Erf", [n.op("Div", [n.const(np.sqrt(2)), x])])
    return n.model(n.op("Mul", [n.op("Mul", [x, n.op("Add", [e, n.const(1.0)])]), n.const(0.5)]))


def _transposed_b_of_13_columns():
    """x @ B^T with K = 13 after a Sigmoid: B's padding columns are sigmoid(0), not 0, and
    would take part in the product (the lowering refuses it)."""
    n = om.Net()
    x, z = n.input("x", [16, 13]), n.input("z", [16, 13])
    b = n.op("Sigmoid", [n.op("MatMul", [z, n.weight(13, 13)])])
    return n.model(n.op("MatMul", [x, n.op("Transpose", [b], perm=[1, 0])]))


def _opset(version):
    proto = om.mlp()
    proto.opset_import[0].version = version
    return proto


@pytest.mark.parametrize("make, message", [
    (lambda: b"this is not a protobuf", "not an ONNX model"),
    (lambda: _opset(11), "opset 11 is outside the supported range 13..22"),
    (_unsupported_op, "node 'cos1' (Cos) is not supported; supported operators: Add, "),
    (lambda: _conv_with(auto_pad="SAME_UPPER"), "(Conv): group and auto_pad are not supported"),
    (_maxpool3, "(MaxPool): ceil_mode, auto_pad and dilations are not supported"),
    (_wide_mlp, "scratchpad rows"),
    (_softmax_after_unsqueeze, "which is not the matrix's columns"),
    (_sigmoid_image, "Sigmoid of an image would turn its zero border"),
    (_row_bias, "a constant of shape (16, 1) added to (16, 16): supported is a bias along axis 1"),
    (_broadcast_add, "supported are equal shapes (no broadcasting)"),
    (_reversed_gelu, "(Erf) is not supported"),
    (_transposed_b_of_13_columns, "(Transpose): transposing 13 columns needs a multiple of 8"),
])
def test_bad_models_are_one_line_errors(make, message, tmp_path, capsys):
    made = make()
    path = tmp_path / "bad.onnx"
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        onnx.save(made, path)
    code, _, err = run(capsys, "run", path, "--calibrate", _zeros_for(made, tmp_path))
    assert code == 2 and err.startswith("neu10: error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_a_table_larger_than_hbm_is_a_one_line_error(tmp_path, capsys):
    """600000 x 64 int8 (9.6 M packed words) against the small config's 65536 HBM words (the
    default's gigabyte holds it)."""
    made = _huge_table()
    path = tmp_path / "huge.onnx"
    onnx.save(made, path)
    code, _, err = run(capsys, "run", path, "--config", "small",
                       "--calibrate", _zeros_for(made, tmp_path))
    assert code == 2 and err.startswith("neu10: error: ") and err.count("\n") == 1, err
    assert "HBM words" in err, err


def _zeros_for(made, tmp_path):
    """A calibration file (so no warning is printed), whatever the model's input."""
    path = tmp_path / "cal.npz"
    if isinstance(made, bytes):
        np.savez(path, x=np.zeros(1))
        return path
    arrays = {}
    for value in made.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        integer = value.type.tensor_type.elem_type == TensorProto.INT64
        arrays[value.name] = np.zeros(shape, np.int64 if integer else np.float32)
    np.savez(path, **arrays)
    return path


def test_longer_than_the_instruction_buffer(capsys):
    """bert[layers=8] compiles to about 11k words, more than the 4096-word instruction
    buffer: programs stream from HBM, so it runs (on golden, bit-exact)."""
    code, out, _ = run(capsys, "run", "bert[layers=8]")
    words = int(out.split("program")[1].split("words")[0])
    assert code == 0 and words > NPUConfig().imem_words and "bit for bit" in out


def test_quantized_file_errors(tmp_path, capsys):
    import zipfile
    with zipfile.ZipFile(tmp_path / "bad.neu10", "w") as archive:
        archive.writestr("model.onnx", b"garbage")
        archive.writestr("quantization.json", "{}")
    code, _, err = run(capsys, "run", tmp_path / "bad.neu10")
    assert code == 2 and "not a model written by `neu10 import`" in err and err.count("\n") == 1


def test_calibration_file_errors(tmp_path, capsys):
    path = save(tmp_path, om.mlp(), "mlp")
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    code, _, err = run(capsys, "run", path, "--calibrate", tmp_path / "bad.npy")
    assert code == 2 and "input 'x' has shape (3, 5); expected (16, 24)" in err
    code, _, err = run(capsys, "run", "ncf", "--calibrate", tmp_path / "bad.npy")
    assert code == 2 and "--input-shape and --calibrate apply to .onnx models" in err
    # Not an array file at all, and an array file of Python objects: no numpy pickle hint.
    (tmp_path / "junk.npy").write_text("junk\n")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, what in (("junk.npy", "not a .npy or .npz file (numpy.save and numpy.savez "
                                    "write them)"),
                       ("objects.npy", "holds Python objects (pickled), expected arrays of "
                                       "numbers")):
        code, _, err = run(capsys, "run", path, "--calibrate", tmp_path / name)
        assert code == 2 and err == f"neu10: error: --calibrate {tmp_path / name}: {what}\n"
        assert "allow_pickle" not in err
        code, _, err = run(capsys, "matmul", "--a", tmp_path / name, "--b", tmp_path / name,
                           "-o", tmp_path / "c.npy")
        assert code == 2 and err == f"neu10: error: {tmp_path / name}: {what}\n"


@pytest.mark.parametrize("ref, message", [
    ("bert[depth=2]", "unknown size 'depth'; bert takes tokens, width, heads, layers, ff"),
    ("bert[tokens=x]", "size 'tokens=x' should be KEY=INTEGER"),
    ("bert[width=30]", "width 30 is not a multiple of heads 4"),
    ("resnet50[blocks=12]", "blocks 12 should be 4 nonzero digits"),
    ("vgg", "unknown model 'vgg'"),
])
def test_size_errors(ref, message, capsys):
    code, _, err = run(capsys, "run", ref)
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("ref", ["bert[tokens=32,heads=2,layers=2]", "resnet[image=16,batch=2]",
                                 "ncf[batch=64,dim=16]", "dlrm[tables=5,vocab=100]"])
def test_sizes_compile_bit_exact(ref):
    model = compile_model(ref, DEFAULT)
    outputs, _ = execute(model.graph, model.program)
    assert np.array_equal(outputs[ref], model.expected)
    metric, value = accuracy(model, outputs[ref])
    assert value >= 0.5 if metric == "top1_agreement" else value < 0.2


def test_serve_an_onnx_tenant_next_to_a_builtin(tmp_path, capsys):
    path = save(tmp_path, om.mlp(), "mlp")
    code, out, _ = run(capsys, "serve", f"{path}:2,2", "ncf:2,2", "--requests", "6", "--json")
    points = json.loads(out)
    assert code == 0 and points[0]["exact"] and not points[0]["problems"]
    assert [t["model"] for t in points[0]["tenants"]] == [path, "ncf"]
    assert all(t["wrong"] == 0 and t["completed"] > 0 for t in points[0]["tenants"])


def test_experiment_keys_follow_model_files(tmp_path):
    path = save(tmp_path, om.mlp(), "mlp")
    before = code_digest((path, "ncf"))
    assert before.startswith(code_digest()) and before != code_digest()
    onnx.save(om.mlp(seed=1), path)
    assert code_digest((path, "ncf")) != before
