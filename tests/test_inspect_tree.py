"""`run.py inspect-tree` on damaged tree files: one `error: ...` line naming the file and line, exit 2, never a
traceback; an interrupted eval's trees.jsonl.partial is readable up to its cut-off last line."""
import json

import pytest
from conftest import gsm8k_dir

import run

ROOT = {"id": 0, "parent": -1, "tokens": 0, "text": "", "visits": 2.0, "value": 0.5, "prior": 1.0, "terminal": False, "answer": None}


def node(i, parent, **kw):
    return {**ROOT, "id": i, "parent": parent, "tokens": 2, "text": "ab", "prior": 0.5, **kw}


def tree_line(nodes, **kw):
    return json.dumps({"index": 0, "question": "q?", "gold": "1", "answer": "1", "nodes": nodes, **kw})


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("nodes,what", [
    ([ROOT, node(1, 0), node(2, 999)], "nodes[2].parent is 999, not the id of an earlier node"),  # was KeyError: 999
    ([{**ROOT, "id": 5}, node(1, 5)], "nodes[0] is not the root: its id is 5"),  # was KeyError: 0
    ([ROOT, node(1, 0, text=None)], "nodes[1].text is null, not a string"),  # was AttributeError
    ([ROOT, node(1, 1)], "nodes[1].parent is 1, not the id of an earlier node"),  # its own parent: was KeyError
    ([ROOT, node(1, 2), node(2, 1)], "nodes[1].parent is 2, not the id of an earlier node"),  # a loop
    ([ROOT, node(1, 0), node(1, 0)], "nodes[2].id 1 repeats an earlier node's"),
    ([ROOT, node(1, 0, visits="x")], 'nodes[1].visits is "x", not a number'),  # was "Unknown format code 'f'"
    ([ROOT, node(1, 0, terminal="yes")], 'nodes[1].terminal is "yes", not true or false'),
    ([ROOT, node(1, 0, id=True)], "nodes[1].id is true, not an integer"),
    ([{**ROOT, "parent": 0}, node(1, 0)], "nodes[0] is not the root: its id is 0 and its parent 0, not 0 and -1"),  # would recurse
])
def test_a_tree_whose_nodes_do_not_fit_says_what_in_one_line(nodes, what, tmp_path, capsys):
    f = tmp_path / "trees.jsonl"
    f.write_text(tree_line([ROOT, node(1, 0)]) + "\n" + tree_line(nodes) + "\n")
    assert run.main(["inspect-tree", str(f)]) == 2  # the damaged tree is line 2, not the one shown
    assert one_error(capsys).startswith(f"error: {f}:2: tree damaged ({what}")


def test_tree_fields_of_another_type_are_named(tmp_path, capsys):
    f = tmp_path / "trees.jsonl"
    f.write_text(tree_line([ROOT], question=None) + "\n")
    assert run.main(["inspect-tree", str(f)]) == 2
    assert one_error(capsys).startswith(f"error: {f}:1: tree damaged (its question is null, not a string)")


