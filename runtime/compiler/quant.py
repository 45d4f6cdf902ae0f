"""int8 quantization: scales, fixed-point multipliers, the integer rules the NPU applies,
and the 256-entry lookup tables of the nonlinear functions.

Tensors are symmetric per-tensor int8: real = q * scale. A real factor is applied in
integer arithmetic as ``(x * mult) >> shift`` with rounding (the `vrq` rule), so every
rescale in a model is a (mult, shift) pair chosen here.
"""

import math

import numpy as np

from isa.golden import requantize

__all__ = ["scale_of", "quantize", "multiplier", "rq", "activation_table", "ACTIVATIONS", "erf",
           "int_matmul"]


def int_matmul(a, b):
    """``a @ b`` of integer matrices, exactly, as int64. When every partial sum fits the 53
    bits of a double (int8 operands: K up to 2^38), BLAS does it in float64 and the
    result is exact; otherwise numpy's (unaccelerated) int64 matmul."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if not a.size or not b.size:
        return a @ b
    bound = int(np.abs(a).max()) * int(np.abs(b).max()) * a.shape[-1]
    if bound < 1 << 53:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a @ b


def scale_of(values):
    """The int8 scale that maps the largest magnitude of ``values`` to 127."""
    peak = float(np.max(np.abs(values))) if np.size(values) else 0.0
    return peak / 127 if peak > 0 else 1.0


def quantize(values, scale, bits=8):
    """Round to the nearest integer multiple of ``scale``, saturated to ``bits`` bits."""
    top = (1 << (bits - 1)) - 1
    return np.clip(np.round(np.asarray(values, dtype=np.float64) / scale), -top - 1,
                   top).astype(np.int64)


def multiplier(real):
    """(mult, shift) with mult * 2^-shift ~= real, mult in [2^30, 2^31): 31-bit precision."""
    if not real > 0 or not math.isfinite(real):
        raise ValueError(f"a rescale factor must be positive and finite, not {real!r}")
    shift = 30 - math.floor(math.log2(real))
    if shift > 63:
        return 0, 0                      # below 2^-33: everything rounds to zero
    if shift < 0:
        raise ValueError(f"rescale factor {real!r} is too large (at most 2^30)")
    mult = round(real * (1 << shift))
    if mult >= 1 << 31:
        mult, shift = mult >> 1, shift - 1
    return mult, shift


def lane_multipliers(reals):
    """(mults, shift): one multiplier per output channel and the shift they share (`vrqr`),
    mults[c] * 2^-shift ~= reals[c]; the largest factor gets 31 bits, the others fewer."""
    reals = np.asarray(reals, dtype=np.float64)
    if not np.all(np.isfinite(reals) & (reals > 0)):
        bad = reals[~(np.isfinite(reals) & (reals > 0))]
        raise ValueError(f"rescale factors must be positive and finite, not {bad[:4]}")
    _, shift = multiplier(float(np.max(reals)))
    return np.round(reals * 2.0 ** shift).astype(np.int64), shift


def rq(x, mult, shift, zp=0):
    """The compiler's requantization: `vrq` with `vsetq`'s even flag (isa.golden's
    ``requantize``), i.e. (x * mult) / 2^shift rounded to the nearest integer, exact
    halves to even (as ONNX's QuantizeLinear), + zp, int8, as int64 (``mult`` one
    multiplier, or one per column as `vrqr` takes them)."""
    return requantize(x, mult, shift, zp, even=True).astype(np.int64)


#: The error function, elementwise (numpy has none).
erf = np.vectorize(math.erf, otypes=[float])


def _gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


ACTIVATIONS = {
    "gelu": _gelu,                                   # the tanh approximation
    "gelu_erf": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
}


def activation_table(name, in_scale, out_scale):
    """LUT[j] = quantized f((j - 128) * in_scale) at ``out_scale``: int8 in, int8 out."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    x = (np.arange(256) - 128) * in_scale
    return quantize(ACTIVATIONS[name](x), out_scale)
