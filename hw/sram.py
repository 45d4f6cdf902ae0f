"""The pNPU's large memories (scratchpad banks, instruction buffers): one write port, read ports, zero at reset."""

from amaranth import ClockSignal, Instance, Module, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SRAM", "SRAMVerilog"]


class SRAM(wiring.Component):
    """``depth`` rows of ``width`` bits, all zero at reset.

    ``write``: the row at ``addr`` takes ``data`` at the clock edge, in the lanes of
    ``granularity`` bits whose bit of ``en`` is set. ``read[i]``: a ``"sync"`` port
    returns the row at ``addr`` one cycle later when ``en`` is high (a row written in the
    same cycle reads as it was), a ``"comb"`` port returns it at once.

    Simulated (``amaranth.sim``) as an ``amaranth.lib.memory.Memory``; back-door access goes
    through ``data`` (``ctx.set(sram.data[row], value)``). When the design is elaborated
    with an ``SRAMVerilog`` as its platform (Verilog for Verilator and `neu10 verilog`),
    it is an instance of a small behavioural Verilog module instead, whose zero
    initialisation is one loop: Amaranth's netlist would spell it out bit by bit, and
    the default config's memories hold 14 Mbit (most of a cold build's time).
    """

    def __init__(self, *, width, depth, granularity=None, read_ports=("sync",)):
        granularity = width if granularity is None else granularity
        if width % granularity:
            raise ValueError(f"granularity {granularity} does not divide width {width}")
        for domain in read_ports:
            if domain not in ("sync", "comb"):
                raise ValueError(f"read port domain {domain!r}: expected 'sync' or 'comb'")
        self.width, self.depth, self.granularity = width, depth, granularity
        self.read_domains = tuple(read_ports)
        #: The contents (simulation only).
        self.data = memory.MemoryData(shape=unsigned(width), depth=depth, init=[])
        super().__init__({
            "write": In(wiring.Signature({
                "addr": Out(range(depth)), "data": Out(width), "en": Out(width // granularity),
            })),
            "read": In(wiring.Signature({
                "addr": Out(range(depth)), "en": Out(1, init=1), "data": In(width),
            })).array(len(self.read_domains)),
        })

    def elaborate(self, platform):
        m = Module()
        if isinstance(platform, SRAMVerilog):
            ports = {"i_clk": ClockSignal(), "i_w_addr": self.write.addr,
                     "i_w_data": self.write.data, "i_w_en": self.write.en}
            for i, (domain, port) in enumerate(zip(self.read_domains, self.read)):
                ports[f"i_r{i}_addr"] = port.addr
                ports[f"o_r{i}_data"] = port.data
                if domain == "sync":
                    ports[f"i_r{i}_en"] = port.en
            m.submodules.ram = Instance(platform.module(self), **ports)
            return m
        m.submodules.memory = mem = memory.Memory(data=self.data)
        write = mem.write_port(granularity=self.granularity)
        m.d.comb += [write.addr.eq(self.write.addr), write.data.eq(self.write.data),
                     write.en.eq(self.write.en)]
        for domain, port in zip(self.read_domains, self.read):
            read = mem.read_port(domain=domain)
            m.d.comb += [read.addr.eq(port.addr), port.data.eq(read.data)]
            if domain == "sync":
                m.d.comb += read.en.eq(port.en)
        return m


class SRAMVerilog:
    """A platform for Verilog output: SRAMs become instances of behavioural modules, whose
    text ``modules()`` returns (one module per kind of SRAM)."""

    def __init__(self):
        self._modules = {}

    def module(self, sram):
        """The name of the Verilog module for ``sram`` (made on first use)."""
        kinds = "".join(domain[0] for domain in sram.read_domains)
        name = f"neu10_sram_w{sram.width}_d{sram.depth}_g{sram.granularity}_{kinds}"
        if name not in self._modules:
            self._modules[name] = _verilog_module(name, sram)
        return name

    def modules(self):
        """The Verilog text of every SRAM module used."""
        return "".join(self._modules.values())


def _verilog_module(name, sram):
    width, depth, granularity = sram.width, sram.depth, sram.granularity
    abits = max(1, (depth - 1).bit_length())
    lanes = width // granularity
    ports = ["clk", "w_addr", "w_data", "w_en"]
    lines = []
    declarations = [
        "  input clk;",
        f"  input [{abits - 1}:0] w_addr;",
        f"  input [{width - 1}:0] w_data;",
        f"  input [{lanes - 1}:0] w_en;",
    ]
    for i, domain in enumerate(sram.read_domains):
        ports += [f"r{i}_addr", f"r{i}_data"]
        declarations.append(f"  input [{abits - 1}:0] r{i}_addr;")
        if domain == "sync":
            ports.append(f"r{i}_en")
            declarations += [f"  input r{i}_en;", f"  output reg [{width - 1}:0] r{i}_data = 0;"]
            lines += ["  always @(posedge clk)",
                      f"    if (r{i}_en) r{i}_data <= mem[r{i}_addr];"]
        else:
            declarations.append(f"  output [{width - 1}:0] r{i}_data;")
            lines.append(f"  assign r{i}_data = mem[r{i}_addr];")
    writes = [f"    if (w_en[{lane}]) mem[w_addr][{lane * granularity + granularity - 1}:"
              f"{lane * granularity}] <= w_data[{lane * granularity + granularity - 1}:"
              f"{lane * granularity}];" for lane in range(lanes)]
    return "\n".join([
        "// An SRAM of hw/sram.py: the same behaviour as its amaranth.lib.memory model.",
        f"module {name}({', '.join(ports)});",
        *declarations,
        f"  reg [{width - 1}:0] mem [0:{depth - 1}];",
        "  initial begin : zero",
        "    integer row;",
        f"    for (row = 0; row < {depth}; row = row + 1) mem[row] = {width}'h0;",
        "  end",
        "  always @(posedge clk) begin",
        *writes,
        "  end",
        *lines,
        "endmodule",
        "",
    ])
