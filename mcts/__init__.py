"""mcts: batched tree search over reasoning steps. The tree is tensors; select / expand / backup work on all trees at once."""
from .tree import NO_PARENT, ROOT, UNEXPANDED, Tree, backup, expand, puct_scores, select

__all__ = ["Tree", "select", "expand", "backup", "puct_scores", "ROOT", "NO_PARENT", "UNEXPANDED"]
