"""The NeuISA encoding table: well-formed fields, unique opcodes, header and instruction decode faults."""

import pytest

from isa.config import NPUConfig
from isa.encoding import (BY_MNEMONIC, HEADER, INSTRUCTIONS, DecodeError, EncodeError, Engine,
                          Fault, Instr, UTop, decode_header, decode_instr, encode_header,
                          encode_instr)


@pytest.mark.parametrize("defn", INSTRUCTIONS, ids=lambda d: d.mnemonic)
def test_fields_do_not_overlap_and_fit(defn):
    used = 0xFF  # the opcode byte
    for field in defn.fields:
        assert field.msb < 64, field
        assert not used & field.mask, f"{defn.mnemonic}.{field.name} overlaps another field"
        used |= field.mask
    assert (used | defn.reserved_mask) == (1 << 64) - 1
    assert not used & defn.reserved_mask


def test_header_fields_do_not_overlap():
    used = 0xFF
    for field in HEADER.fields:
        assert not used & field.mask
        used |= field.mask


def test_opcodes_unique_nonzero_and_grouped_by_engine():
    opcodes = [d.opcode for d in INSTRUCTIONS]
    assert len(set(opcodes)) == len(opcodes)
    assert 0 not in opcodes
    ranges = {Engine.ME: range(0x01, 0x10), Engine.VE: range(0x10, 0x80),
              Engine.DMA: range(0x80, 0x90)}
    for d in INSTRUCTIONS:
        assert d.opcode in ranges[d.engine], d.mnemonic


@pytest.mark.parametrize("defn", INSTRUCTIONS, ids=lambda d: d.mnemonic)
def test_extreme_field_values_round_trip(defn):
    for pick in (lambda f: f.min, lambda f: f.max):
        args = {f.name: pick(f) for f in defn.fields}
        decoded = decode_instr(encode_instr(defn, args), defn.engine)
        assert decoded.op is defn and decoded.args == args


def test_field_range_errors_name_field_and_range():
    with pytest.raises(EncodeError, match=r"vaddi: imm = 32768 is out of range -32768\.\.32767"):
        encode_instr(BY_MNEMONIC["vaddi"], {"dst": 0, "a": 0, "imm": 32768, "n": 1})
    with pytest.raises(EncodeError, match=r"mm: m = 0 is out of range 1\.\.65536"):
        encode_instr(BY_MNEMONIC["mm"], {"dst": 0, "src": 0, "m": 0, "acc": 0})
    with pytest.raises(EncodeError, match="missing operand src"):
        encode_instr(BY_MNEMONIC["ldw"], {"k": 1})


def test_count_fields_store_count_minus_one():
    word = encode_instr(BY_MNEMONIC["vrq"], {"dst": 0, "src": 0, "n": 256})
    assert word >> 56 == 255


def test_header_round_trip_and_faults():
    utop = UTop(Engine.VE, [Instr(BY_MNEMONIC["vsetvl"], {"vl": 1})] * 3, deps=(1, 8),
                eoo=True, eop=True, tag=0xBEEF)
    word = encode_header(utop)
    decoded, length = decode_header(word, NPUConfig(dep_window=8, max_body=3))
    assert (decoded.engine, decoded.deps, decoded.eoo, decoded.eop, decoded.tag, length) == \
        (Engine.VE, (1, 8), True, True, 0xBEEF, 3)
    cases = [
        (word & ~0xFF | 0xA3, "magic byte 0xa3"),
        (word | 1 << 12, "reserved bits"),
        (word | 1 << 63, "reserved bits"),
    ]
    for bad, message in cases:
        with pytest.raises(DecodeError, match=message) as info:
            decode_header(bad)
        assert info.value.fault == Fault.BAD_HEADER
    with pytest.raises(DecodeError, match="beyond the window of 7") as info:
        decode_header(word, NPUConfig(dep_window=7))
    with pytest.raises(DecodeError, match="exceeds max_body 2"):
        decode_header(word, NPUConfig(max_body=2))


def test_instruction_decode_faults():
    mm = encode_instr(BY_MNEMONIC["mm"], {"dst": 1, "src": 2, "m": 3, "acc": 1})
    assert decode_instr(mm, Engine.ME).args == {"dst": 1, "src": 2, "m": 3, "acc": 1}
    for word, engine, message in [(0, Engine.ME, "illegal opcode 0x00"),
                                  (0xFF, Engine.VE, "illegal opcode 0xff"),
                                  (mm, Engine.VE, "is a ME instruction in a VE µTOp"),
                                  (mm | 1 << 60, Engine.ME, "reserved bits set")]:
        with pytest.raises(DecodeError, match=message) as info:
            decode_instr(word, engine)
        assert info.value.fault == Fault.ILLEGAL_OPCODE


def test_dependency_distance_range():
    with pytest.raises(EncodeError, match="out of range 1..16"):
        encode_header(UTop(Engine.ME, deps=(17,)))
