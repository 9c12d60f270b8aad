"""scripts/plot_runs.py: runs with the same directory name stay apart, OUT may be in a new directory, and bad input
(a forgotten OUT, a cut-off or empty metrics.jsonl) is one line, not a traceback."""
import importlib.util
import json

import pytest
from conftest import ROOT
from helpers import one_line_refusal

spec = importlib.util.spec_from_file_location("plot_runs", ROOT / "scripts" / "plot_runs.py")
plot_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_runs)


def run_dir(path, reward: float):
    path.mkdir(parents=True)
    rows = [{"step": i, "reward": reward, "rollout/generated_tokens_total": 100 * i} for i in (1, 2)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_runs_named_alike_are_told_apart_by_their_paths(tmp_path, capsys):
    a, b = run_dir(tmp_path / "a" / "plain", 0.25), run_dir(tmp_path / "b" / "plain", 0.75)
    assert plot_runs.labels([tmp_path / "a" / "plain", tmp_path / "b" / "plain", tmp_path / "mcts"]) == [
        "a/plain", "b/plain", "mcts"]
    out = tmp_path / "new" / "dir" / "curves.png"  # its directory does not exist yet
    plot_runs.main([str(out), a, b])
    table = (tmp_path / "new" / "dir" / "curves.md").read_text()
    assert "| a/plain | 2 | 200 | 0.250 | 0.250 | - | - |" in table
    assert "| b/plain | 2 | 200 | 0.750 | 0.750 | - | - |" in table


def refusal(argv, capsys) -> str:
    return one_line_refusal(plot_runs.main, argv, capsys)


def test_the_same_run_twice_is_refused(tmp_path, capsys, monkeypatch):
    a = run_dir(tmp_path / "plain", 0.5)
    assert refusal([str(tmp_path / "c.png"), a, a + "/"], capsys) == "error: a run directory is given twice: pass each run once"
    monkeypatch.chdir(tmp_path)  # the same directory by a relative path and by its absolute one
    assert refusal([str(tmp_path / "c.png"), "plain", a], capsys) == "error: a run directory is given twice: pass each run once"


def test_a_forgotten_out_is_refused_not_written_into_the_first_run(tmp_path, capsys):
    a, b = run_dir(tmp_path / "a", 0.25), run_dir(tmp_path / "b", 0.75)
    err = refusal([a, b], capsys)  # OUT forgotten: runs/a would be OUT
    assert f"OUT {a} is a directory" in err and "plot_runs.py OUT/curves.png RUN_DIR" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no a.md written beside it
    assert "unknown flag --out" in refusal(["--out", str(tmp_path / "c.png"), a], capsys)


@pytest.mark.parametrize("bad", ['{"step": 3, "rew', "[1, 2]\n", "garbled\n", '{"reward": 1}\n',  # a run killed mid-line; not
    # objects; not a row of run.py's (every one has its step); edited by hand, each a traceback in the table (a fuzz)
    '{"step": 3, "reward": "x"}\n', '{"step": 3, "rollout/generated_tokens_total": "9"}\n', '{"step": 3, "eval/accuracy_strict": 1}\n'])
def test_a_cut_off_or_garbled_line_is_skipped_with_a_note(tmp_path, capsys, bad):
    a = run_dir(tmp_path / "live", 0.5)
    with open(tmp_path / "live" / "metrics.jsonl", "a") as f:
        f.write(bad)
    plot_runs.main([str(tmp_path / "c.png"), a])
    assert f"note: {a}/metrics.jsonl:3 is cut off or damaged (not a metrics row): skipped" in capsys.readouterr().err
    assert "| live | 2 | 200 | 0.500 | 0.500 | - | - |" in (tmp_path / "c.md").read_text()


def test_a_run_without_metrics_is_left_out_with_a_note(tmp_path, capsys):
    a = run_dir(tmp_path / "plain", 0.5)
    (tmp_path / "mcts").mkdir()
    (tmp_path / "mcts" / "metrics.jsonl").write_text("")  # stopped before its first step
    plot_runs.main([str(tmp_path / "c.png"), a, str(tmp_path / "mcts")])
    assert "mcts left out" in capsys.readouterr().err
    table = (tmp_path / "c.md").read_text()
    assert "| plain | 2 |" in table and "mcts" not in table
    err = refusal([str(tmp_path / "d.png"), str(tmp_path / "mcts")], capsys)
    assert err == "error: no run has metrics yet: pass runs that have logged at least one step"


def test_help_prints_the_usage_and_exits_0(capsys):
    plot_runs.main(["-h"])  # returns: exit 0, no file named -h written
    assert "plot_runs.py OUT/curves.png" in capsys.readouterr().out


def test_the_table_reads_first_and_last_steps_and_evaluations(tmp_path):
    """Evaluations are rows of their own, without a reward (the start's is step 0); a skipped update's reward is
    null: left out of the means."""
    (tmp_path / "r").mkdir()
    rows = [{"step": 0, "eval/accuracy_strict": 0.1, "eval/accuracy_lenient": 0.2, "eval/format_soft_rate": 0.3,
             "rollout/generated_tokens_total": 0}]
    rows += [{"step": i, "reward": r, "rollout/generated_tokens_total": 100 * i} for i, r in ((1, 0.1), (2, 0.2), (3, None), (4, 0.8))]
    rows += [{"step": 4, "eval/accuracy_strict": 0.4, "eval/accuracy_lenient": 0.5, "eval/format_soft_rate": 0.9,
              "rollout/generated_tokens_total": 400}]
    (tmp_path / "r" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_runs.main([str(tmp_path / "c.png"), str(tmp_path / "r")])
    header, _, row = (tmp_path / "c.md").read_text().splitlines()
    assert "| reward, first 3 steps | reward, last 3 steps |" in header
    # rewards 0.1, 0.2, (null) then (null), 0.8: first 3 and last 3
    assert row == "| r | 4 | 400 | 0.150 | 0.500 | 0.100 / 0.200 -> 0.400 / 0.500 | 0.30 -> 0.90 |"


def test_a_run_without_metrics_file_out_missing_or_unmakeable_are_one_line(tmp_path, capsys):
    a = run_dir(tmp_path / "a", 0.5)
    (tmp_path / "b").mkdir()
    assert refusal([str(tmp_path / "c.png"), a, str(tmp_path / "b")], capsys) == (
        f"error: {tmp_path / 'b' / 'metrics.jsonl'} not found: pass run directories of `run.py train`")
    assert refusal([str(tmp_path / "c.png")], capsys).startswith("error: pass OUT and at least one run directory: usage: ")
    (tmp_path / "file").write_text("")
    assert refusal([str(tmp_path / "file" / "c.png"), a], capsys).startswith(f"error: cannot make {tmp_path / 'file'} for ")


def test_each_run_keeps_one_colour_in_every_panel(tmp_path, monkeypatch):
    """The accuracy panel draws two lines a run (lenient, strict dashed): both in the run's colour of the other
    panels, so that a reader matches them by colour (a new colour per line paired one run's strict accuracy with
    the other run's colour)."""
    plt = pytest.importorskip("matplotlib.pyplot")
    figs, subplots = [], plt.subplots

    def keep(*a, **k):  # plot_runs' figure and axes, kept to read its lines back
        figs.append(subplots(*a, **k))
        return figs[-1]

    monkeypatch.setattr(plt, "subplots", keep)
    runs = []
    for name in ("plain", "mcts"):
        (tmp_path / name).mkdir()
        rows = [{"step": 0, "eval/accuracy_strict": 0.0, "eval/accuracy_lenient": 0.0, "eval/format_soft_rate": 0.2,
                 "rollout/generated_tokens_total": 0}]
        rows += [{"step": i, "reward": 0.5, "rollout/generated_tokens_total": 100 * i} for i in (1, 2)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(str(tmp_path / name))
    plot_runs.main([str(tmp_path / "c.png"), *runs])
    assert (tmp_path / "c.png").stat().st_size > 0
    _, axes = figs[0]
    colour = {}  # run -> the colour of its lines, over all three panels
    for ax in axes:
        for line in ax.get_lines():
            run = line.get_label().split(" (")[0]
            colour.setdefault(run, set()).add(line.get_color())
    assert set(colour) == {"plain", "mcts"}
    assert all(len(c) == 1 for c in colour.values()) and colour["plain"] != colour["mcts"], colour


def test_an_out_that_is_not_a_figure_is_refused_and_left_as_it_was(tmp_path, capsys):
    """Seen in a fuzz: `plot_runs.py notes.md a b` wrote its table to OUT's name with .md, notes.md itself."""
    a = run_dir(tmp_path / "a", 0.5)
    (tmp_path / "notes.md").write_text("mine\n")
    for out in ("notes.md", "curves"):
        assert refusal([str(tmp_path / out), a], capsys) == (
            f"error: OUT {tmp_path / out} is not a .png, .svg or .pdf (the figure to write; its table goes beside it as "
            f".md): {plot_runs.USAGE}")
    assert (tmp_path / "notes.md").read_text() == "mine\n" and not (tmp_path / "curves").exists()
