"""neu10 experiment: matrices, resumable results, the summary's ratios, failed points, the
process pool and a local Ray instance giving the same results."""

import csv
import json
import os
import re
from dataclasses import replace

import numpy as np
import pytest

from runtime.apps.cli import main
from runtime.apps import experiment
from runtime.apps.experiment import (KEY_FIELDS, ExperimentError, Matrix, PRESETS, REQUEST_FIELDS,
                                     ROW_FIELDS, _run_local,
                                     load_matrix, read_results, row_key, run_experiment)
from runtime.apps.experiment_report import summarize

#: Two tenants on the small NPU, harvest against static, one load, a closed loop, 2 seeds.
TINY = Matrix("tiny", mixes=(("ncf:1,1", "dlrm:1,1"),), policies=("harvest", "static"),
              loads=(0.6,), closed=(1,), seeds=(1, 2), requests=4, config="small")


def figures(rows):
    """What a point measured, without how long it took to simulate."""
    return sorted((tuple(str(r[k]) for k in ROW_FIELDS if k != "wall_seconds") for r in rows))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    folder, rows = run_experiment(TINY, reports=reports, jobs=1, log=lambda text: None)
    return folder, rows


def test_points_of_a_matrix():
    points = TINY.points()
    # Open loop: every seed; the closed loop (no random arrivals) with the first seed.
    assert len(points) == 2 * (2 + 1)
    assert {p.seed for p in points if p.closed} == {1}
    assert len({TINY.key(p) for p in points}) == len(points)
    paper = PRESETS["paper"]
    assert len(paper.mixes) == 10 and ("bert-base", "bert-base") in paper.mixes
    assert (paper.config, paper.backend) == ("tpu-shared", "perf")
    assert len(paper.points()) == 10 * 4 * 2


def test_results_summary_and_plots(tiny):
    folder, rows = tiny
    assert {p.name for p in folder.iterdir()} >= {"results.json", "results.csv", "summary.md",
                                                  "p99_vs_load.png", "throughput.png",
                                                  "utilization.png"}
    # A row per point and tenant, every one clean and bit-exact.
    assert len(rows) == len(TINY.points()) * 2
    assert all(r["status"] == "ok" and r["completed"] == r["tenant_requests"] and r["wrong"] == 0
               for r in rows)
    assert figures(read_results(folder)) == figures(rows)
    with (folder / "results.csv").open() as file:
        table = list(csv.DictReader(file))
    assert len(table) == len(rows) and list(table[0]) == list(ROW_FIELDS)
    for png in ("p99_vs_load.png", "latency_cdf.png", "throughput.png", "utilization.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_requests_csv_has_every_request(tiny):
    """requests.csv: a row per request of every point, whose latencies give the rows' p99."""
    folder, rows = tiny
    with (folder / "requests.csv").open() as file:
        table = list(csv.DictReader(file))
    assert list(table[0]) == list(KEY_FIELDS + REQUEST_FIELDS)
    assert len(table) == sum(r["tenant_requests"] for r in rows)
    assert {r["status"] for r in table} == {"ok"}
    for r in table:
        assert int(r["latency"]) == int(r["end"]) - int(r["arrival"]) > 0
        assert int(r["arrival"]) <= int(r["rung"]) < int(r["start"]) < int(r["end"])
        assert int(r["preempted"]) >= 0
    for row in rows:
        mine = [int(r["latency"]) for r in table if r["tenant"] == row["tenant"]
                and all(r[k] == ("" if row[k] is None else str(row[k])) for k in KEY_FIELDS)]
        assert len(mine) == row["tenant_requests"]
        assert row["latency_p99"] == pytest.approx(np.percentile(mine, 99))
    # summary.md's latency distribution (at the closed loop): the CSV's latencies.
    summary = (folder / "summary.md").read_text()
    # Utilization reads as a percentage there (the files keep fractions).
    [harvest_row] = [line for line in summary.splitlines()
                     if line.startswith("| closed 1 | harvest |")]
    point = next(r for r in rows if r["closed"] == 1 and r["policy"] == "harvest")
    assert f"| {point['util_engines']:.0%} |" in harvest_row
    assert "Request latency distribution at closed 1" in summary
    for row in rows:
        if row["closed"] == 1:
            mine = [int(r["latency"]) for r in table if r["tenant"] == row["tenant"]
                    and r["policy"] == row["policy"] and r["closed"] == "1"]
            cells = [f"{np.percentile(mine, q):.0f}" for q in (10, 25, 50, 75, 90, 95, 99)]
            assert (f"| {row['tenant']} | {row['policy']} | {len(mine)} | " + " | ".join(cells)
                    + f" | {max(mine)} |") in summary


def test_ctrl_c_says_what_is_saved(tmp_path, capsys, monkeypatch):
    """Ctrl-C during an experiment: one line saying how many points are saved, exit 130,
    no traceback; the same command goes on from there."""
    real = experiment.serve

    def serve(config, specs, **options):
        if specs[0].model == "dlrm":
            raise KeyboardInterrupt
        return real(config, specs, **options)

    monkeypatch.setattr(experiment, "serve", serve)
    (tmp_path / "m.toml").write_text(
        'mixes = [["ncf:1,1"], ["dlrm:1,1"]]\npolicies = ["harvest"]\n'
        'loads = [0.5]\nclosed = []\nseeds = [1]\nrequests = 3\nconfig = "small"\n')
    argv = ["experiment", str(tmp_path / "m.toml"), "--reports", str(tmp_path), "--jobs", "1"]
    assert main(argv) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"neu10: interrupted; 1 of 2 points are saved in "
                       f"{tmp_path / 'm' / 'results.json'}: the same command goes on from there")
    assert not any("Traceback" in line for line in err)
    monkeypatch.setattr(experiment, "serve", real)
    assert main(argv) == 0
    assert "1 already in" in capsys.readouterr().err


