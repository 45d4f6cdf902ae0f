"""The report of `neu10 experiment`: ``summary.md`` and PNG plots from its results rows.

Every ratio compares harvest (Neu10) with one baseline on the *same* arrivals: same mix,
load (or closed-loop depth) and seed. It is computed per seed, then given as the mean and
the sample standard deviation across seeds (``mean ± sd``, n = the number of seeds), so a
reader can tell a difference from noise (a closed loop runs with one seed: it repeats
cycle for cycle with any other, see Matrix.points):

- throughput: harvest's STP / the baseline's (STP: the sum over tenants of throughput
  normalized to the tenant alone on its vNPU);
- p95, p99: the baseline's tail latency / harvest's, per tenant (above 1: harvest's is
  lower, as in the paper's "4.6x lower tail latency");
- utilization: harvest's ME+VE utilization of the pNPU / the baseline's.

Across mixes, each ratio's best and geometric mean over mixes and points; throughput and
utilization over the closed-loop points (saturated, where throughput can differ; open loop
below saturation serves what arrives under every policy), tail latency over the open-loop
points; a matrix without closed loops (or loads) has no such figure ("—"). Points that
failed or had problems are listed and left out of every figure.
"""

from collections import defaultdict

import numpy as np

from .experiment import REQUEST_FIELDS

__all__ = ["write_report", "summarize"]

#: The paper's headline figures (Neu10 vs "state-of-the-art NPU sharing approaches", MICRO
#: 2024 abstract): throughput up to 1.4x, tail latency lower by up to 4.6x, utilization 1.2x
#: on average.
PAPER = {"throughput": 1.4, "p99": 4.6, "utilization": 1.2}
BASELINES = ("static", "temporal", "v10")
#: Where a request record (results rows' request_records) holds its latency.
LATENCY = REQUEST_FIELDS.index("latency") - REQUEST_FIELDS.index("request")


def _how(row):
    return ("open", row["load"]) if row["closed"] is None else ("closed", row["closed"])


def _how_text(how):
    kind, value = how
    return f"load {value:g}" if kind == "open" else f"closed {value}"


