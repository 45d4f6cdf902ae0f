"""`neu10 accuracy`: a model's int8 accuracy over many input batches, on the golden model.

The program does not depend on the input, but the compiler's integer reference does: each
batch is compiled (its HBM image and expected output) and run, its output checked bit for
bit against that reference and compared with the float32 reference.
"""

from dataclasses import asdict, dataclass

import numpy as np

from runtime.compiler.models import compare, compile_model

from .inference import execute

__all__ = ["AccuracyReport", "measure_accuracy"]


@dataclass
class AccuracyReport:
    model: str
    batches: int
    bit_exact: int                # batches whose output equals the integer reference
    rows: int                     # output rows compared (samples: images, tokens, users)
    columns: int                  # output columns (classes); top-1 needs more than one
    top1_agreement: float         # rows whose argmax equals the float reference's
    relative_error_mean: float    # relative L2 error of a batch's output, over batches
    relative_error_max: float

    def to_dict(self):
        return asdict(self)

    def text(self):
        top1 = (f"{self.top1_agreement:.4f} of {self.rows} output rows agree with float32"
                if self.columns > 1 else "- (one output column)")
        return "\n".join([
            f"model {self.model}: {self.batches} input batches on golden",
            f"  bit-exact   {self.bit_exact} of {self.batches} outputs equal the integer "
            f"reference",
            f"  top-1       {top1}",
            f"  rel. error  mean {self.relative_error_mean:.4f}, max "
            f"{self.relative_error_max:.4f} (L2, per batch, vs float32)"])


def measure_accuracy(ref, config, batches, **compile_args):
    """Batches 0..batches-1 of model ``ref`` (inputs of seed 2+b), each compiled and run on
    golden; raises ValueError for a count below 1."""
    if not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive integer, not {batches!r}")
    exact, agree, rows, errors, name = 0, 0, 0, [], str(ref)
    for batch in range(batches):
        model = compile_model(ref, config, batch=batch, **compile_args)
        outputs, _ = execute(model.graph, model.program)
        out = outputs[model.name]
        exact += bool(np.array_equal(out, model.expected))
        agreed, compared, error = compare(model, out)
        agree, rows = agree + agreed, rows + compared
        errors.append(error)
        name = model.name
    return AccuracyReport(name, batches, exact, rows, model.columns, agree / rows,
                          float(np.mean(errors)),
                          float(np.max(errors)))
