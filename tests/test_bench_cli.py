"""The bench scripts' command lines: bad input is one line naming the flag, before any model loads; and
bench/compare.py's outputs (where they go, what --replot rewrites, an untimed warm-up before the first row)."""
import importlib.util
import json

import pytest
import torch
from conftest import ROOT, gsm8k_dir
from helpers import tiny_hf_model, tiny_tokenizer

from model_io import save_model
from model_io.convert import from_hf_model


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def refused(name: str, argv: list[str], capsys) -> str:
    """The one error line a bench script gives for `argv` (argparse: exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as e:
        bench(name).main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("name,argv,says", [
    ("sampler", ["--batch", "0"], "--batch must be >= 1, got 0"),
    ("sampler", ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    ("sampler", ["--device", "foo"], "unknown --device 'foo'"),
    ("sampler", ["--model", "/nonexistent", "--device", "cpu"], "model path /nonexistent does not exist"),
    ("sampler", ["--gsm8k", "/nonexistent", "--device", "cpu"], "--gsm8k /nonexistent: no such file or directory"),
    ("sampler", ["--gsm8k", ""], "argument --gsm8k: is empty: give a path"),  # (it read the working directory)
    ("compare", ["--gsm8k", " ", "--out", "OUT"], "argument --gsm8k: is empty: give a path"),
    ("grpo_step", ["--gsm8k", ""], "argument --gsm8k: is empty: give a path"),
    ("precision", ["--gsm8k", ""], "argument --gsm8k: is empty: give a path"),
    ("mcts", ["--batch", "0"], "--batch must be >= 1, got 0"),
    ("compare", ["--n", "1,4", "--max-n", "2"], "--max-n 2 is below the largest --n (4): the equal-token rows read from"),
    ("mcts_answer", ["--limit", "0"], "--limit must be >= 1, got 0"),
    ("mcts_answer", ["--answer", "visits"], "argument --answer: invalid choice: 'visits'"),
    ("mcts_answer", ["--gsm8k", "/nonexistent", "--device", "cpu"], "--gsm8k /nonexistent: no such file or directory"),
    ("group_sampling", ["--group", "0"], "--group must be >= 1, got 0"),
    ("group_sampling", ["--shots", "-1"], "--shots must be >= 0, got -1"),
    ("group_sampling", ["--gsm8k", "/nonexistent", "--device", "cpu"], "--gsm8k /nonexistent: no such file or directory"),
    ("group_sampling", ["--model", "/nonexistent", "--device", "cpu"], "model path /nonexistent does not exist"),
    ("mcts", ["--model", "/nonexistent", "--device", "cpu"], "model path /nonexistent does not exist"),
    ("agreement", ["--tokens", "0"], "--tokens must be >= 1, got 0"),
    ("agreement", ["--model", "/nonexistent", "--device", "cpu"], "model path /nonexistent does not exist"),
    ("decode_ops", ["--batch", "-1"], "--batch must be >= 1, got -1"),
    ("decode_split", ["--slots", "0"], "--slots must be >= 1, got 0"),
    ("decode_split", ["--batch", "6", "--group", "4"], "--group 4 does not divide --batch 6: use a --batch of whole groups"),
    ("grpo_step", ["--micro-batch", "0"], "--micro-batch must be >= 1, got 0"),
    ("grpo_step", ["--gsm8k", "/nonexistent"], "--gsm8k /nonexistent: no such file or directory"),
    ("precision", ["--decode-rows", "0"], "--decode-rows must be >= 1, got 0"),
    ("grpo_step", ["--group", "1", "--micro-batch", "1"], "--group must be >= 2, got 1"),
    ("precision", ["--group", "1"], "--group must be >= 2, got 1"),
    ("precision", ["--shots", "8000"], "--shots 8000: the train split holds only 7473 problems"),
    # refused in the side's own process (where the model loads): still exit status 2, its one line
    ("precision", ["--model", "/nonexistent", "--steps", "1", "--warmup", "0"], "fp32: precision.py: error: model path /nonexistent does not exist"),
    ("linear", ["--rows", "0,8"], "--rows takes whole numbers >= 1 and below 2**31, separated by ','; got '0,8'"),
    ("linear", ["--shapes", "576x"], "--shapes takes whole numbers >= 1 and below 2**31, separated by 'x'; got '576x'"),
    ("linear", ["--shapes", "99999999999x2"], "--shapes takes whole numbers >= 1 and below 2**31"),  # (a traceback: a fuzz)
    ("linear", ["--shapes", "576x1x2"], "--shapes takes INxOUT pairs like 576x1536"),
    ("linear", ["--reps", "0"], "--reps must be >= 1, got 0"),
    ("attention", ["--kv-heads", "0"], "--kv-heads must be >= 1, got 0"),
    ("attention", ["--heads", "9", "--kv-heads", "2"], "--heads (9) must be a multiple of --kv-heads (2)"),
    ("attention", ["--device", "foo"], "unknown --device 'foo'"),
    ("compare", ["--n", "1,x"], "--n takes whole numbers >= 1, comma-separated (e.g. 1,4,8); got '1,x'"),
    ("compare", ["--sims", "0"], "--sims takes whole numbers >= 1"),
    ("compare", ["--mcts-answer", "best"], "argument --mcts-answer: invalid choice: 'best'"),
    ("compare", ["--temperature", "-1"], "--temperature must be >= 0, got -1.0"),
    ("compare", ["--model", "/nonexistent", "--device", "cpu", "--out", "OUT"], "model path /nonexistent does not exist"),
    ("compare", ["--shots", "100000", "--device", "cpu", "--out", "OUT"], "--shots 100000: the train split holds only 7473"),
    # a row's own settings, before the model loads (was a traceback after the model and the greedy row)
    ("compare", ["--temperature", "0", "--model", "/nonexistent", "--device", "cpu", "--out", "OUT"],
     "--temperature 0 draws the same answer all --n 8 times"),
])
def test_bad_input_is_one_line_naming_it(name, argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    argv = [str(tmp_path / "out") if x == "OUT" else x for x in argv]
    assert says in refused(name, argv, capsys)


@pytest.mark.parametrize("name", ["agreement", "attention", "compare", "decode_ops", "decode_split", "group_sampling", "mcts",
                                  "mcts_answer", "sampler"])
def test_a_usage_error_is_one_line_without_the_usage_block(name, capsys):
    """As run.py's: argparse printed its usage block (3-8 lines) above the one line that matters."""
    with pytest.raises(SystemExit) as e:
        bench(name).main(["--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and ": error: unrecognized arguments: --bogus (see " in err


def test_compare_leaves_no_out_it_made_when_refused_and_refuses_a_context_overrun(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    out = tmp_path / "new"
    refused("compare", ["--model", "/nonexistent", "--device", "cpu", "--out", str(out)], capsys)
    assert not out.exists()  # (an empty directory was left behind)
    mod = bench("compare")
    model = from_hf_model(tiny_hf_model())
    monkeypatch.setattr(mod, "load", lambda spec, **kw: (model, tiny_tokenizer()))
    monkeypatch.setattr(mod, "evaluate", lambda *a, **k: pytest.fail("a row ran past the model's context"))
    too_many = str(model.cfg.max_position_embeddings)
    with pytest.raises(SystemExit) as e:  # (run.py eval refuses this; compare only warned, then ran)
        mod.main(["--device", "cpu", "--limit", "1", "--shots", "0", "--max-new-tokens", too_many, "--out", str(out)])
    assert e.value.code == 2 and f"--max-new-tokens {too_many} after a prompt of" in capsys.readouterr().err
    assert not out.exists()


def test_cuda_asked_for_where_there_is_none(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused("sampler", ["--device", "cuda"], capsys)
    assert "error: --device cuda asked for but CUDA is not available here: use --device cpu (see " in line


def test_sampler_reads_a_gguf_in_the_working_directory_by_its_bare_name(tmp_path, monkeypatch):
    """`--model model.gguf` loaded (ours), then transformers was handed the directory '' and raised a traceback."""
    import transformers

    sampler = bench("sampler")
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())  # (before the chdir: CI's GSM8K_DIR is relative)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sampler, "load", lambda spec, **kw: (from_hf_model(tiny_hf_model()), tiny_tokenizer()))
    seen = []

    def from_pretrained(path, **kw):
        seen.append((path, kw.get("gguf_file")))
        raise KeyboardInterrupt  # far enough

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(KeyboardInterrupt):
        sampler.main(["--model", "model.gguf", "--device", "cpu", "--batch", "1", "--max-new-tokens", "2"])
    assert seen == [(".", "model.gguf")]


def test_the_floor_counts_each_weight_once_and_names_the_float32_heads_extra_bytes(monkeypatch):
    """The issue's floor: the weights as stored (a tied head once). With bf16 weights the step reads the head as a
    float32 copy (model.head_weight), 2 more bytes a value, printed beside it; float32 weights read nothing more."""
    sampler = bench("sampler")
    monkeypatch.setattr(sampler, "copy_bandwidth", lambda dev: 1e9)
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2)):
        model = from_hf_model(tiny_hf_model(tie_word_embeddings=True)).to(dtype)
        n = sum(p.numel() for p in model.parameters())
        floor_s, bw, extra = sampler.weight_read_floor(model, torch.device("cpu"))
        assert model.lm_head.weight is model.embed.weight and floor_s == pytest.approx(n * size / 1e9) and bw == 1e9
        assert extra == (0 if size == 4 else model.lm_head.weight.numel() * 2)


def test_group_sampling_bench_runs_both_sides_and_prints_their_ratio(capsys, monkeypatch):
    mod = bench("group_sampling")
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(mod, "load", lambda spec, **kw: (from_hf_model(tiny_hf_model()), tiny_tokenizer()))
    sides = []
    real = mod.generate
    monkeypatch.setattr(mod, "generate", lambda *a, share_prompt, **k: sides.append(share_prompt) or real(*a, share_prompt=share_prompt, **k))
    mod.main(["--device", "cpu", "--prompts", "2", "--group", "3", "--max-new-tokens", "4", "--reps", "2", "--shots", "1"])
    out = capsys.readouterr().out
    assert sides == [False, True] * 3  # an untimed warm-up of each side, then --reps 2 alternating
    assert "U=2 prompts x G=3 rows" in out and "rows with identical greedy tokens: 6/6" in out
    assert out.strip().splitlines()[-1].startswith("speed-up shared/copied: ")


def test_mcts_answer_bench_picks_both_ways_from_one_search(capsys, monkeypatch):
    mod = bench("mcts_answer")
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(mod, "load", lambda spec, **kw: (from_hf_model(tiny_hf_model()), tiny_tokenizer()))
    searches = []
    real = mod.search
    monkeypatch.setattr(mod, "search", lambda *a, **k: searches.append(len(a[2])) or real(*a, **k))
    mod.main(["--device", "cpu", "--limit", "3", "--batch", "2", "--simulations", "2", "--children", "2",
              "--max-new-tokens", "6", "--shots", "1"])
    out = capsys.readouterr().out.splitlines()
    assert searches == [2, 1]  # the questions searched once, in batches of --batch
    assert [line.split(" | ")[0] for line in out if line.startswith("| at") or line.startswith("| whole")] == [
        "| at creation (before)", "| whole pool (now)"]
    assert out[-1].startswith("answers changed: ") and " of 3 " in out[-1]


def test_compare_replot_needs_an_earlier_run_and_rewrites_only_the_png(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is runs/compare, not the committed docs/compare
    assert "error: --replot: no runs/compare/compare.json: pass the --out of an earlier run of this script (see " in refused(
        "compare", ["--replot"], capsys)
    pytest.importorskip("matplotlib")
    out = tmp_path / "runs" / "compare"
    out.mkdir(parents=True)
    (out / "compare.json").write_text((ROOT / "docs" / "compare" / "compare.json").read_text())
    bench("compare").main(["--replot"])
    assert capsys.readouterr().out.strip() == f"wrote {out.relative_to(tmp_path) / 'compare.png'}"
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.png"]


def test_compare_runs_the_grid_after_an_untimed_warm_up(tmp_path, capsys, monkeypatch):
    """(zero-shot from test.jsonl alone, as `run.py eval --shots 0` takes it: compare once read the train split anyway)"""
    save_model(from_hf_model(tiny_hf_model()), tiny_tokenizer(), tmp_path / "m")
    compare = bench("compare")
    calls = []
    real = compare.evaluate
    monkeypatch.setattr(compare, "evaluate", lambda m, t, problems, cfg, *a, **k: calls.append((len(problems), cfg.search,
                        cfg.max_new_tokens, cfg.mcts_answer)) or real(m, t, problems, cfg, *a, **k))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "compare.png").write_bytes(b"an earlier run's figure")  # without matplotlib: removed, not kept
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # beside the new rows (a fuzz)
    compare.main(["--model", str(tmp_path / "m"), "--device", "cpu", "--gsm8k", f"{gsm8k_dir()}/test.jsonl", "--limit", "2", "--n", "1,2",
                  "--sims", "1", "--roots", "puct", "--shots", "0", "--max-new-tokens", "6", "--batch-size", "2", "--out", str(tmp_path / "o"),
                  "--mcts-answer", "value"])
    assert calls[0][:3] == (2, "greedy", 8) and calls[1][:3] == (2, "greedy", 6)  # the warm-up, then the timed greedy row
    assert calls[3] == (2, "mcts", 6, "value") and "answer by value" in (tmp_path / "o" / "compare.md").read_text()
    assert calls[4:] in ([], [(2, "sample", 6, "value")])  # more of the same samples, where 2 fall short of the tree's tokens
    rows = json.loads((tmp_path / "o" / "compare.json").read_text())["rows"]
    assert [(r["strategy"], r["budget"]) for r in rows] == [("greedy", "1")] + [
        (s, f"n={n}") for n in (1, 2) for s in ("sample", "majority", "best-of-n")] + [("mcts", "sims=1, K=4")] + [
        (s, "tokens of mcts sims=1, K=4") for s in ("majority", "best-of-n")]
    assert rows[-1]["samples_per_question"] >= 1 and "tokens of mcts sims=1, K=4:" in (tmp_path / "o" / "compare.md").read_text()
    assert (tmp_path / "o" / "compare.md").is_file() and "compare.md" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "compare.json").read_text())["complete"] is True
    assert not (tmp_path / "o" / "compare.png").exists()

    def cut_off(m, t, problems, cfg, *a, **k):  # a time limit reached during tree search
        if cfg.search == "mcts":
            raise KeyboardInterrupt
        return real(m, t, problems, cfg, *a, **k)

    monkeypatch.setattr(compare, "evaluate", cut_off)
    with pytest.raises(KeyboardInterrupt):
        compare.main(["--model", str(tmp_path / "m"), "--device", "cpu", "--gsm8k", f"{gsm8k_dir()}/test.jsonl", "--limit", "2",
                      "--n", "1", "--sims", "1", "--roots", "puct", "--shots", "0", "--max-new-tokens", "6", "--batch-size", "2",
                      "--out", str(tmp_path / "cut")])
    got = json.loads((tmp_path / "cut" / "compare.json").read_text())
    assert got["complete"] is False and [r["strategy"] for r in got["rows"]] == ["greedy", "sample", "majority", "best-of-n"]