def _stat(values):
    """(mean, sd, n) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), sd, len(values)


def _fmt(stat, spec=".2f"):
    """``mean ± sd`` of a _stat, each formatted with ``spec`` (".0f" cycles, ".0%" shares)."""
    if stat is None:
        return "—"
    mean, sd, _ = stat
    return f"{mean:{spec}}" + (f" ± {sd:{spec}}" if sd is not None else "")


def summarize(matrix, rows):
    """The figures of the report, from results rows of ``matrix``'s points.

    Returns a dict: ``points`` {(mix, how, policy, seed): {"point": row, "tenants": [rows]}}
    of the points that went well, ``failed`` (rows of points that did not), ``ratios``
    {(mix, how, baseline): {"throughput" / "utilization": stat, "p95" / "p99": [stat per
    tenant]}} and ``across`` {baseline: {metric: (best, geometric mean, count)}}."""
    points, failed = {}, []
    for row in rows:
        if row["status"] != "ok":
            if not any(f["mix"] == row["mix"] and f["policy"] == row["policy"]
                       and _how(f) == _how(row) and f["seed"] == row["seed"] for f in failed):
                failed.append(row)
            continue
        key = (row["mix"], _how(row), row["policy"], row["seed"])
        entry = points.setdefault(key, {"point": row, "tenants": []})
        entry["tenants"].append(row)
    for entry in points.values():
        entry["tenants"].sort(key=lambda r: r["tenant"])
    mixes = ["+".join(mix) for mix in matrix.mixes]
    hows = [("open", load) for load in matrix.loads] + [("closed", d) for d in matrix.closed]
    ratios = {}
    for mix in mixes:
        for how in hows:
            for baseline in (b for b in BASELINES if b in matrix.policies):
                pairs = [(points.get((mix, how, "harvest", s)), points.get((mix, how, baseline, s)))
                         for s in matrix.seeds]
                pairs = [(h, b) for h, b in pairs if h and b]
                if not pairs:
                    continue
                entry = {
                    "throughput": _stat([h["point"]["stp"] / b["point"]["stp"]
                                         for h, b in pairs if b["point"]["stp"]]),
                    "utilization": _stat([h["point"]["util_engines"] / b["point"]["util_engines"]
                                          for h, b in pairs if b["point"]["util_engines"]])}
                for q in ("p95", "p99"):
                    n_tenants = len(pairs[0][0]["tenants"])
                    entry[q] = [_stat([b["tenants"][t][f"latency_{q}"] / h["tenants"][t][f"latency_{q}"]
                                       for h, b in pairs if h["tenants"][t][f"latency_{q}"]
                                       and b["tenants"][t][f"latency_{q}"] is not None])
                                for t in range(n_tenants)]
                ratios[mix, how, baseline] = entry
    across = {}
    for baseline in (b for b in BASELINES if b in matrix.policies):
        mine = {(mix, how): r for (mix, how, b), r in ratios.items() if b == baseline}
        closed = [r for (mix, how), r in mine.items() if how[0] == "closed"]
        opened = [r for (mix, how), r in mine.items() if how[0] == "open"]
        across[baseline] = {
            "throughput": _best_mean([r["throughput"] for r in closed]),
            "utilization": _best_mean([r["utilization"] for r in closed]),
            "p95": _best_mean([s for r in opened for s in r["p95"]]),
            "p99": _best_mean([s for r in opened for s in r["p99"]])}
    # The point the bar plots and the latency distributions show: the closed loop, or the
    # highest load when there is none.
    opens = [how for how in hows if how[0] == "open"]
    closed_hows = [how for how in hows if how[0] == "closed"]
    at = closed_hows[:1] or ([max(opens, key=lambda how: how[1])] if opens else [])
    latencies = defaultdict(list)      # (mix, tenant, policy) -> every request's latency
    for key, entry in points.items():
        if at and key[1] == at[0]:
            for row in entry["tenants"]:
                latencies[key[0], row["tenant"], key[2]] += [
                    r[LATENCY] for r in row.get("request_records") or ()
                    if r[LATENCY] is not None]
    return {"points": points, "failed": failed, "ratios": ratios, "across": across,
            "mixes": mixes, "hows": hows, "at": at, "latencies": latencies}


def _best_mean(stats):
    means = [s[0] for s in stats if s is not None and s[0] > 0]
    if not means:
        return None
    return max(means), float(np.exp(np.mean(np.log(means)))), len(means)


#: The latency distribution's percentiles in summary.md (its CDF, as a table).
PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


def _distribution(matrix, summary, mix, tenants):
    """The latency CDF of each tenant per policy at the summary's ``at`` point, as a table."""
    at, latencies = summary["at"], summary["latencies"]
    if not at or not any(latencies[mix, t, policy] for t in tenants for policy in
                         matrix.policies):
        return []
    lines = [f"Request latency distribution at {_how_text(at[0])} (cycles; every request of "
             f"every seed: `latency_cdf.png`, `requests.csv`):", "",
             "| tenant | policy | requests | " + " | ".join(f"p{q}" for q in PERCENTILES)
             + " | max |", "|---" * (4 + len(PERCENTILES)) + "|"]
    for tenant in tenants:
        for policy in matrix.policies:
            values = latencies[mix, tenant, policy]
            if values:
                lines.append(f"| {tenant} | {policy} | {len(values)} | "
                             + " | ".join(f"{np.percentile(values, q):.0f}"
                                          for q in PERCENTILES) + f" | {max(values)} |")
    return lines + [""]


