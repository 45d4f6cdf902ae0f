"""Arbitration helpers shared by the blocks: rotating-priority grants, lowest set bit, one-hot index."""

from amaranth import Cat, Const, Mux, Signal

__all__ = ["round_robin", "lowest_set", "one_hot_index", "one_hot_select", "or_tree",
           "pairwise_order", "first_in_order"]


def round_robin(m, requests, pointer, n, name, *, tree=False):
    """One-hot grant of the first request at or after ``pointer`` (cyclically).

    Doubling the request vector turns the cyclic search into a linear one: the first set
    bit of the doubled vector at or after ``pointer`` (a shift masks the bits before it).
    ``tree``: see ``lowest_set``.
    """
    if n == 1:
        return requests
    doubled = Signal(2 * n, name=f"{name}_doubled")
    at_or_after = Signal(2 * n, name=f"{name}_at_or_after")
    candidates = Signal(2 * n, name=f"{name}_candidates")
    grant = Signal(n, name=f"{name}_grant")
    m.d.comb += [
        doubled.eq(Cat(requests, requests)),
        at_or_after.eq((Const((1 << 2 * n) - 1, 2 * n) << pointer)[:2 * n]),
        candidates.eq(doubled & at_or_after),
    ]
    lowest = lowest_set(m, candidates, f"{name}_lowest", tree=tree)
    m.d.comb += grant.eq(lowest[:n] | lowest[n:])
    return grant


def lowest_set(m, value, name, *, tree=False):
    """One-hot of the lowest set bit of ``value`` (0 if none).

    ``value & -value`` is three operations (cheap to simulate) but a carry chain in gates;
    with ``tree`` the OR of the lower bits is a prefix OR in log steps of wide shifts, for
    paths where depth counts (the issue arbiter's chain through the contexts)."""
    n = len(value)
    lowest = Signal(n, name=name)
    if not tree:
        m.d.comb += lowest.eq(value & (~value + 1))
        return lowest
    below = Signal(n, name=f"{name}_below")
    prefix, step = value, 1
    while step < n:
        prefix = (prefix | (prefix << step))[:n]
        step *= 2
    m.d.comb += [below.eq((prefix << 1)[:n]), lowest.eq(value & ~below)]
    return lowest


def or_tree(values):
    """The OR of ``values`` as a balanced tree (a chain would be as deep as the list is long)."""
    values = list(values)
    if not values:
        return Const(0, 1)
    while len(values) > 1:
        values = [values[i] | values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def one_hot_index(one_hot):
    """Index of the set bit of a one-hot value (0 if none)."""
    # Bit b of the index is the OR of the inputs whose index has bit b (for any input, the
    # OR of the indices of its set bits): a tree per bit, not a chain through the inputs.
    n = len(one_hot)
    return Cat(Cat(one_hot[i] for i in range(n) if i >> b & 1).any()
               for b in range(max(1, (n - 1).bit_length())))


def one_hot_select(one_hot, values):
    """The value whose bit of ``one_hot`` is set (0 if none): an AND-OR tree."""
    return or_tree(Mux(one_hot[i], v, 0) for i, v in enumerate(values))


def pairwise_order(m, keys, name):
    """``order[i, j]``: ``keys[i]`` comes before ``keys[j]`` (the smaller key; on equal keys
    the lower index), for every pair i != j, with one comparator per pair."""
    order = {}
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            before = Signal(name=f"{name}{i}_before_{j}")
            m.d.comb += before.eq(keys[i] <= keys[j])
            order[i, j], order[j, i] = before, ~before
    return order


def first_in_order(requests, order):
    """One-hot of the request that comes first by ``order`` (see ``pairwise_order``), 0 if
    none: each request checks every other beside the rest, so it passes one AND tree."""
    n = len(requests)
    return Cat(requests[i] & Cat(~requests[j] | order[i, j] for j in range(n) if j != i).all()
               for i in range(n))
