"""run.py under Ctrl-C and SIGTERM: one line at any moment (even while torch imports), a second Ctrl-C during the stop
ignored, an ignored Ctrl-C left ignored, SIGTERM ending a run as Ctrl-C does."""
import sys
from pathlib import Path

import pytest
from conftest import ROOT, gsm8k_dir

import run
from grpo.checkpointing import checkpoint_dirs


def test_ctrl_c_while_torch_imports_ends_the_command_in_one_line():
    """Ctrl-C in a command's first second, while torch imports, could be swallowed by numpy's import inside it (the
    command then ran for hours and failed at its export, a CLI audit found); it now ends the command at once."""
    import signal
    import subprocess
    import time

    def inside_torch_import(p):
        """Wait until torch's library is mapped: run.py's guard is then in place (it comes before `import torch`) and
        the import has a second to go. (A fixed 0.3 s could still be the interpreter's start on a loaded machine.)"""
        maps = Path(f"/proc/{p.pid}/maps")
        for _ in range(6000):
            if not maps.exists():  # (not Linux: the old fixed wait)
                time.sleep(0.3)
                return
            if "libtorch" in maps.read_text(errors="replace"):
                return
            time.sleep(0.01)

    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "sample", "--help"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    inside_torch_import(p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert (p.returncode, err, out) == (130, "interrupted\n", "")
    # a background job of a script starts with SIGINT ignored: it stays ignored (the guard switched it back on)
    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "sample", "--help"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    inside_torch_import(p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "usage:" in out, err


def test_a_second_ctrl_c_during_the_stop_is_ignored_not_a_traceback(tmp_path, monkeypatch, capsys):
    """Ctrl-C pressed twice: the second landed in run.py's own cleanup after the first (removing the dirs it made),
    a KeyboardInterrupt traceback instead of the one line (seen at 0.02 s apart on the smoke preset), or later the
    process killed by SIGINT at exit. Real signals here, sent by the command to itself: the first stops it, the second
    comes in the cleanup and is ignored; SIGTERM too, once one of them came. Handlers are put back after a command
    that no signal stopped."""
    import os
    import signal

    def first(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # (its handler runs at the next bytecode: raised here)
        pytest.fail("the first Ctrl-C did not stop the command")

    def second():
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt out of main, past its one line
        os.kill(os.getpid(), signal.SIGTERM)  # would raise Terminated
        cleaned.append(True)

    cleaned = []
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(run, "load_spec", first)
    monkeypatch.setattr(run, "remove_made_dirs", second)
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        try:
            assert run.main(["eval", "--limit", "1", "--out-dir", str(tmp_path / "ev")]) == 130
        except KeyboardInterrupt:
            pytest.fail("the second Ctrl-C, in the stop's cleanup, escaped main: a traceback")
        assert cleaned == [True] and capsys.readouterr().err.splitlines()[-1] == "interrupted"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # on its way out: stays ignored
    finally:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, sigterm)
    monkeypatch.setattr(run, "load_spec", lambda *a, **k: (_ for _ in ()).throw(ValueError("no such model")))
    monkeypatch.setattr(run, "remove_made_dirs", lambda: None)
    assert run.main(["eval", "--limit", "1", "--out-dir", str(tmp_path / "ev2")]) == 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (sigint, sigterm)


def test_an_ignored_ctrl_c_stays_ignored_while_a_command_runs():
    """A background job of a script starts with SIGINT ignored: stop_signals leaves it so (SIGTERM still stops the
    command), and puts SIGTERM's handler back after a command that no signal stopped."""
    import signal

    from grpo.stops import stop_signals

    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and callable(signal.getsignal(signal.SIGTERM))
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (signal.SIG_IGN, sigterm)
    finally:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, sigterm)


def test_sigterm_ends_a_run_as_ctrl_c_does(tiny_ckpt, tmp_path):
    """A scheduler's SIGTERM (or `kill`) killed the process where it stood: no line saying how to go on, its lock
    file left behind. Now it ends as Ctrl-C does: exit 143, one line with the --resume command, the out-dir let go,
    and the run continues from its last checkpoint."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    env = {"GSM8K_DIR": gsm8k_dir(), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "train", "--model", tiny_ckpt, "--steps", "100000",
                          "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "2", "--eval-every", "0",
                          "--save-every", "1", "--out-dir", str(out), "--device", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0 = time.time()
    while not checkpoint_dirs(out) and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()[1]
    os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert err.splitlines()[-1] == f"terminated: `run.py train --resume {out}` continues from its last checkpoint"
    assert not (out / ".lock").exists() and checkpoint_dirs(out)
    assert not [d for d in (out / "checkpoints").iterdir() if d.name.startswith(".")]  # no half-written checkpoint
    assert run.main(["train", "--resume", str(out), "--max-minutes", "0.001", "--gsm8k", gsm8k_dir()]) == 0