def test_mcts_bench_times_decode_steps_once_and_never_syncs_in_a_capture(monkeypatch):
    """bench/mcts.py on a GPU: a decode step replayed from a CUDA graph never calls forward, so the step itself is
    timed (an eager step's forward inside it is not counted twice); and a forward run while a graph is captured must
    not synchronise (torch.cuda.synchronize fails the capture: every decode would fall back to eager steps)."""
    mod = bench("mcts")
    syncs, inside, capturing = [], {"seconds": 0.0, "depth": 0}, [False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])

    class Model:
        def forward(self):
            return "logits"

    class Step:
        def __call__(self):
            return forward(Model())  # an eager static step runs the model's forward

    forward = mod.timed(Model.forward, lambda: syncs.append(1), inside)
    step = mod.timed(Step.__call__, lambda: syncs.append(1), inside)
    assert step(Step()) == "logits" and len(syncs) == 2 and inside["depth"] == 0  # one timed call, not two
    capturing[0] = True
    assert forward(Model()) == "logits" and len(syncs) == 2  # no synchronisation inside a capture


def test_linear_bench_measures_each_path_it_names(capsys, monkeypatch):
    """bench/linear.py: a row per shape and row count, with bf16 packing 'n/a' exactly where this CPU cannot pack
    bf16 (model_io.linear.BF16_PACKED); the path timed is the one its column names (measure asserts it)."""
    import model_io.linear as linear

    mod = bench("linear")
    for can in (False, linear.BF16_PACKED):  # (True is tried only where oneDNN can pack bf16)
        monkeypatch.setattr(linear, "BF16_PACKED", can)
        mod.main(["--shapes", "8x16,16x4", "--rows", "1,3", "--reps", "1"])
        out = capsys.readouterr().out.splitlines()
        assert f"oneDNN packs bf16: {can}" in out[0]
        rows = [line.split() for line in out if line.split()[:1] in (["8x16"], ["16x4"])]
        assert [(r[0], r[1]) for r in rows] == [("8x16", "1"), ("8x16", "3"), ("16x4", "1"), ("16x4", "3")]
        assert all((r[5] == "n/a") != can for r in rows)
        assert out[-1].startswith("float32 packed/plain over all rows and shapes: ")


