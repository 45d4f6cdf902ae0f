"""vNPUs and the mapper: virtual NPUs placed on one physical NPU.

A vNPU asks for a number of matrix and vector engines, scratchpad rows and HBM words, and
has a priority. The device maps it onto a hardware context: *spatially* (engines that no
other vNPU owns) or *oversubscribed* (engines may be owned by several vNPUs), always with
disjoint memory segments; or exactly where the caller says (`Device.place`). The mapping
becomes the context's registers (owned-engine masks, segments, priority) and the policy
register, written through the host interface by `Device.driver`. Every run of the project
(conformance cases, mixes, the demo, bench, model runs) places its tenants this way.
"""

from dataclasses import dataclass

from isa.golden import Segment
from .driver import Driver, check_placement

__all__ = ["VNPU", "Device", "MappingError"]


class MappingError(ValueError):
    """A vNPU request the physical NPU cannot satisfy; the message names what is short."""


@dataclass
class VNPU:
    """A virtual NPU and, once mapped, where it lives."""
    n_me: int
    n_ve: int
    spad_rows: int
    hbm_words: int
    priority: int = 0
    name: str = ""
    ctx: int | None = None
    me_mask: int = 0
    ve_mask: int = 0
    spad: Segment | None = None
    hbm: Segment | None = None


def _first_fit(used, size, total):
    """Lowest base where [base, base+size) misses every (base, size) in ``used``."""
    base = 0
    for start, length in sorted(used):
        if base + size <= start:
            break
        base = max(base, start + length)
    return base if base + size <= total else None


