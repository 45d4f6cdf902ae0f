"""Arbitration helpers shared by the blocks: rotating-priority grants, lowest set bit, one-hot index."""

from amaranth import Cat, Const, Mux, Signal

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
    lowest = Signal(len(value), name=name)
    m.d.comb += lowest.eq(value & (~value + 1))
    return lowest


def one_hot_index(one_hot):
    """Index of the set bit of a one-hot value (0 if none)."""
    result = 0
    for i in range(len(one_hot)):
        result = result | Mux(one_hot[i], i, 0)
    return result
