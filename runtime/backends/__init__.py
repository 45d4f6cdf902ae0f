"""Backends execute host scripts (`script`) on one pNPU: the golden model, the RTL in
Amaranth's simulator (pysim) or compiled by Verilator; and Verilog generation."""
