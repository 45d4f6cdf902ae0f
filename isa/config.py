"""NPUConfig: the one set of parameters every block, the ISA tools and the runtime share."""

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NPUConfig", "ConfigError", "PRESETS", "LUT_ENTRIES", "VREGS", "MAX_DEP_WINDOW"]

#: Entries of the vector engine's lookup table (indexed by a saturated int8).
LUT_ENTRIES = 256
#: Vector registers per vector engine.
VREGS = 8
#: Width of the dependency mask in a µTOp header: the largest window the encoding can express.
MAX_DEP_WINDOW = 16


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the value and what was expected."""


def _is_pow2(value):
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class NPUConfig:
    """Parameters of one physical NPU (pNPU).

    Memory is organized in 32-bit words. A scratchpad *row* is ``ve_lanes`` words, the
    width of one vector; an int8 tensor element occupies one word (sign-extended), so
    the matrix engine reads the low 8 bits of each input word. HBM is a flat array of
    words.
    """

    #: Systolic array height: the K (reduction) extent of one weight tile.
    array_rows: int = 8
    #: Systolic array width: the N (output) extent of one weight tile.
    array_cols: int = 8
    #: Number of matrix engines (systolic arrays).
    n_me: int = 4
    #: Number of vector engines.
    n_ve: int = 4
    #: Number of DMA engines.
    n_dma: int = 2
    #: Number of hardware contexts (vNPUs that can run at once).
    n_ctx: int = 4
    #: SIMD lanes per vector engine; also the words per scratchpad row.
    ve_lanes: int = 8
    #: Scratchpad depth in rows (all contexts together).
    spad_rows: int = 16384
    #: Scratchpad banks; row r lives in bank r % spad_banks. Eight, so four MEs
    #: accumulating (three row accesses per cycle each) and the DMA rarely meet in a bank.
    spad_banks: int = 8
    #: HBM size in 32-bit words (all contexts together): 1 GiB. The RTL holds the HBM
    #: controller only; the lines live in the simulation harness, which holds just the
    #: lines a run writes, so the size costs neither Verilog nor simulation memory.
    hbm_words: int = 1 << 28
    #: Cycles from an HBM request to its first word.
    hbm_latency: int = 20
    #: HBM bandwidth in bytes per cycle (a multiple of 4: whole words).
    hbm_bytes_per_cycle: int = 32
    #: Dependency window: a µTOp may depend on any of the previous ``dep_window`` µTOps.
    dep_window: int = 8
    #: Largest µTOp body (instructions after the header) an engine accepts.
    max_body: int = 64
    #: Instruction prefetch buffer per context, in 64-bit words (a power of two): the
    #: dispatcher fetches a context's program from HBM into it, ahead of decode; programs
    #: may be longer (the buffer is a ring). It holds at least one µTOp of ``max_body``
    #: words and one HBM line more.
    imem_words: int = 4096
    #: Requests each context's doorbell queue holds (see the DOORBELL register).
    queue_depth: int = 4
    #: When no context retires a µTOp for this many cycles, running contexts fault (WATCHDOG).
    watchdog_cycles: int = 1 << 20
    #: Clock the NPU is meant to run at, in MHz: reports convert cycles to time with it
    #: (the paper's TPU-like NPU runs near 1 GHz). It changes no hardware.
    clock_mhz: int = 1000

    def __post_init__(self):
        def positive(name, upper=None):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
            if upper is not None and value > upper:
                raise ConfigError(f"{name} must be at most {upper}, not {value!r}")

        for field in dataclasses.fields(self):
            positive(field.name)
        positive("n_ctx", 16)
        positive("n_me", 16)
        positive("n_ve", 16)
        positive("n_dma", 16)
        positive("dep_window", MAX_DEP_WINDOW)
        positive("max_body", 255)
        positive("spad_rows", 1 << 16)
        positive("hbm_words", 1 << 32)
        if not _is_pow2(self.ve_lanes) or self.ve_lanes > LUT_ENTRIES:
            raise ConfigError(
                f"ve_lanes must be a power of two from 1 to {LUT_ENTRIES}, not {self.ve_lanes!r}")
        for name in ("array_rows", "array_cols"):
            if getattr(self, name) > self.ve_lanes:
                raise ConfigError(
                    f"{name} must be at most ve_lanes ({self.ve_lanes}): a scratchpad row "
                    f"feeds one array row, not {getattr(self, name)!r}")
        if not _is_pow2(self.spad_banks):
            raise ConfigError(f"spad_banks must be a power of two, not {self.spad_banks!r}")
        if self.spad_rows % self.spad_banks:
            raise ConfigError(
                f"spad_rows ({self.spad_rows}) must be a multiple of spad_banks "
                f"({self.spad_banks})")
        if self.hbm_bytes_per_cycle % 4 or not _is_pow2(self.hbm_bytes_per_cycle // 4):
            raise ConfigError(
                f"hbm_bytes_per_cycle must be 4 times a power of two (whole 32-bit words "
                f"per HBM line), not {self.hbm_bytes_per_cycle!r}")
        if self.hbm_words_per_cycle < 2:
            raise ConfigError(
                f"hbm_bytes_per_cycle must be at least 8 (an HBM line holds whole 64-bit "
                f"program words), not {self.hbm_bytes_per_cycle!r}")
        if not _is_pow2(self.imem_words) or \
                self.imem_words < self.max_body + 1 + self.prog_words_per_line:
            raise ConfigError(
                f"imem_words must be a power of two holding a µTOp of max_body + 1 = "
                f"{self.max_body + 1} words and one HBM line of {self.prog_words_per_line} "
                f"more, not {self.imem_words!r}")
        if self.hbm_words % self.hbm_words_per_cycle:
            raise ConfigError(
                f"hbm_words ({self.hbm_words}) must be a multiple of the words per HBM line "
                f"({self.hbm_words_per_cycle})")

    @property
    def hbm_words_per_cycle(self):
        return self.hbm_bytes_per_cycle // 4

    @property
    def prog_words_per_line(self):
        """64-bit program words in one HBM line (what one instruction fetch brings)."""
        return self.hbm_words_per_cycle // 2

    @property
    def max_prog_words(self):
        """The longest program: one that fills the whole HBM."""
        return self.hbm_words // 2

    @property
    def lut_rows(self):
        """Scratchpad rows that hold one lookup table."""
        return LUT_ENTRIES // self.ve_lanes

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name):
        try:
            return PRESETS[name]
        except KeyError:
            raise ConfigError(
                f"unknown config preset {name!r}; expected one of {', '.join(PRESETS)}") from None

    @classmethod
    def from_dict(cls, values, *, source="config"):
        """Build from a mapping: an optional ``preset`` to start from, then field overrides."""
        values = dict(values)
        preset = values.pop("preset", "default")
        if not isinstance(preset, str):
            raise ConfigError(f"{source}: preset must be a preset name ({', '.join(PRESETS)}), "
                              f"not {preset!r}")
        base = cls.preset(preset)
        names = {field.name for field in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in names:
                raise ConfigError(
                    f"{source}: unknown config key {key!r}; expected one of {', '.join(sorted(names))}")
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{source}: {key} must be an integer, not {value!r}")
        return base.replace(**values)

    @classmethod
    def from_toml(cls, path):
        """Load a TOML file: ``preset = "NAME"`` (optional) and any fields to override."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"{path}: cannot read config: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file (TOML is UTF-8)") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: malformed TOML: {error}") from None
        try:
            return cls.from_dict(values, source=str(path))
        except ConfigError as error:
            message = str(error)
            if not message.startswith(str(path)):
                message = f"{path}: {message}"
            raise ConfigError(message) from None

    @classmethod
    def load(cls, spec):
        """A preset name, or a path to a TOML file."""
        if spec in PRESETS:
            return PRESETS[spec]
        if str(spec).endswith(".toml"):
            return cls.from_toml(spec)
        raise ConfigError(
            f"unknown config {spec!r}; expected a preset ({', '.join(PRESETS)}) or a .toml file")

    def to_dict(self):
        return dataclasses.asdict(self)


