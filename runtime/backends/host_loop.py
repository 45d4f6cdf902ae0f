"""The host's serving loop of a `Serve` (runtime/backends/script.py), written once for every
backend that runs it in Python (pysim, perf; the Verilator harness has its own in C++,
held to the same cycles by the tests).

``serve_loop`` is a generator of the host's operations; a backend executes each one in its
own way and sends back the result:

- ``("cycle",)``: the NPU's cycle counter now -> int;
- ``("write", address, value)``: one register write (a cycle) -> None;
- ``("read", address)``: one register read (a cycle) -> the value;
- ``("burst", first, count)``: HBM lines first.. through the host's port -> their words;
- ``("wait", cycles)``: let the NPU run -> None.

It returns the per-request results of the Serve's result tuple: (arrival or None,
HOST_ERROR code or 0, COMPLETION entry or 0, words of its lines).
"""

from collections import deque

__all__ = ["serve_loop"]


def serve_loop(op, poll, words_per_line):
    """The steps of Serve ``op``, polling every ``poll`` cycles (see the module)."""
    requests = op.requests
    waiting = [deque() for _ in op.contexts]   # arrived at the host
    rung = [deque() for _ in op.contexts]      # rung, not completed
    dead = [False] * len(op.contexts)          # faulted: takes no request
    arrival, error, entry = [None] * len(requests), [0] * len(requests), [0] * len(requests)
    words = [[] for _ in requests]
    followers = [[] for _ in requests]
    timed = []
    for index, request in enumerate(requests):
        (timed if request.after is None else followers[request.after]).append(index)
    resolved = 0

    def drop(index):
        nonlocal resolved
        resolved += 1
        for follower in followers[index]:
            drop(follower)

    mark = yield ("cycle",)
    following = 0                              # the next timed request
    while True:
        now = (yield ("cycle",)) - mark
        while following < len(timed) and requests[timed[following]].cycle <= now:
            index = timed[following]
            following += 1
            arrival[index] = requests[index].cycle
            waiting[requests[index].context].append(index)
        for c, context in enumerate(op.contexts):
            while waiting[c] and (dead[c] or len(rung[c]) < context.capacity):
                index = waiting[c].popleft()
                yield ("write", context.doorbell, requests[index].offset)
                value = yield ("read", op.host_error)
                if value:
                    yield ("write", op.host_error, 0)
                    error[index] = value & 0xFF
                    drop(index)
                else:
                    rung[c].append(index)
        for c, context in enumerate(op.contexts):
            while rung[c]:
                value = yield ("read", context.completion)
                if not value >> 63:
                    break
                index = rung[c].popleft()
                entry[index] = value
                words[index] = yield ("burst", *requests[index].lines)
                resolved += 1
                if value >> 62 & 1:
                    dead[c] = True
                    for held in rung[c]:
                        drop(held)
                    rung[c].clear()
                    for follower in followers[index]:
                        drop(follower)
                    break
                arrived = (yield ("cycle",)) - mark
                for follower in followers[index]:
                    arrival[follower] = arrived
                    waiting[requests[follower].context].append(follower)
        now = (yield ("cycle",)) - mark
        if resolved == len(requests) or now >= op.max_cycles:
            break
        step = poll
        if following < len(timed) and requests[timed[following]].cycle > now:
            step = min(step, requests[timed[following]].cycle - now)
        yield ("wait", step)
    return [(arrival[i], error[i], entry[i], words[i] or
             [0] * (requests[i].lines[1] * words_per_line)) for i in range(len(requests))]
