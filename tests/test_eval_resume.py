"""`run.py eval --resume`: an interrupted eval continues where it stopped and ends with the files an uninterrupted
one writes; what cannot be resumed is refused in one line before anything loads."""
import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import gsm8k_dir

import grpo.evaluate as E
import run

STRATEGIES = {
    "mcts": ["--search", "mcts", "--n-simulations", "2", "--children", "2", "--step", "tokens:2"],
    "best-of-n": ["--search", "best-of-n", "--n", "3"],
    "greedy": [],
}


def stripped(path):
    """predictions.jsonl without the timings, which differ between any two runs."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


def interrupt_at_batch(monkeypatch, k: int):
    """Ctrl-C as the eval starts its k-th batch (from 1)."""
    real, calls = E.encode_prompts, []

    def encode(*a, **kw):
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(E, "encode_prompts", encode)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_resumed_eval_writes_what_an_uninterrupted_one_does(strategy, tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    common = ["eval", "--model", tiny_ckpt, "--limit", "5", "--max-new-tokens", "5", "--device", "cpu", *STRATEGIES[strategy]]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run.main(common + ["--batch-size", "2", "--out-dir", str(whole)]) == 0
    with monkeypatch.context() as m:
        interrupt_at_batch(m, 3)
        assert run.main(common + ["--batch-size", "2", "--out-dir", str(cut)]) == 130
    err = capsys.readouterr().err
    assert f"`run.py eval --resume --out-dir {cut}` continues it" in err
    partial = cut / "predictions.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 4 and not (cut / "predictions.jsonl").exists()
    with partial.open("a") as f:  # a kill mid-write leaves half a line
        f.write('{"index": 4, "quest')
    # only the output directory and a new batch size: the rest comes from its config.json
    assert run.main(["eval", "--resume", "--out-dir", str(cut), "--batch-size", "3"]) == 0
    err = capsys.readouterr().err
    assert "resuming " + str(cut) + ": 4 of 5 questions answered before" in err
    assert "| 4/5 [" in err and "| 5/5 [" in err  # the progress bar counts the questions answered before
    assert stripped(cut / "predictions.jsonl") == stripped(whole / "predictions.jsonl")
    assert not partial.exists() and not (cut / "trees.jsonl.partial").exists()
    if strategy == "mcts":
        assert (cut / "trees.jsonl").read_text() == (whole / "trees.jsonl").read_text()
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        def nodes(d):  # the tree statistics logged to TensorBoard, one point per question
            ea = EventAccumulator(str(d / "tb"))
            ea.Reload()
            return [(e.step, e.value) for e in ea.Scalars("tree/nodes")]

        assert nodes(cut) == nodes(whole) and len(nodes(cut)) == 5
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole, cut))
    timing = {"seconds", "seconds_per_question", "seconds_per_generated_token"}
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    assert b["seconds"] > 0
    saved = json.loads((cut / "config.json").read_text())
    assert saved["batch_size"] == 3 and saved["search"] == (strategy if strategy != "greedy" else "greedy")


def test_sampled_answers_do_not_depend_on_the_batch(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    for b in (1, 4):
        assert run.main(["eval", "--model", tiny_ckpt, "--limit", "4", "--max-new-tokens", "6", "--device", "cpu", "--search",
                         "sample", "--n", "2", "--batch-size", str(b), "--out-dir", str(tmp_path / str(b))]) == 0
    assert stripped(tmp_path / "1" / "predictions.jsonl") == stripped(tmp_path / "4" / "predictions.jsonl")


def test_a_tree_missing_from_the_partial_file_is_searched_again(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """A kill between a batch's trees and its predictions: a question whose tree was lost is answered again."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    cut = tmp_path / "cut"
    common = ["eval", "--model", tiny_ckpt, "--limit", "3", "--max-new-tokens", "4", "--device", "cpu", *STRATEGIES["mcts"]]
    with monkeypatch.context() as m:
        interrupt_at_batch(m, 3)
        assert run.main(common + ["--batch-size", "1", "--out-dir", str(cut)]) == 130
    trees = cut / "trees.jsonl.partial"
    trees.write_text(trees.read_text().splitlines()[0] + "\n")  # the second question's tree lost
    assert run.main(["eval", "--resume", "--out-dir", str(cut)]) == 0
    assert "1 of 3 questions answered before" in capsys.readouterr().err
    assert [json.loads(line)["index"] for line in (cut / "trees.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert [q["index"] for q in stripped(cut / "predictions.jsonl")] == [0, 1, 2]


def test_what_cannot_be_resumed_is_one_line_before_loading(tiny_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "ev"
    common = ["eval", "--model", tiny_ckpt, "--limit", "2", "--max-new-tokens", "3", "--device", "cpu", "--out-dir", str(out)]

    def refused(argv) -> str:
        assert run.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "holds no interrupted eval (no predictions.jsonl.partial): run it without --resume" in refused(
        ["eval", "--resume", "--out-dir", str(out)])
    assert run.main(common) == 0
    capsys.readouterr()
    assert "finished (its predictions.jsonl is whole): nothing to resume" in refused(["eval", "--resume", "--out-dir", str(out)])
    with monkeypatch.context() as m:
        interrupt_at_batch(m, 2)  # one of the two questions answered
        assert run.main(common + ["--batch-size", "1"]) == 130
    capsys.readouterr()
    real = run.load_spec
    monkeypatch.setattr(run, "load_spec", lambda *a: pytest.fail("the model loaded before the refusal"))
    assert ("--temperature (it has 0.7) would change the answers mid-eval; only --batch-size and --gsm8k may change"
            in refused(["eval", "--resume", "--out-dir", str(out), "--temperature", "0.5"]))
    config = json.loads((out / "config.json").read_text())
    assert config["device"] == "cpu" and config["precision"] in ("fp32", "bf16")  # 'auto' as it resolved here
    monkeypatch.setattr(run.torch.cuda, "is_available", lambda: False)
    (out / "config.json").write_text(json.dumps({**config, "device": "cuda"}))  # started on a GPU machine
    assert "ran on cuda, which this machine lacks: resume it on a machine with one" in refused(
        ["eval", "--resume", "--out-dir", str(out)])
    (out / "config.json").write_text(json.dumps({"steps": 3}))
    # (its advice names config.json too: removing the partial file alone, the eval is refused for that config.json)
    assert (f"is not the config of a `run.py eval`: start it over by removing {out / 'predictions.jsonl.partial'} and "
            f"{out / 'config.json'} and running") in refused(["eval", "--resume", "--out-dir", str(out)])
    (out / "config.json").write_text("{")
    assert "config.json is missing or not JSON" in refused(["eval", "--resume", "--out-dir", str(out)])
    for field, value, says in (("model", 5, "a string or null"), ("stop", 5, "a string"), ("n", "2", "an integer")):
        (out / "config.json").write_text(json.dumps({**config, field: value}))  # edited by hand: were tracebacks
        assert (f"config.json holds a config that cannot run (--{field} is {value!r}, not {says})"
                in refused(["eval", "--resume", "--out-dir", str(out)]))
    # a field deleted by hand resumed with its default (256 tokens where the first answers had 8; a fuzz)
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("max_new_tokens", "top_p")}))
    assert (f"--resume: {out}/config.json lacks --max-new-tokens, --top-p: the interrupted eval's settings are unknown: "
            "start it over by removing") in refused(["eval", "--resume", "--out-dir", str(out)])
    (out / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "batch_size"}))
    assert "lacks" not in refused(["eval", "--resume", "--out-dir", str(out), "--temperature", "0.5"])  # may change: not needed
    (out / "config.json").write_text(json.dumps(config))
    partial = out / "predictions.jsonl.partial"
    kept = partial.read_text()
    partial.write_text(kept.replace('"index": 0', '"index": 7', 1) + '{"half')  # not the split's first question
    before = partial.read_text()
    assert "are not the first of the eval's split" in refused(["eval", "--resume", "--out-dir", str(out)])
    assert partial.read_text() == before  # refused before anything is cut
    partial.write_text(kept)
    # --gsm8k may change on resume (the same files elsewhere), but other files' questions are numbered 0, 1, ...
    # too: a review's resume through --gsm8k with other questions mixed the two files' answers in one summary
    other = tmp_path / "other"
    other.mkdir()
    real_dir = Path(gsm8k_dir())
    (other / "train.jsonl").write_text((real_dir / "train.jsonl").read_text())
    (other / "test.jsonl").write_text("".join(real_dir.joinpath("test.jsonl").read_text().splitlines(True)[100:104]))
    assert "are not the first of the eval's split (its data changed since, or --gsm8k names other files?)" in refused(
        ["eval", "--resume", "--out-dir", str(out), "--gsm8k", str(other)])
    assert partial.read_text() == kept
    # bytes that are not UTF-8 (a disk, a copy): the decoder's error named no file (seen in a fuzz); read as they are
    partial.write_bytes(kept.encode().replace(b'"question": "', b'"question": "\xc8', 1))
    assert "are not the first of the eval's split" in refused(["eval", "--resume", "--out-dir", str(out)])
    partial.write_text(kept)
    # a whole line in another shape (edited by hand): resumed as it stood, the summary failed after every other
    # answer, and on each resume after (an audit's TypeError/IndexError tracebacks); refused, naming the line
    line = json.loads(kept.splitlines()[0])
    for edit in ({"tokens": ["5"]}, {"final": 5}, {"strict": None}, {"finish": ["eos", "eos"]}, {"seconds": None},
                 {"completions": [1]}, {"index": True}):
        partial.write_text(json.dumps({**line, **edit}) + "\n")
        assert f"--resume: {partial}:1 is not a line an eval wrote (" in refused(["eval", "--resume", "--out-dir", str(out)])
        assert partial.read_text() == json.dumps({**line, **edit}) + "\n"
    # a field added or deleted: taken for a line cut by the kill, it and every line after were dropped (a README walk)
    lacking = {k: v for k, v in line.items() if k != "gold"}
    for edited, why in (({**line, "note": "x"}, "no eval writes note"), (lacking, "it lacks gold"), ([line], "a JSON object was expected, not list")):
        partial.write_text(json.dumps(edited) + "\n")
        assert (f"--resume: {partial}:1 is not a line an eval wrote (" + why) in refused(["eval", "--resume", "--out-dir", str(out)])
        assert partial.read_text() == json.dumps(edited) + "\n"
    partial.write_text(kept)
    # the eval's command again without --resume: the interrupted eval's answers are not thrown away
    assert (f"--out-dir {out} holds an interrupted eval (1 question(s) answered): continue it with `run.py eval "
            f"--resume --out-dir {out}`") in refused(common)
    assert partial.read_text() == kept
    import errno
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:  # a read-only directory: its partial file is rewritten on resume (was a traceback)
        m.setattr(tempfile, "NamedTemporaryFile", read_only)
        assert f"error: --resume --out-dir {out} is not writable (Read-only file system)" in refused(
            ["eval", "--resume", "--out-dir", str(out)])
    monkeypatch.setattr(run, "load_spec", real)
    # the command the eval started with, typed again with --resume: the same values, and 'auto' for what it resolved to
    assert run.main(common + ["--resume", "--temperature", "0.7", "--device", "auto", "--precision", "auto"]) == 0
    assert "1 of 2 questions answered before" in capsys.readouterr().err


