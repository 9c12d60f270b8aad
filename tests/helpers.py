"""Tiny random models and a byte-level tokenizer, built from configs: no downloads, seconds on a CPU."""
from __future__ import annotations

import torch

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_VOCAB = 259  # 256 bytes + <|endoftext|>, <|im_start|>, <|im_end|>


def tiny_hf_config(arch: str = "llama", vocab: int = TINY_VOCAB, **kw):
    from transformers import LlamaConfig, Qwen2Config

    base = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, eos_token_id=258, bos_token_id=257,  # 2-shot prompts: ~900 byte tokens
                pad_token_id=256, initializer_range=0.2)
    base.update(kw)
    if arch == "llama":
        return LlamaConfig(**base)
    return Qwen2Config(**{"tie_word_embeddings": True, **base})


def tiny_hf_model(arch: str = "llama", seed: int = 0, dtype=torch.float32, **kw):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(tiny_hf_config(arch, **kw)).to(dtype).eval()
    if arch == "qwen2":  # HF initialises biases to zero: make them matter
        with torch.no_grad():
            for layer in m.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.2)
    return m


def tiny_tokenizer():
    """Byte-level BPE with no merges (one token per byte) and ChatML specials: ids 256, 257, 258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"pad_token": "<|endoftext|>", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    fast.chat_template = CHATML
    assert (fast.pad_token_id, fast.bos_token_id, fast.eos_token_id) == (256, 257, 258)
    return fast


def random_prompts(lengths, vocab: int = 256, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def left_pad(prompts, pad: int):
    P = max(map(len, prompts))
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p)
        mask[i, P - len(p):] = 1
    return ids, mask


# ---------------------------------------------------------------- a GRPO trainer on a synthetic task
def letter_ids(tok):
    return {tok.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"}


def letter_fraction(tok):
    """Synthetic reward: the fraction of completion tokens that are lowercase letters (chance: 26/259)."""
    ids = letter_ids(tok)

    def reward(completions, completion_ids, **_):
        return [sum(t in ids for t in c) / max(len(c), 1) for c in completion_ids]

    return reward


def use_row_keys(monkeypatch) -> None:
    """Per-row randomness as on a GPU (counter-based RowKeys, model_io.sampler.row_rng) for GRPO rollouts, tree
    search and evaluation's sampled strategies, here on a CPU, where row_rng would give torch.Generators."""
    import grpo.evaluate
    import grpo.rollout
    import mcts.search
    from model_io.row_keys import RowKeys

    keys = lambda names, device="cpu": RowKeys.from_names(names, device)  # noqa: E731
    monkeypatch.setattr(grpo.rollout, "row_rng", keys)
    monkeypatch.setattr(mcts.search, "row_rng", keys)
    monkeypatch.setattr(grpo.evaluate, "row_rng", keys)


def count_calls(monkeypatch, owner, name: str) -> list:
    """Wrap owner.name (a function of a module, or a method of a class) to record each call; returns the record.
    E.g. (model_io.static_decode, "decode_static"): did sampler.decode take the static path? (It imports the
    function at call time, so the module attribute is what it runs.)"""
    calls, real = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def make_trainer(run_dir, dtype=torch.float32, rewards=None, seed=0, dist=None, model_kw=None, problems=None, **overrides):
    from data import Problem
    from grpo.config import TrainConfig
    from grpo.distributed import Dist
    from grpo.rewards import RewardSet
    from grpo.trainer import Trainer
    from model_io.convert import from_hf_model

    tok = tiny_tokenizer()
    model = from_hf_model(tiny_hf_model("llama", seed=seed, dtype=dtype, **(model_kw or {})))
    problems = problems if problems is not None else [Problem(f"question {i}", "0", "", i) for i in range(16)]
    kw = dict(steps=6, prompts_per_step=4, group_size=8, max_new_tokens=8, micro_batch=12, lr=3e-3, warmup_steps=0,
              beta=0.0, stop="", eval_every=0, save_every=100, log_samples=1, seed=seed, device="cpu", shots=0,
              precision="fp32")  # explicit: 'auto' would pick bf16 on an AMX CPU, float32 on others
    cfg = TrainConfig(**{**kw, **overrides})
    rs = rewards or RewardSet({"letters": 1.0}, {"letters": letter_fraction(tok)})
    return Trainer(cfg, model, tok, problems, [], run_dir, rewards=rs, dist=dist or Dist(), progress=False)


def one_line_refusal(main, argv, capsys) -> str:
    """The one `error: ...` line a script's main(argv) refuses `argv` with (exit 2, nothing more on stderr)."""
    import pytest

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def one_line(e) -> str:
    """The message of a pytest.raises ExceptionInfo, checked to be one line."""
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def tiny_run(tmp_path, monkeypatch, steps: int, until_step: int | None = None, **kw):
    """A tiny trained run for the resume tests: -> (its --model directory, its run directory)."""
    import run
    from conftest import gsm8k_dir
    from grpo.config import TrainConfig
    from model_io import save_model
    from model_io.convert import from_hf_model

    monkeypatch.setenv("GSM8K_DIR", gsm8k_dir())
    base, out = tmp_path / "base", tmp_path / "run"
    save_model(from_hf_model(tiny_hf_model("qwen2")), tiny_tokenizer(), base)
    run.cmd_train(TrainConfig(model=str(base), steps=steps, prompts_per_step=1, group_size=2, max_new_tokens=2,
                              out_dir=str(out), device="cpu", precision="fp32", **{"eval_every": 0, **kw}), until_step=until_step)
    return base, out
