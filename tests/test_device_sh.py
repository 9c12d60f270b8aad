"""scripts/device.sh's `run` on a stand-in repository: the carried halves joined and checked, the wheels unpacked,
and what the lent machine gives back kept within its limits (at most 8 files of 16 MiB, 2 folders down, plain
names) although the run itself writes weights of many MiB in deep folders. A stand-in gpu_run.sh writes what the
real one does (a summary, the step list, logs, predictions, TensorBoard files, checkpoints and exported models)."""
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import zipfile

from conftest import ROOT

MiB = 1024 * 1024

FAKE_GPU_RUN = r"""#!/usr/bin/env bash
# stand-in for scripts/gpu_run.sh MODEL OUT MINUTES: records its arguments and the import path, writes a run's files
set -eu
OUT=$2
mkdir -p "$OUT"/eval-start "$OUT"/train/checkpoints/step-000001/model "$OUT"/train/final_hf "$OUT"/train/tb \
         "$OUT"/nccl/checkpoints/step-000002/model
echo '{"model_type": "llama"}' > "$OUT/train/final_hf/config.json"  # (an exported model's JSON: not given back either)
echo "$*" > "$OUT/args.txt"; echo "$PYTHONPATH" > "$OUT/pythonpath.txt"; echo "$GSM8K_DIR" > "$OUT/gsm8k.txt"
python3 -c "import fakegguf" && echo "gguf importable" > "$OUT/1-env.log"
echo "| figure | value |" > "$OUT/summary.md"
printf '1-env rc=0 seconds=1\n3-eval-start rc=0 seconds=2\n' > "$OUT/steps.txt"
echo '{"gpu": "stand-in"}' > "$OUT/env.json"
echo '{"accuracy": 0.5}' > "$OUT/eval-start/summary.json"
python3 - "$OUT" "$PREDICTIONS_MIB" <<'PY'
import base64, os, sys
out, mib = sys.argv[1], int(sys.argv[2])
line = lambda: '{"text": "%s"}\n' % base64.b64encode(os.urandom(3000)).decode()  # incompressible, like many answers
with open(f"{out}/eval-start/predictions.jsonl", "w") as f:
    for _ in range(mib * 1024 * 1024 // 4000 + 1): f.write(line())
for p in ["train/checkpoints/step-000001/model/model.safetensors", "train/final_hf/model.safetensors",
          "nccl/checkpoints/step-000002/model/model.safetensors"]:
    with open(f"{out}/{p}", "wb") as f: f.write(os.urandom(20 * 1024 * 1024))  # weights: over what comes back
with open(f"{out}/train/checkpoints/step-000001/trainer_state.pt", "wb") as f: f.write(os.urandom(1024))
with open(f"{out}/train/tb/events.out.tfevents.1.host", "wb") as f: f.write(b"tb")
os.makedirs(f"{out}/train-profile/profile")
with open(f"{out}/train-profile/profile/step_2.txt", "w") as f: f.write("training step 2: 1.0 s\n")
with open(f"{out}/train-profile/profile/step_2.trace.json.gz", "wb") as f:  # a profiled step's trace
    f.write(os.urandom(int(os.environ.get("TRACE_KIB", "1")) * 1024))
PY
exit "${GPU_RUN_RC:-0}"
"""

FAKE_TIMEOUT = """#!/usr/bin/env bash
# stand-in for timeout LIMIT CMD...: records the limit, runs the command to its end, then reports a cut-off
echo "$1" > "$TIMEOUT_LIMIT"; shift; "$@"; exit 124
"""


def wheel(path, module):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "")


NO_PYTEST_PYTHON = """#!/usr/bin/env bash
# python3 as on an image without pytest
if [ "$*" = "-c import pytest" ]; then exit 1; fi
exec {real} "$@"
"""


