"""Loss functions handed to engine.train_one_epoch: `loss_fn(logits, batch) -> (loss, parts)`.

`parts` holds extra per-batch scalars (tensors, kept on the device) that the loop averages and logs.
Distillation is one of these losses, not a second training loop.
"""

import copy

import torch
import torch.nn.functional as F


class CrossEntropy:
    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = label_smoothing

    def set_epoch(self, epoch, epochs):
        pass

    def __call__(self, logits, batch):
        return F.cross_entropy(logits.float(), batch.y, label_smoothing=self.label_smoothing), {}


def distillation_loss(student_logits, teacher_logits, labels, temperature, alpha, label_smoothing=0.0):
    """Hinton et al. 2015: (1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)).

    The T^2 factor keeps the soft term's gradient scale independent of T. Returns (loss, hard, soft).
    """
    s, t = student_logits.float(), teacher_logits.float()
    hard = F.cross_entropy(s, labels, label_smoothing=label_smoothing)
    soft = (
        F.kl_div(
            F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), log_target=True, reduction="batchmean"
        )
        * temperature**2
    )
    return (1 - alpha) * hard + alpha * soft, hard, soft


def held_in_bf16(teacher):
    """A bf16 copy of a frozen teacher, for running it under bf16 autocast at every step.

    Autocast keeps no casts between steps: with fp32 weights it would convert all of them to bf16 in every
    step, which on the CPU costs most of what the bf16 forward saves (bench/distill_overhead.py).
    """
    return copy.deepcopy(teacher).to(torch.bfloat16).eval().requires_grad_(False)


class DistillLoss:
    """Teacher logits come from `teacher` on the same (augmented) batch, or from `cached_logits[batch.idx]`.

    alpha and T move linearly from their start to their end values over the epochs.
    """

    def __init__(
        self,
        temperature,
        alpha,
        temperature_end=None,
        alpha_end=None,
        label_smoothing=0.0,
        teacher=None,
        cached_logits=None,
        autocast=None,
    ):
        self.t0, self.a0 = temperature, alpha
        self.t1 = temperature if temperature_end is None else temperature_end
        self.a1 = alpha if alpha_end is None else alpha_end
        self.temperature, self.alpha = temperature, alpha
        self.label_smoothing, self.teacher, self.cached, self.autocast = (
            label_smoothing,
            teacher,
            cached_logits,
            autocast,
        )

    def set_epoch(self, epoch, epochs):
        f = epoch / max(1, epochs - 1)
        self.temperature = self.t0 + (self.t1 - self.t0) * f
        self.alpha = self.a0 + (self.a1 - self.a0) * f

    def teacher_logits(self, batch):
        if self.cached is not None:
            return self.cached[batch.idx]
        with torch.no_grad(), self.autocast():
            return self.teacher(batch.x)

    def __call__(self, logits, batch):
        loss, hard, soft = distillation_loss(
            logits, self.teacher_logits(batch), batch.y, self.temperature, self.alpha, self.label_smoothing
        )
        return loss, {"hard_loss": hard.detach(), "soft_loss": soft.detach()}
