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


def test_an_empty_name_and_a_device_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trees.jsonl").write_text(tree_line([ROOT]) + "\n")  # "" was read as ".", and this shown
    assert run.main(["inspect-tree", ""]) == 2
    assert "inspect-tree's FILE is empty" in one_error(capsys)
    assert run.main(["inspect-tree", "/dev/null"]) == 2
    assert one_error(capsys).startswith("error: /dev/null is not a regular file: pass the trees.jsonl")