def _markdown(matrix, summary, folder):
    points, ratios = summary["points"], summary["ratios"]
    baselines = [b for b in BASELINES if b in matrix.policies]
    total = len(matrix.points())
    lines = [
        f"# Experiment `{matrix.name}`", "",
        f"Mixes {', '.join(summary['mixes'])}; policies {', '.join(matrix.policies)}; "
        f"loads {', '.join(f'{x:g}' for x in matrix.loads) or 'none'}; closed loop "
        f"{', '.join(map(str, matrix.closed)) or 'none'}; seeds "
        f"{', '.join(map(str, matrix.seeds))}; {matrix.requests} requests of each mix's "
        f"slowest tenant (the others as many as arrive meanwhile); closed loops with the first "
        f"seed only (they have no random arrivals); config `{matrix.config}`; "
        f"backend {matrix.backend}"
        + (f"; time slice {matrix.time_slice}" if matrix.time_slice else "") + ".",
        "",
        f"{len(points)} of {total} points ran cleanly; every output of those is bit-exact "
        f"against the compiler's integer reference. Results: `results.csv` / `results.json` "
        f"(a row per point and tenant) in `{folder}`.", ""]
    if summary["failed"]:
        lines += ["## Points that failed (left out of every figure)", ""]
        lines += [f"- {r['mix']} {r['policy']} {_how_text(_how(r))} seed {r['seed']}: "
                  f"{r['status']}: {r['error']}" for r in summary["failed"]]
        lines.append("")
    if baselines and "harvest" in matrix.policies:
        lines += [
            "## Harvest (Neu10) against each baseline, across mixes", "",
            "Ratios as in the sections below: best and geometric mean over mixes and points "
            "(throughput and utilization at the closed-loop points, tail latency over the "
            "open-loop points and tenants; — where the matrix has no such points). The paper's figures are its headline claims "
            "against its own baselines, on its simulator and models, and are given for "
            "orientation, not as a like-for-like comparison.", "",
            "| harvest vs | throughput best / mean | p95 lower by, best / mean | "
            "p99 lower by, best / mean | utilization best / mean |",
            "|---|---|---|---|---|"]
        for baseline in baselines:
            a = summary["across"][baseline]
            cells = [f"{x[0]:.2f}x / {x[1]:.2f}x" if x else "—"
                     for x in (a["throughput"], a["p95"], a["p99"], a["utilization"])]
            lines.append(f"| {baseline} | " + " | ".join(cells) + " |")
        lines += [f"| paper | up to {PAPER['throughput']}x | — | up to {PAPER['p99']}x | "
                  f"{PAPER['utilization']}x on average |", ""]
    for mix in summary["mixes"]:
        tenants = _tenant_names(points, mix)
        lines += [f"## {mix}", ""]
        for baseline in baselines:
            rows = [(how, ratios.get((mix, how, baseline))) for how in summary["hows"]]
            rows = [(how, r) for how, r in rows if r]
            if not rows:
                continue
            lines += [f"Harvest vs {baseline} (ratio, mean ± sd across seeds):", "",
                      "| point | throughput | " + " | ".join(f"p95 {t}" for t in tenants)
                      + " | " + " | ".join(f"p99 {t}" for t in tenants) + " | utilization |",
                      "|---" * (3 + 2 * len(tenants)) + "|"]
            for how, r in rows:
                lines.append(f"| {_how_text(how)} | {_fmt(r['throughput'])} | "
                             + " | ".join(_fmt(s) for s in r["p95"]) + " | "
                             + " | ".join(_fmt(s) for s in r["p99"])
                             + f" | {_fmt(r['utilization'])} |")
            lines.append("")
        lines += _distribution(matrix, summary, mix, tenants)
        lines += ["Figures per policy (mean ± sd across seeds; latency in cycles):", "",
                  "| point | policy | " + " | ".join(f"p99 {t}" for t in tenants)
                  + " | " + " | ".join(f"req/Mcycle {t}" for t in tenants)
                  + " | STP | ME+VE util | engine-cycles on others' engines | preemptions "
                  "| flushed engine-cycles |",
                  "|---" * (7 + 2 * len(tenants)) + "|"]
        for how in summary["hows"]:
            for policy in matrix.policies:
                got = [points[mix, how, policy, s] for s in matrix.seeds
                       if (mix, how, policy, s) in points]
                if not got:
                    continue
                p99 = [_fmt(_stat([g["tenants"][t]["latency_p99"] for g in got]), ".0f")
                       for t in range(len(tenants))]
                thr = [_fmt(_stat([g["tenants"][t]["throughput"] for g in got]), ".1f")
                       for t in range(len(tenants))]
                harvested, preemptions, flushed = (
                    _stat([sum(r.get(key) or 0 for r in g["tenants"]) for g in got])
                    for key in ("harvested_engine_cycles", "preemptions",
                                "flushed_engine_cycles"))
                lines.append(f"| {_how_text(how)} | {policy} | " + " | ".join(p99) + " | "
                             + " | ".join(thr)
                             + f" | {_fmt(_stat([g['point']['stp'] for g in got]))} | "
                             f"{_fmt(_stat([g['point']['util_engines'] for g in got]), '.0%')} | "
                             f"{_fmt(harvested, '.0f')} | {_fmt(preemptions, '.0f')} | "
                             f"{_fmt(flushed, '.0f')} |")
        lines.append("")
    lines += ["Plots: `p99_vs_load.png` (p99 latency against load per policy, a panel per mix "
              "and tenant), `latency_cdf.png` (each tenant's request latencies per policy, all "
              "seeds, at the closed-loop point, or the highest load when there is none), "
              "`throughput.png` and `utilization.png` (per mix and policy, at that point). "
              "Error bars: ± sd across seeds. Every request's record: `requests.csv`.", ""]
    return "\n".join(lines)


