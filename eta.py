"""Time-left estimates weighted by what the work still to do costs. A run's remaining epochs cost what its own epochs
measured; the runs after it (a study's children, exercise2's later phases) cost in proportion to
parameters x epochs x training examples, at the seconds per unit this run measured. A network run forward only
beside the one trained (the teacher of a distilled student) counts a third of its parameters (forward only, of a
forward and backward pass).

    eta.later(costs_of_the_runs_still_to_come, workers)     # set by a study or exercise2 before each run
    line = eta.left(seconds_left_in_this_run, seconds_per_unit)
"""

import functools

import torch

from models import build_model
from splits import check_sizes

_later = {"cost": 0.0, "workers": 1}  # what this process (one of `workers`) will still train after the run in progress


def later(cost, workers=1):
    """The cost of the runs after the one about to start, shared among `workers` processes."""
    _later.update(cost=float(cost), workers=max(1, workers))


@functools.lru_cache(maxsize=64)
def params(model_cfg, in_shape, num_classes):
    """Trainable parameters of a model, built on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(model_cfg, in_shape, num_classes).parameters() if p.requires_grad)


def run_cost(run_cfg, ds, forward_params=0):
    """parameters x epochs x training examples of one run (a fold's own training part); forward_params: a network
    run forward only beside it."""
    n = check_sizes(ds, run_cfg.data, run_cfg.train.seed, run_cfg.data.k_folds)["train"]
    n = n[run_cfg.data.fold - 1] if isinstance(n, list) else n
    trained = params(run_cfg.model, tuple(ds.in_shape), ds.num_classes)
    return float(trained + forward_params / 3) * run_cfg.train.epochs * n


def estimate(done_seconds, done_cost, pending_cost, workers=1):
    """Seconds the pending work will take at the rate the finished work measured (0 when nothing is measured)."""
    return done_seconds / done_cost * pending_cost / max(1, workers) if done_cost > 0 else 0.0


def left(run_seconds, seconds_per_unit):
    """ " | about 3 min left" for a run alone; " | about 3 min left here, 20 min in all" when runs follow it."""
    more = seconds_per_unit * _later["cost"] / _later["workers"]
    whole = f", {duration(run_seconds + more)} in all" if more > 0 else ""
    return f" | about {duration(run_seconds)} left{' here' * bool(whole)}{whole}"


def duration(seconds):
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )
