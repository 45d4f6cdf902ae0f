"""32-bit words packed into wide values (scratchpad rows, HBM lines) on the host side."""

__all__ = ["to_signed32", "pack_words", "unpack_words"]


def to_signed32(value):
    """The two's complement value of the low 32 bits of ``value``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def pack_words(words):
    """Word i of ``words`` in bits 32*i .. 32*i+31 of one integer."""
    return sum((int(w) & 0xFFFFFFFF) << (32 * i) for i, w in enumerate(words))


def unpack_words(value, count):
    """``count`` signed 32-bit words of a packed integer."""
    return [to_signed32(value >> (32 * i)) for i in range(count)]