def test_an_interrupted_evals_partial_trees_are_read_up_to_the_cut_off_line(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """The dumps of a real eval, as an interruption leaves them: the second tree's line cut part-way."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "ev"
    assert run.main(["eval", "--model", tiny_ckpt, "--search", "mcts", "--limit", "2", "--max-new-tokens", "6", "--n-simulations",
                     "2", "--children", "2", "--step", "tokens:3", "--out-dir", str(out), "--device", "cpu"]) == 0
    whole = (out / "trees.jsonl").read_text()
    (out / "trees.jsonl").unlink()
    partial = out / "trees.jsonl.partial"
    partial.write_text(whole[: len(whole.splitlines()[0]) + 1 + 40])  # tree 0, and 40 characters of tree 1
    capsys.readouterr()
    assert run.main(["inspect-tree", str(out)]) == 2  # points here
    assert f"or pass {partial} for the trees so far" in one_error(capsys)
    for args in ([], ["--index", "0"]):
        assert run.main(["inspect-tree", str(partial), *args]) == 0
        got = capsys.readouterr()
        assert got.out.startswith("Q0: ") and "tree/nodes" in got.out
        assert got.err == f"note: {partial}:2: skipped, cut off when the eval was interrupted; `run.py eval --resume --out-dir {out}` finishes the eval\n"
    assert run.main(["inspect-tree", str(partial), "--index", "1"]) == 2
    assert "--index 1 out of range" in one_error(capsys)  # the note is not said beside the error
    partial.write_text(whole[:40])
    assert run.main(["inspect-tree", str(partial)]) == 2
    assert f"{partial} holds no whole tree yet (line 1 was cut off)" in one_error(capsys)
    (out / "trees.jsonl").write_text(whole[: len(whole.splitlines()[0]) + 1 + 40])  # a finished eval's file is whole
    assert run.main(["inspect-tree", str(out / "trees.jsonl")]) == 2
    assert f"{out / 'trees.jsonl'}:2: not a JSON tree line" in one_error(capsys)


def test_a_cut_line_before_the_last_of_a_partial_file_is_still_an_error(tmp_path, capsys):
    f = tmp_path / "trees.jsonl.partial"
    f.write_text(tree_line([ROOT])[:30] + "\n" + tree_line([ROOT]) + "\n")
    assert run.main(["inspect-tree", str(f)]) == 2
    assert f"{f}:1: not a JSON tree line" in one_error(capsys)
    # nested past Python's recursion limit, or an integer past its digit limit: tracebacks (a fuzz), or no file named
    for line in ("[" * 100_000, '{"index": ' + "9" * 5000 + "}"):
        f.write_text(line + "\n" + tree_line([ROOT]) + "\n")
        assert run.main(["inspect-tree", str(f)]) == 2
        assert f"{f}:1: not a JSON tree line" in one_error(capsys)


def test_an_empty_name_and_a_device_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trees.jsonl").write_text(tree_line([ROOT]) + "\n")  # "" was read as ".", and this shown
    for blank in ("", " "):
        assert run.main(["inspect-tree", blank]) == 2
        assert "inspect-tree's FILE is empty" in one_error(capsys)
    assert run.main(["inspect-tree", "/dev/null"]) == 2
    assert one_error(capsys).startswith("error: /dev/null is not a regular file: pass the trees.jsonl")
    ev = tmp_path / "ev"
    (ev / "trees.jsonl").mkdir(parents=True)  # there, but a directory: it said the eval had no trees.jsonl (a fuzz)
    assert run.main(["inspect-tree", str(ev)]) == 2
    assert one_error(capsys).startswith(f"error: {ev / 'trees.jsonl'} is not a regular file")


def test_a_byte_order_mark_is_no_content(tmp_path, capsys):
    """An editor may save the file with a UTF-8 BOM: it was refused as 'not a JSON tree line' (a fuzz)."""
    f = tmp_path / "trees.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + tree_line([ROOT]).encode() + b"\n")
    assert run.main(["inspect-tree", str(f)]) == 0
    assert capsys.readouterr().out.startswith("Q0: q?")


def test_a_cut_line_followed_by_blank_lines_is_still_the_last(tmp_path, capsys):
    f = tmp_path / "trees.jsonl.partial"
    f.write_text(tree_line([ROOT]) + "\n" + tree_line([ROOT])[:30] + "\n\n \n")
    assert run.main(["inspect-tree", str(f)]) == 0
    assert capsys.readouterr().err.startswith(f"note: {f}:2: skipped, cut off")


def test_nodes_that_are_not_a_list_and_an_unreadable_file_are_one_line(tmp_path, monkeypatch, capsys):
    f = tmp_path / "trees.jsonl"
    f.write_text(tree_line(5) + "\n")
    assert run.main(["inspect-tree", str(f)]) == 2
    assert one_error(capsys).startswith(f"error: {f}:1: not a search tree")
    f.write_text(tree_line([ROOT]) + "\n")

    def unreadable(self, *a, **k):
        raise PermissionError(13, "Permission denied")  # (a chmod 000 file: this suite may run as root, who reads it)

    monkeypatch.setattr(type(f), "read_text", unreadable)
    assert run.main(["inspect-tree", str(f)]) == 2
    assert one_error(capsys) == f"error: cannot read {f} (Permission denied): pass a trees.jsonl you may read\n"


# a tree as `run.py eval` writes one (visits and values floats; a value of 1 written by hand is still a number): a
# root; a step with a newline, and under it a finished rollout's long step; an unvisited step of exactly 70 characters
TREE = {"index": 1, "question": "x" * 75, "gold": "1", "answer": "7", "nodes": [
    {**ROOT, "visits": 3.0, "value": 0.5},
    node(1, 0, text="a\nb", visits=2.0, value=0.25, prior=0.6),
    node(2, 1, text="y" * 80, visits=1.0, value=1, prior=0.3, answer="7", terminal=True),
    node(3, 0, text="c" * 70, visits=0.0, value=0.0, prior=0.4)]}


def test_inspect_tree_prints_the_chosen_tree_and_its_statistics(tmp_path, capsys):
    f = tmp_path / "trees.jsonl"
    f.write_text(tree_line([ROOT], answer=None) + "\n" + json.dumps(TREE) + "\n")  # (no answer found: null)
    assert run.main(["inspect-tree", str(f), "--index", "1"]) == 0
    *lines, stats = capsys.readouterr().out.splitlines()
    assert lines == ["Q1: " + "x" * 70,
                     "gold 1, search answer 7",
                     "[0] N=3 Q=0.500 root",
                     '|- [1] N=2 Q=0.250 P=0.60 "a\\nb"',
                     '|  `- [2] N=1 Q=1.000 P=0.30 "' + "y" * 67 + '..." -> 7 [end]',
                     '`- [3] N=0 Q=0.000 P=0.40 "' + "c" * 70 + '"']
    assert json.loads(stats) == {"tree/nodes": 4, "tree/max_depth": 2, "tree/terminal_nodes": 1,
                                 "tree/root_children_visited": 1, "tree/root_value": 0.5, "tree/answered_nodes": 1}
    assert run.main(["inspect-tree", str(f), "--index", "1", "--max-depth", "1"]) == 0  # the root's children, not theirs
    assert [line.split(" N=")[0] for line in capsys.readouterr().out.splitlines()[2:-1]] == ["[0]", "|- [1]", "`- [3]"]


def test_each_trees_statistics_are_logged_at_its_question(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mcts.inspect import log_tree_stats

    f = tmp_path / "trees.jsonl"
    f.write_text(tree_line([ROOT]) + "\n" + json.dumps(TREE) + "\n")
    log_tree_stats(f, tmp_path / "tb")
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("tree/nodes")] == [(0, 1.0), (1, 4.0)]
    assert [(e.step, e.value) for e in ea.Scalars("tree/max_depth")] == [(0, 0.0), (1, 2.0)]


def test_a_tree_thousands_of_levels_deep_is_printed(tmp_path, capsys):
    """Seen in a fuzz: a valid tree 1,000 levels deep (one-token steps, many simulations) ended in a RecursionError
    traceback; 980 levels printed."""
    f = tmp_path / "trees.jsonl"
    f.write_text(tree_line([ROOT] + [node(i, i - 1) for i in range(1, 3001)]) + "\n")
    assert run.main(["inspect-tree", str(f)]) == 0
    *lines, stats = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 3001 and lines[-1].startswith(" " * 3 * 2999 + "`- [3000] N=2")
    assert json.loads(stats)["tree/max_depth"] == 3000


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path):
    """`run.py inspect-tree FILE | head` ended in a BrokenPipeError traceback once head had its lines (a README walk)."""
    import subprocess
    import sys
    from pathlib import Path

    f = tmp_path / "trees.jsonl"
    f.write_text(tree_line([ROOT] + [node(i, 0, text=f"step {i} " * 5) for i in range(1, 5000)]) + "\n")  # ~300 kB of text
    script = Path(__file__).resolve().parents[1] / "run.py"
    p = subprocess.run(f"'{sys.executable}' '{script}' inspect-tree '{f}' | head -1; exit ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert p.stdout.startswith("Q0: q?") and p.stdout.count("\n") == 1
    assert (p.returncode, p.stderr) == (141, "")  # 128 + SIGPIPE, as a shell reports a writer its pipe stopped


def test_only_a_closed_stdout_pipe_ends_quietly(monkeypatch):
    """A broken pipe elsewhere (a socket, a subprocess's) keeps its traceback: stop_line says nothing for it."""
    import argparse
    import os

    from grpo.stops import stop_line

    args, err = argparse.Namespace(command="inspect-tree"), BrokenPipeError(32, "Broken pipe")
    assert stop_line(err, args) is None  # stdout captured in-process: no descriptor
    r, w = os.pipe()
    with os.fdopen(w, "w") as out:
        monkeypatch.setattr("sys.stdout", out)
        assert stop_line(err, args) is None  # its reader still there
        os.close(r)
        real = os.dup(w)  # (stop_line points the descriptor at /dev/null: checked, then given back)
        try:
            assert stop_line(err, args) == ("", 141, False)
            assert os.path.realpath(f"/proc/self/fd/{w}") == os.devnull
        finally:
            os.dup2(real, w)
            os.close(real)
