"""grpo: rewards, evaluation and (issue 3) the GRPO trainer."""
from .rewards import (
    RewardSet,
    correctness_reward_func,
    int_reward_func,
    soft_format_reward_func,
    strict_format_reward_func,
    xmlcount_reward_func,
)

__all__ = [
    "RewardSet", "correctness_reward_func", "int_reward_func", "strict_format_reward_func",
    "soft_format_reward_func", "xmlcount_reward_func",
]
