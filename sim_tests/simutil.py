"""Small helpers shared by the RTL testbenches."""

from amaranth.back import rtlil
from amaranth.sim import Simulator


def simulate(dut, *testbenches, vcd=None):
    """Run async testbenches against ``dut`` on a 1 MHz clock until they all return."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


def convert(dut):
    """Convert to RTLIL: catches what simulation does not (driver conflicts, combinational loops)."""
    return rtlil.convert(dut)