@pytest.mark.parametrize("group", [1, 2])
def test_decode_split_replays_each_part_and_splits_the_step_into_three(group, capsys, monkeypatch):
    """bench/decode_split.py: while a part is replayed its real function is not called (no matmul, no attention, in
    the plain or the shared form as --group picks); the three parts printed add up to the whole step."""
    mod = bench("decode_split")
    models, made = [], []
    monkeypatch.setattr(mod, "load", lambda spec, **kw: (models.append(from_hf_model(tiny_hf_model())) or models[-1], tiny_tokenizer()))

    class Recorded(mod.Replay):
        def __init__(self, fn):
            super().__init__(fn)
            made.append(self)

    monkeypatch.setattr(mod, "Replay", Recorded)
    mod.main(["--device", "cpu", "--batch", "4", "--group", str(group), "--slots", "5", "--steps", "2"])
    out = capsys.readouterr().out.splitlines()
    L = models[0].cfg.n_layers
    lin, plain, shared = made
    # 3 warm-up steps and 2 timed whole steps call the linear layers (4 a layer and the LM head); 2 more steps with
    # them replayed call attention too; the last 2 call neither
    assert lin.calls == 5 * (4 * L + 1)
    assert (plain.calls, shared.calls) == ((7 * L, 0) if group == 1 else (0, 7 * L))
    assert out[0].endswith(f"rows=4 ({4 // group} prompts x {group}{', sharing their keys/values' if group > 1 else ''}) "
                           "cached slots=5 steps=2 (medians)")
    ms = lambda line, key: float(line.split(key)[1].split(" ms")[0])  # noqa: E731
    whole, no_linear, rest = ms(out[1], "whole step: "), ms(out[2], "linear layers replayed: "), ms(out[3], "attention replayed too: ")
    assert ms(out[2], "the linear layers: ") == pytest.approx(whole - no_linear, abs=0.011)
    assert ms(out[3], "attention: ") == pytest.approx(no_linear - rest, abs=0.011) and ms(out[3], "the rest: ") == rest


