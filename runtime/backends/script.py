"""Host scripts: what a backend executes, one typed operation at a time.

A run of the NPU is a list of these operations, executed from reset. Every backend (the
golden model, pysim, Verilator and its C++ harness) executes the same list, so their
results and cycle counts compare one to one. Operations that read something produce one
result each, in order (see each class).
"""

from dataclasses import dataclass

__all__ = ["CsrWrite", "CsrRead", "SpadWrite", "SpadRead", "HbmWrite", "HbmRead", "Run", "Step",
           "Mark", "Until", "Drain", "READS"]


@dataclass(frozen=True)
class CsrWrite:
    """Write a host-interface register (or an instruction-memory word)."""
    address: int
    value: int


@dataclass(frozen=True)
class CsrRead:
    """Read a register; result: its 64-bit value."""
    address: int


@dataclass(frozen=True)
class SpadWrite:
    """Write one physical scratchpad row (``ve_lanes`` 32-bit words, signed or unsigned)."""
    row: int
    values: tuple


@dataclass(frozen=True)
class SpadRead:
    """Read one physical scratchpad row; result: its words, signed."""
    row: int


@dataclass(frozen=True)
class HbmWrite:
    """Write the words of one HBM line whose bit is set in ``mask``."""
    line: int
    values: tuple
    mask: int


@dataclass(frozen=True)
class HbmRead:
    """Read one HBM line; result: its words, signed."""
    line: int


@dataclass(frozen=True)
class Run:
    """Let the NPU run until it is not busy, or ``max_cycles``; result: (cycles waited,
    still busy). The cycles are counted in steps of the backend's poll interval."""
    max_cycles: int


@dataclass(frozen=True)
class Step:
    """Run exactly ``cycles`` cycles; result: whether the NPU is busy (Verilator's
    interactive mode, for measuring a host in the loop)."""
    cycles: int


@dataclass(frozen=True)
class Mark:
    """Note the NPU's cycle counter as the origin of later `Until`s; result: its value."""


@dataclass(frozen=True)
class Until:
    """Wait until ``cycle`` cycles after the last `Mark` (no wait when that has passed)."""
    cycle: int


@dataclass(frozen=True)
class Drain:
    """Read a POP register until an entry without bit 63 (valid); result: the valid entries."""
    address: int


#: The operations that produce a result.
READS = (CsrRead, SpadRead, HbmRead, Run, Step, Mark, Drain)
