"""Monte Carlo Tree Search over reasoning steps, for B questions in lockstep.

A node is one reasoning step: the tokens up to and including the first newline, at most `step_tokens`
(`step="tokens:N"`: exactly N tokens, the seed plan's "a few tokens ahead"). One simulation, for all B trees:

  1. select    PUCT descent to a leaf (mcts/tree.py); with root="gumbel" the root's child is chosen by
               Gumbel scores and Sequential Halving instead (mcts/gumbel.py), PUCT below it
  2. expand    the prompt's KV cache is forked, the leaf's path is read (never the prompt again), then K
               continuations are sampled in one batched decode (B x K rows); each continuation's first step is
               a new child, its prior the softmax over siblings of the step's mean token log-prob (identical
               sibling steps become one child)
  3. evaluate  the rest of each continuation is the rollout, up to the end of the answer or a token cap: the
               step and its rollout together at most (1 + rollout_depth) x step_tokens tokens (newlines not
               counted, so a step that ends early leaves its rollout the rest); a value function scores the
               whole answer
  4. backup    every new child's value goes up to the root, all K children of all B trees at once
With `rescore`, before each selection after the first, every finished rollout is scored again against its tree's
answers so far and the value sums are rebuilt from those scores (tree.revalue): the values then follow the pool
as it grows instead of keeping the pool each rollout saw.

At evaluation time the value never sees the gold answer: it is format plus agreement of the rollout's answer
with the answers found so far in the same tree (self-consistency as a value, Wang et al. 2023). Training may
pass a value function that uses correctness.
"""
from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch

from data import StopOnText, parse_lenient, parse_strict, stop_token_ids
from model_io import SamplingConfig, Transformer, decode, extend, prefill
from model_io.sampler import key_uniform, row_rng, shares_prompts

from .gumbel import choose_root_child, considered_table, final_root_child, root_scores
from .interface import Candidates, RolloutRecord, SearchConfig, SearchResult, ValueFn, pick_finished, self_consistency_value
from .tree import ROOT, UNEXPANDED, Tree, backup, expand, revalue, select


_NEWLINE_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> [V] bool


def newline_table(tokenizer) -> torch.Tensor:
    """[V] bool: the token's text contains a newline (computed once per tokenizer)."""
    table = _NEWLINE_TABLES.get(tokenizer)  # weak keys: a freed tokenizer's entry goes with it (id() could be reused)
    if table is None:
        V = len(tokenizer)
        table = _NEWLINE_TABLES[tokenizer] = torch.tensor(["\n" in s for s in tokenizer.batch_decode([[i] for i in range(V)])])
    return table


def step_ends(tokens: torch.Tensor, lengths: torch.Tensor, cfg: SearchConfig, nl: torch.Tensor | None) -> torch.Tensor:
    """Tokens in the first step of each continuation [R]: through the first newline token, capped."""
    R, T = tokens.shape
    cap = torch.full((R,), cfg.step_len, dtype=torch.long, device=tokens.device)
    if nl is not None and cfg.step == "newline":
        pos = torch.arange(1, T + 1, device=tokens.device)[None].expand(R, T)
        is_nl = nl.to(tokens.device)[tokens.clamp(max=nl.numel() - 1)]
        cap = torch.minimum(cap, torch.where(is_nl, pos, torch.full_like(pos, T + 1)).min(-1).values)
    return torch.minimum(cap, lengths)


def path_tokens(tree: Tree, steps: torch.Tensor, step_len: torch.Tensor, rows: torch.Tensor, leaf: torch.Tensor):
    """The tokens from the root to node `leaf` [A] of trees `rows` [A], right-aligned: ([A, L] ids, [A, L] mask).
    steps [B, N, S] and step_len [B, N] hold each node's own tokens. Loops over depth only."""
    A, S = leaf.shape[0], steps.shape[2]
    b = rows
    depth = int(tree.depth[b, leaf].max()) if A else 0
    if depth == 0:
        return torch.zeros(A, 0, dtype=torch.long), torch.zeros(A, 0, dtype=torch.bool)
    chunks, masks, node = [], [], leaf.clone()
    for _ in range(depth):  # from the leaf upwards; the root holds no tokens
        real = node != ROOT
        n = node.clamp(min=0)
        chunks.append(steps[b, n])  # [A, S]
        masks.append((torch.arange(S)[None] < step_len[b, n][:, None]) & real[:, None])
        node = torch.where(real, tree.parent[b, n], node)
    toks = torch.cat(chunks[::-1], 1)  # [A, depth * S], root side first
    mask = torch.cat(masks[::-1], 1)
    order = torch.argsort(mask.int(), dim=1, stable=True)  # padding first, tokens after, in order: right-aligned
    return toks.gather(1, order), mask.gather(1, order)