def device_run(tmp_path, minutes="8", predictions_mib=1, cut_off=False, no_pytest=False, **env_extra):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "scripts" / "device.sh", repo / "scripts")
    (repo / "scripts" / "gpu_run.sh").write_text(FAKE_GPU_RUN)
    (repo / "scripts" / "gpu_summary.py").write_text("import sys; open(sys.argv[1] + '/resummarised', 'w').close()\n")
    b = repo / ".dev_model" / "b"
    (b / "pytest").mkdir(parents=True, exist_ok=True)
    (b / "gsm8k").mkdir(exist_ok=True)
    halves = os.urandom(1000), os.urandom(700)
    (b / "part_ab").write_bytes(halves[1])
    (b / "SHA256").write_text(hashlib.sha256(halves[0] + halves[1]).hexdigest() + "\n")
    wheel(b / "gguf-0.1-py3-none-any.whl", "fakegguf")
    wheel(b / "pytest" / "pytest-9.0-py3-none-any.whl", "stagedpytest")
    model = tmp_path / "m"
    model.mkdir(exist_ok=True)
    (model / "part_aa").write_bytes(halves[0])
    env = {**os.environ, "DEVICE_MODEL_DIR": str(model), "DEVICE_SITE_DIR": str(tmp_path / "site"),
           "DEVICE_RUN_DIR": str(tmp_path / "work"), "PREDICTIONS_MIB": str(predictions_mib)}
    env.pop("PYTHONPATH", None)
    env.update(env_extra)
    if cut_off:
        bin_ = tmp_path / "bin"
        bin_.mkdir(exist_ok=True)
        (bin_ / "timeout").write_text(FAKE_TIMEOUT)
        (bin_ / "timeout").chmod(0o755)
        env.update(PATH=f"{bin_}:{env['PATH']}", TIMEOUT_LIMIT=str(tmp_path / "limit"))
    if no_pytest:
        bin_ = tmp_path / "nopytest"
        bin_.mkdir(exist_ok=True)
        (bin_ / "python3").write_text(NO_PYTEST_PYTHON.format(real=shutil.which("python3")))
        (bin_ / "python3").chmod(0o755)
        env.update(PATH=f"{bin_}:{env['PATH']}")
    out = tmp_path / "device-out"  # the device's $OUT
    p = subprocess.run(["bash", str(repo / "scripts" / "device.sh"), "run", str(out / "run"), *([minutes] if minutes else [])],
                       env=env, capture_output=True, text=True, timeout=120)
    return p, out, tmp_path / "work"


def assert_within_what_comes_back(out):
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, files
    for p in files:
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3, rel  # $OUT/a/b/file comes back, deeper does not
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in rel.parts), rel
        assert p.stat().st_size <= 16 * MiB, (rel, p.stat().st_size)
    assert sum(p.stat().st_size for p in files) <= 64 * MiB


def archived(out):
    with tarfile.open(out / "run" / "run.tgz") as t:
        return {m.name: m for m in t.getmembers() if m.isfile()}, t


def test_run_joins_unpacks_runs_and_gives_back_what_fits(tmp_path):
    p, out, work = device_run(tmp_path)
    assert p.returncode == 0, p.stderr
    assert "OK" in p.stdout  # sha256sum -c on the joined halves
    assert (work / "args.txt").read_text().split() == [str(tmp_path / "m" / "SmolLM2-135M-Instruct.Q4_1.gguf"), str(work), "8"]
    assert (work / "1-env.log").read_text().strip() == "gguf importable"
    assert (work / "gsm8k.txt").read_text().strip() == str(tmp_path / "repo" / ".dev_model" / "b" / "gsm8k")
    # this interpreter has pytest: the staged copy is not unpacked (it would shadow the image's own)
    assert (tmp_path / "site" / "fakegguf").is_dir() and not (tmp_path / "site" / "stagedpytest").exists()
    assert_within_what_comes_back(out)
    # the profile's trace comes back as a file of its own, not inside the archive (which it could push past 15 MiB,
    # and then the archive would keep only the text logs)
    assert sorted(q.name for q in (out / "run").iterdir()) == ["env.json", "run.tgz", "step_2.trace.json.gz", "steps.txt", "summary.md"]
    assert (out / "run" / "summary.md").read_text() == (work / "summary.md").read_text()
    members, _ = archived(out)
    names = {n.split("/", 1)[1] for n in members}
    assert {"steps.txt", "eval-start/predictions.jsonl", "eval-start/summary.json", "train/tb/events.out.tfevents.1.host",
            "1-env.log", "train-profile/profile/step_2.txt"} <= names
    assert not any(n.endswith(".trace.json.gz") for n in names)
    assert not any("checkpoints" in n or "final_hf" in n or n.endswith((".safetensors", ".pt")) for n in names), names


def test_a_run_cut_off_still_gives_back_its_summary_and_logs_within_the_limits(tmp_path):
    # 20 MiB of incompressible predictions: with them the archive would not come back, so it keeps the text logs;
    # a 17 MiB profile trace would not come back either: left out
    p, out, work = device_run(tmp_path, minutes="8", predictions_mib=20, cut_off=True, TRACE_KIB=str(17 * 1024))
    assert not (out / "run" / "step_2.trace.json.gz").exists()
    assert p.returncode == 124, p.stderr
    assert (tmp_path / "limit").read_text().strip() == "560"  # 8 min + 80 s: the device call's 600 s less 40 s
    assert (work / "resummarised").exists()  # the summary redone for what ran
    assert (work / "steps.txt").read_text().splitlines()[-1] == "run cut off after 560 s (the device call's limit)"
    assert "logs and JSON only" in p.stderr
    assert_within_what_comes_back(out)
    members, _ = archived(out)
    names = {n.split("/", 1)[1] for n in members}
    assert {"steps.txt", "summary.md", "eval-start/summary.json", "1-env.log"} <= names
    assert not any(n.endswith(".jsonl") or "checkpoints" in n for n in names), names


