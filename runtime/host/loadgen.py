"""Request streams for serving experiments: open-loop Poisson arrivals, closed loop, trace replay.

An arrival is (cycle, tenant): at that cycle the host hands the tenant a request. Open
loop draws each tenant's arrivals independently (exponential gaps, seeded per tenant from
one seed), at a rate in requests per cycle; a serving run derives it from a load, the
fraction of the tenant's isolated saturation throughput. Closed loop keeps N requests of
each tenant outstanding: a new one arrives when one completes. A trace is a CSV file of
``cycle,tenant`` rows.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Arrival", "LoadError", "poisson_arrivals", "open_loop", "read_trace", "closed_loop"]


class LoadError(ValueError):
    """A load or trace that cannot be used; the message names the value and what was expected."""


@dataclass(frozen=True, order=True)
class Arrival:
    cycle: int | None          # None: a closed-loop request (it arrives on a completion)
    tenant: int


def poisson_arrivals(rate, count, *, seed, start=0):
    """``count`` arrival cycles of a Poisson process of ``rate`` requests per cycle from
    ``start``: exponential gaps, rounded down to whole cycles (several may share one)."""
    if not rate > 0:
        raise LoadError(f"arrival rate must be > 0 requests per cycle, not {rate!r}")
    if not isinstance(count, int) or count < 1:
        raise LoadError(f"request count must be a positive integer, not {count!r}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    return [start + int(t) for t in np.cumsum(gaps)]


def _counts(count, n_tenants):
    """``count`` requests per tenant: one number for all, or one per tenant."""
    counts = [count] * n_tenants if isinstance(count, int) else list(count)
    if len(counts) != n_tenants:
        raise LoadError(f"{len(counts)} request counts for {n_tenants} tenants")
    for c in counts:
        if not isinstance(c, int) or isinstance(c, bool) or c < 1:
            raise LoadError(f"request count must be a positive integer, not {c!r}")
    return counts


def open_loop(rates, count, *, seed, start=0):
    """Arrivals of every tenant (``rates[t]`` requests per cycle; ``count`` requests each, or
    ``count[t]`` of tenant t), merged in time order; tenant t's stream depends only on
    ``seed`` and t."""
    streams = np.random.SeedSequence(seed).spawn(len(rates))
    arrivals = []
    for tenant, (rate, stream, n) in enumerate(zip(rates, streams, _counts(count, len(rates)))):
        cycles = poisson_arrivals(rate, n, seed=stream, start=start)
        arrivals += [Arrival(cycle, tenant) for cycle in cycles]
    return sorted(arrivals)


def read_trace(path, n_tenants):
    """Arrivals from a CSV file with a ``cycle,tenant`` header and one row per request, in
    non-decreasing cycle order; tenants are numbered 0 .. n_tenants - 1."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    except OSError as error:
        raise LoadError(f"cannot read trace {path}: {error.strerror}") from None
    if not rows or [cell.strip() for cell in rows[0]] != ["cycle", "tenant"]:
        raise LoadError(f"{path}: the first row must be the header 'cycle,tenant'")
    arrivals = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise LoadError(f"{path}:{line}: expected 2 fields (cycle, tenant), got {len(row)}")
        try:
            cycle, tenant = int(row[0]), int(row[1])
        except ValueError:
            raise LoadError(f"{path}:{line}: cycle and tenant must be integers, "
                            f"not {row[0].strip()!r}, {row[1].strip()!r}") from None
        if cycle < 0:
            raise LoadError(f"{path}:{line}: cycle must be >= 0, not {cycle}")
        if not 0 <= tenant < n_tenants:
            raise LoadError(f"{path}:{line}: tenant {tenant} is out of range 0..{n_tenants - 1}")
        if arrivals and cycle < arrivals[-1].cycle:
            raise LoadError(f"{path}:{line}: cycle {cycle} is earlier than the row before "
                            f"({arrivals[-1].cycle}); rows must be in time order")
        arrivals.append(Arrival(cycle, tenant))
    if not arrivals:
        raise LoadError(f"{path}: the trace has no requests")
    return arrivals


def closed_loop(n_tenants, outstanding, count):
    """A closed loop as (arrivals, after): ``outstanding`` requests of each tenant arrive at
    cycle 0, and each later one (arrival cycle None) when the tenant's request
    ``outstanding`` before it completes: ``after[i]`` is that request's index (None for the
    timed ones), as Driver.serve takes them. ``count`` requests per tenant (or ``count[t]``
    of tenant t), interleaved."""
    if not isinstance(outstanding, int) or isinstance(outstanding, bool) or outstanding < 1:
        raise LoadError(f"outstanding requests must be a positive integer, not {outstanding!r}")
    counts = _counts(count, n_tenants)
    arrivals, after, index = [], [], {}
    for k in range(max(counts)):
        for tenant in range(n_tenants):
            if k >= counts[tenant]:
                continue
            index[tenant, k] = len(arrivals)
            timed = k < outstanding
            arrivals.append(Arrival(0 if timed else None, tenant))
            after.append(None if timed else index[tenant, k - outstanding])
    return arrivals, after
