"""vNPUs and the mapper: placement, refusals, and two vNPUs running through the device."""

import numpy as np
import pytest

from isa.config import NPUConfig
from isa.asm import assemble
from isa.golden import ContextSpec, GoldenNPU
from runtime.host.device import Device, MappingError

DEFAULT = NPUConfig()


def test_spatial_mapping_gives_disjoint_engines_and_segments():
    device = Device(DEFAULT)
    a = device.create(2, 1, 512, 4096, priority=3)
    b = device.create(2, 3, 1024, 8192)
    assert (a.me_mask, a.ve_mask, b.me_mask, b.ve_mask) == (0b0011, 0b0001, 0b1100, 0b1110)
    assert a.spad.base + a.spad.size <= b.spad.base and a.hbm.base + a.hbm.size <= b.hbm.base
    assert (a.ctx, b.ctx, a.priority) == (0, 1, 3)


def test_oversubscription_shares_the_least_owned_engines():
    device = Device(DEFAULT)
    device.create(3, 3, 64, 64)
    shared = device.create(2, 2, 64, 64, oversubscribe=True)
    assert shared.me_mask & 0b1000 and bin(shared.me_mask).count("1") == 2


@pytest.mark.parametrize("request_, message", [
    (dict(n_me=5, n_ve=1, spad_rows=8, hbm_words=8), "n_me = 5: this NPU has 4 matrix engines"),
    (dict(n_me=1, n_ve=9, spad_rows=8, hbm_words=8), "n_ve = 9: this NPU has 4 vector engines"),
    (dict(n_me=0, n_ve=0, spad_rows=8, hbm_words=8), "at least one matrix or vector engine"),
    (dict(n_me=1, n_ve=1, spad_rows=20000, hbm_words=8), "wants 20000 scratchpad rows; 16384 of 16384"),
    (dict(n_me=1, n_ve=1, spad_rows=8, hbm_words=0), "hbm size must be a positive integer"),
])
def test_refusals_name_what_is_short(request_, message):
    with pytest.raises(MappingError, match=message):
        Device(DEFAULT).create(**request_)


def test_refusals_when_the_npu_is_full():
    device = Device(DEFAULT)
    device.create(4, 1, 8192, 1024)
    with pytest.raises(MappingError, match="wants 1 MEs; only 0 of 4 are not owned"):
        device.create(1, 1, 64, 64)
    with pytest.raises(MappingError, match="wants 10000 scratchpad rows; 8192 of 16384 are not mapped to another vNPU .and not necessarily in one piece.; a config with a larger `spad_rows` lifts the limit"):
        device.create(0, 1, 10000, 64)
    for _ in range(3):
        device.create(0, 1, 64, 64)
    with pytest.raises(MappingError, match="all 4 hardware contexts hold vNPUs"):
        device.create(0, 1, 64, 64)
    device.destroy(device.vnpus[-1])
    device.create(0, 1, 64, 64)


def test_two_vnpus_run_through_the_device():
    config = NPUConfig.preset("tiny")
    device = Device(config, "pysim", "static")
    gemm = device.create(1, 1, 128, 512, name="gemm")
    vec = device.create(1, 1, 128, 512, name="vec")
    programs = {"gemm": assemble(".me eop\n ldw 0, 4\n mm 16, 4, 8\n"),
                "vec": assemble(".ve eop\n vmuli 16, 0, -3, 8\n")}
    driver = device.driver(programs)
    rng = np.random.default_rng(2)
    golden = GoldenNPU(config)
    for v in (gemm, vec):
        data = rng.integers(-128, 128, (16, 4))
        driver.write_spad(v.spad.base, data)
        golden.spad[v.spad.base:v.spad.base + 16] = data
    golden.run([ContextSpec(programs[v.name], v.spad, v.hbm) for v in (gemm, vec)])
    run = driver.run(read_spad=[(v.spad.base, 32) for v in (gemm, vec)])
    for v in (gemm, vec):
        assert np.array_equal(run.spad[(v.spad.base, 32)], golden.spad[v.spad.base:v.spad.base + 32])
    # Static policy: each vNPU ran on its own ME/VE only.
    assert run.engines[1]["BUSY_CTX0"] == 0 and run.engines[0]["BUSY_CTX1"] == 0
