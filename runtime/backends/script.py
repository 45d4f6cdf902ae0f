"""Host scripts: what a backend executes, one typed operation at a time.

A run of the NPU is a list of these operations, executed from reset. Every backend (the
golden model, pysim, Verilator and its C++ harness) executes the same list, so their
results and cycle counts compare one to one (`Step` only Verilator's interactive mode). Operations that read something produce one
result each, in order (see each class).
"""

from dataclasses import dataclass

__all__ = ["CsrWrite", "CsrRead", "SpadWrite", "SpadRead", "HbmWrite", "HbmRead", "HbmLoad", "Run",
           "Step", "Serve", "ServeContext", "Request"]


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


@dataclass(frozen=True, eq=False)
class HbmLoad:
    """HBM words ``address``.. take ``words`` (a numpy array of 32-bit values, signed or
    unsigned) through the back door, in no cycles and through no port: the host copying a
    model's image and programs into device memory before a run (a copy over PCIe, outside
    the pNPU's clock). Writes while contexts run go through ``HbmWrite``, which competes for
    HBM like the DMA engines."""
    address: int
    words: object


@dataclass(frozen=True)
class HbmRead:
    """Read one HBM line; result: its words, signed."""
    line: int


@dataclass(frozen=True)
class Run:
    """Let the NPU run until it is not busy, or ``max_cycles``; result: (cycles waited,
    still busy). The cycles are counted in steps of the backend's poll interval. With
    ``timeline``, the result has a third item: (cycle, engine, activity) at the start and at
    every change of an engine's value on hw.npu's activity port, cycles counted from the
    Run's start (as Serve's timeline)."""
    max_cycles: int
    timeline: bool = False


@dataclass(frozen=True)
class Step:
    """Run exactly ``cycles`` cycles; result: whether the NPU is busy (Verilator's
    interactive mode, for measuring a host in the loop)."""
    cycles: int


@dataclass(frozen=True)
class Request:
    """One request of a `Serve`: it arrives at the host at ``cycle`` (counted from the
    start of the Serve), or, with ``after``, when the request of that index completes
    (closed loop). ``lines`` are the HBM lines (first, count) read when it completes."""
    context: int            # index into Serve.contexts
    offset: int             # its DOORBELL value
    cycle: int = 0
    after: int | None = None
    lines: tuple = (0, 0)


@dataclass(frozen=True)
class ServeContext:
    """A context a `Serve` hands requests to: its register addresses, and how many of its
    requests the host lets be rung and not yet completed (its queue plus the one running,
    so the hardware never refuses one as QUEUE_FULL)."""
    doorbell: int
    completion: int
    capacity: int


@dataclass(frozen=True)
class Serve:
    """Serve ``requests`` free-running, as a host driver would: a request that arrives
    waits in the host's queue of its context until the context has room, then its
    DOORBELL is written (and HOST_ERROR read, and cleared if set). At least every poll
    interval (and at each timed arrival) the host drains each context's COMPLETION queue,
    reads the HBM lines of each completed request, and lets the requests waiting for it
    arrive. A completion with the faulted bit ends its context: the requests it still
    held are dropped. Ends when every request completed, was refused or dropped (or after
    ``max_cycles``). Result: (the NPU's cycle counter at the start, cycles waited, still
    busy, per request (host arrival cycle or None, HOST_ERROR code of its doorbell or 0,
    COMPLETION entry or 0, words of its lines), the timeline or None). Cycles count from
    the start. With ``timeline``, the backend records the NPU's ``activity`` port each
    cycle: the timeline is (cycle, engine, value) for the start and for every change, value
    0 when the engine is idle and c + 1 while it runs a µTOp of context c."""
    host_error: int
    contexts: tuple         # ServeContext
    requests: tuple         # Request
    max_cycles: int
    timeline: bool = False