def _tenant_names(points, mix):
    for (m, *_), entry in points.items():
        if m == mix:
            return [r["tenant"] for r in entry["tenants"]]
    return []


def _short(mix):
    """A mix as a plot shows it: model files by their names, not their paths."""
    return "+".join(tenant.rsplit("/", 1)[-1] for tenant in mix.split("+"))


def _spread(seeds):
    return f"mean ± sd over {seeds} seeds" if seeds > 1 else "one seed"


def _plots(matrix, summary, folder):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    points, mixes = summary["points"], summary["mixes"]
    policies = list(matrix.policies)
    written = []
    opens = [how for how in summary["hows"] if how[0] == "open"]
    width = max((len(_tenant_names(points, mix)) for mix in mixes), default=0)
    loads = sorted({how[1] for how in opens})
    # Policies side by side around each load, so their error bars do not hide each other.
    step = min((b - a for a, b in zip(loads, loads[1:])), default=0.2)
    dodge = 0.12 * step

    def panels(name, draw):
        figure, axes = plt.subplots(len(mixes), width, figsize=(4.5 * width, 3.2 * len(mixes)),
                                    squeeze=False)
        for row, mix in enumerate(mixes):
            names = _tenant_names(points, mix)
            for col in range(width):
                ax = axes[row][col]
                if col >= len(names):
                    ax.axis("off")
                    continue
                draw(ax, mix, col)
                ax.set_title(f"{_short(mix)}: {names[col]}", fontsize=9)
                ax.grid(True, alpha=0.3)
                ax.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        plt.close(figure)
        written.append(name)

    def p99_vs_load(ax, mix, col):
        for i, policy in enumerate(policies):
            xs, ys, es = [], [], []
            for how in opens:
                stat = _stat([points[mix, how, policy, seed]["tenants"][col]["latency_p99"]
                              for seed in matrix.seeds if (mix, how, policy, seed) in points])
                if stat:
                    xs.append(how[1] + (i - (len(policies) - 1) / 2) * dodge)
                    ys.append(stat[0])
                    es.append(stat[1] or 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=policy)
        ax.set_yscale("log")
        ax.set_xticks(loads, [f"{load:g}" for load in loads])
        ax.set_xlim(0, max(1.0, max(loads) + step / 2))      # from no load to saturation
        ax.set_xlabel("load (of isolated saturation throughput)")
        ax.set_ylabel(f"p99 latency (cycles)\n{_spread(len(matrix.seeds))}", fontsize=8)

    if opens and width:
        panels("p99_vs_load.png", p99_vs_load)
    at, latencies = summary["at"], summary["latencies"]
    if at and width:
        def cdf(ax, mix, col):
            tenant = _tenant_names(points, mix)[col]
            for policy in policies:
                values = np.sort(latencies[mix, tenant, policy])
                if len(values):
                    ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                            label=policy)
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(f"request latency (cycles), at {_how_text(at[0])}")
            ax.set_ylabel("fraction of requests")

        if any(latencies.values()):
            panels("latency_cdf.png", cdf)
    for name, field, label, scale in (
            ("throughput.png", "stp", "STP (sum of normalized throughputs)", 1),
            ("utilization.png", "util_engines", "ME+VE utilization of the pNPU (%)", 100)):
        if not at or not mixes:
            break
        figure, ax = plt.subplots(figsize=(1.8 + 1.6 * len(mixes), 3.4))
        bar = 0.8 / len(policies)
        for i, policy in enumerate(policies):
            stats = [_stat([points[mix, at[0], policy, s]["point"][field] for s in matrix.seeds
                            if (mix, at[0], policy, s) in points]) for mix in mixes]
            ax.bar([m + (i - (len(policies) - 1) / 2) * bar for m in range(len(mixes))],
                   [s[0] * scale if s else 0 for s in stats], bar,
                   yerr=[(s[1] or 0) * scale if s else 0 for s in stats], capsize=2,
                   label=policy)
        ax.set_xticks(range(len(mixes)), [_short(mix) for mix in mixes], fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        seeds = 1 if at[0][0] == "closed" else len(matrix.seeds)
        ax.set_title(f"{matrix.name}: at {_how_text(at[0])} ({_spread(seeds)})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=110)
        plt.close(figure)
        written.append(name)
    return written


def write_report(matrix, rows, folder):
    """summary.md and the plots in ``folder``; returns the summary (see summarize)."""
    summary = summarize(matrix, rows)
    summary["plots"] = _plots(matrix, summary, folder)
    (folder / "summary.md").write_text(_markdown(matrix, summary, folder))
    return summary