def test_an_eval_of_a_training_run_resumes_with_the_checkpoint_it_started_with(tmp_path, monkeypatch, capsys):
    """`--model RUN_DIR` stands for the run's newest checkpoint when the eval starts; a run that trains on writes
    newer ones, and a resume must not answer the rest of the questions with other weights than the first ones."""
    from helpers import tiny_hf_model, tiny_tokenizer

    from model_io import save_model
    from model_io.convert import from_hf_model

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    rd = tmp_path / "run"

    def checkpoint(step: int, seed: int):
        save_model(from_hf_model(tiny_hf_model("qwen2", seed=seed)), tiny_tokenizer(), rd / "checkpoints" / f"step-{step:06d}" / "model")
        (rd / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt").touch()

    checkpoint(1, seed=1)
    first = rd / "checkpoints" / "step-000001" / "model"
    common = ["eval", "--model", str(rd), "--limit", "5", "--max-new-tokens", "5", "--device", "cpu", "--batch-size", "2"]
    assert run.main(common + ["--out-dir", str(tmp_path / "whole")]) == 0
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["model"] == str(first)
    for cut in ("cut1", "cut2"):
        with monkeypatch.context() as m:
            interrupt_at_batch(m, 2)
            assert run.main(common + ["--out-dir", str(tmp_path / cut)]) == 130
    capsys.readouterr()
    # the run's newest is still the eval's: the command typed again resumes
    assert run.main(["eval", "--resume", "--model", str(rd), "--out-dir", str(tmp_path / "cut1")]) == 0
    assert stripped(tmp_path / "cut1" / "predictions.jsonl") == stripped(tmp_path / "whole" / "predictions.jsonl")
    checkpoint(2, seed=2)  # the run trained on
    capsys.readouterr()
    assert run.main(["eval", "--resume", "--model", str(rd), "--out-dir", str(tmp_path / "cut2")]) == 2
    assert "--model (it has " + repr(str(first)) + ") would change the answers" in capsys.readouterr().err
    assert run.main(["eval", "--resume", "--out-dir", str(tmp_path / "cut2")]) == 0
    assert stripped(tmp_path / "cut2" / "predictions.jsonl") == stripped(tmp_path / "whole" / "predictions.jsonl")
    # the run rotated that checkpoint away (--keep-checkpoints) before the eval was resumed: said as what it is (a
    # user walk got "model path ... does not exist: check the path", and --model beside --resume is refused)
    with monkeypatch.context() as m:
        interrupt_at_batch(m, 2)
        assert run.main(common + ["--out-dir", str(tmp_path / "cut3")]) == 130  # (reads step 2, the newest)
    import shutil

    shutil.rmtree(rd / "checkpoints" / "step-000002")
    capsys.readouterr()
    assert run.main(["eval", "--resume", "--out-dir", str(tmp_path / "cut3")]) == 2
    assert capsys.readouterr().err == (f"error: --resume {tmp_path / 'cut3'}: the checkpoint this eval read, "
                                       f"{rd / 'checkpoints' / 'step-000002'}, has since been removed (its training run "
                                       f"keeps only its newest --keep-checkpoints): the eval cannot go on with the same "
                                       f"weights: start it over by removing "
                                       f"{tmp_path / 'cut3' / 'predictions.jsonl.partial'} and running the eval without "
                                       f"--resume, or in another --out-dir\n")


@pytest.mark.parametrize("stopped", ["before the renames", "between the renames"])
def test_an_eval_stopped_as_it_ends_is_finished_by_resume(stopped, tiny_ckpt, tmp_path, monkeypatch, capsys):
    """An eval ends by writing its summary (and tree statistics), then renaming its partial files. Stopped in
    between, it must still be resumable (a predictions.jsonl without summary.json could not be), answer nothing
    again, and end with the files of an uninterrupted eval, its TensorBoard points once."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    common = ["eval", "--model", tiny_ckpt, "--limit", "3", "--max-new-tokens", "5", "--device", "cpu", *STRATEGIES["mcts"]]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run.main(common + ["--out-dir", str(whole)]) == 0
    real = run.Path.replace

    def stop_at_rename(self, target):  # (summary.json's own atomic write renames too: not stopped)
        if str(self).endswith("predictions.jsonl.partial" if stopped == "between the renames" else ".partial"):
            raise KeyboardInterrupt
        return real(self, target)

    with monkeypatch.context() as m:
        m.setattr(run.Path, "replace", stop_at_rename)
        assert run.main(common + ["--out-dir", str(cut)]) == 130
    assert (cut / "summary.json").is_file() and (cut / "predictions.jsonl.partial").is_file()
    monkeypatch.setattr(E, "encode_prompts", lambda *a, **k: pytest.fail("a question was answered again"))
    assert run.main(["eval", "--resume", "--out-dir", str(cut)]) == 0
    assert stripped(cut / "predictions.jsonl") == stripped(whole / "predictions.jsonl")
    assert (cut / "trees.jsonl").read_text() == (whole / "trees.jsonl").read_text()
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in whole.iterdir())
    assert len(list((cut / "tb").iterdir())) == 1  # the tree statistics written once, not once per attempt


def test_eval_replaces_an_earlier_eval_but_not_what_no_eval_wrote(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """An eval's --out-dir is cleared of an earlier eval's outputs; an audit's eval into a directory holding a
    TensorBoard folder and a config.json of its own deleted the one and overwrote the other, without a word."""
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    common = ["eval", "--model", tiny_ckpt, "--limit", "1", "--max-new-tokens", "3", "--device", "cpu"]
    for name, files in {"tb+config": {"tb/logs/events.out": "data", "config.json": '{"editor": "vim"}'},
                        "tb": {"tb/events.out": "data"}, "config": {"config.json": "{"}}.items():
        out = tmp_path / name
        for f, text in files.items():
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            (out / f).write_text(text)
        assert run.main(common + ["--out-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out-dir {out} holds ") and "not written by an eval" in err and err.count("\n") == 1
        assert {f: (out / f).read_text() for f in files} == files
    out = tmp_path / "ev"
    assert run.main(common + ["--out-dir", str(out)]) == 0
    (out / "tb").mkdir()  # an earlier eval's (as tree search writes)
    assert run.main(common + ["--out-dir", str(out), "--max-new-tokens", "2"]) == 0
    assert not (out / "tb").exists() and json.loads((out / "config.json").read_text())["max_new_tokens"] == 2


def test_the_answered_questions_end_at_the_first_unreadable_line_or_missing_tree(tmp_path):
    """answered() directly, on files written here: a line that does not parse ends the list even with whole lines
    after it (they are answered again, not kept around a gap), and so does the first question without a tree."""
    from data import Problem
    from grpo.eval_resume import answered

    problems = [Problem(f"q{i}", str(i), "", i) for i in range(3)]

    def line(i):  # a `sample --n 2` question: final -1, every answer counts
        return json.dumps(dataclasses.asdict(E.QuestionResult(i, f"q{i}", str(i), ["a", "b"], [None, "1"], ["1", "1"],
                                                              [3, 4], ["stop", "length"], -1, 7, 12, 0.5)))

    partial = tmp_path / "predictions.jsonl.partial"
    partial.write_text(line(0) + "\n" + '{"index": 1, "quest' + "\n" + line(2) + "\n")
    assert [q.index for q in answered(tmp_path, False, problems, 2)] == [0]
    assert partial.read_text() == line(0) + "\n"
    root = {"id": 0, "parent": -1, "tokens": 0, "text": "", "visits": 2.0, "value": 0.5, "prior": 1.0, "terminal": False,
            "answer": None}
    tree = lambda i, **kw: json.dumps({"index": i, "question": f"q{i}", "gold": str(i), "answer": None, "nodes": [root], **kw})
    partial.write_text("".join(line(i) + "\n" for i in range(3)))
    trees = tmp_path / "trees.jsonl.partial"
    trees.write_text(tree(0) + "\n" + tree(2) + "\n")  # question 1's tree lost
    assert [q.index for q in answered(tmp_path, True, problems, 2)] == [0]
    assert partial.read_text() == line(0) + "\n" and trees.read_text() == tree(0) + "\n"
    # a whole tree line no eval wrote was kept, and failed the summary after every other answer (a fuzz): refused
    partial.write_text("".join(line(i) + "\n" for i in range(2)))
    for bad, fault in ((tree(1, nodes="x"), "not a search tree (it needs"), (tree(1, index="1"), "tree damaged (its index is")):
        trees.write_text(tree(0) + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=f"^--resume: {trees}:2 is {re.escape(fault)}.*: remove it and the lines after it"):
            answered(tmp_path, True, problems, 2)


def test_malformed_accepts_what_an_eval_writes_and_nothing_past_it():
    from grpo.eval_resume import malformed

    ok = E.QuestionResult(0, "q", "1", ["a", "b"], [None, "1"], ["1", "1"], [3, 4], ["stop", "length"], -1, 7, 12, 0.5)
    assert malformed(ok, 2) is None  # sample's final -1: every answer counts
    assert malformed(dataclasses.replace(ok, final=1), 2) is None
    for edit in (dict(final=2), dict(final=-2), dict(tokens=[-1, 4]), dict(generated_tokens=-7), dict(index=-1),
                 dict(seconds=float("inf")), dict(seconds=-0.5), dict(lenient=["1"])):
        assert malformed(dataclasses.replace(ok, **edit), 2) is not None, edit
