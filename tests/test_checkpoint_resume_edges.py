"""Checkpoint and out-dir edges found by mutation testing: which checkpoint is the newest, the problems'
fingerprint, leftovers of a killed writer, and the out-dir lock."""
import json

import pytest


def _fake_checkpoint(run_dir, step, config):
    d = run_dir / "checkpoints" / f"step-{step:06d}"
    d.mkdir(parents=True)
    (d / "trainer_state.pt").touch()
    (d / "train_config.json").write_text(json.dumps(config))
    return d


def test_the_newest_checkpoint_is_the_highest_step_past_six_digits(tmp_path):
    from grpo.checkpointing import checkpoint_dirs

    for step in (1_000_000, 999_999, 20):  # step-1000000 sorts before step-999999 by name
        _fake_checkpoint(tmp_path, step, {})
    (tmp_path / "checkpoints" / "step-2000000").mkdir()  # unfinished: no trainer_state.pt
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000020", "step-999999", "step-1000000"]


def test_check_against_checkpoint_reads_the_newest_checkpoints_config(tmp_path):
    from grpo.checkpointing import check_against_checkpoint

    _fake_checkpoint(tmp_path, 1, {"lr": 0.1, "steps": 10})
    newest = _fake_checkpoint(tmp_path, 2, {"lr": 0.2, "steps": 10})
    check_against_checkpoint({"lr": 0.2, "steps": 10}, tmp_path)  # the newest checkpoint's config: accepted
    with pytest.raises(ValueError, match="disagree on --lr") as e:
        check_against_checkpoint({"lr": 0.1, "steps": 10}, tmp_path)
    assert str(newest / "train_config.json") in str(e.value)
    # a field config.json lacks (an older run's, resumed since by a newer version; or deleted by hand): not a
    # disagreement, with_checkpoint_fields fills it from the checkpoint
    check_against_checkpoint({"lr": 0.2}, tmp_path)
    check_against_checkpoint({"lr": 0.2, "steps": 10, "eval_every": 5}, tmp_path)  # (a field the checkpoint lacks: an older run's)


def test_with_checkpoint_fields_fills_only_what_config_json_lacks(tmp_path):
    from grpo.checkpointing import with_checkpoint_fields

    run = {"steps": 10, "group_size": 2, "prompts_per_step": 1, "lr": 0.2}
    _fake_checkpoint(tmp_path, 1, {**run, "max_new_tokens": 8, "lr": 0.1, "gone": 1})
    _fake_checkpoint(tmp_path, 2, {**run, "max_new_tokens": 48, "lr": 0.3, "gone": 1})
    assert with_checkpoint_fields(run, tmp_path) == {**run, "max_new_tokens": 48}  # the newest's; config.json's own lr
    assert with_checkpoint_fields({"steps": 3}, tmp_path) == {"steps": 3}  # not a train config: left to be refused


def test_the_data_fingerprint_covers_questions_answers_and_order():
    from data import Problem
    from grpo.checkpointing import data_fingerprint

    ps = [Problem("q1", "1", "s1", 0), Problem("q2", "2", "s2", 1)]
    fp = data_fingerprint(ps)
    assert fp == data_fingerprint([Problem("q1", "1", "other", 5), Problem("q2", "2", "", 6)])  # solutions, positions free
    assert fp != data_fingerprint([Problem("q1", "1", "s1", 0), Problem("q2", "3", "s2", 1)])  # one answer changed
    assert fp != data_fingerprint([Problem("q1", "1", "s1", 0), Problem("q2!", "2", "s2", 1)])  # one question changed
    assert fp != data_fingerprint(ps[::-1])  # a step's prompts are positions in the split




def test_remove_leftovers_removes_half_written_checkpoints_and_exports_only(tmp_path):
    from grpo.checkpointing import remove_leftovers

    step_tmp = tmp_path / "checkpoints" / ".step-000003.tmp-ab12"
    hf_tmp = tmp_path / ".final_hf.tmp-cd34"
    old = tmp_path / "checkpoints" / ".step-000002.old-99"  # maybe the only whole copy: kept
    for d in (step_tmp, hf_tmp, old):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"\0" * 2000)
    assert remove_leftovers(tmp_path) == f"note: removed 2 half-written checkpoints (4 kB) that a killed run left in {tmp_path}"
    assert not step_tmp.exists() and not hf_tmp.exists() and old.is_dir()
    assert remove_leftovers(tmp_path) is None


def test_an_out_dir_lock_is_exclusive(tmp_path, monkeypatch):
    """flock is per open file: a second take() (another command, the same process here) is refused while the
    first holds the lock, and the lock file is gone once it lets go."""
    from grpo import out_dir

    monkeypatch.delenv("RANK", raising=False)
    out_dir.take(tmp_path, "train")
    try:
        with pytest.raises(ValueError, match=r"is in use by another run.py command \(pid \d+ on .*: run.py train\)"):
            out_dir.take(tmp_path, "eval")
    finally:
        out_dir.release_locks()
    assert not (tmp_path / ".lock").exists()
    out_dir.take(tmp_path, "eval")  # free again
    out_dir.release_locks()


def test_a_lock_file_removed_by_its_last_holder_as_it_was_taken_is_taken_again(tmp_path, monkeypatch):
    """The holder before this one removes .lock as it lets go: a flock won on that removed file locks nothing
    another command can see; take() locks the file at the path, made anew."""
    import fcntl

    from grpo import out_dir

    monkeypatch.delenv("RANK", raising=False)
    real, calls = fcntl.flock, []

    def flock(f, op):
        calls.append(op)
        if len(calls) == 1:
            (tmp_path / ".lock").unlink()  # the last holder, releasing, between our open and our flock
        return real(f, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    out_dir.take(tmp_path, "train")
    try:
        assert len(calls) == 2 and (tmp_path / ".lock").is_file()
        assert (tmp_path / ".lock").read_text().startswith("pid ")
        monkeypatch.setattr(fcntl, "flock", real)
        with pytest.raises(ValueError, match="is in use by another run.py command"):
            out_dir.take(tmp_path, "eval")
    finally:
        out_dir.release_locks()


def test_a_damaged_checkpoint_points_at_the_one_before_it_by_step_number(tmp_path):
    """way_on compared folder names as text: past step 999,999 "step-1000000" < "step-999999", so a damaged
    step-1000000 said no earlier checkpoint was kept, and a damaged step-999999 said to resume from the newer one."""
    from grpo.checkpointing import way_on

    old, new = _fake_checkpoint(tmp_path, 999_999, {}), _fake_checkpoint(tmp_path, 1_000_000, {})
    assert way_on(new) == f"delete {new} to resume from step-999999"
    assert way_on(old).startswith("no earlier checkpoint is kept; start the run again")
