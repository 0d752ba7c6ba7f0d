"""Out-of-distribution detection with any trainer's classifier: per-image scores and detection metrics.

Every score is higher for images the model takes as in-distribution (ID):

- `msp`: maximum softmax probability of the logits (CLIP's logit scale included; Hendrycks & Gimpel).
- `mcm`: maximum concept matching (Ming et al., NeurIPS 2022): the maximum of softmax(cosine / T).
- `max_logit`: the largest logit (logit scale times the largest cosine similarity).
- `energy`: the negative free energy, logsumexp of the logits (Liu et al., NeurIPS 2020).
- With negative prompts ("a photo of no ..."), CLIPN's scores (Wang et al., ICCV 2023), from the per-class
  probability of "yes" against "no", p_yes_c = softmax(s+_c, s-_c)[0] = sigmoid(s+_c - s-_c):
  `ctw` (competing-to-win): p_yes of the predicted class; `atd` (agreeing-to-differ): sum_c p_c * p_yes_c,
  p = softmax(s+), one minus CLIPN's OOD probability.

Metrics treat ID as the positive class: AUROC, FPR at 95 % TPR and AUPR (average precision), ties counted
as scikit-learn counts them.
"""
from collections import namedtuple
from contextlib import nullcontext

import numpy as np
import torch

SCORES = ("msp", "mcm", "max_logit", "energy")
NEGATIVE_SCORES = ("ctw", "atd")  # only for models with negative prompts
TPR_LEVEL = 0.95
DetectionMetrics = namedtuple("DetectionMetrics", "auroc fpr95 aupr")  # fractions in [0, 1]
# scores: {name: (N,) float64}; labels and predictions (N,) int64 (labels -1 for an OOD set).
ScoredSet = namedtuple("ScoredSet", "scores labels predictions")


def ood_scores(logits, logit_scale, logits_neg=None, temperature=1.0):
    """{name: (B,)} scores of logits (B, C) = logit_scale * cosine; CLIPN's two only when `logits_neg` is given."""
    logits = logits.float()
    prob = logits.softmax(dim=1)
    scores = {
        "msp": prob.max(dim=1).values,
        "mcm": (logits / (float(logit_scale) * temperature)).softmax(dim=1).max(dim=1).values,
        "max_logit": logits.max(dim=1).values,
        "energy": logits.logsumexp(dim=1),
    }
    if logits_neg is not None:
        p_yes = torch.sigmoid(logits - logits_neg.float())
        scores["ctw"] = p_yes.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)
        scores["atd"] = (prob * p_yes).sum(dim=1)
    return scores