def test_a_replay_hands_back_what_was_recorded_in_order_without_calling():
    mod = bench("decode_split")
    calls = []
    r = mod.Replay(lambda x: calls.append(x) or x * 10)
    r.start_step()
    assert [r(1), r(2)] == [10, 20] and r.calls == 2
    r.replaying = True
    r.start_step()
    assert [r(7), r(8)] == [10, 20] and calls == [1, 2] and r.calls == 2  # the kept outputs, the function not called


def test_attention_bench_prints_both_forms_side_by_side(capsys):
    bench("attention").main(["--batch", "2", "--train-rows", "2", "--prompt-len", "6", "--new-tokens", "4", "--reps", "1",
                             "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    for kind in ("decode", "train"):
        assert [line.split(":")[0] for line in out if line.startswith(kind)] == [
            kind, f"{kind} enable_gqa", f"{kind} stacked", f"{kind} enable_gqa / stacked"]
    assert "decode: 2 rows x 1 queries over 10 keys" in out


def test_grpo_step_gives_trl_the_problems_our_trainer_trains_on(tmp_path):
    """A review: TRL got the train file's first problems, ours its seeded order: the step-time ratio compared
    different prompts. TRL now gets, unshuffled, the problems our trainer's steps take, step by step."""
    from helpers import make_trainer

    tr = make_trainer(tmp_path / "run", prompts_per_step=4, seed=3)  # (shots 0, as the benchmark's side runs)
    ours = [tr.train_set[i] for s in range(5) for i in tr.step_indices(s)]  # 5 steps of 4: past the 16 problems' epoch
    assert bench("grpo_step").problems_in_our_order(tr.train_set, 4, 5, 3) == ours
    assert [p.index for p in ours[:4]] != [0, 1, 2, 3]  # (not the file's order)


def test_shared_flags_default_to_cuda_where_there_is_one_and_a_rate_outside_0_1_is_one_line(monkeypatch, capsys):
    cli = bench("cli")
    for available, device in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        ap = cli.parser("doc")
        cli.add_device(ap)
        assert ap.parse_args([]).device == device
    ap = cli.parser("doc")
    ap.add_argument("--top-p", type=float, default=1.0)
    with pytest.raises(SystemExit) as e:
        cli.check_args(ap, ap.parse_args(["--top-p", "1.5"]), in_0_1=("top_p",))
    assert e.value.code == 2 and "--top-p must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_machine_rates_by_a_clock_that_moves_only_where_the_benchmark_reads_it(monkeypatch):
    """ms_per_call: milliseconds a timed call after the untimed warm-ups; copy_bandwidth: bytes copied (each read once
    and written once) a second, over a CPU buffer of 256 MiB. (A clock of our own: no timing is asserted.)"""
    machine = bench("machine")
    clock = [0.0]
    monkeypatch.setattr(machine.time, "perf_counter", lambda: clock[0])
    calls = []

    def fn():
        calls.append(1)
        clock[0] += 0.002

    assert machine.ms_per_call(fn, 5) == pytest.approx(2.0) and len(calls) == 7  # 2 warm-ups, then 5 of 2 ms
    ticks = iter(range(10))
    monkeypatch.setattr(machine.time, "perf_counter", lambda: float(next(ticks)))  # 1 s between the two readings
    assert machine.copy_bandwidth(torch.device("cpu"), reps=2) == 2 * 256 * 2**20


@pytest.mark.parametrize("name,extra", [("sampler", ["--batch", "1"]), ("group_sampling", ["--prompts", "1", "--group", "2"])])
def test_new_tokens_past_the_models_context_are_one_line(name, extra, capsys, monkeypatch):
    """Seen in a fuzz: --max-new-tokens 2000000000 was a traceback once the model had loaded (its KV cache asked for);
    refused as eval refuses it."""
    mod = bench(name)
    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    monkeypatch.setattr(mod, "load", lambda spec, **kw: (from_hf_model(tiny_hf_model()), tiny_tokenizer()))
    line = refused(name, ["--device", "cpu", "--max-new-tokens", "2000000000", *extra], capsys)
    assert "--max-new-tokens 2000000000 after a prompt of " in line and "runs past the model's context of" in line
    assert ("--shots" in line) == (name == "group_sampling")  # (sampler.py has no --shots to lower)


@pytest.mark.parametrize("name", ["linear", "grpo_step", "precision"])
def test_an_unknown_flag_is_one_line_not_a_usage_block(name, capsys):
    """Seen in a fuzz: these three used plain argparse, which prints its usage block (2-7 lines) above the error."""
    with pytest.raises(SystemExit) as e:
        bench(name).main(["--bogus"])
    err = capsys.readouterr().err  # (its program name is pytest's here)
    assert e.value.code == 2 and err.count("\n") == 1 and "error: unrecognized arguments: --bogus (see " in err, err


def test_compare_replot_refuses_rows_it_did_not_write_and_a_missing_matplotlib(tmp_path, capsys, monkeypatch):
    """Seen in a fuzz: rows of another shape were a TypeError/KeyError in the plot, and without matplotlib --replot,
    whose one output is the PNG, exited 0."""
    import sys

    out = tmp_path / "c"
    out.mkdir()
    good = json.loads((ROOT / "docs" / "compare" / "compare.json").read_text())
    for rows in (5, [{"strategy": "greedy"}], [{**good["rows"][0], "accuracy_lenient": "x"}]):
        (out / "compare.json").write_text(json.dumps({**good, "rows": rows}))
        assert "is not a compare.json written by this script (TypeError: its rows are not the rows this script writes)" in (
            refused("compare", ["--replot", "--out", str(out)], capsys))
    (out / "compare.json").write_text(json.dumps(good))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # (an import of it raises ImportError)
    assert "--replot draws OUT/compare.png with matplotlib, which is not installed: pip install" in refused(
        "compare", ["--replot", "--out", str(out)], capsys)
    assert sorted(p.name for p in out.iterdir()) == ["compare.json"]


def test_linear_refuses_reps_past_2_to_the_31_before_measuring(capsys, monkeypatch):
    """Seen in a fuzz: --reps 99999999999999 was taken, and ran until its time limit."""
    mod = bench("linear")
    monkeypatch.setattr(mod, "measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as e:
        mod.main(["--reps", "99999999999999"])
    assert e.value.code == 2 and "error: --reps must be below 2**31, got 99999999999999 (see " in capsys.readouterr().err


@pytest.mark.parametrize("name,argv,flags", [
    ("linear", ["--shapes", "576x576", "--rows", "1", "--reps", "1"], "lower --shapes or --rows"),
    ("attention", ["--device", "cpu", "--reps", "1"], "lower --batch, --train-rows, --prompt-len, --new-tokens, --heads or --head-dim")])
def test_running_out_of_memory_is_one_line_naming_the_flags(name, argv, flags, capsys, monkeypatch):
    """Seen in a fuzz: a shape past the memory (--shapes 200000x200000, --prompt-len 2000000000) was the allocator's
    traceback."""
    mod = bench(name)
    if name == "linear" and not mod.linear.ENABLED:
        pytest.skip("packed linears are off here: linear.py refuses to run")

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 160000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(mod, "measure" if name == "linear" else "inputs", no_memory)
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"error: out of memory (can't allocate memory: you tried to allocate 160000000000 bytes): {flags} (see " in err
