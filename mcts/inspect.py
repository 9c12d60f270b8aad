"""Text rendering and statistics of dumped search trees (the lines of trees.jsonl that `run.py eval --search mcts` writes),
and the `run.py inspect-tree` command that prints them."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grpo.config import check_ranges


TREE_KEYS = {"index", "question", "gold", "answer", "nodes"}
NODE_KEYS = {"id", "parent", "text", "visits", "value", "prior", "terminal", "answer"}
# the types `run.py eval` writes: render and tree_stats format and compare them, so another type is a damaged file
NUMBER, STR_OR_NULL = (int, float), (str, type(None))
TREE_TYPES = {"index": int, "question": str, "gold": str, "answer": STR_OR_NULL}
NODE_TYPES = {"id": int, "parent": int, "text": str, "visits": NUMBER, "value": NUMBER, "prior": NUMBER,
              "terminal": bool, "answer": STR_OR_NULL}
TYPE_NAMES = {int: "an integer", str: "a string", NUMBER: "a number", bool: "true or false", STR_OR_NULL: "a string or null"}
EVAL = "`run.py eval --search mcts --mcts-when tree`"  # what writes trees.jsonl


def load_trees(path: str | Path) -> list[dict]:
    """The trees of a trees.jsonl (or of the one in an eval output directory). In a trees.jsonl.partial (an
    interrupted eval's) a last line cut off by the interruption is skipped, with a note."""
    trees, note = trees_and_note(path)
    if note:
        print(note, file=sys.stderr)
    return trees


def trees_and_note(path: str | Path) -> tuple[list[dict], str]:
    """load_trees' trees, and its note on a skipped cut-off line ("" if none) for the caller to print once no
    error can follow it (an error is the one line said)."""
    p = tree_file(path)
    lines = read_lines(p)
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    out, cut = [], 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            tree = json.loads(line)
        except (ValueError, RecursionError):  # (RecursionError: nested past Python's limit)
            if n == last and p.name.endswith(".partial"):  # the eval stopped part-way through writing this tree
                cut = n
                break
            raise ValueError(f"{p}:{n}: not a JSON tree line: pass the trees.jsonl that {EVAL} writes") from None
        check_tree(tree, f"{p}:{n}")
        out.append(tree)
    resume = f"`run.py eval --resume --out-dir {p.parent}` finishes the eval"
    if not out:
        raise ValueError(f"{p} holds no whole tree yet (line {cut} was cut off): {resume}" if cut else
                         f"{p} holds no trees (an empty file): {EVAL} writes them")
    return out, f"note: {p}:{cut}: skipped, cut off when the eval was interrupted; {resume}" if cut else ""


def tree_file(path: str | Path) -> Path:
    """The file `path` names: itself, or the trees.jsonl in an eval's output directory."""
    if not str(path).strip():  # Path("") would be ".", the working directory, which nobody meant
        raise ValueError(f"inspect-tree's FILE is empty: pass the trees.jsonl that {EVAL} writes, or its --out-dir")
    p = Path(path)
    if p.is_dir():
        if not (p / "trees.jsonl").is_file() and (p / "trees.jsonl.partial").is_file():  # an interrupted eval's
            raise ValueError(f"{p} holds an interrupted eval (trees.jsonl.partial): `run.py eval --resume --out-dir {p}` "
                             f"finishes it, or pass {p / 'trees.jsonl.partial'} for the trees so far")
        if not (p / "trees.jsonl").exists():  # (one that is there but no file: said below)
            raise ValueError(f"{p} has no trees.jsonl: `run.py eval --search mcts --mcts-when tree --out-dir {p}` writes one")
        p = p / "trees.jsonl"
    if p.exists() and not p.is_file():  # /dev/null, a pipe: "not found" would send the user looking for it
        raise ValueError(f"{p} is not a regular file: pass the trees.jsonl that {EVAL} writes")
    if not p.is_file():
        raise ValueError(f"tree file {p} not found: {EVAL} writes OUT_DIR/trees.jsonl")
    return p


def read_lines(p: Path) -> list[str]:
    try:
        return p.read_text(encoding="utf-8-sig").splitlines()  # (a BOM, as an editor may save one, is no content)
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not a text file: pass the trees.jsonl that {EVAL} writes") from None
    except OSError as e:  # unreadable (permissions): run.py would print a traceback for an OSError
        raise ValueError(f"cannot read {p} ({e.strerror}): pass a trees.jsonl you may read") from None


def check_tree(tree, where: str) -> None:
    """A line's tree has the fields render and tree_stats use, of their types, and its nodes form one tree."""
    fault = tree_fault(tree)
    if fault:
        fix = f"pass the trees.jsonl that {EVAL} writes" if fault.startswith("not") else f"run {EVAL} again for an undamaged file"
        raise ValueError(f"{where}: {fault}: {fix}")


def tree_fault(tree) -> str | None:
    """Why a parsed trees.jsonl line is not a search tree as eval writes it, or None (also eval --resume's check)."""
    if not (isinstance(tree, dict) and TREE_KEYS <= tree.keys() and isinstance(tree["nodes"], list) and tree["nodes"]
            and all(isinstance(x, dict) and NODE_KEYS <= x.keys() for x in tree["nodes"])):
        return (f"not a search tree (it needs {', '.join(sorted(TREE_KEYS))} and nodes with "
                f"{', '.join(sorted(NODE_KEYS))})")
    what = damage(tree)
    return f"tree damaged ({what})" if what else None


def damage(tree: dict) -> str | None:
    """What is wrong with a tree that has every field, or None."""
    for i, d in enumerate([tree, *tree["nodes"]]):
        for k, t in (NODE_TYPES if i else TREE_TYPES).items():
            # True is an int to Python, but no id, count or value is ever true/false
            if not isinstance(d[k], t) or (isinstance(d[k], bool) and t is not bool):
                return f"{f'nodes[{i - 1}].' if i else 'its '}{k} is {json.dumps(d[k])[:30]}, not {TYPE_NAMES[t]}"
    return misfit(tree["nodes"])


def misfit(nodes: list[dict]) -> str | None:
    """Why the nodes do not form a tree, or None. As written, the root comes first and every node after its
    parent, which makes parents that are missing, the node itself or a loop show here and not in render."""
    if nodes[0]["id"] != 0 or nodes[0]["parent"] != -1:
        return f"nodes[0] is not the root: its id is {nodes[0]['id']} and its parent {nodes[0]['parent']}, not 0 and -1"
    seen = {0}
    for i, n in enumerate(nodes[1:], 1):
        if n["parent"] not in seen:
            return f"nodes[{i}].parent is {n['parent']}, not the id of an earlier node"
        if n["id"] in seen:
            return f"nodes[{i}].id {n['id']} repeats an earlier node's"
        seen.add(n["id"])
    return None


def render(tree: dict, max_depth: int = 0, width: int = 70) -> str:
    """An indented text tree: one line per node with visits N, mean value Q, prior P, its step text and the
    answer of the rollout that created it."""
    nodes = {n["id"]: n for n in tree["nodes"]}
    kids: dict[int, list[int]] = {}
    for n in tree["nodes"]:
        kids.setdefault(n["parent"], []).append(n["id"])
    lines = [f"Q{tree['index']}: {tree['question'][:width]}", f"gold {tree['gold']}, search answer {tree['answer']}"]

    todo = [(0, "", True, 0)]  # (node, prefix, last child, depth): depth first by a stack, not recursion, which
    while todo:                # stopped a tree ~1,000 levels deep (one-token steps, many simulations) at Python's limit
        i, prefix, last, depth = todo.pop()
        n = nodes[i]
        text = n["text"].replace("\n", "\\n")
        text = text if len(text) <= width else text[: width - 3] + "..."
        head = "" if i == 0 else prefix + ("`- " if last else "|- ")
        tail = "root" if i == 0 else f'P={n["prior"]:.2f} "{text}"' + (f" -> {n['answer']}" if n["answer"] else "") + (" [end]" if n["terminal"] else "")
        lines.append(f"{head}[{i}] N={n['visits']:.0f} Q={n['value']:.3f} {tail}")
        if max_depth and depth >= max_depth:
            continue
        children = kids.get(i, [])
        below = prefix + ("" if i == 0 else ("   " if last else "|  "))
        todo.extend((c, below, j == len(children) - 1, depth + 1) for j, c in reversed(list(enumerate(children))))
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
    trees, note = trees_and_note(cfg.file)
    if not 0 <= cfg.index < len(trees):
        raise ValueError(f"--index {cfg.index} out of range: {cfg.file} holds {len(trees)} trees (0..{len(trees) - 1})")
    if note:
        print(note, file=sys.stderr)
    print(render(trees[cfg.index], cfg.max_depth))
    print(json.dumps(tree_stats(trees[cfg.index])))
