"""mcts: batched tree search over reasoning steps. The tree is tensors; select / expand / backup work on all trees at once."""
from .tree import NO_PARENT, ROOT, UNEXPANDED, Tree, backup, expand, puct_scores, revalue, select

__all__ = ["Tree", "select", "expand", "backup", "revalue", "puct_scores", "ROOT", "NO_PARENT", "UNEXPANDED",
           "SearchConfig", "search", "mcts_rollout", "lookahead_decode"]


def __getattr__(name):  # the LLM layer imports model_io and data: load it only when asked for
    if name == "SearchConfig":
        from .interface import SearchConfig

        return SearchConfig
    if name == "search":  # the module (mcts.search.search is the function): importing it binds this name to it
        import importlib

        return importlib.import_module(".search", __name__)
    if name in ("mcts_rollout", "lookahead_decode"):
        from . import lookahead

        return getattr(lookahead, name)
    raise AttributeError(name)
