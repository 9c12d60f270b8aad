"""Text rendering and statistics of dumped search trees (the lines of trees.jsonl that `run.py eval --search mcts` writes),
and the `run.py inspect-tree` command that prints them."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from grpo.config import check_ranges


TREE_KEYS = {"index", "question", "gold", "answer", "nodes"}
NODE_KEYS = {"id", "parent", "text", "visits", "value", "prior", "terminal", "answer"}


def load_trees(path: str | Path) -> list[dict]:
    """The trees of a trees.jsonl (or of the one in an eval output directory)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "trees.jsonl").is_file() and (p / "trees.jsonl.partial").is_file():  # an interrupted eval's
            raise ValueError(f"{p} holds an interrupted eval (trees.jsonl.partial): `run.py eval --resume --out-dir {p}` "
                             f"finishes it, or pass {p / 'trees.jsonl.partial'} for the trees so far")
        if not (p / "trees.jsonl").is_file():
            raise ValueError(f"{p} has no trees.jsonl: `run.py eval --search mcts --mcts-when tree --out-dir {p}` writes one")
        p = p / "trees.jsonl"
    if not p.is_file():
        raise ValueError(f"tree file {p} not found: `run.py eval --search mcts --mcts-when tree` writes OUT_DIR/trees.jsonl")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not a text file: pass the trees.jsonl that `run.py eval --search mcts` writes") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            tree = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{p}:{n}: not a JSON tree line") from None
        if not (isinstance(tree, dict) and TREE_KEYS <= tree.keys() and isinstance(tree["nodes"], list) and tree["nodes"]
                and all(isinstance(x, dict) and NODE_KEYS <= x.keys() for x in tree["nodes"])):
            raise ValueError(f"{p}:{n}: not a search tree (it needs {', '.join(sorted(TREE_KEYS))} and nodes with "
                             f"{', '.join(sorted(NODE_KEYS))}): pass the trees.jsonl that `run.py eval --search mcts` writes")
        out.append(tree)
    if not out:
        raise ValueError(f"{p} holds no trees (an empty file): `run.py eval --search mcts --mcts-when tree` writes them")
    return out


def render(tree: dict, max_depth: int = 0, width: int = 70) -> str:
    """An indented text tree: one line per node with visits N, mean value Q, prior P, its step text and the
    answer of the rollout that created it."""
    nodes = {n["id"]: n for n in tree["nodes"]}
    kids: dict[int, list[int]] = {}
    for n in tree["nodes"]:
        kids.setdefault(n["parent"], []).append(n["id"])
    lines = [f"Q{tree['index']}: {tree['question'][:width]}", f"gold {tree['gold']}, search answer {tree['answer']}"]

    def walk(i: int, prefix: str, last: bool, depth: int):
        n = nodes[i]
        text = n["text"].replace("\n", "\\n")
        text = text if len(text) <= width else text[: width - 3] + "..."
        head = "" if i == 0 else prefix + ("`- " if last else "|- ")
        tail = "root" if i == 0 else f'P={n["prior"]:.2f} "{text}"' + (f" -> {n['answer']}" if n["answer"] else "") + (" [end]" if n["terminal"] else "")
        lines.append(f"{head}[{i}] N={n['visits']:.0f} Q={n['value']:.3f} {tail}")
        if max_depth and depth >= max_depth:
            return
        children = kids.get(i, [])
        for j, c in enumerate(children):
            walk(c, prefix + ("" if i == 0 else ("   " if last else "|  ")), j == len(children) - 1, depth + 1)

    walk(0, "", True, 0)
    return "\n".join(lines)


def tree_stats(tree: dict) -> dict[str, float]:
    nodes = tree["nodes"]
    depth = {0: 0}
    for n in nodes[1:]:
        depth[n["id"]] = depth[n["parent"]] + 1
    root_kids = [n for n in nodes if n["parent"] == 0]
    return {
        "tree/nodes": len(nodes),
        "tree/max_depth": max(depth.values()),
        "tree/terminal_nodes": sum(n["terminal"] for n in nodes),
        "tree/root_children_visited": sum(n["visits"] > 0 for n in root_kids),
        "tree/root_value": nodes[0]["value"],
        "tree/answered_nodes": sum(n["answer"] is not None for n in nodes),
    }


def log_tree_stats(path: Path, tb_dir: Path) -> None:
    """Each tree's statistics to TensorBoard, one point per question (what `run.py eval --search mcts` logs)."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb_dir)) as tb:
        for i, tree in enumerate(load_trees(path)):
            for k, v in tree_stats(tree).items():
                tb.add_scalar(k, v, i)


@dataclass
class InspectConfig:
    file: str = field(default="", metadata={"positional": True, "help": "a trees.jsonl written by `run.py eval --search mcts`, or the eval's --out-dir holding it"})
    index: int = field(default=0, metadata={"help": "which tree of the file (its line, from 0)"})
    max_depth: int = field(default=0, metadata={"help": "print nodes down to this depth only (0: all)"})

    def __post_init__(self):
        check_ranges(self, at_least_0=("index", "max_depth"))


def print_tree(cfg: InspectConfig) -> None:
    """`run.py inspect-tree`: one tree of the file as text, then its statistics as JSON."""
    trees = load_trees(cfg.file)
    if not 0 <= cfg.index < len(trees):
        raise ValueError(f"--index {cfg.index} out of range: {cfg.file} holds {len(trees)} trees (0..{len(trees) - 1})")
    print(render(trees[cfg.index], cfg.max_depth))
    print(json.dumps(tree_stats(trees[cfg.index])))
