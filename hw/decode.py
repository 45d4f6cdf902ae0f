"""Instruction decoding in hardware, from the same table the assembler and the golden model use."""

from amaranth import Const

from isa.encoding import BY_MNEMONIC, INSTRUCTIONS

__all__ = ["field", "is_instr", "is_legal_for"]


def field(word, mnemonic, name):
    """The value of field ``name`` of instruction ``mnemonic`` in ``word`` (bias applied)."""
    f = BY_MNEMONIC[mnemonic].field(name)
    raw = word[f.lsb:f.lsb + f.width]
    value = raw.as_signed() if f.signed else raw
    return value + f.bias if f.bias else value


def is_instr(word, mnemonic):
    """``word`` is a well-formed ``mnemonic``: its opcode, and no reserved bit set."""
    defn = BY_MNEMONIC[mnemonic]
    return (word[:8] == defn.opcode) & ((word & Const(defn.reserved_mask, 64)) == 0)


def is_legal_for(word, engine):
    """``word`` is a well-formed instruction of ``engine``; otherwise it faults ILLEGAL_OPCODE."""
    legal = Const(0, 1)
    for defn in INSTRUCTIONS:
        if defn.engine == engine:
            legal = legal | is_instr(word, defn.mnemonic)
    return legal
