"""The host interface's register map, declared once: the RTL decodes it and the driver addresses it.

Registers are 64-bit; addresses count registers (not bytes). Global registers live at
0x0000, per-context registers at ``CONTEXT_BASE + ctx * CONTEXT_STRIDE``, per-engine
counters at ``ENGINE_BASE + engine * ENGINE_STRIDE`` (engines numbered MEs, then VEs, then
DMAs). Programs are not written through registers: they live in HBM (PROG_BASE, PROG_LEN).
"""

import enum
from dataclasses import dataclass

__all__ = ["Register", "Access", "GLOBAL", "CONTEXT", "ENGINE", "CONTEXT_BASE", "CONTEXT_STRIDE",
           "ENGINE_BASE", "ENGINE_STRIDE", "Policy", "Status",
           "HostError", "register_address", "ID_VALUE", "activity_fields"]

CONTEXT_BASE, CONTEXT_STRIDE = 0x100, 0x40
ENGINE_BASE, ENGINE_STRIDE = 0x1000, 0x40
ID_VALUE = 0x4E45_5531   # "NEU1"


def activity_fields(config):
    """Bits of each engine's field on the pNPU's ``activity`` trace port (not a register:
    an output port for simulators): (context bits, header-address bits). The low bits are 0
    while the engine is idle and c + 1 while it runs a µTOp of context c, the bits above
    them that µTOp's header address (its word in the program; 0 while idle)."""
    return config.n_ctx.bit_length(), config.max_prog_words.bit_length()


class Access(enum.Enum):
    RO = "read-only"
    RW = "read-write"
    WO = "write-only (reads 0)"
    POP = "read-only; a read takes the oldest entry"


class Policy(enum.IntEnum):
    """How contexts share engines (the POLICY register)."""
    STATIC = 0     # a context uses only the engines it owns (spatial partitioning)
    HARVEST = 1    # Neu10: own engines first, idle engines of others borrowed, owner wins
    TEMPORAL = 2   # PREMA-like: one context owns the whole NPU at a time
    V10 = 3        # V10-like: shared engines, ME operators gang-issued on all MEs


class Status(enum.IntEnum):
    IDLE = 0
    RUNNING = 1
    DONE = 2
    FAULTED = 3


class HostError(enum.IntEnum):
    """Why the host interface refused a write (the code in HOST_ERROR bits 0..7).

    A refused write changes nothing: the register, the settings and the
    contexts keep their values and states.
    """
    NONE = 0
    VALUE_RANGE = 1       # the value does not fit the register (or is 0 for TIME_SLICE)
    UNMAPPED = 2          # no writable register at that address (read-only or unmapped)
    # 3 is not used (it was an instruction-memory address: programs now live in HBM)
    CONTEXT_RUNNING = 4   # START or configuration write of a running context
    BAD_CONTEXT = 5       # START of a context whose settings are invalid (it faults CONFIG)
    QUEUE_FULL = 6        # DOORBELL of a context whose request queue is full
    CONTEXT_FAULTED = 7   # DOORBELL of a faulted context (it takes no requests until START)


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: Access
    doc: str
    #: Width of a writable register: a number of bits, or the name of the config field
    #: that gives it (a write with bits above it is refused).
    bits: int | str | None = None

    def width(self, config):
        """The register's width in bits for ``config`` (writable registers only)."""
        return getattr(config, self.bits) if isinstance(self.bits, str) else self.bits


GLOBAL = (
    Register("ID", 0x00, Access.RO, f"reads 0x{ID_VALUE:08x} ('NEU1')"),
    Register("SHAPE", 0x01, Access.RO, "n_ctx | n_me << 8 | n_ve << 16 | n_dma << 24 | "
                                       "array_rows << 32 | array_cols << 40 | ve_lanes << 48"),
    Register("POLICY", 0x02, Access.RW, "sharing policy: 0 static, 1 harvest, 2 temporal, 3 v10",
             bits=2),
    Register("START", 0x03, Access.WO, "bit c set: start context c (from word 0 of its program); "
                                       "refused for a running context; a context whose "
                                       "settings are invalid faults CONFIG instead"),
    Register("STATUS", 0x04, Access.RO, "2 bits per context: 0 idle, 1 running, 2 done, 3 faulted"),
    Register("CYCLE", 0x05, Access.RO, "cycles since reset"),
    Register("TIME_SLICE", 0x06, Access.RW, "temporal policy: cycles before the NPU may switch "
                                            "to another context (default 4096; 1..2^32-1)",
             bits=32),
    Register("HOST_ERROR", 0x07, Access.RW, "the first write refused since it was last cleared: "
                                            "code (HostError) | address << 32; "
                                            "any write clears it"),
)

