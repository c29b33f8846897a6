"""Distillation options of joint training (METHOD.md §4 "KD", §7 Any-Precision).

- PS-KD (progressive self-distillation, the reference code's "✓ KD" rows): the target of sample i is
  ``(1 − α_t) · onehot(y_i) + α_t · P[i]`` with ``α_t = α_max · (epoch + 1) / E``; after the top-bit pass
  ``P[i]`` is overwritten with that pass's softmax, so lower bits distil from the current top-bit prediction.
  There is no separate teacher.
- Recursive KD (Any-Precision DNN, Yu et al., AAAI 2021): the highest bit-width learns the hard label; every
  lower one learns only the softmax (temperature 1, no gradient) of the next higher bit-width's logits on the
  same batch, by cross-entropy, no hard label. What its authors do (``SHI-Labs/Any-Precision-DNNs``,
  ``train.py`` ``forward``, loss ``models/losses.py`` ``CrossEntropyLossSoft``): top bit-width first with
  ``CrossEntropyLoss``, then high → low, each pass's loss backpropagated into the summed gradient and one
  optimizer step per batch — in the lab that is ``kd="recursive"`` with ``algorithm="a1"``. (Until issue 12
  the lab mixed the hard label in at 50 %, which the authors do not.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KD_MODES = ("none", "pskd", "recursive")


def soft_cross_entropy(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a probability target, averaged over the batch."""
    return torch.sum(-target_probabilities * F.log_softmax(logits, dim=1), dim=1).mean()


class ProgressiveSelfDistillation:
    """PS-KD memory ``P`` of the last top-bit prediction of every training sample."""

    def __init__(self, num_samples: int, num_classes: int, epochs: int, alpha_max: float = 0.7):
        self.predictions = torch.zeros(num_samples, num_classes)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self.epochs = epochs
        self.alpha_max = alpha_max

    def alpha(self, epoch: int) -> float:
        """``α_t = α_max · (epoch + 1) / E``."""
        return self.alpha_max * (epoch + 1) / self.epochs

    def targets(self, indices: torch.Tensor, labels: torch.Tensor, num_classes: int, epoch: int) -> torch.Tensor:
        """Soft targets for a batch; a sample never predicted yet keeps its one-hot label."""
        onehot = F.one_hot(labels, num_classes).float()
        memory = self.predictions[indices.cpu()].to(onehot.device)
        seen = self.seen[indices.cpu()].to(onehot.device).unsqueeze(1)
        alpha = self.alpha(epoch)
        return torch.where(seen, (1 - alpha) * onehot + alpha * memory, onehot)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, logits: torch.Tensor) -> None:
        """Store the top-bit softmax of this batch (called after the top-bit pass)."""
        self.predictions[indices.cpu()] = F.softmax(logits.detach().float(), dim=1).cpu()
        self.seen[indices.cpu()] = True

    def state_dict(self) -> dict:
        return {"predictions": self.predictions, "seen": self.seen, "epochs": self.epochs, "alpha_max": self.alpha_max}

    def load_state_dict(self, state: dict) -> None:
        self.predictions, self.seen = state["predictions"], state["seen"]
        self.epochs, self.alpha_max = state["epochs"], state["alpha_max"]


def recursive_targets(higher_logits: torch.Tensor) -> torch.Tensor:
    """Any-Precision recursive KD target of a bit-width: the next higher bit-width's softmax, detached (T = 1)."""
    return F.softmax(higher_logits.detach().float(), dim=1)
