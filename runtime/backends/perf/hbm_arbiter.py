"""HBM's request port as the pNPU arbitrates it: one line per cycle to the first requesting
port at or after a pointer that steps every cycle (hw/hbm.py), computed per stretch of
cycles in which the set of requesters does not change, never per cycle.

While the same ports request, port i is granted exactly in the cycles whose pointer value
lies in (the previous requesting port, i] cyclically, so its grants in any range of cycles
are counted, and its n-th grant found, by arithmetic. A *stream* is one requester's run
of line requests, at most one per cycle from its first cycle on (a DMA copy, a program
fetch): the arbiter tells its owner when its last line is granted, and the owner may start
the next one then (its first cycle later than that).
"""

__all__ = ["HbmArbiter", "Stream"]


class Stream:
    """``lines`` line requests from ``port``, the first in cycle ``start``;
    ``done(cycle)`` is called with the cycle of its last grant, ``granted(cycles)`` (if
    given) with the cycles of the grants as they are known."""

    __slots__ = ("port", "start", "left", "done", "granted", "last")

    def __init__(self, port, start, lines, done=None, granted=None):
        self.port, self.start, self.left = port, start, lines
        self.done, self.granted = done, granted
        self.last = None


class HbmArbiter:
    """Grants of ``ports`` rotating-priority ports; cycles counted from reset."""

    def __init__(self, ports, offset=0):
        self.ports = ports
        self.offset = offset           # the pointer's value in cycle 0
        self.now = 0                   # grants before this cycle are settled
        self.streams = []
        self.lines = 0

    def add(self, stream):
        if stream.start < self.now:
            raise ValueError(f"a stream cannot start in cycle {stream.start}, before "
                             f"{self.now}: those cycles are settled")
        if stream.left <= 0:
            if stream.done is not None:
                stream.done(stream.start - 1)
            return
        self.streams.append(stream)

    def _owned(self, active):
        """Per active port: (the first cycle modulo the ports whose pointer value it owns,
        how many values it owns)."""
        ports = sorted(s.port for s in active)
        P = self.ports
        return {p: ((prev + 1 - self.offset) % P, (p - prev - 1) % P + 1 if len(ports) > 1 else P)
                for prev, p in zip(ports[-1:] + ports[:-1], ports)}

    @staticmethod
    def _count(first, end, lo, width, P):
        """Cycles t in [first, end) with (t - lo) mod P < width."""
        def upto(x):
            u = x - lo
            return (u // P) * width + min(u % P, width)
        return upto(end) - upto(first)

    @staticmethod
    def _nth(first, n, lo, width, P):
        """The cycle of the n-th (from 1) cycle t >= first with (t - lo) mod P < width."""
        r = (first - lo) % P
        if r < width:
            if n <= width - r:
                return first + n - 1
            n -= width - r
        base = first + (P - r)
        k, rem = divmod(n - 1, width)
        return base + k * P + rem

    def next_event(self):
        """The first cycle (>= now) in which a stream starts or gets its last grant, with
        the requesters known now (None: no stream)."""
        if not self.streams:
            return None
        active = [s for s in self.streams if s.start <= self.now]
        times = [s.start for s in self.streams if s.start > self.now]
        if active:
            owned = self._owned(active)
            times += [self._nth(self.now, s.left, *owned[s.port], self.ports) for s in active]
        return min(times)

    def when(self, stream, k):
        """The cycle of the k-th grant (from 1) of ``stream`` from now on, if the
        requesters stay those known now."""
        first = max(self.now, stream.start)
        active = [s for s in self.streams if s.start <= first]
        return self._nth(first, k, *self._owned(active)[stream.port], self.ports)

    def advance(self, end):
        """Settle the grants of every cycle before ``end``."""
        P = self.ports
        while self.now < end and self.streams:
            active = [s for s in self.streams if s.start <= self.now]
            later = [s.start for s in self.streams if s.start > self.now]
            if not active:
                self.now = min(end, min(later))
                continue
            owned = self._owned(active)
            finish = {id(s): self._nth(self.now, s.left, *owned[s.port], P) for s in active}
            stop = min([end] + later + [f + 1 for f in finish.values()])
            for s in active:
                lo, width = owned[s.port]
                count = self._count(self.now, stop, lo, width, P)
                if not count:
                    continue
                if s.granted is not None:
                    s.granted([self._nth(self.now, k, lo, width, P) for k in range(1, count + 1)])
                s.left -= count
                self.lines += count
            self.now = stop
            for s in active:
                if s.left == 0:
                    s.last = finish[id(s)]
                    self.streams.remove(s)
                    if s.done is not None:
                        s.done(s.last)

    def cancel(self, stream):
        """Take back the lines of ``stream`` not granted yet (its requester stops)."""
        if stream in self.streams:
            self.streams.remove(stream)