CONTEXT = (
    Register("PROG_LEN", 0x00, Access.RW, "program length in 64-bit words", bits=32),
    Register("SPAD_BASE", 0x01, Access.RW, "scratchpad segment base (row)", bits=17),
    Register("SPAD_SIZE", 0x02, Access.RW, "scratchpad segment size (rows)", bits=17),
    Register("HBM_BASE", 0x03, Access.RW, "HBM segment base (word)", bits=32),
    Register("HBM_SIZE", 0x04, Access.RW, "HBM segment size (words)", bits=33),
    Register("ME_MASK", 0x05, Access.RW, "bit e: this context owns matrix engine e",
             bits="n_me"),
    Register("VE_MASK", 0x06, Access.RW, "bit e: this context owns vector engine e",
             bits="n_ve"),
    Register("PRIORITY", 0x07, Access.RW, "0..15, higher is more urgent (temporal, v10)",
             bits=4),
    Register("STATUS", 0x08, Access.RO, "0 idle, 1 running, 2 done, 3 faulted"),
    Register("FAULT", 0x09, Access.RO, "fault code (isa.encoding.Fault)"),
    Register("FAULT_PC", 0x0A, Access.RO, "word address of the faulting µTOp's header"),
    Register("CYCLES", 0x0B, Access.RO, "cycles from start to done or fault"),
    Register("ISSUED", 0x0C, Access.RO, "µTOps issued to engines"),
    Register("RETIRED", 0x0D, Access.RO, "µTOps retired"),
    Register("OWN_CYCLES", 0x0E, Access.RO, "engine-cycles on ME/VE engines this context owns"),
    Register("HARVEST_CYCLES", 0x0F, Access.RO, "engine-cycles on ME/VE engines owned by others "
                                                "or by nobody"),
    Register("DEP_WAIT", 0x10, Access.RO, "cycles with fetched µTOps but none ready"),
    Register("ENGINE_WAIT", 0x11, Access.RO, "cycles with a ready µTOp that did not issue"),
    Register("DMA_CYCLES", 0x12, Access.RO, "engine-cycles on DMA engines"),
    Register("PREEMPTED", 0x13, Access.RO, "µTOps of this context preempted on a borrowed "
                                           "engine by its owner (harvest) and issued again"),
    Register("DOORBELL", 0x14, Access.WO, "queue a request: the value is the offset added "
                                          "to HBM_BASE while the request runs; refused when "
                                          "queue_depth requests wait or the context faulted",
             bits=32),
    Register("PENDING", 0x15, Access.RO, "requests queued and not started"),
    Register("COMPLETION", 0x16, Access.POP, "the oldest finished request: bit 63 valid, bit "
                                             "62 faulted, bits 61..31 CYCLE when its doorbell "
                                             "was written, bits 30..0 CYCLE when it ended "
                                             "(both mod 2^31); 0 when none"),
    Register("COMPLETED", 0x17, Access.RO, "requests finished since reset"),
    Register("PROG_BASE", 0x18, Access.RW, "HBM word (physical) where the program starts: "
                                           "word i is HBM words PROG_BASE + 2i (low half) "
                                           "and + 2i + 1; a multiple of the HBM line's "
                                           "words", bits=32),
    Register("FETCHED", 0x19, Access.RO, "HBM lines of the program fetched since START (its "
                                         "instruction traffic: each is one HBM line)"),
)

ENGINE = (
    Register("BUSY", 0x00, Access.RO, "cycles running a µTOp"),
    Register("STALL", 0x01, Access.RO, "cycles with a memory request refused"),
    Register("DONE", 0x02, Access.RO, "µTOps completed"),
    Register("WORK", 0x03, Access.RO, "MAC cycles (ME), vector cycles (VE), words moved (DMA)"),
) + tuple(Register(f"BUSY_CTX{c}", 0x10 + c, Access.RO, f"cycles running a µTOp of context {c}")
          for c in range(16))


def register_address(name, *, ctx=None, engine=None):
    """Address of a register by name: ``register_address("FAULT", ctx=2)``."""
    if ctx is not None:
        table, base = CONTEXT, CONTEXT_BASE + ctx * CONTEXT_STRIDE
    elif engine is not None:
        table, base = ENGINE, ENGINE_BASE + engine * ENGINE_STRIDE
    else:
        table, base = GLOBAL, 0
    for register in table:
        if register.name == name:
            return base + register.offset
    raise KeyError(f"no register {name!r} in the {'context' if ctx is not None else 'engine' if engine is not None else 'global'} map")