def test_summary_ratios_come_from_the_rows(tiny):
    folder, rows = tiny
    summary = summarize(TINY, rows)
    mix = "ncf:1,1+dlrm:1,1"

    def point(policy, seed, load=0.6):
        return [r for r in rows if r["policy"] == policy and r["seed"] == seed
                and r["load"] == load]

    # Per seed harvest / static, then the mean and the sample standard deviation.
    stp = [point("harvest", s)[0]["stp"] / point("static", s)[0]["stp"] for s in (1, 2)]
    mean, sd, n = summary["ratios"][mix, ("open", 0.6), "static"]["throughput"]
    assert n == 2 and mean == pytest.approx(sum(stp) / 2)
    assert sd == pytest.approx(abs(stp[0] - stp[1]) / 2 ** 0.5)
    tenants = sorted(r["tenant"] for r in point("harvest", 1))
    for t, name in enumerate(tenants):
        p99 = [next(r for r in point("static", s) if r["tenant"] == name)["latency_p99"]
               / next(r for r in point("harvest", s) if r["tenant"] == name)["latency_p99"]
               for s in (1, 2)]
        assert summary["ratios"][mix, ("open", 0.6), "static"]["p99"][t][0] == \
            pytest.approx(sum(p99) / 2)
    # Across mixes: throughput at the closed loop (one mix, one point: best = mean).
    closed = summary["ratios"][mix, ("closed", 1), "static"]["throughput"][0]
    best, mean, count = summary["across"]["static"]["throughput"]
    assert best == pytest.approx(closed) and mean == pytest.approx(closed) and count == 1
    text = (folder / "summary.md").read_text()
    assert "| static |" in text and "up to 4.6x" in text and f"## {mix}" in text


def test_rerun_skips_finished_points_and_retries_errors(tiny, tmp_path):
    folder, rows = tiny
    copy = tmp_path / "tiny"
    copy.mkdir()
    broken = json.loads((folder / "results.json").read_text())
    victim = next(r for r in broken if r["closed"] == 1 and r["policy"] == "static")
    broken = [r for r in broken if r is victim or not (r["closed"] == 1 and
                                                        r["policy"] == "static")]
    victim.update({k: None for k in ROW_FIELDS if k not in KEY_FIELDS},
                  status="error", error="RuntimeError: killed")
    (copy / "results.json").write_text(json.dumps(broken))
    messages = []
    _, again = run_experiment(TINY, reports=tmp_path, jobs=1, log=messages.append)
    assert messages[0] == (f"experiment tiny: 6 points, 5 already in {copy / 'results.json'}; "
                           f"running 1 with 1 jobs")
    # The retried point measures what it measured the first time.
    assert figures(again) == figures(rows)


def test_process_pool_gives_the_same_results(tiny, tmp_path):
    _, rows = tiny
    _, pooled = run_experiment(TINY, reports=tmp_path, jobs=2, log=lambda text: None)
    assert figures(pooled) == figures(rows)


