"""NPUConfig: validation, presets, TOML loading."""

import pytest

from isa.config import ConfigError, NPUConfig, PRESETS


def test_presets_are_valid_and_distinct():
    assert set(PRESETS) >= {"default", "tiny", "tpu"}
    assert NPUConfig.preset("tpu").array_rows == NPUConfig.preset("tpu").array_cols == 128
    assert NPUConfig() == NPUConfig.preset("default")


def test_frozen():
    with pytest.raises(AttributeError):
        NPUConfig().n_me = 3


@pytest.mark.parametrize("changes, message", [
    ({"n_me": 0}, "n_me must be a positive integer, not 0"),
    ({"n_ve": -2}, "n_ve must be a positive integer, not -2"),
    ({"n_ctx": 17}, "n_ctx must be at most 16, not 17"),
    ({"dep_window": 17}, "dep_window must be at most 16, not 17"),
    ({"max_body": 256}, "max_body must be at most 255, not 256"),
    ({"ve_lanes": 12}, "ve_lanes must be a power of two from 1 to 256, not 12"),
    ({"array_rows": 16}, "array_rows must be at most ve_lanes (8)"),
    ({"spad_banks": 3}, "spad_banks must be a power of two, not 3"),
    ({"spad_rows": 1026}, "spad_rows (1026) must be a multiple of spad_banks (8)"),
    ({"hbm_bytes_per_cycle": 6}, "hbm_bytes_per_cycle must be 4 times a power of two"),
    ({"hbm_bytes_per_cycle": 12}, "hbm_bytes_per_cycle must be 4 times a power of two"),
    ({"hbm_words": 1001}, "hbm_words (1001) must be a multiple of the words per HBM line (8)"),
    ({"hbm_latency": 1.5}, "hbm_latency must be a positive integer, not 1.5"),
    ({"n_dma": True}, "n_dma must be a positive integer, not True"),
])
def test_validation_messages_name_the_value(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NPUConfig().replace(**changes)


def test_from_toml(tmp_path):
    path = tmp_path / "npu.toml"
    path.write_text('preset = "tiny"\nn_me = 3\nhbm_latency = 7\n')
    config = NPUConfig.from_toml(path)
    assert (config.n_me, config.hbm_latency, config.ve_lanes) == (3, 7, 4)
    assert NPUConfig.load(str(path)) == config


@pytest.mark.parametrize("text, message", [
    ("n_mes = 3\n", "unknown config key 'n_mes'"),
    ('n_me = "three"\n', "n_me must be an integer, not 'three'"),
    ('preset = "huge"\n', "unknown config preset 'huge'"),
    ("n_me = \n", "malformed TOML"),
    ("ve_lanes = 3\n", "ve_lanes must be a power of two"),
    ("preset = [1]\n", "preset must be a preset name (default, tiny, small, tpu, tpu-shared), not [1]"),
    ('[preset]\nname = "tiny"\n', "preset must be a preset name (default, tiny, small, tpu, tpu-shared), "
                                  "not {'name': 'tiny'}"),
])
def test_from_toml_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        NPUConfig.from_toml(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_from_toml_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('# größe\nn_me = 2\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{path}: not a UTF-8 text file"):
        NPUConfig.load(str(path))


def test_from_dict_preset_must_be_a_name():
    with pytest.raises(ConfigError, match=r"^case.toml: preset must be a preset name .*not 3$"):
        NPUConfig.from_dict({"preset": 3}, source="case.toml")


def test_load_errors():
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        NPUConfig.load("nope")
    with pytest.raises(ConfigError, match="cannot read config"):
        NPUConfig.load("/nonexistent/x.toml")
