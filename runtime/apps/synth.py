"""`neu10 synth`: what the hardware costs. Area, flip-flops, memory and logic depth per
block of the pNPU, from Yosys (runtime.backends.yosys), and the share of what Neu10 adds.

Area is an estimate in NAND2 equivalents: each generic cell Yosys maps to counts with
the weight of ``WEIGHTS`` (typical of a standard-cell library, where a NAND2 is 1). A
memory whose reads are all registered is an SRAM macro, ``SRAM_BIT`` per bit (a 6T bit
cell is about a third of a NAND2; with a macro's periphery about half); a memory read
combinationally cannot be one, and counts as a register file: per bit a flip-flop with a
write enable and a multiplexer per read port. The netlist is not optimized by ABC, so
logic figures are upper bounds, consistent from block to block.

The pNPU is counted as its parts: ``n_me`` matrix engines, ``n_ve`` vector engines,
``n_dma`` DMA engines, the scratchpad (with the pNPU's ports), the dispatcher, the host
interface and a µTOp body FIFO per engine. The HBM model stands for off-chip memory and is
not counted. Neu10's additions are the dispatcher, the host interface (context
registers, request queues, counters) and the body FIFOs: all of them, although a
non-virtualized NPU would need some of it too, so the share is an upper bound.

Blocks whose size grows with the vector width ``ve_lanes`` and the array (matrix engine,
systolic array, vector engine, DMA engine, scratchpad) are synthesized directly when the
lanes and array sides are at most ``DIRECT_UP_TO``; above it (the tpu preset's 128 lanes
and 128x128 arrays) they are synthesized at 4, 8 and 16 lanes, with the array sides and
HBM line in the config's proportion to the lanes, and every figure is extrapolated with
the quadratic through those three points (a systolic array is n^2 cells plus n^2 skew
and deskew registers; lane datapaths grow linearly). ``check_scaling`` measures the
method's error: the quadratic through 2, 4 and 8 against a direct synthesis at 16.
"""

import re
import time

import numpy as np

from runtime.backends.verilog import ToolError, convert
from runtime.backends.yosys import synthesize

__all__ = ["WEIGHTS", "SRAM_BIT", "REGFILE_BIT", "REGFILE_READ", "PARTS", "area",
           "memory_area", "block_figures", "pnpu_report", "check_scaling", "format_report"]

#: NAND2-equivalent area per generic cell (combinational cells of 2-3 inputs, then
#: flip-flops: a plain D flip-flop is about 4.33, an enable or a reset adds a multiplexer
#: or a gate in front of it).
WEIGHTS = {
    "$_NOT_": 0.67, "$_BUF_": 0.67, "$_NAND_": 1.0, "$_NOR_": 1.0, "$_AND_": 1.33,
    "$_OR_": 1.33, "$_ANDNOT_": 1.33, "$_ORNOT_": 1.33, "$_XOR_": 2.33, "$_XNOR_": 2.33,
    "$_MUX_": 2.33, "$_NMUX_": 2.67, "$_AOI3_": 1.67, "$_OAI3_": 1.67, "$_AOI4_": 2.0,
    "$_OAI4_": 2.0,
}
FLIP_FLOP, ENABLE, RESET = 4.33, 1.0, 0.67
#: NAND2 equivalents per bit of a memory whose reads are all registered (an SRAM macro,
#: periphery included).
SRAM_BIT = 0.5
#: A memory read combinationally cannot be an SRAM macro: a register file, per bit a
#: flip-flop with a write enable and, per read port, a 2:1 multiplexer of its read tree.
REGFILE_BIT = FLIP_FLOP + ENABLE
REGFILE_READ = WEIGHTS["$_MUX_"]
#: Largest array side / vector width synthesized directly.
DIRECT_UP_TO = 16
FIT_POINTS = (4, 8, 16)


_FLIP_FLOP = re.compile(
    r"^\$_(SDFFC|SDFF|ALDFF|DFFSR|DFF|DLATCHSR|DLATCH|SR|FF)(E?)_(?:([NP01]+)_)?$")


def _is_flip_flop(kind):
    return bool(_FLIP_FLOP.match(kind))


