"""NeuISA assembler and disassembler.

Syntax (one statement per line; ``#`` or ``;`` starts a comment)::

    load:   .dma                          # a µTOp header: .me, .ve or .dma
                dcfg  4, 4, 1             # positional operands in the spec's order ...
                dload dst=0, hbm=0, rows=4    # ... or named ones
    gemm:   .me deps(load) eoo tag=1      # deps: µTOp labels or distances (-1 = previous)
                ldw   0, 4
                mm    8, 0, 4, acc        # flags (acc) are bare words
            .ve deps(gemm) eop
                loop  2, done, 1, 1       # len may be a label placed after the loop body
                vrq   16, 8, 1
    done:
            .end                          # closes the µTOp: following .word lines stand alone
            .word 0xdeadbeef              # a raw 64-bit word (inside a µTOp it is a body word)

A body's length is the number of instructions up to the next header, ``.end`` or the end.
"""

import re
from dataclasses import dataclass

from .config import MAX_DEP_WINDOW
from .encoding import (BY_MNEMONIC, HEADER, Engine, EncodeError, DecodeError, Instr, UTop,
                       WORD_BYTES, decode_program, encode_program)

__all__ = ["AsmError", "Assembly", "assemble", "assemble_program", "disassemble",
           "words_to_bytes", "bytes_to_words", "format_items"]

_ENGINE_DIRECTIVES = {".me": Engine.ME, ".ve": Engine.VE, ".dma": Engine.DMA}
_LABEL = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*:")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class AsmError(ValueError):
    """An error in assembly source or a binary, located by file and line (or word)."""

    def __init__(self, source, line, message):
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line is not None else f"{source}"
        super().__init__(f"{where}: {message}")


def _parse_int(text):
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        return None


@dataclass
class _Label:
    utop: int | None     # the µTOp the label stands in or starts; None for a raw word
    pos: int             # body position it points at; -1 when it labels a header or raw word
    line: int
    item: int            # index of the item (µTOp or raw word) it belongs to


@dataclass
class _PendingInstr:
    defn: object
    operands: list       # (text, line)
    line: int


@dataclass
class Assembly:
    """An assembled program: its items (UTop and raw words), words, and label addresses."""
    items: list
    words: list
    labels: dict         # label -> word address of the header or body word it names


def assemble_program(text, config=None, *, source="<asm>"):
    """Assemble source text for the NPU of ``config`` (its dep_window and max_body); raise
    AsmError (with file and line) on any error. Without a config, the limits are the ISA's
    (a dependency window of MAX_DEP_WINDOW, bodies as long as a header can encode): the
    program may then be too wide for a given NPU, whose decoder faults it."""
    dep_window = MAX_DEP_WINDOW if config is None else config.dep_window
    max_body = None if config is None else config.max_body
    items, labels = _assemble_items(text, source, dep_window, max_body)
    try:
        words = encode_program(items)
    except EncodeError as error:  # operands are range-checked while parsing; a safety net
        raise AsmError(source, None, str(error)) from None
    item_address, address = [], 0
    for item in items:
        item_address.append(address)
        address += 1 if isinstance(item, int) else 1 + len(item.body)
    item_address.append(address)  # a label after everything names the program's end
    addresses = {name: item_address[label.item] + (label.pos + 1 if label.pos >= 0 else 0)
                 for name, label in labels.items()}
    return Assembly(items, words, addresses)


def assemble(text, config=None, *, source="<asm>"):
    """Assemble source text to a list of 64-bit words (see assemble_program)."""
    return assemble_program(text, config, source=source).words