class Device:
    """A pNPU, the vNPUs mapped on it, and how it runs them: the backend (with its
    options, e.g. ``trace``, ``vcd``, ``check_races``), the sharing policy (None: the
    POLICY register keeps its reset value, static) and the temporal policy's time slice."""

    def __init__(self, config, backend="pysim", policy="harvest", *, time_slice=None,
                 **backend_options):
        self.config, self.backend, self.policy = config, backend, policy
        self.time_slice, self.backend_options = time_slice, backend_options
        self.vnpus = []

    def _free_context(self):
        cfg = self.config
        if len(self.vnpus) == cfg.n_ctx:
            raise MappingError(f"all {cfg.n_ctx} hardware contexts hold vNPUs; destroy one first")
        return min(set(range(cfg.n_ctx)) - {v.ctx for v in self.vnpus})

    def create(self, n_me, n_ve, spad_rows, hbm_words, *, priority=0, oversubscribe=False,
               name=""):
        """Map a new vNPU of ``n_me`` MEs and ``n_ve`` VEs (the lowest engines no other vNPU
        owns) and first-fit segments; raise MappingError when the NPU cannot hold it."""
        cfg = self.config
        for field, value, limit in (("n_me", n_me, cfg.n_me), ("n_ve", n_ve, cfg.n_ve)):
            if not isinstance(value, int) or not 0 <= value <= limit:
                raise MappingError(f"vNPU {field} = {value!r}: this NPU has {limit} "
                                   f"{'matrix' if field == 'n_me' else 'vector'} engines")
        if n_me + n_ve == 0:
            raise MappingError("a vNPU needs at least one matrix or vector engine")
        self._free_context()
        masks = []
        for kind, count, total in (("me", n_me, cfg.n_me), ("ve", n_ve, cfg.n_ve)):
            taken = 0
            for v in self.vnpus:
                taken |= getattr(v, f"{kind}_mask")
            free = [e for e in range(total) if not taken >> e & 1]
            if len(free) >= count:
                chosen = free[:count]
            elif oversubscribe:
                # Share: the free engines, then the least-owned ones.
                owners = {e: sum(getattr(v, f"{kind}_mask") >> e & 1 for v in self.vnpus)
                          for e in range(total)}
                chosen = sorted(range(total), key=lambda e: (owners[e], e))[:count]
            else:
                raise MappingError(f"vNPU wants {count} {kind.upper()}s; only {len(free)} of "
                                   f"{total} are not owned by another vNPU (oversubscribe=True "
                                   f"shares them)")
            masks.append(sum(1 << e for e in chosen))
        segments = []
        for kind, size, total in (("spad", spad_rows, cfg.spad_rows), ("hbm", hbm_words,
                                                                       cfg.hbm_words)):
            if not isinstance(size, int) or size < 1:
                raise MappingError(f"vNPU {kind} size must be a positive integer, not {size!r}")
            base = _first_fit([(getattr(v, kind).base, getattr(v, kind).size)
                               for v in self.vnpus], size, total)
            if base is None:
                unit, field = (("scratchpad rows", "spad_rows") if kind == "spad"
                               else ("HBM words", "hbm_words"))
                free = total - sum(getattr(v, kind).size for v in self.vnpus)
                raise MappingError(f"vNPU wants {size} {unit}; {free} of {total} are not "
                                   f"mapped to another vNPU (and not necessarily in one piece); "
                                   f"a config with a larger `{field}` lifts the limit")
            segments.append(Segment(base, size))
        return self.place(segments[0], segments[1], me_mask=masks[0], ve_mask=masks[1],
                          priority=priority, name=name)

    def place(self, spad, hbm, *, me_mask=None, ve_mask=None, priority=0, name=""):
        """Map a vNPU exactly here: ``spad`` and ``hbm`` Segments (disjoint from every other
        vNPU's) and the engines it owns (masks; default every engine, shared with the
        others); it takes the lowest free context."""
        cfg = self.config
        me_mask = (1 << cfg.n_me) - 1 if me_mask is None else me_mask
        ve_mask = (1 << cfg.n_ve) - 1 if ve_mask is None else ve_mask
        if me_mask == ve_mask == 0:
            raise MappingError("a vNPU needs at least one matrix or vector engine")
        check_placement(cfg, f"vNPU {name}" if name else "vNPU", spad, hbm, me_mask, ve_mask,
                        priority, {v.name: (v.spad, v.hbm) for v in self.vnpus},
                        error=MappingError)
        ctx = self._free_context()
        if name and any(v.name == name for v in self.vnpus):
            raise MappingError(f"a vNPU named {name!r} is already mapped on this device")
        vnpu = VNPU(me_mask.bit_count(), ve_mask.bit_count(), spad.size, hbm.size, priority,
                    name or f"vnpu{ctx}", ctx, me_mask, ve_mask, spad, hbm)
        self.vnpus.append(vnpu)
        return vnpu

    def destroy(self, vnpu):
        if vnpu not in self.vnpus:
            raise MappingError(f"{vnpu.name} is not mapped on this device")
        self.vnpus.remove(vnpu)

    def driver(self, programs, *, windows=None, reserve=()):
        """A driver with the policy (and time slice) set and each vNPU's program (``programs``
        by vNPU name: 64-bit words, placed in HBM outside every vNPU's segment) and
        registers loaded. ``windows`` (by vNPU name) narrows
        the HBM a context sees to that many words from its segment's base: its requests'
        doorbell offsets then move the window within the vNPU's segment. ``reserve``: more
        HBM Segments to keep programs out of (say, data the host places outside every
        segment)."""
        unknown = set(programs) - {v.name for v in self.vnpus}
        if unknown:
            raise MappingError(f"programs for vNPUs this device does not hold: "
                               f"{', '.join(sorted(unknown))}")
        driver = Driver(self.config, self.backend, **self.backend_options)
        if self.policy is not None:
            driver.set_policy(self.policy)
        if self.time_slice is not None:
            driver.set_time_slice(self.time_slice)
        for segment in [vnpu.hbm for vnpu in self.vnpus] + list(reserve):
            driver.reserve_hbm(segment)  # programs go beside the segments, never in them
        for vnpu in self.vnpus:
            if vnpu.name not in programs:
                continue
            hbm = vnpu.hbm
            if windows and vnpu.name in windows:
                if not 1 <= windows[vnpu.name] <= hbm.size:
                    raise MappingError(f"{vnpu.name}: an HBM window of {windows[vnpu.name]!r} "
                                       f"words does not fit its segment of {hbm.size}")
                hbm = Segment(hbm.base, windows[vnpu.name])
            driver.load_context(vnpu.ctx, programs[vnpu.name], vnpu.spad, hbm,
                                me_mask=vnpu.me_mask, ve_mask=vnpu.ve_mask,
                                priority=vnpu.priority)
        return driver
