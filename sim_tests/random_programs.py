"""Random NeuISA programs for fuzzing and differential tests (fixed seeds in the tests)."""

from isa.encoding import INSTRUCTIONS, Engine, Instr, UTop, encode_program


def random_program(rng, config, n_words):
    """Random words, or random µTOps (valid headers, random instructions and fields)."""
    if rng.random() < 0.3:
        return [rng.getrandbits(64) for _ in range(n_words)]
    items = []
    for i in range(rng.randint(1, 6)):
        engine = rng.choice(list(Engine))
        body = []
        for _ in range(rng.randint(0, 4)):
            defn = rng.choice([d for d in INSTRUCTIONS if d.engine == engine])
            body.append(Instr(defn, {f.name: rng.choice([f.min, f.max, rng.randint(f.min, f.max),
                                                         rng.randint(0, 8)])
                                     for f in defn.fields}))
            for f in defn.fields:     # keep most operands small, so work is mostly short
                if not f.flag and rng.random() < 0.8:
                    body[-1].args[f.name] = max(f.min, min(f.max, rng.randint(0, 8)))
        deps = tuple(sorted(rng.sample(range(1, config.dep_window + 1), rng.randint(0, 2))))
        items.append(UTop(engine, body, deps, eop=rng.random() < 0.2))
    words = encode_program(items)
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] = rng.getrandbits(64)
    return words