def _assemble_items(text, source, dep_window, max_body):
    items = []           # UTop or int, in program order
    utops = []           # indexes into items of the µTOps, in order
    labels = {}
    pending_labels = []  # labels waiting for the statement they name
    pending_deps = []    # (utop index, [(text, line)])
    pending_bodies = {}  # utop index -> [_PendingInstr | int]
    header_lines = {}    # utop index -> source line of its header
    current = None       # index (into utops) of the open µTOp

    def err(line, message):
        raise AsmError(source, line, message)

    def bind_labels(utop, pos, item):
        for name, line in pending_labels:
            labels[name] = _Label(utop, pos, line, item)
        pending_labels.clear()

    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = re.split(r"[#;]", raw_line, maxsplit=1)[0].strip()
        while (match := _LABEL.match(line)):
            name = match.group(1)
            if name in labels or name in (n for n, _ in pending_labels):
                err(number, f"label {name!r} is defined twice")
            if name in BY_MNEMONIC:
                err(number, f"label {name!r} is an instruction mnemonic")
            pending_labels.append((name, number))
            line = line[match.end():].strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.lower(), rest.strip()
        if word in _ENGINE_DIRECTIVES:
            utop = UTop(_ENGINE_DIRECTIVES[word])
            current = len(utops)
            deps_text = []
            for token in re.findall(r"deps\([^)]*\)|\S+", rest):
                token_l = token.lower()
                if token_l.startswith("deps("):
                    deps_text.extend((d.strip(), number) for d in token[5:-1].split(",") if d.strip())
                elif token_l in ("eoo", "eop", "restartable"):
                    setattr(utop, token_l, True)
                elif token_l.startswith("tag="):
                    tag = _parse_int(token[4:])
                    tag_field = next(f for f in HEADER.fields if f.name == "tag")
                    if tag is None or not tag_field.min <= tag <= tag_field.max:
                        err(number, f"tag {token[4:]!r} is not an integer in 0..{tag_field.max}")
                    utop.tag = tag
                else:
                    err(number, f"unknown header option {token!r}; expected deps(...), eoo, "
                                f"eop, restartable or tag=N")
            bind_labels(current, -1, len(items))
            utops.append(len(items))
            items.append(utop)
            pending_deps.append((current, deps_text))
            pending_bodies[current] = []
            header_lines[current] = number
        elif word == ".end":
            if rest:
                err(number, f".end takes no operands, not {rest!r}")
            if pending_labels and current is not None:
                bind_labels(current, len(pending_bodies[current]), utops[current])
            current = None
        elif word == ".word":
            value = _parse_int(rest)
            if value is None or not 0 <= value < 1 << 64:
                err(number, f".word needs one integer in 0..2^64-1, not {rest!r}")
            if current is None:
                bind_labels(None, -1, len(items))
                items.append(value)
            else:
                bind_labels(current, len(pending_bodies[current]), utops[current])
                pending_bodies[current].append(value)
        elif word.startswith("."):
            err(number, f"unknown directive {word!r}; expected .me, .ve, .dma, .end or .word")
        else:
            defn = BY_MNEMONIC.get(word)
            if defn is None:
                err(number, f"unknown mnemonic {word!r}")
            if current is None:
                err(number, f"instruction {word!r} outside a µTOp: start one with .me, .ve or .dma")
            utop = items[utops[current]]
            if defn.engine != utop.engine:
                err(number, f"{word} is a {defn.engine.name} instruction, but this µTOp is "
                            f"{utop.engine.name}")
            bind_labels(current, len(pending_bodies[current]), utops[current])
            operands = [(o.strip(), number) for o in rest.split(",")] if rest else []
            pending_bodies[current].append(_PendingInstr(defn, operands, number))
    # Labels at the very end name the end of the last body (or of the program).
    if pending_labels:
        if current is None:
            bind_labels(None, -1, len(items))
        else:
            bind_labels(current, len(pending_bodies[current]), utops[current])

    # Second pass: dependencies and bodies.
    for index, deps_text in pending_deps:
        distances = []
        for text_dep, line in deps_text:
            value = _parse_int(text_dep)
            if value is not None:
                if value >= 0:
                    err(line, f"dependency {text_dep} must be negative (-1 is the previous µTOp) "
                              f"or a µTOp label")
                distance = -value
            elif text_dep in labels and labels[text_dep].pos == -1 \
                    and labels[text_dep].utop is not None:
                distance = index - labels[text_dep].utop
                if distance <= 0:
                    err(line, f"dependency {text_dep!r} is not an earlier µTOp: dependencies "
                              f"point backwards only")
            else:
                err(line, f"dependency {text_dep!r} is neither a distance nor a µTOp label")
            if distance > dep_window:
                err(line, f"dependency {text_dep!r} is {distance} µTOps back, beyond the "
                          f"dependency window of {dep_window}")
            distances.append(distance)
        items[utops[index]].deps = tuple(sorted(set(distances)))

    for index, body in pending_bodies.items():
        utop = items[utops[index]]
        for position, entry in enumerate(body):
            if isinstance(entry, int):
                utop.body.append(Instr(None, raw=entry))
                continue
            utop.body.append(_build_instr(entry, index, position, len(body), labels, err))
        length_field = next(f for f in HEADER.fields if f.name == "length")
        if len(utop.body) > length_field.max:
            err(header_lines[index], f"µTOp body has {len(utop.body)} instructions; at most {length_field.max} fit")
        if max_body is not None and len(utop.body) > max_body:
            err(header_lines[index], f"µTOp body has {len(utop.body)} instructions; the "
                                     f"config's max_body is {max_body}")
    return items, labels


