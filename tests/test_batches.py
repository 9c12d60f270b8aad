"""Which prompts each step trains on (grpo.batches): every epoch visits each problem once, no batch holds a
problem twice, and the order is a pure function of the step (what exact resume relies on)."""
import pytest
import torch

from grpo.batches import EpochOrder


@pytest.mark.parametrize("n,B", [(10, 4), (7, 3), (16, 4), (9, 9), (5, 2)])
def test_epochs_visit_each_problem_once_and_no_batch_repeats_one(n, B):
    for seed in range(40):
        order = EpochOrder(n, B, seed)
        steps = [order.step(s) for s in range(6 * n // B + 3)]
        flat = [i for b in steps for i in b]
        for e in range(len(flat) // n):
            assert sorted(flat[e * n : (e + 1) * n]) == list(range(n)), (seed, e)
        for s, b in enumerate(steps):
            assert len(set(b)) == B, (seed, s, b)


def test_two_independent_permutations_would_repeat_problems_at_the_boundary():
    """What the rearrangement prevents: with seed+epoch permutations alone, n=10, B=4 (step 2 straddles epochs 0
    and 1) repeats a problem for many seeds; EpochOrder's step 2, the same batch, never does."""
    def plain(seed, k):
        epoch, i = divmod(k, 10)
        return int(torch.randperm(10, generator=torch.Generator().manual_seed(seed + epoch))[i])

    repeats = sum(len({plain(seed, k) for k in range(8, 12)}) < 4 for seed in range(40))
    assert repeats > 5
    assert sum(len(set(EpochOrder(10, 4, seed).step(2))) < 4 for seed in range(40)) == 0


def test_the_order_is_a_pure_function_of_the_step():
    """A resumed run asks for step 40 first; it gets what a run that walked steps 0..39 got."""
    walked = EpochOrder(10, 4, seed=3)
    seq = [walked.step(s) for s in range(50)]
    for s in (40, 17, 2, 49):
        assert EpochOrder(10, 4, seed=3).step(s) == seq[s]


def test_epochs_that_begin_a_batch_are_the_plain_seeded_permutation():
    """Unchanged where no batch straddles (n a multiple of B): epoch e is randperm seeded by seed + e."""
    order = EpochOrder(8, 4, seed=5)
    for e in range(3):
        want = torch.randperm(8, generator=torch.Generator().manual_seed(5 + e)).tolist()
        assert order.step(2 * e) + order.step(2 * e + 1) == want


def test_a_batch_larger_than_the_data_repeats_problems_rather_than_failing():
    order = EpochOrder(3, 5, seed=0)
    flat = [i for s in range(3) for i in order.step(s)]
    assert all(sorted(flat[e * 3 : e * 3 + 3]) == [0, 1, 2] for e in range(5))


@pytest.mark.parametrize("n,B", [(10, 4), (7, 3), (5, 2), (10, 6)])
def test_the_boundary_swap_follows_the_documented_rule(n, B):
    """The rule written out as a loop: epoch e's head (the straddling batch's B - a positions, a = e*n mod B) gives
    each problem that the batch already took from epoch e-1's tail to the first later position (from B - a on) whose
    problem is not in that tail, in order; nothing else moves. Every other order would also avoid repeats, but a run
    resumed under another order would train on other prompts."""
    for seed in range(20):
        order = EpochOrder(n, B, seed)
        for e in range(1, 6):
            a = (e * n) % B
            if a == 0:
                continue
            prev = order.permutation(e - 1).tolist()
            want = torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)).tolist()
            tail, head = set(prev[n - a :]), B - a
            for i in range(head):
                if want[i] in tail:
                    j = next(j for j in range(head, n) if want[j] not in tail)
                    want[i], want[j] = want[j], want[i]
            assert order.permutation(e).tolist() == want, (seed, e)
