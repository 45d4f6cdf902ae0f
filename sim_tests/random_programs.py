"""Random NeuISA programs for fuzzing and differential tests (fixed seeds in the tests)."""

from isa.encoding import INSTRUCTIONS, Engine, Instr, UTop, encode_program


def _encodable(field, value):
    """``value`` pulled into the range ``field`` can encode (``Field.min..Field.max``: a flag is
    0..1, a count with bias 1 is 1..2^width, a 3-bit register number 0..7); an out-of-range
    pick lands on the nearer extreme, so extremes stay frequent."""
    return max(field.min, min(field.max, value))


def random_program(rng, config, n_words):
    """Random words, or random µTOps (valid headers, random instructions and fields).

    Every instruction built through ``Instr`` is encodable (operands inside their fields'
    ranges; values the configuration forbids, such as ``ldw`` with k > array_rows, are
    kept: the hardware must fault on them). Undecodable programs come from the random raw
    words and the randomly corrupted word, which bypass the encoder.
    """
    if rng.random() < 0.3:
        return [rng.getrandbits(64) for _ in range(n_words)]
    items = []
    for i in range(rng.randint(1, 6)):
        engine = rng.choice(list(Engine))
        body = []
        for _ in range(rng.randint(0, 4)):
            defn = rng.choice([d for d in INSTRUCTIONS if d.engine == engine])
            body.append(Instr(defn, {f.name: _encodable(f, rng.choice([f.min, f.max,
                                                                       rng.randint(f.min, f.max),
                                                                       rng.randint(0, 8)]))
                                     for f in defn.fields}))
            for f in defn.fields:     # keep most operands small, so work is mostly short
                if not f.flag and rng.random() < 0.8:
                    body[-1].args[f.name] = _encodable(f, rng.randint(0, 8))
        deps = tuple(sorted(rng.sample(range(1, config.dep_window + 1), rng.randint(0, 2))))
        items.append(UTop(engine, body, deps, eop=rng.random() < 0.2))
    words = encode_program(items)
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] = rng.getrandbits(64)
    return words
