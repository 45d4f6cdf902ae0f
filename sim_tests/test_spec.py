"""isa/SPEC.md is generated from the Python definitions and must not be stale."""

from pathlib import Path

from isa.encoding import INSTRUCTIONS, Fault
from isa.spec import generate_spec

SPEC = Path(__file__).resolve().parent.parent / "isa" / "SPEC.md"


def test_committed_spec_is_up_to_date():
    assert SPEC.read_text() == generate_spec(), "isa/SPEC.md is stale: run `make spec`"


def test_spec_documents_every_instruction_field_and_fault():
    text = generate_spec()
    for defn in INSTRUCTIONS:
        assert f"### {defn.mnemonic}\n" in text
        section = text.split(f"### {defn.mnemonic}\n", 1)[1].split("\n### ", 1)[0]
        for field in defn.fields:
            assert f"| {field.name} |" in section, (defn.mnemonic, field.name)
        assert defn.semantics in section
    for fault in Fault:
        assert f"| {fault.value} | {fault.name} |" in text
