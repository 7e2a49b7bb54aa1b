"""One network, two questions: is it pneumonia, and if so, bacterial or viral?

A model answers the second question when its checkpoint carries a `SubtypeQuestion`
(ml.core); its raw outputs are then read through one of two heads:

    two_heads    logits (B, 3) = [normal, pneumonia | bacterial-vs-viral]: the first two are
                 exactly a binary model's logits, the third is the log-odds of bacterial given
                 pneumonia (a second linear head on the same features)
    three_class  logits (B, 3) = [normal, bacterial, viral] of one softmax: P(pneumonia) is
                 p_bacterial + p_viral, P(bacterial | pneumonia) = p_bacterial / (that sum)

Both are trained with the same loss (`QuestionsLoss`): the pneumonia question's weighted
cross-entropy plus the subtype's on the pneumonia images whose subtype is known. For the
three-class head that sum is exactly the three-class cross-entropy, since
-log p_bacterial = -log P(pneumonia) - log P(bacterial | pneumonia). The heads differ only in
how the network's outputs map to the two answers; ml/README.md "Bacterial or viral" measures
both against a binary model of the same recipe.

    from ml.heads import answers
    p_pneumonia, p_bacterial = answers(model(x), subtype=meta.subtype)  # (B,), (B,) or None
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ml.core import HEAD_OUTPUTS, SubtypeQuestion

HEADS = tuple(HEAD_OUTPUTS)  # the subtype heads; "binary" is a model without one
NO_SUBTYPE = -1  # subtype target of a normal image, or of pneumonia of unknown subtype


def n_outputs(head: str | None) -> int:
    """How many outputs the network's last layer has for `head` (None: a binary model)."""
    if head is None:
        return 2
    if head not in HEAD_OUTPUTS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    return HEAD_OUTPUTS[head]


def pneumonia_logits(logits: torch.Tensor, head: str | None) -> torch.Tensor:
    """(B, C) raw outputs -> (B, 2) logits of [NORMAL, PNEUMONIA], whose softmax is the
    pneumonia answer; a binary model's outputs as they are."""
    if head is None:
        return logits
    if head == "two_heads":
        return logits[:, :2]
    return torch.stack([logits[:, 0], torch.logsumexp(logits[:, 1:3], dim=1)], dim=1)


def subtype_logit(logits: torch.Tensor, head: str) -> torch.Tensor:
    """(B, C) raw outputs -> (B,) log-odds of bacterial given pneumonia."""
    if head == "two_heads":
        return logits[:, 2]
    if head == "three_class":
        return logits[:, 1] - logits[:, 2]
    raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def answers(
    logits: torch.Tensor, *, subtype: SubtypeQuestion | None, positive: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(P(positive class) (B,), P(bacterial | pneumonia) (B,) or None) from raw outputs;
    ml.core.answer_probabilities is the numpy twin."""
    logits = logits.float()
    head = None if subtype is None else subtype.head
    p = pneumonia_logits(logits, head).softmax(dim=1)[:, positive]
    if subtype is None:
        return p, None
    return p, torch.sigmoid(subtype_logit(logits, head))


def cam_score(
    question: str, *, subtype: SubtypeQuestion | None, positive: int = 1
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-image score Grad-CAM differentiates for `question`: "pneumonia" gives the
    log-odds of the positive class (z_pos - z_neg), "subtype" the log-odds of bacterial given
    pneumonia; a map then shows evidence for one answer against the other."""
    head = None if subtype is None else subtype.head
    if question == "pneumonia":

        def pneumonia(logits: torch.Tensor) -> torch.Tensor:
            z = pneumonia_logits(logits.float(), head)  # (B, 2)
            return z[:, positive] - z[:, 1 - positive]

        return pneumonia
    if question == "subtype":
        if subtype is None:
            raise ValueError("this model does not answer the subtype question")
        return lambda logits: subtype_logit(logits.float(), subtype.head)
    raise ValueError(f"question must be 'pneumonia' or 'subtype', got {question!r}")


class QuestionsLoss(nn.Module):
    """Class-weighted cross-entropy of the pneumonia question, plus, for a subtype head, the
    class-weighted cross-entropy of bacterial vs viral on the images whose subtype is known
    (targets 1 bacterial, 0 viral, NO_SUBTYPE otherwise), with optional per-image weights
    and label smoothing on both.

    Both sums are divided by the batch's summed pneumonia class weights, as
    nn.CrossEntropyLoss(weight=...) normalises: an image of weight 0.5 counts half, and with
    unit class weights the three-class head's loss is exactly its softmax cross-entropy.
    `label_smoothing` (0.1 in the robust recipe) moves each target that much of the way to
    uniform, so the network is never pushed to probabilities of exactly 0 or 1.
    """

    def __init__(
        self,
        class_weights: torch.Tensor,
        label_smoothing: float = 0.0,
        *,
        head: str | None = None,
        subtype_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be within [0, 1), got {label_smoothing}")
        n_outputs(head)  # validates
        if head is not None and subtype_weights is None:
            raise ValueError("a subtype head needs subtype_weights (viral, bacterial)")
        self.register_buffer("class_weights", class_weights.float())
        self.register_buffer(
            "subtype_weights", torch.ones(2) if subtype_weights is None else subtype_weights.float()
        )
        self.label_smoothing = label_smoothing
        self.head = head

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | None = None,
        subtypes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = logits.float()  # (B, C)
        image_weights = torch.ones_like(targets, dtype=torch.float) if weights is None else weights
        image_weights = image_weights.float()  # (B,)
        nll = nn.functional.cross_entropy(
            pneumonia_logits(logits, self.head),
            targets,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )  # (B,)
        w = self.class_weights[targets]  # (B,)
        total = (w * image_weights * nll).sum()
        if self.head is not None and subtypes is not None:
            known = subtypes != NO_SUBTYPE  # (B,)
            if known.any():
                s = subtypes[known].float()  # (K,) 1 bacterial, 0 viral
                s = s * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
                subtype_nll = nn.functional.binary_cross_entropy_with_logits(
                    subtype_logit(logits, self.head)[known], s, reduction="none"
                )  # (K,)
                ws = self.subtype_weights[subtypes[known]]  # (K,)
                total = total + (ws * image_weights[known] * subtype_nll).sum()
        return total / w.sum()