def test_short_runs_are_limited_by_their_minutes_and_a_missing_first_half_is_one_line(tmp_path):
    p, _, _ = device_run(tmp_path, minutes="2", cut_off=True)
    assert (tmp_path / "limit").read_text().strip() == str(2 * 60 + 80)
    p, _, _ = device_run(tmp_path, minutes="9", cut_off=True)  # 9 min + 80 s is past the 600 s call less 40 s
    assert (tmp_path / "limit").read_text().strip() == "560"
    shutil.rmtree(tmp_path / "bin")
    p, _, _ = device_run(tmp_path, minutes="15", cut_off=True, DEVICE_CALL_S="2000")  # a rehearsal on a slow CPU
    assert (tmp_path / "limit").read_text().strip() == str(15 * 60 + 80)
    (tmp_path / "m" / "part_aa").unlink()
    p = subprocess.run(["bash", str(tmp_path / "repo" / "scripts" / "device.sh"), "run", str(tmp_path / "o")],
                       env={**os.environ, "DEVICE_MODEL_DIR": str(tmp_path / "m")}, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "run 'part1' again" in p.stderr
    assert not (tmp_path / "o").exists()
    # MINUTES that is not a whole number: one line before anything is joined or run (a fuzz: "abc" ended in bash's
    # "unbound variable", -5 in timeout's "invalid option" and an empty run.tgz)
    for bad in ("abc", "-5", "1.5", "08"):
        p = subprocess.run(["bash", str(tmp_path / "repo" / "scripts" / "device.sh"), "run", str(tmp_path / "o"), bad],
                           env={**os.environ, "DEVICE_MODEL_DIR": str(tmp_path / "m")}, capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr == f"error: MINUTES must be a whole number of minutes (0 runs each step at its 30 s floor), got '{bad}'\n"
    assert not (tmp_path / "o").exists()


def test_each_out_gets_its_own_run_folder_by_default(tmp_path):
    """A second run on the still-warm machine (STEPS, another OUT) must not write into the first one's folder
    (run.py refuses an out-dir that holds another run): by default the folder is named after OUT."""
    (tmp_path / "tmp").mkdir()
    p, out, _ = device_run(tmp_path, DEVICE_RUN_DIR="", TMPDIR=str(tmp_path / "tmp"))
    assert p.returncode == 0, p.stderr
    work = tmp_path / "tmp" / "gpu_run_run"  # OUT is .../run
    assert (work / "args.txt").read_text().split()[1] == str(work) and (out / "run" / "run.tgz").is_file()


def test_minutes_default_to_8_and_an_image_without_pytest_gets_the_staged_one(tmp_path):
    p, _, work = device_run(tmp_path, minutes=None, no_pytest=True)
    assert p.returncode == 0, p.stderr
    assert (work / "args.txt").read_text().split()[2] == "8"
    assert (tmp_path / "site" / "stagedpytest").is_dir() and (tmp_path / "site" / "fakegguf").is_dir()


def test_a_failed_run_keeps_its_status_and_a_damaged_model_runs_nothing(tmp_path):
    p, out, work = device_run(tmp_path, GPU_RUN_RC="3")  # failed, not cut off: no cut-off line, no summary redone
    assert p.returncode == 3
    assert "run cut off" not in (work / "steps.txt").read_text() and not (work / "resummarised").exists()
    assert (out / "run" / "run.tgz").is_file()  # what it wrote still comes back
    shutil.rmtree(work)
    (tmp_path / "repo" / ".dev_model" / "b" / "SHA256").write_text("0" * 64 + "\n")  # halves that do not join
    p = subprocess.run(["bash", str(tmp_path / "repo" / "scripts" / "device.sh"), "run", str(tmp_path / "o")],
                       env={**os.environ, "DEVICE_MODEL_DIR": str(tmp_path / "m"), "DEVICE_SITE_DIR": str(tmp_path / "site"),
                            "DEVICE_RUN_DIR": str(work)}, capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode != 0 and "FAILED" in p.stdout and not work.exists()


def test_no_or_an_unknown_command_prints_the_usage_and_exits_2():
    for args in ([], ["bogus"]):
        p = subprocess.run(["bash", str(ROOT / "scripts" / "device.sh"), *args], capture_output=True, text=True)
        assert p.returncode == 2 and "bash scripts/device.sh run OUT [MINUTES]" in p.stdout