def _build_instr(entry, utop_index, position, body_len, labels, err):
    defn = entry.defn
    positional = [f for f in defn.fields if not f.flag]
    flags = {f.name for f in defn.fields if f.flag}
    args = {f.name: 0 for f in defn.fields if f.flag}
    given = set()
    next_positional = 0
    for text_op, line in entry.operands:
        if not text_op:
            err(line, f"{defn.mnemonic}: empty operand")
        name, eq, value_text = text_op.partition("=")
        name, value_text = name.strip(), value_text.strip()
        if not eq:
            if text_op.lower() in flags:
                name = text_op.lower()
                if name in given:
                    err(line, f"{defn.mnemonic}: operand {name!r} given twice")
                args[name] = 1
                given.add(name)
                continue
            if next_positional >= len(positional):
                err(line, f"{defn.mnemonic}: too many operands ({text_op!r}); expected "
                          f"{', '.join(f.name for f in positional)}"
                          + (f" and flags {', '.join(sorted(flags))}" if flags else ""))
            field = positional[next_positional]
            next_positional += 1
            value_text = text_op
        else:
            matches = [f for f in defn.fields if f.name == name]
            if not matches:
                err(line, f"{defn.mnemonic}: no operand named {name!r}; expected "
                          f"{', '.join(f.name for f in defn.fields)}")
            field = matches[0]
        value = _parse_int(value_text)
        if value is None and defn.mnemonic == "loop" and field.name == "len" \
                and _IDENT.match(value_text):
            value = _loop_len_from_label(value_text, labels, utop_index, position, body_len,
                                         line, err)
        elif value is None:
            err(line, f"{defn.mnemonic}: operand {field.name} = {value_text!r} is not an integer")
        if field.flag and value not in (0, 1):
            err(line, f"{defn.mnemonic}: flag {field.name} must be 0 or 1, not {value}")
        if not field.min <= value <= field.max:
            err(line, f"{defn.mnemonic}: operand {field.name} = {value} is out of range "
                      f"{field.min}..{field.max}")
        if field.name in given:
            err(line, f"{defn.mnemonic}: operand {field.name!r} given twice")
        given.add(field.name)
        args[field.name] = value
    missing = [f.name for f in positional if f.name not in args]
    if missing:
        err(entry.line, f"{defn.mnemonic}: missing operand{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)}")
    return Instr(defn, args)


def _loop_len_from_label(name, labels, utop_index, position, body_len, line, err):
    """The body length of a loop at ``position`` whose body ends just before label ``name``."""
    label = labels.get(name)
    if label is None:
        err(line, f"loop: unknown label {name!r}")
    if label.utop == utop_index and label.pos >= 0:
        end = label.pos
    elif label.pos == -1 and label.utop is not None and label.utop == utop_index + 1:
        end = body_len  # the label names the next µTOp, so the loop runs to this body's end
    else:
        err(line, f"loop: label {name!r} is not in this µTOp's body")
    if end - position - 1 < 1:
        err(line, f"loop: label {name!r} leaves an empty loop body")
    return end - position - 1


def words_to_bytes(words):
    return b"".join(w.to_bytes(WORD_BYTES, "little") for w in words)


def bytes_to_words(data, *, source="<binary>"):
    if len(data) % WORD_BYTES:
        raise AsmError(source, None, f"binary of {len(data)} bytes is not a whole number of "
                                     f"{WORD_BYTES}-byte words")
    return [int.from_bytes(data[i:i + WORD_BYTES], "little")
            for i in range(0, len(data), WORD_BYTES)]


def format_items(items):
    """Assembly text for a list of UTop and raw words; assembling it gives the same words."""
    lines, pc, closed = [], 0, True
    for item in items:
        if isinstance(item, int):
            if not closed:
                lines.append(".end")
                closed = True
            lines.append(f".word 0x{item:016x}    # word {pc}: not a valid header")
            pc += 1
            continue
        options = []
        if item.deps:
            options.append("deps(" + ", ".join(f"-{d}" for d in item.deps) + ")")
        if item.eoo:
            options.append("eoo")
        if item.eop:
            options.append("eop")
        if item.restartable:
            options.append("restartable")
        if item.tag:
            options.append(f"tag={item.tag}")
        lines.append(f".{item.engine.name.lower()} {' '.join(options)}".rstrip()
                     + f"    # word {pc}")
        closed = False
        pc += 1
        for instr in item.body:
            if instr.op is None:
                lines.append(f"    .word 0x{instr.raw:016x}    # word {pc}: not a valid "
                             f"{item.engine.name} instruction")
            else:
                operands = [str(instr.args[f.name]) for f in instr.op.fields if not f.flag]
                operands += [f.name for f in instr.op.fields if f.flag and instr.args[f.name]]
                lines.append(f"    {instr.op.mnemonic:<10} {', '.join(operands)}".rstrip())
            pc += 1
    return "\n".join(lines) + "\n"


def disassemble(words, *, source="<binary>"):
    """Assembly text for a list of words. Raises AsmError for a truncated program."""
    try:
        return format_items(decode_program(words))
    except DecodeError as error:
        raise AsmError(source, None, str(error)) from None