def test_ray_gives_the_same_results(tiny, tmp_path):
    """A local Ray instance (started and stopped by the run) runs the same points."""
    _, rows = tiny
    matrix = replace(TINY, seeds=(1,))
    _, ours = run_experiment(matrix, reports=tmp_path, ray="local", log=lambda text: None)
    assert figures(ours) == figures([r for r in rows if r["seed"] == 1])


def test_a_failed_point_is_reported_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    import runtime.apps.experiment as experiment
    real = experiment.serve

    def serve(config, specs, **options):
        if specs[0].model == "dlrm":
            raise RuntimeError("the simulator crashed\nbadly")
        return real(config, specs, **options)

    monkeypatch.setattr(experiment, "serve", serve)
    (tmp_path / "m.toml").write_text(
        'mixes = [["ncf:1,1"], ["dlrm:1,1"]]\npolicies = ["harvest"]\n'
        'loads = [0.5]\nclosed = []\nseeds = [1]\nrequests = 3\nconfig = "small"\n')
    assert main(["experiment", str(tmp_path / "m.toml"), "--reports", str(tmp_path),
                 "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 points ran cleanly; 1 failed" in out
    rows = read_results(tmp_path / "m")
    [bad] = [r for r in rows if r["status"] != "ok"]
    assert bad["status"] == "error" and bad["mix"] == "dlrm:1,1"
    # One line, with where it was raised.
    assert bad["error"].startswith("RuntimeError: the simulator crashed badly (at ")
    assert "test_experiment.py:" in bad["error"]
    assert [r["status"] for r in rows if r["mix"] == "ncf:1,1"] == ["ok"]
    summary = (tmp_path / "m" / "summary.md").read_text()
    assert "dlrm:1,1 harvest load 0.5 seed 1: error: RuntimeError: the simulator crashed" in summary


def fake_work(matrix, point):
    """Stands in for run_point in a pool: the static point of seed 2 kills its worker."""
    if point.policy == "static" and point.seed == 2:
        os._exit(3)
    return [{"status": "ok", "label": point.label}]


def test_a_worker_that_dies_fails_only_its_point():
    results = []
    _run_local(TINY, TINY.points(), 2, lambda point, rows: results.append((point, rows)),
               work=fake_work)
    assert sorted(p.label for p, _ in results) == sorted(p.label for p in TINY.points())
    for point, [row] in results:
        if point.policy == "static" and point.seed == 2:
            assert row["status"] == "error" and "worker process died" in row["error"]
        else:
            assert row == {"status": "ok", "label": point.label}


def test_the_config_s_values_are_part_of_a_point_s_key(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('preset = "small"\n')
    matrix = replace(TINY, config=str(config))
    before = matrix.key(matrix.points()[0])
    config.write_text('preset = "small"\nhbm_latency = 12\n')
    after = replace(TINY, config=str(config)).key(matrix.points()[0])
    assert before != after and before[:7] == after[:7]


def test_the_code_is_part_of_a_point_s_key(tiny, monkeypatch):
    """Results of another version of the RTL, compiler or host are not resumed."""
    folder, rows = tiny
    assert {r["code_digest"] for r in rows} == {experiment.code_digest()}
    mine = {row_key(r) for r in read_results(folder)}
    assert mine == {TINY.key(p) for p in TINY.points()}
    monkeypatch.setattr(experiment, "_CODE_DIGEST", "edited")
    assert not mine & {TINY.key(p) for p in TINY.points()}


def test_load_matrix(tmp_path):
    assert load_matrix("quick") is PRESETS["quick"]
    (tmp_path / "mine.toml").write_text('mixes = [["ncf", "bert:2,2"]]\nloads = [0.5]\n'
                                        'config = "sub/c.toml"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.toml").write_text('preset = "small"\n')
    matrix = load_matrix(str(tmp_path / "mine.toml"))
    assert matrix.name == "mine" and matrix.mixes == (("ncf", "bert:2,2"),)
    assert matrix.loads == (0.5,) and matrix.policies == PRESETS["quick"].policies
    assert matrix.config == str(tmp_path / "sub" / "c.toml")


@pytest.mark.parametrize("text, message", [
    ('mixes = [["ncf", "gpt"]]', "unknown model 'gpt'"),
    ('mixes = [["ncf:2"]]', "expected MODEL:ME,VE"),
    ('mixes = ["ncf"]', "expected a list of lists of tenants"),
    ('mixes = []', "no mixes"),
    ('loads = [0.5]', "no 'mixes'"),
    ('mixes = [["ncf"]]\nloads = [0]', "load 0: expected a fraction of each tenant's isolated saturation throughput, above 0 and at most 2"),
    ('mixes = [["ncf"]]\nloads = []\nclosed = []', "nothing to run"),
    ('mixes = [["ncf"]]\nclosed = [0]', "closed-loop depth 0"),
    ('mixes = [["ncf"]]\npolicies = ["fifo"]', "unknown policy 'fifo'"),
    ('mixes = [["ncf"]]\npolicies = ["static"]', "must include harvest"),
    ('mixes = [["ncf"]]\nrequests = 0', "requests 0: expected an integer >= 1"),
    ('mixes = [["ncf"]]\nbackend = "golden"', "backend 'golden'"),
    ('mixes = [["ncf"]]\nconfig = "huge"', "unknown config 'huge'"),
    ('mixes = [["ncf"]]\nloadz = [1]', "unknown key 'loadz'"),
    ('mixes = [["ncf"]', "not valid TOML"),
    ('mixes = [["ncf"]]\nseeds = [1, 1]', "seeds lists 1 more than once"),
    ('mixes = [["ncf"], ["ncf"]]', "mixes lists ncf more than once"),
    ('mixes = [["ncf"]]\nloads = [inf]', "load inf: expected a fraction"),
    ('mixes = [["ncf"]]\nloads = [50]', "load 50: expected a fraction of each tenant's "
                                       "isolated saturation throughput, above 0 and at most 2 "
                                       "(1 is saturation) (a percentage? 50% is 0.5)"),
    ('name = 5\nmixes = [["ncf"]]', "experiment name 5: expected a folder name"),
    ('mixes = [["ncf", "ncf", "ncf"]]\nconfig = "small"', "has 3 tenants; the NPU has 2 contexts"),
    ('mixes = [["ncf:4,4", "dlrm:4,4"]]', "needs 8 MEs side by side; the NPU has 4"),
])
def test_bad_matrices(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ExperimentError, match=re.escape(message)):
        load_matrix(str(path))
    assert main(["experiment", str(path), "--reports", str(tmp_path)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("neu10: error: ") and message in line


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for argv, message in [
        (["experiment", "huge"], "expected a preset (quick, paper) or a .toml file"),
        (["experiment", "missing.toml"], "missing.toml: no such file"),
        (["experiment", "quick", "--reports", str(tmp_path / "file")], "cannot write the results"),
        (["experiment", "quick", "--jobs", "0", "--reports", str(tmp_path)], "jobs 0"),
        (["experiment", "quick", "--name", "a/b"], "expected a folder name"),
        (["experiment", "quick", "--jobs", "2", "--ray", "local"], "--jobs and --ray: give one"),
    ]:
        assert main(argv) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("neu10: error: ") and message in line, line


def test_cli_list(capsys):
    assert main(["experiment", "quick", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(PRESETS["quick"].points())
    assert "ncf+dlrm harvest load 0.3 seed 1" in lines


def test_plots_read_well(tiny, tmp_path, monkeypatch):
    """One load: the axis runs from 0 to saturation, not a sliver around the point; the
    policies' points sit apart so their error bars do not hide each other; the error bars
    say what they are; panel titles name model files without their folders."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from runtime.apps.experiment_report import write_report
    figures = {}
    monkeypatch.setattr(Figure, "savefig",
                        lambda self, path, **options: figures.__setitem__(path.name, self))
    _, rows = tiny
    renamed = [dict(r, mix=r["mix"].replace("ncf:1,1", "/models/my/ncf.onnx")) for r in rows]
    matrix = replace(TINY, mixes=(("/models/my/ncf.onnx", "dlrm:1,1"),))
    write_report(matrix, renamed, tmp_path)
    [*axes] = [ax for ax in figures["p99_vs_load.png"].axes if ax.get_visible() and ax.lines]
    for ax in axes:
        assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= 1
        xs = {round(float(x), 6) for line in ax.lines for x in line.get_xdata()}
        assert len(xs) == 2                                  # harvest and static apart
        assert "mean ± sd over 2 seeds" in ax.get_ylabel()
        assert "/" not in ax.get_title() and ax.get_title().startswith("ncf.onnx+dlrm:1,1")
    for name in ("throughput.png", "utilization.png"):
        [ax] = figures[name].axes
        assert "closed 1 (one seed)" in ax.get_title()
        assert [t.get_text() for t in ax.get_xticklabels()] == ["ncf.onnx+dlrm:1,1"]
    assert "%" in figures["utilization.png"].axes[0].get_ylabel()
    assert "latency_cdf.png" in figures