def row_generators(seed: int, question_ids: Sequence[int], sim: int, K: int, device="cpu"):
    """One random stream per continuation (model_io.sampler.row_rng: generators on a CPU, RowKeys on a GPU)."""
    return row_rng([f"mcts/{seed}/{q}/{sim}/{k}" for q in question_ids for k in range(K)], device)


def gumbel_noise(seed: int, question_ids: Sequence[int], K: int) -> torch.Tensor:
    """g ~ Gumbel(0, 1) [B, K], one per root child slot, drawn once per tree and tied to (seed, question)."""
    u = torch.tensor([[key_uniform(f"gumbel/{seed}/{q}/{k}") for k in range(K)] for q in question_ids], dtype=torch.float64)
    return -torch.log(-torch.log(u.clamp(1e-12, 1 - 1e-12))).float()


def parse_answer(text: str) -> str | None:
    a = parse_strict(text)
    return a if a is not None else parse_lenient(text)


def tree_sizes(cfg: SearchConfig, B: int, longest: int) -> tuple[int, int]:
    """(N, S) of B trees whose longest answer may run `longest` tokens: N nodes, the root and K children per
    simulation at most; S token slots for a node's step, its cap but no more than `longest` (a step is part of one
    answer, so a `--step tokens:N` or `--step-tokens` past the answer's cap costs nothing).

    The trees are allocated whole before the first simulation (the tree, each node's S tokens and log-probs, the
    rollout records: about 8K + 12S + 81 bytes a node). Past the memory free, say so as an out-of-memory error (one
    line, naming the flags) rather than touch it: on Linux the zero-filled tensors are taken page by page, and the
    kernel's OOM killer ends the process with no line at all (an audit's --mcts-simulations 100000000)."""
    K = cfg.children
    N, S = 1 + cfg.n_simulations * K, max(1, min(cfg.step_len, longest))
    need = B * N * (8 * K + 12 * S + 81)
    free = available_memory()
    if free is not None and need > free:
        size = lambda n: f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"  # noqa: E731
        raise torch.OutOfMemoryError(f"tree search's {B} tree(s) of {N} nodes need {size(need)}, {size(free)} are free")
    return N, S


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable); None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@torch.no_grad()
def search(
    model: Transformer,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    cfg: SearchConfig,
    question_ids: Sequence[int] | None = None,
    seed: int = 0,
    value_fn: ValueFn | None = None,
    keep_trees: bool = False,
    max_new_tokens: Sequence[int] | None = None,
    on_simulation: Callable[[int, int], None] | None = None,
    answer_prefix: Sequence[Sequence[int]] | None = None,
) -> list[SearchResult]:
    """Search B trees at once, one per prompt; returns one answer per prompt. `max_new_tokens` [B]: each
    answer's own token cap (lookahead decoding searches answers of different lengths); default cfg's for all.
    `on_simulation(s, n)` is called as simulation s of n (from 1) starts, e.g. to show progress.
    `answer_prefix` [B]: the token ids of each answer written before the search, the end of its prompt (lookahead
    decoding searches from the answer so far): answers are parsed from, and the value function sees, the prefix
    followed by the path and the continuation, the whole answer (a format check reads it from its first character,
    and an answer opened in the prefix closes in the continuation). Records keep the search's own tokens in `ids`."""
    B, K = len(prompts), cfg.children
    caps = torch.tensor(list(max_new_tokens) if max_new_tokens is not None else [cfg.max_new_tokens] * B)  # [B]
    assert caps.shape == (B,), f"max_new_tokens needs one cap per prompt, got {tuple(caps.shape)} for {B}"
    N, S = tree_sizes(cfg, B, int(caps.max()))  # (the trees' memory checked here, before any work)
    qids = list(question_ids) if question_ids is not None else list(range(B))
    before = [list(p) for p in answer_prefix] if answer_prefix is not None else [[] for _ in range(B)]
    assert len(before) == B, f"answer_prefix needs one list of ids per prompt, got {len(before)} for {B}"
    value_fn = value_fn or self_consistency_value(cfg.format_weight)
    pad = tokenizer.pad_token_id
    eos = stop_token_ids(tokenizer, model.cfg.eos_token_ids)
    stop = StopOnText(tokenizer, [cfg.stop]) if cfg.stop else None
    nl = newline_table(tokenizer) if cfg.step == "newline" else None
    roll_cap = S * (1 + cfg.rollout_depth)  # tokens one expansion samples at most: the step and its rollout

    tree = Tree.empty(B, N, K)
    steps = torch.full((B, N, S), pad, dtype=torch.long)  # [B, N, S] each node's own tokens
    step_lp = torch.zeros(B, N, S)  # [B, N, S] their log-probs when sampled
    step_len = torch.zeros(B, N, dtype=torch.long)  # [B, N]
    node_value = torch.zeros(B, N)  # [B, N] value of the rollout that created the node
    # what was backed up, for cfg.rescore: each rollout's node, value and how often it went up (1, plus K per revisit
    # of its finished node); R = N - 1 rollouts at most, one per node slot below the root
    rec_node = torch.full((B, N - 1), UNEXPANDED, dtype=torch.long)  # [B, R]
    rec_value = torch.zeros(B, N - 1)  # [B, R]
    rec_weight = torch.zeros(B, N - 1)  # [B, R]
    own_rec = torch.full((B, N), -1, dtype=torch.long)  # [B, N] each node's own rollout (index into records, rec_*), -1: none
    records: list[list[RolloutRecord]] = [[] for _ in range(B)]
    pools: list[list[str]] = [[] for _ in range(B)]
    gen_tokens = [0] * B
    fwd_tokens = [len(p) for p in prompts]

    # each prompt read once; no room: every simulation forks the rows it expands into caches with their own room
    root = prefill(model, prompts, room=0, pad_id=pad)
    b_all = torch.arange(B)
    gumbel = cfg.root == "gumbel"
    if gumbel:  # simulation 0 creates the root's children; Sequential Halving schedules the n - 1 after it
        g = gumbel_noise(seed, qids, K)  # [B, K]
        schedule = considered_table(K, cfg.n_simulations - 1)  # [K + 1, K + n - 1]
        root_sims = torch.zeros(B, K, dtype=torch.long)  # [B, K] simulations through each root child
    for sim in range(cfg.n_simulations):
        if on_simulation is not None:
            on_simulation(sim + 1, cfg.n_simulations)
        if cfg.rescore and sim > 0:  # before anything reads the values (Gumbel's root scores, PUCT)
            _revalue(tree, _score_finished(records, pools, value_fn, before), rec_node, rec_value, rec_weight)
        start = None
        if gumbel and sim > 0:
            kids = tree.children[:, ROOT]  # [B, K]
            valid = kids != UNEXPANDED
            scores = _gumbel_scores(tree, g, valid, root_sims, cfg)
            slot = choose_root_child(scores, valid, root_sims, schedule[valid.sum(-1), valid.sum(-1) + sim - 1])  # [B]
            has = valid.any(-1)
            start = torch.where(has, kids[b_all, slot], torch.full_like(slot, ROOT))
            root_sims[b_all, slot] += has.long()
        leaf = select(tree, cfg.c_puct, start)  # [B]
        done = tree.terminal[b_all, leaf]
        path, pmask = path_tokens(tree, steps, step_len, b_all, leaf)
        done |= pmask.sum(-1) >= caps  # no room left under this leaf: it stays a leaf
        tree.terminal[b_all, leaf] |= done
        if bool(done.any()):  # a finished leaf is revisited: its value counts again (standard MCTS), K times,
            # as an expansion backs up K values: counted once, a finished child's visits would grow K times
            # slower than an open sibling's, and PUCT's exploration bonus would keep sending simulations to it
            again = torch.where(done, leaf, torch.full_like(leaf, UNEXPANDED))[:, None].expand(B, K)  # [B, K]
            backup(tree, again, node_value[b_all, leaf][:, None].expand(B, K))
            own = own_rec[b_all, leaf]  # [B] the leaf's own rollout went up K times more
            hit = done & (own >= 0)
            rec_weight[b_all[hit], own[hit]] += K
        act = (~done).nonzero().flatten()  # [A] trees that expand this simulation
        if act.numel() == 0:
            continue
        A = act.numel()
        path, pmask = path[act], pmask[act]
        keep = pmask.any(0)  # drop columns that are padding in every active row
        path, pmask = path[:, keep], pmask[:, keep]
        room = caps[act] - pmask.sum(-1)  # [A]
        T = int(min(roll_cap, int(room.max())))
        # the path only, not the prompt; then K continuations per leaf, which read the leaf's prompt + path in place
        # (model_io/shared_kv.py), not K copies of it
        share = shares_prompts()
        pre = extend(model, root.fork(act, room=path.shape[1] + (0 if share else T)), path, pmask)
        pre = pre.share(K, room=T) if share else pre.fork(torch.arange(A).repeat_interleave(K))
        gens = row_generators(seed, [qids[int(a)] for a in act], sim, K, model.device)
        # what each continuation resumes, for the stop check: the answer before the search and the leaf's path (a
        # step may end inside "</answer>": its children must stop where they complete it, not run on past it)
        ctx = None if stop is None else [before[int(act[i])] + path[i][pmask[i]].tolist() for i in range(A) for _ in range(K)]
        # each row stops at its own leaf's room (a leaf deeper in the tree has less), not at the batch's longest
        res = decode(model, pre, SamplingConfig(max_new_tokens=T, temperature=cfg.temperature, top_p=cfg.top_p, eos_ids=eos),
                     gens, stop=stop, pad_id=pad, max_tokens=room.clamp(max=T).repeat_interleave(K), stop_context=ctx)
        lengths = res.lengths.cpu()  # [A*K] tokens each row sampled (all of them paid for), none past its room
        toks, lps = res.tokens.cpu(), res.logprobs.cpu()
        finished = torch.tensor([f != "length" for f in res.finish])
        ends = step_ends(toks, lengths, cfg, nl)  # [A*K] tokens in each child's step
        pos = torch.arange(toks.shape[1])[None]
        in_step = pos < ends[:, None]
        prior = ((lps * in_step).sum(-1) / ends.clamp(min=1)).view(A, K).softmax(-1)  # length-normalised, over siblings
        child_terminal = (finished & (lengths <= ends)).view(A, K)
        step_tok = torch.nn.functional.pad(toks, (0, max(0, S - toks.shape[1])), value=pad)[:, :S]  # [A*K, S]
        # Siblings with the same first step are one child: sampling repeats a likely step often ("<reasoning>\n"
        # opens most answers in this format), and K copies of it would spend the search's width on one node.
        # The kept twin (the first) takes the summed prior, and every copy's rollout is backed up through it.
        masked = torch.where(torch.arange(S)[None] < ends[:, None], step_tok, torch.full_like(step_tok, -1)).view(A, K, S)
        twin = (masked[:, :, None] == masked[:, None]).all(-1).int().argmax(-1)  # [A, K] first sibling with this step
        own = twin == torch.arange(K)[None]  # [A, K]
        prior = torch.zeros_like(prior).scatter_add_(1, twin, prior)

        # value of every continuation: the whole answer (its prefix, then the path from the root and the continuation)
        texts, answers, full_ids, whole_ids = [], [], [], []
        for r in range(A * K):
            b = int(act[r // K])
            full = path[r // K][pmask[r // K]].tolist() + toks[r, : int(lengths[r])].tolist()  # this search's tokens
            full_ids.append(full)
            whole_ids.append(before[b] + full)
            texts.append(tokenizer.decode(whole_ids[-1], skip_special_tokens=True))
            answers.append(parse_answer(texts[-1]) if bool(finished[r]) else None)
            gen_tokens[b] += int(lengths[r])
        for r in range(A * K):  # the pool grows with this simulation's finished answers before scoring
            if answers[r] is not None:
                pools[int(act[r // K])].append(answers[r])
        values = value_fn(Candidates(texts, answers, finished.tolist(), [pools[int(act[r // K])] for r in range(A * K)],
                                     [int(act[r // K]) for r in range(A * K)], whole_ids))
        for i, a in enumerate(act.tolist()):
            fwd_tokens[a] += int(pmask[i].sum()) + int(lengths[i * K : (i + 1) * K].sum())

        # expand and back up, all active trees and all K children at once
        prior_b = torch.zeros(B, K)
        valid_b = torch.zeros(B, K, dtype=torch.bool)
        term_b = torch.zeros(B, K, dtype=torch.bool)
        prior_b[act], valid_b[act], term_b[act] = prior, own & (ends.view(A, K) > 0), child_terminal
        kids = expand(tree, leaf, prior_b, valid_b, term_b)  # [B, K] new nodes, UNEXPANDED for copies
        val_b = torch.zeros(B, K)
        val_b[act] = torch.tensor(values, dtype=torch.float32).view(A, K)
        ka = kids[act]  # [A, K]
        ok = ka != UNEXPANDED
        through = kids.clone()  # [B, K] the node each continuation's value goes up from: its own, or its twin's
        through[act] = ka.gather(1, twin)
        rows_k = act[:, None].expand(A, K)[ok]
        steps[rows_k, ka[ok]] = step_tok.view(A, K, S)[ok]
        step_lp[rows_k, ka[ok]] = torch.nn.functional.pad(lps, (0, max(0, S - lps.shape[1])))[:, :S].view(A, K, S)[ok]
        step_len[rows_k, ka[ok]] = ends.view(A, K)[ok]
        node_value[rows_k, ka[ok]] = val_b[act][ok]
        backup(tree, through, val_b)
        if gumbel and sim == 0:  # each root child's creating rollout counts as its first simulation
            root_sims = (tree.children[:, ROOT] != UNEXPANDED).long()
        leaf_paths = {}
        through_rows = through[act].view(-1).tolist()  # [A*K]
        for r in range(A * K):
            b, node = int(act[r // K]), through_rows[r]
            if node == UNEXPANDED:
                continue
            if b not in leaf_paths:  # the nodes from the root's child to the leaf, and their log-probs
                chain, n = [], int(leaf[b])
                while n != ROOT:
                    chain.append(n)
                    n = int(tree.parent[b, n])
                leaf_paths[b] = (chain[::-1], [x for c in chain[::-1] for x in step_lp[b, c, : int(step_len[b, c])].tolist()])
            chain, path_lp = leaf_paths[b]
            ids = full_ids[r]
            if own_rec[b, node] < 0:  # a node's own rollout: the first through it
                own_rec[b, node] = len(records[b])
            rec_node[b, len(records[b])], rec_value[b, len(records[b])], rec_weight[b, len(records[b])] = node, values[r], 1.0
            records[b].append(RolloutRecord(node, texts[r], answers[r], values[r], bool(finished[r]), len(ids), ids,
                                            path_lp + lps[r, : int(lengths[r])].tolist(), chain + [node]))

    # every finished rollout scored again against its whole tree's pool: the final answer's values (pick_finished),
    # and with rescore the tree's values as its dump and a `visits` answer see them
    scored = _score_finished(records, pools, value_fn, before) if cfg.rescore or cfg.answer in ("vote", "value") else []
    if cfg.rescore:
        _revalue(tree, scored, rec_node, rec_value, rec_weight)
    fin = [[r for r in rs if r.finished and r.answer is not None] for rs in records]
    final_values = [[v for bb, _, v in scored if bb == b] if cfg.answer != "visits" else [] for b in range(B)]  # as fin[b]
    first = None  # the root's child that the answer's path starts with, for answer="visits"
    if gumbel:
        kids = tree.children[:, ROOT]
        valid = kids != UNEXPANDED
        first = kids[b_all, final_root_child(_gumbel_scores(tree, g, valid, root_sims, cfg), valid, root_sims)].tolist()
    return [_result(tree, b, records[b], own_rec[b].tolist(), cfg, gen_tokens[b], fwd_tokens[b], steps, step_len, tokenizer, keep_trees,
                    first[b] if first else None, eos, pick_finished(fin[b], final_values[b], cfg.answer) if final_values[b] else None)
            for b in range(B)]


def _score_finished(records: list[list[RolloutRecord]], pools: list[list[str]], value_fn: ValueFn,
                    before: list[list[int]]) -> list[tuple[int, int, float]]:
    """Every finished rollout with an answer scored again against its tree's answers as they are now:
    (tree, record index, value), trees in order, records in creation order within a tree. `before` [B]: each
    tree's answer prefix (search's `answer_prefix`), in front of the records' ids as the value function sees them."""
    rows = [(b, i) for b, rs in enumerate(records) for i, r in enumerate(rs) if r.finished and r.answer is not None]
    if not rows:
        return []
    got = value_fn(Candidates([records[b][i].text for b, i in rows], [records[b][i].answer for b, i in rows],
                              [True] * len(rows), [pools[b] for b, _ in rows], [b for b, _ in rows],
                              [before[b] + records[b][i].ids for b, i in rows]))
    return [(b, i, float(v)) for (b, i), v in zip(rows, got, strict=True)]


def _revalue(tree: Tree, scored: list[tuple[int, int, float]], rec_node: torch.Tensor, rec_value: torch.Tensor,
             rec_weight: torch.Tensor) -> None:
    """The rollouts' new values (from _score_finished) into rec_value [B, R], then the trees' value sums rebuilt
    from all rollouts' values and weights (tree.revalue). Unfinished rollouts keep their values (no answer:
    agreement 0 whatever the pool). A record's own `value` stays as scored at creation."""
    if scored:
        rb, ri = torch.tensor([b for b, _, _ in scored]), torch.tensor([i for _, i, _ in scored])
        rec_value[rb, ri] = torch.tensor([v for _, _, v in scored], dtype=rec_value.dtype)
    revalue(tree, rec_node, rec_value, rec_weight)


def _gumbel_scores(tree: Tree, g: torch.Tensor, valid: torch.Tensor, root_sims: torch.Tensor, cfg: SearchConfig) -> torch.Tensor:
    """g + log prior + sigma(q) of the root's children [B, K] (mcts/gumbel.py)."""
    b = torch.arange(tree.batch_size)[:, None]
    k = tree.children[:, ROOT].clamp(min=0)  # [B, K]
    log_prior = torch.log(tree.prior[b, k].clamp(min=1e-30))
    return root_scores(g, log_prior, tree.q()[b, k], valid, root_sims, cfg.gumbel_c_visit, cfg.gumbel_c_scale)


def _result(tree: Tree, b: int, records: list[RolloutRecord], own: list[int], cfg: SearchConfig,
            gen: int, fwd: int, steps, step_len, tokenizer, keep_tree: bool, first: int | None = None,
            eos: Sequence[int] = (), chosen: RolloutRecord | None = None) -> SearchResult:
    """`own` [N]: each node's own rollout (index into `records`, -1: none). `chosen`: the vote's or the value's pick
    (None: nothing finished, or answer="visits")."""
    first_node = first if first is not None and first != UNEXPANDED else None
    if chosen is None:  # visits, or nothing finished: follow the most visited path (from Gumbel's pick at the root, if used)
        node = first_node if first_node is not None else ROOT
        while True:
            kids = [k for k in tree.children[b, node].tolist() if k != UNEXPANDED]
            if not kids:
                break
            node = max(kids, key=lambda k: (float(tree.visits[b, k]), -k))
        chosen = records[own[node]] if own[node] >= 0 else (records[0] if records else None)
    text = chosen.text if chosen else ""
    dump = {}
    if keep_tree:
        n = int(tree.num_nodes[b])
        dump = {"nodes": [{"id": i, "parent": int(tree.parent[b, i]), "tokens": int(step_len[b, i]),
                           "text": tokenizer.decode(steps[b, i, : int(step_len[b, i])].tolist(), skip_special_tokens=True),
                           "visits": float(tree.visits[b, i]), "value": float(tree.q()[b, i]), "prior": float(tree.prior[b, i]),
                           "terminal": bool(tree.terminal[b, i]),
                           "answer": records[own[i]].answer if own[i] >= 0 else None} for i in range(n)]}
    first = []
    for k in tree.children[b, ROOT].tolist():
        if k != UNEXPANDED:
            ids = steps[b, k, : int(step_len[b, k])].tolist()
            first.append({"node": k, "tokens": ids, "text": tokenizer.decode(ids, skip_special_tokens=True),
                          "visits": float(tree.visits[b, k]), "value": float(tree.q()[b, k]), "prior": float(tree.prior[b, k]),
                          "terminal": bool(tree.terminal[b, k])})
    n = int(tree.num_nodes[b])
    return SearchResult(text=text, answer=parse_answer(text) if text else None, first_steps=first, records=records,
                        step_len=step_len[b, :n].tolist(), parent=tree.parent[b, :n].tolist(),
                        answer_tokens=chosen.tokens if chosen else 0,
                        finish=("eos" if chosen.ids[-1] in eos else "stop") if chosen and chosen.finished else "length",
                        generated_tokens=gen, forward_tokens=fwd,
                        nodes=int(tree.num_nodes[b]), tree=dump, root_choice=first_node)