def roc_points(id_values, ood_values):
    """(tpr, fpr, precision) at every distinct threshold, highest first; tpr and fpr start at 0."""
    id_values, ood_values = np.asarray(id_values, np.float64), np.asarray(ood_values, np.float64)
    if id_values.size == 0 or ood_values.size == 0:
        raise ValueError(f"detection metrics need ID and OOD scores; got {id_values.size} ID and "
                         f"{ood_values.size} OOD images")
    scores = np.concatenate([id_values, ood_values])
    positive = np.concatenate([np.ones(id_values.size), np.zeros(ood_values.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, positive = scores[order], positive[order]
    last = np.append(np.flatnonzero(np.diff(scores)), scores.size - 1)  # the last image of each distinct score
    true_pos = np.cumsum(positive)[last]
    false_pos = last + 1 - true_pos
    tpr = np.concatenate([[0.0], true_pos / id_values.size])
    fpr = np.concatenate([[0.0], false_pos / ood_values.size])
    return tpr, fpr, true_pos / (last + 1)


def detection_metrics(id_values, ood_values, tpr_level=TPR_LEVEL):
    """DetectionMetrics of ID (positive) against OOD scores: AUROC (trapezoids, a tie counts half), the FPR at
    the highest threshold whose TPR reaches `tpr_level`, and AUPR as average precision sum_k (R_k - R_k-1) P_k."""
    tpr, fpr, precision = roc_points(id_values, ood_values)
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    fpr_at_level = float(fpr[np.argmax(tpr >= tpr_level)])
    aupr = float(np.sum(np.diff(tpr) * precision))
    return DetectionMetrics(auroc, fpr_at_level, aupr)


def logit_scale_of(trainer):
    """exp(logit scale) the trainer's logits carry: its model's, else its CLIP's."""
    scale = getattr(getattr(trainer, "model", None), "logit_scale", None)
    if scale is None:
        scale = trainer.clip_model.logit_scale
    return float(scale.exp())


def negative_prompts(trainer):
    """How the trainer's negative prompts are scored: "pair" (this project's models, `encode_text_pair`),
    "context" (a model of other code with a second context, `negative_context`), or None (it has none)."""
    model = getattr(trainer, "model", None)
    if getattr(model, "prompt_learner_neg", None) is not None and hasattr(model, "encode_text_pair"):
        return "pair"
    if getattr(trainer, "negative_context", None) is not None:
        return "context"
    return None


def image_logits(trainer, images, kind, text_pair=None):
    """(positive logits (B, C), negative logits (B, C) or None) of test images."""
    model = getattr(trainer, "model", None)  # zero-shot CLIP has none
    if kind == "pair":
        features = model.encode_image(images)
        return model.logits(features, text_pair[0]), model.logits(features, text_pair[1])
    logits = trainer.model_inference(images)
    if kind != "context":
        return logits, None
    from .ril_supervision import swapped_context

    with swapped_context(model.prompt_learner, trainer.negative_context.ctx):
        return logits, trainer.model_inference(images)


@torch.no_grad()
def score_loader(trainer, loader, temperature=1.0):
    """ScoredSet of every image of a Dassl test loader, in its order, with the trainer in eval mode."""
    trainer.set_model_mode("eval")
    kind, scale = negative_prompts(trainer), logit_scale_of(trainer)
    model = getattr(trainer, "model", None)
    frozen = model.frozen_text_features() if hasattr(model, "frozen_text_features") else nullcontext()
    parts = {"labels": [], "predictions": []}
    with frozen:
        text_pair = model.encode_text_pair() if kind == "pair" else None
        for batch in loader:
            images, labels = trainer.parse_batch_test(batch)
            logits, logits_neg = image_logits(trainer, images, kind, text_pair)
            for name, values in ood_scores(logits, scale, logits_neg, temperature).items():
                parts.setdefault(name, []).append(values.double().cpu())
            parts["labels"].append(labels.cpu())
            parts["predictions"].append(logits.argmax(dim=1).cpu())
    arrays = {name: torch.cat(values).numpy() for name, values in parts.items()}
    labels, predictions = arrays.pop("labels"), arrays.pop("predictions")
    return ScoredSet(arrays, labels, predictions)


def set_metrics(id_set, ood_set):
    """{score: DetectionMetrics} of every score both sets have."""
    return {name: detection_metrics(id_set.scores[name], ood_set.scores[name])
            for name in id_set.scores if name in ood_set.scores}


def save_scores(path, id_set, ood_sets):
    """One .npz: "id.<score>", "id.label", "id.prediction" and "<set>.<score>" for every OOD set."""
    arrays = {f"id.{name}": values for name, values in id_set.scores.items()}
    arrays.update({"id.label": id_set.labels, "id.prediction": id_set.predictions})
    for set_name, scored in ood_sets.items():
        arrays.update({f"{set_name}.{name}": values for name, values in scored.scores.items()})
    np.savez(path, **arrays)


def metric_lines(id_set, ood_sets):
    """The log lines scripts/parse_results.py --protocol ood reads: ID accuracy, then one line per set and score."""
    accuracy = 100.0 * float(np.mean(id_set.predictions == id_set.labels))
    lines = [f"* ood id accuracy: {accuracy:.2f}% ({id_set.labels.size} images)"]
    for set_name, scored in ood_sets.items():
        for name, metrics in set_metrics(id_set, scored).items():
            lines.append(f"* ood {set_name} {name}: auroc {100 * metrics.auroc:.2f}% fpr95 "
                         f"{100 * metrics.fpr95:.2f}% aupr {100 * metrics.aupr:.2f}% ({scored.labels.size} images)")
    return lines
