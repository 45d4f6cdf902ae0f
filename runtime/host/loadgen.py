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

__all__ = ["Arrival", "LoadError", "poisson_arrivals", "open_loop", "read_trace", "ClosedLoop"]


class LoadError(ValueError):
    """A load or trace that cannot be used; the message names the value and what was expected."""


@dataclass(frozen=True, order=True)
class Arrival:
    cycle: int
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


def open_loop(rates, count, *, seed, start=0):
    """Arrivals of every tenant (``rates[t]`` requests per cycle, ``count`` requests each),
    merged in time order; tenant t's stream depends only on ``seed`` and t."""
    streams = np.random.SeedSequence(seed).spawn(len(rates))
    arrivals = []
    for tenant, (rate, stream) in enumerate(zip(rates, streams)):
        cycles = poisson_arrivals(rate, count, seed=stream, start=start)
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


class ClosedLoop:
    """``outstanding`` requests of each tenant in flight until ``count`` have arrived: the
    first ones at ``start``, then one whenever one of the tenant's completes."""

    def __init__(self, n_tenants, outstanding, count, *, start=0):
        if not isinstance(outstanding, int) or outstanding < 1:
            raise LoadError(f"outstanding requests must be a positive integer, not {outstanding!r}")
        if not isinstance(count, int) or count < 1:
            raise LoadError(f"request count must be a positive integer, not {count!r}")
        self.outstanding, self.count = outstanding, count
        self.arrived = [0] * n_tenants
        self.start = start

    def initial(self):
        """The arrivals at the start."""
        first = []
        for tenant in range(len(self.arrived)):
            n = min(self.outstanding, self.count)
            self.arrived[tenant] = n
            first += [Arrival(self.start, tenant)] * n
        return first

    def completed(self, tenant, cycle):
        """A request of ``tenant`` completed at ``cycle``: the arrival that replaces it (or
        None once the tenant's ``count`` requests have all arrived)."""
        if self.arrived[tenant] >= self.count:
            return None
        self.arrived[tenant] += 1
        return Arrival(cycle, tenant)
