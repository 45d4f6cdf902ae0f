"""Arbitration helpers shared by the blocks: rotating-priority grants, lowest set bit, one-hot index."""

from amaranth import Cat, Const, Signal

__all__ = ["round_robin", "lowest_set", "one_hot_index"]


def round_robin(m, requests, pointer, n, name):
    """One-hot grant of the first request at or after ``pointer`` (cyclically).

    Doubling the request vector turns the cyclic search into a linear one; ``x & -x``
    isolates the lowest set bit, so the whole arbiter is a few wide operations.
    """
    if n == 1:
        return requests
    doubled = Signal(2 * n, name=f"{name}_doubled")
    at_or_after = Signal(2 * n, name=f"{name}_at_or_after")
    candidates = Signal(2 * n, name=f"{name}_candidates")
    lowest = Signal(2 * n, name=f"{name}_lowest")
    grant = Signal(n, name=f"{name}_grant")
    m.d.comb += [
        doubled.eq(Cat(requests, requests)),
        at_or_after.eq(~((Const(1, 2 * n) << pointer) - 1)),
        candidates.eq(doubled & at_or_after),
        lowest.eq(candidates & (~candidates + 1)),
        grant.eq(lowest[:n] | lowest[n:]),
    ]
    return grant


def lowest_set(m, value, name):
    """One-hot of the lowest set bit of ``value`` (0 if none)."""
    # Bit i is set when no lower bit is: each bit's test is an OR tree of log depth (the
    # two's-complement trick ``value & -value`` would be a carry chain).
    lowest = Signal(len(value), name=name)
    m.d.comb += lowest.eq(Cat(value[i] & ~value[:i].any() for i in range(len(value))))
    return lowest


def one_hot_index(one_hot):
    """Index of the set bit of a one-hot value (0 if none)."""
    # Bit b of the index is the OR of the inputs whose index has bit b (for any input, the
    # OR of the indices of its set bits): a tree per bit, not a chain through the inputs.
    n = len(one_hot)
    return Cat(Cat(one_hot[i] for i in range(n) if i >> b & 1).any()
               for b in range(max(1, (n - 1).bit_length())))