PRESETS = {
    # Small enough for the pure-Python simulator.
    "default": NPUConfig(),
    # Smallest useful machine: fast unit tests and hand-written conformance cases.
    "tiny": NPUConfig(array_rows=4, array_cols=4, n_me=2, n_ve=2, n_dma=1, n_ctx=4,
                      ve_lanes=4, spad_rows=1024, spad_banks=4, hbm_words=8192,
                      hbm_latency=4, hbm_bytes_per_cycle=16, dep_window=8, max_body=64,
                      imem_words=256, watchdog_cycles=1024),
    # The models at 8 lanes on a machine small enough for a quick Verilator build.
    "small": NPUConfig(n_me=4, n_ve=2, n_dma=1, n_ctx=2, spad_rows=8192, hbm_words=1 << 16,
                       hbm_latency=8, imem_words=2048, watchdog_cycles=1 << 16),
    # TPU-like core: 128x128 systolic arrays, for Verilog generation.
    "tpu": NPUConfig(array_rows=128, array_cols=128, n_me=4, n_ve=2, n_dma=4, n_ctx=4,
                     ve_lanes=128, spad_rows=1 << 14, spad_banks=16, hbm_words=1 << 31,
                     hbm_latency=100, hbm_bytes_per_cycle=512, dep_window=16, max_body=128,
                     imem_words=4096),
    # The TPU-like core with twice its scratchpad (16 MiB), so that two full-size models
    # (each compiled for the tpu's 8 MiB) share it: the paper-scale experiment's machine,
    # for the timing model (--backend perf).
    "tpu-shared": NPUConfig(array_rows=128, array_cols=128, n_me=4, n_ve=2, n_dma=4, n_ctx=4,
                            ve_lanes=128, spad_rows=1 << 15, spad_banks=16, hbm_words=1 << 31,
                            hbm_latency=100, hbm_bytes_per_cycle=512, dep_window=16,
                            max_body=128, imem_words=4096),
}