def _cell_area(kind):
    if kind in WEIGHTS:
        return WEIGHTS[kind]
    match = _FLIP_FLOP.match(kind)
    if match:
        base, enable, polarity = match.groups()
        # A reset: synchronous (SDFF, SDFFC), set/reset or async load (DFFSR, SR,
        # DLATCHSR, ALDFF), or asynchronous, given by a third polarity letter 0 or 1
        # ($_DFF_PN0_, $_DFFE_PN0P_, $_DLATCH_PN0_).
        reset = base in ("SDFF", "SDFFC", "DFFSR", "SR", "DLATCHSR", "ALDFF") or (
            base in ("DFF", "DLATCH") and polarity is not None and len(polarity) >= 3
            and polarity[2] in "01")
        return FLIP_FLOP + (ENABLE if enable else 0) + (RESET if reset else 0)
    raise ToolError(f"no NAND2 weight for the cell kind {kind!r} (runtime/apps/synth.py)")


def memory_area(memory):
    """NAND2 equivalents of one memory: an SRAM when every read is registered, else a
    register file."""
    if memory.combinational_reads == 0:
        return memory.bits * SRAM_BIT
    reads = memory.combinational_reads + memory.clocked_reads
    return memory.bits * (REGFILE_BIT + REGFILE_READ * reads)


def area(cells, memories=()):
    """(logic, memory) area in NAND2 equivalents."""
    return (sum(_cell_area(kind) * n for kind, n in cells.items()),
            sum(memory_area(m) for m in memories))


def _designs():
    from hw.dispatcher import Dispatcher, engine_types
    from hw.dma_engine import DMAEngine
    from hw.host_interface import HostInterface
    from hw.matrix_engine import MatrixEngine
    from hw.scratchpad import Scratchpad
    from hw.systolic_array import SystolicArray
    from hw.vector_engine import VectorEngine
    from amaranth.lib import fifo

    def spad(cfg):
        # The pNPU's clients: MEs read 2 ports each, VEs 2, DMAs 1, the host 1; every
        # engine and the host write one (hw/npu.py).
        return Scratchpad(cfg, n_read=2 * cfg.n_me + 2 * cfg.n_ve + cfg.n_dma + 1,
                          n_write=cfg.n_me + cfg.n_ve + cfg.n_dma + 1)

    return {
        "matrix_engine": MatrixEngine,
        "systolic_array": lambda cfg: SystolicArray(cfg.array_rows, cfg.array_cols),
        "vector_engine": VectorEngine,
        "dma_engine": DMAEngine,
        "scratchpad": spad,
        "dispatcher": Dispatcher,
        "host_interface": lambda cfg: HostInterface(cfg, len(engine_types(cfg))),
        "body_fifo": lambda cfg: fifo.SyncFIFOBuffered(width=64, depth=cfg.max_body),
    }


def _ports(design):
    """A design's ports when it is not a wiring.Component (the body FIFO)."""
    if hasattr(design, "signature"):
        return None
    return [design.w_data, design.w_en, design.w_rdy, design.r_data, design.r_en,
            design.r_rdy, design.level]


#: (block, instances in the pNPU, Neu10-specific, what its size scales with).
PARTS = (
    ("matrix_engine", lambda c: c.n_me, False, "array"),
    ("vector_engine", lambda c: c.n_ve, False, "lanes"),
    ("dma_engine", lambda c: c.n_dma, False, "lanes"),
    ("scratchpad", lambda c: 1, False, "lanes"),
    ("dispatcher", lambda c: 1, True, None),
    ("host_interface", lambda c: 1, True, None),
    ("body_fifo", lambda c: c.n_me + c.n_ve + c.n_dma, True, None),
)
def _scaled_config(config, p):
    """``config`` with ``p`` lanes, and its array sides and HBM line kept in proportion to
    the lanes (a scratchpad row feeds an array row: the tpu preset has 128 of each); None
    when the proportion is not exact at ``p``."""
    sides = [p * config.array_rows, p * config.array_cols, p * config.hbm_bytes_per_cycle]
    if any(side % config.ve_lanes for side in sides):
        return None
    rows, cols, line = (side // config.ve_lanes for side in sides)
    if min(rows, cols) < 1 or line < 8:            # an HBM line holds a program word
        return None
    return config.replace(ve_lanes=p, array_rows=rows, array_cols=cols,
                          hbm_bytes_per_cycle=line)


def _size(config, scale, points=None):
    """The lanes to extrapolate to, or None when ``config`` is synthesized directly (it
    is small, or its proportions cannot be kept at the fit's points)."""
    points = points or FIT_POINTS
    if scale is None or max(config.ve_lanes, config.array_rows,
                            config.array_cols) <= DIRECT_UP_TO:
        return None
    if any(_scaled_config(config, p) is None for p in points):
        return None
    return config.ve_lanes


def _direct(config, block, log):
    design = _designs()[block](config)
    text = convert(design, f"neu10_{block}", _ports(design))
    netlist = synthesize(text, f"neu10_{block}", log=log)
    logic, memory = area(netlist.cells, netlist.memories)
    ff = sum(n for kind, n in netlist.cells.items() if _is_flip_flop(kind))
    sram = sum(m.bits for m in netlist.memories if m.combinational_reads == 0)
    return {"cells": netlist.cells, "cell_count": sum(netlist.cells.values()), "ff_bits": ff,
            "memory_bits": netlist.memory_bits, "sram_bits": sram,
            "regfile_bits": netlist.memory_bits - sram, "logic_nand2": logic,
            "memory_nand2": memory, "area_nand2": logic + memory,
            # What it would take with every memory an SRAM (registered reads: a redesign
            # that spends a cycle on each combinational read).
            "area_nand2_sram": logic + netlist.memory_bits * SRAM_BIT, "depth": netlist.depth,
            "method": "synthesized", "yosys_seconds": netlist.seconds}


def _fit(points, target, key):
    """The quadratic through ``points`` at ``target``, never below 0 (a figure that barely
    grows can bend below 0 far from the points)."""
    xs = [p for p, _ in points]
    ys = [figures[key] for _, figures in points]
    return max(0.0, float(np.polyval(np.polyfit(xs, ys, 2), target)))


def block_figures(config, block, scale=None, *, log=None):
    """One instance of ``block`` for ``config``: cells by kind, flip-flop bits, memory
    bits, area (logic, memory, total) in NAND2 equivalents, depth, and the method."""
    size = _size(config, scale)
    if size is None:
        return _direct(config, block, log)
    points = [(p, _direct(_scaled_config(config, p), block, log)) for p in FIT_POINTS]
    figures = {key: _fit(points, size, key)
               for key in ("cell_count", "ff_bits", "memory_bits", "sram_bits", "regfile_bits",
                           "logic_nand2", "memory_nand2", "area_nand2", "area_nand2_sram")}
    kinds = sorted({k for _, f in points for k in f["cells"]})
    cells = {k: round(_fit([(p, {"n": f["cells"].get(k, 0)}) for p, f in points], size, "n"))
             for k in kinds}
    label = "lanes (array in proportion)" if scale == "array" else "lanes"
    return figures | {"cells": cells, "ff_bits": round(figures["ff_bits"]),
                      "memory_bits": round(figures["memory_bits"]),
                      "sram_bits": round(figures["sram_bits"]),
                      "regfile_bits": round(figures["regfile_bits"]),
                      "cell_count": round(figures["cell_count"]),
                      "depth": points[-1][1]["depth"],
                      "method": f"quadratic in {label} through {', '.join(map(str, FIT_POINTS))}"
                                f" (depth at {FIT_POINTS[-1]})",
                      "yosys_seconds": sum(f["yosys_seconds"] for _, f in points)}


def pnpu_report(config, blocks=None, *, log=None):
    """Every part of the pNPU (or those named in ``blocks``): per block its figures, how
    many the pNPU has, their share of its area; Neu10's share; depth against the ME's."""
    wanted = None if blocks is None else set(blocks)
    report = {"blocks": {}}
    start = time.perf_counter()
    for block, count, neu10, scale in PARTS:
        if wanted is not None and block not in wanted:
            continue
        if log:
            log(f"[{time.perf_counter() - start:5.0f} s] {block} ...")
        figures = block_figures(config, block, scale, log=log)
        report["blocks"][block] = figures | {"instances": count(config), "neu10": neu10,
                                             "total_nand2": figures["area_nand2"] * count(config)}
    if wanted is None or "systolic_array" in wanted:
        figures = block_figures(config, "systolic_array", "array", log=log)
        report["blocks"]["systolic_array"] = figures | {"instances": config.n_me,
                                                        "neu10": False, "part_of": "matrix_engine",
                                                        "total_nand2": 0.0}
    counted = {b: f for b, f in report["blocks"].items() if "part_of" not in f}
    total = sum(f["total_nand2"] for f in counted.values())
    logic = sum(f["logic_nand2"] * f["instances"] for f in counted.values())
    for block, f in report["blocks"].items():
        # A share of the pNPU: only when every part was synthesized.
        f["share"] = f["total_nand2"] / total if wanted is None and block in counted else None
    if wanted is None:
        neu10 = sum(f["total_nand2"] for f in counted.values() if f["neu10"])
        neu10_logic = sum(f["logic_nand2"] * f["instances"] for f in counted.values()
                          if f["neu10"])
        me_depth = report["blocks"]["matrix_engine"]["depth"]
        total_sram = sum(f["area_nand2_sram"] * f["instances"] for f in counted.values())
        neu10_sram = sum(f["area_nand2_sram"] * f["instances"] for f in counted.values()
                         if f["neu10"])
        report |= {
            "total_nand2": total, "logic_nand2": logic,
            "neu10_nand2": neu10, "neu10_share": neu10 / total,
            "neu10_share_all_sram": neu10_sram / total_sram,
            "neu10_logic_share": neu10_logic / logic,
            "dispatcher_share": report["blocks"]["dispatcher"]["total_nand2"] / total,
            "depth_vs_me": {b: f["depth"] / me_depth for b, f in report["blocks"].items()}}
    return report


def check_scaling(config, blocks=None, *, log=None):
    """The extrapolation's error: for each scaled block (of ``blocks``, default all), the
    quadratic through 2, 4 and 8 lanes (arrays in proportion) evaluated at 16, against
    synthesizing it at 16 (relative error of the NAND2 area)."""
    errors = {}
    for block, _, _, scale in PARTS + (("systolic_array", None, False, "array"),):
        if scale is None or (blocks is not None and block not in blocks):
            continue
        if any(_scaled_config(config, p) is None for p in (2, 4, 8, 16)):
            raise ToolError(f"this config's array and HBM line cannot keep their proportion "
                            f"to 2, 4, 8 and 16 lanes: no scaling check")
        points = [(p, _direct(_scaled_config(config, p), block, log)) for p in (2, 4, 8)]
        measured = _direct(_scaled_config(config, 16), block, log)["area_nand2"]
        errors[block] = _fit(points, 16, "area_nand2") / measured - 1
    return errors


def format_report(config_name, report):
    lines = [f"pNPU {config_name}: area in NAND2 equivalents (logic from Yosys's generic "
             f"cells; SRAM at {SRAM_BIT} per bit; memories read combinationally as register "
             f"files), depth in cells on the longest path",
             f"{'block':<16} {'n':>3} {'cells':>9} {'FF bits':>8} {'SRAM bits':>10} "
             f"{'regfile bits':>12} {'NAND2-eq':>11} {'x n':>12} {'share':>7} {'depth':>6}  "
             f"method"]
    for block, f in report["blocks"].items():
        share = "" if f["share"] is None else f"{f['share']:>7.2%}"
        total = f"(in ME)" if f.get("part_of") else f"{f['total_nand2']:>12.0f}"
        lines.append(f"{block:<16} {f['instances']:>3} {f['cell_count']:>9} {f['ff_bits']:>8} "
                     f"{f['sram_bits']:>10} {f['regfile_bits']:>12} {f['area_nand2']:>11.0f} "
                     f"{total:>12} {share:>7} {f['depth']:>6}  {f['method']}")
    if "total_nand2" in report:
        lines += [f"pNPU total {report['total_nand2']:.0f} NAND2-eq (logic "
                  f"{report['logic_nand2']:.0f}); Neu10's additions (dispatcher, host "
                  f"interface, body FIFOs) {report['neu10_share']:.2%} of it "
                  f"({report['neu10_logic_share']:.2%} of the logic; "
                  f"{report['neu10_share_all_sram']:.2%} if every memory were an SRAM); the "
                  f"dispatcher {report['dispatcher_share']:.2%}. The paper: about 0.04% of a chip "
                  f"that also has HBM controllers, interconnect and on-chip memory not "
                  f"modelled here.",
                  "depth / the matrix engine's: " + ", ".join(
                      f"{b} {r:.2f}" for b, r in report["depth_vs_me"].items())]
    return "\n".join(lines)
