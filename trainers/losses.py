"""FDBPL loss terms (DESIGN.md section 5) as pure functions of tensors.

Shapes: B regions, C classes, D text-feature width. Logits already carry CLIP's logit scale.
Everything is computed in at least fp32, so fp16 or autocast inputs are safe.
"""
import math

import torch
import torch.nn.functional as F

ENTROPY_TOLERANCE = 1e-3  # nats; stored fp32 entropies may overshoot [0, log C] by rounding
PROB_SUM_TOLERANCE = 1e-3  # teacher rows must sum to 1 within this


def _at_least_fp32(tensor):
    """fp16 and bf16 (autocast) are promoted to fp32; fp32 and fp64 are kept."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def information_weight(teacher_entropy, num_classes):
    """w_b = 1 - H_b / log C (DESIGN 5), a teacher property: (B,) -> (B,), no gradient.

    H_b is the entropy of a C-class distribution, so it lies in [0, log C]; the clamp only absorbs
    fp32 rounding. With C = 1 every teacher is certain (H_b = 0), so w_b = 1.
    """
    entropy = _at_least_fp32(teacher_entropy.detach())
    max_entropy = math.log(num_classes)
    if entropy.numel() and (
        not torch.isfinite(entropy).all()
        or entropy.min() < -ENTROPY_TOLERANCE
        or entropy.max() > max_entropy + ENTROPY_TOLERANCE
    ):
        raise ValueError(
            f"teacher_entropy spans [{entropy.min().item():.4g}, {entropy.max().item():.4g}] nats, "
            f"outside [0, log {num_classes} = {max_entropy:.4g}]: the RIL table's entropy was not "
            f"computed over these {num_classes} classes; rebuild the table for this class list"
        )
    if num_classes == 1:
        return torch.ones_like(entropy)
    return (1.0 - entropy / max_entropy).clamp(0.0, 1.0)


def _check_teacher_prob(teacher_prob):
    if not torch.all(teacher_prob >= 0):
        raise ValueError(
            f"teacher_prob has a minimum of {teacher_prob.min().item():.4g}, expected probabilities "
            "(>= 0, 0 outside the teacher's support): densify the RIL soft labels (smooth or renorm) "
            "instead of passing logits"
        )
    row_sums = teacher_prob.sum(dim=1)
    if not torch.all((row_sums - 1.0).abs() <= PROB_SUM_TOLERANCE):
        raise ValueError(
            f"teacher_prob rows sum to values in [{row_sums.min().item():.4g}, "
            f"{row_sums.max().item():.4g}], expected 1: pass probabilities, not logits"
        )


def positive_kd_loss(logits, teacher_prob, info_weight, alpha=0.5):
    """L_pos (DESIGN 5): mean_b w_b [alpha KL(p_t || q) + (1 - alpha) KL(q || p_t)], q = softmax.

    logits (B, C); teacher_prob (B, C), >= 0, rows sum to 1, no gradient; info_weight (B,).
    Where p_t has zeros (renorm densification: its support S is the top-K), KL(q || p_t) would be
    infinite, so both halves use q~ = q / q(S) on S, and -log q(S), the part of the forward KL that
    penalises mass off S (KL(p_t || q) = KL(p_t || q~) - log q(S)), is charged once for both:
    alpha KL(p_t || q~) + (1 - alpha) KL(q~ || p_t) - log q(S). The forward half is unchanged, and
    for a positive p_t (smooth) q(S) = 1, so this is the formula above.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (TRAINER.FDBPL.ALPHA) is {alpha}, expected a value in [0, 1]")
    if logits.shape != teacher_prob.shape or info_weight.shape != logits.shape[:1]:
        raise ValueError(
            f"positive_kd_loss expects logits (B, C), teacher_prob (B, C) and info_weight (B,); "
            f"got {tuple(logits.shape)}, {tuple(teacher_prob.shape)} and {tuple(info_weight.shape)}"
        )
    teacher_prob = _at_least_fp32(teacher_prob.detach())
    _check_teacher_prob(teacher_prob)
    off_support = teacher_prob == 0
    teacher_log_prob = teacher_prob.masked_fill(off_support, 1.0).log()  # 0 off S, where every term has weight 0
    student_log_prob = F.log_softmax(_at_least_fp32(logits), dim=1)
    log_mass = torch.logsumexp(student_log_prob.masked_fill(off_support, -math.inf), dim=1)  # log q(S)
    support_log_prob = student_log_prob - log_mass[:, None]
    support_prob = support_log_prob.masked_fill(off_support, -math.inf).exp()
    forward_kl = (teacher_prob * (teacher_log_prob - support_log_prob)).sum(dim=1)
    reverse_kl = (support_prob * (support_log_prob - teacher_log_prob)).sum(dim=1)
    per_region = alpha * forward_kl + (1.0 - alpha) * reverse_kl - log_mass
    return (_at_least_fp32(info_weight.detach()) * per_region).mean()


def _negative_uniform_loss(logits_neg, info_weight):
    """L_neg: mean_b (1 - w_b) KL(softmax s-_b || U_C), with KL(q || U_C) = sum q log q + log C."""
    log_prob = F.log_softmax(logits_neg, dim=1)
    kl_to_uniform = (log_prob.exp() * log_prob).sum(dim=1) + math.log(logits_neg.shape[1])
    return ((1.0 - info_weight) * kl_to_uniform).mean()


def _first_order_loss(logits_pos, logits_neg, info_weight):
    """L_diff1: mean_b w_b cos(s+_b, s-_b); minimising it turns the two logit vectors apart."""
    cosine = (F.normalize(logits_pos, dim=1) * F.normalize(logits_neg, dim=1)).sum(dim=1)
    return (info_weight * cosine).mean()


def top1_classes(teacher_prob):
    """Y: the distinct teacher top-1 classes of a batch, ascending."""
    return teacher_prob.argmax(dim=1).unique()


def _second_order_loss(text_pos, text_neg, classes):
    """L_diff2: mean over ordered pairs i != j in Y (`classes`) of ||Delta_i - Delta_j||^2 / D.

    Uses sum_{i != j} ||a_i - a_j||^2 = 2|Y| sum_i ||a_i - mean(a)||^2: O(|Y| D), and centring
    first avoids the cancellation of the uncentred identity when the Delta are close.
    """
    if classes.numel() < 2:
        return text_pos.new_zeros(())
    shift = text_pos[classes] - text_neg[classes]
    centred = shift - shift.mean(dim=0, keepdim=True)
    num_pairs_scale = 2.0 / ((classes.numel() - 1) * shift.shape[1])
    return num_pairs_scale * centred.pow(2).sum()


def fdbpl_loss_terms(
    logits_pos, logits_neg, text_pos, text_neg, teacher_prob, teacher_entropy, alpha=0.5, classes=None
):
    """All FDBPL terms (DESIGN 5): dict of scalars `pos`, `neg`, `diff1`, `diff2` and `weight` (B,).

    logits_pos, logits_neg (B, C) scaled; text_pos, text_neg (C, D) L2-normalised, or both None for a
    model that exposes no class text features (then there is no `diff2`);
    teacher_prob (B, C) dense teacher distribution; teacher_entropy (B,) its full C-class entropy;
    classes: L_diff2's Y when the batch is larger than this part of it (several processes), else its top-1 classes.
    """
    batch, num_classes = logits_pos.shape
    expected_shapes = [
        ("logits_neg", logits_neg, (batch, num_classes)),
        ("teacher_prob", teacher_prob, (batch, num_classes)),
        ("teacher_entropy", teacher_entropy, (batch,)),
    ]
    if text_pos is not None or text_neg is not None:
        width = text_pos.shape[-1]
        expected_shapes += [("text_pos", text_pos, (num_classes, width)), ("text_neg", text_neg, (num_classes, width))]
    for name, tensor, shape in expected_shapes:
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {shape} to match logits_pos "
                f"{tuple(logits_pos.shape)}{'' if text_pos is None else f' and text_pos {tuple(text_pos.shape)}'}"
            )
    weight = information_weight(teacher_entropy, num_classes)
    logits_pos, logits_neg = _at_least_fp32(logits_pos), _at_least_fp32(logits_neg)
    terms = {
        "pos": positive_kd_loss(logits_pos, teacher_prob, weight, alpha),
        "neg": _negative_uniform_loss(logits_neg, weight),
        "diff1": _first_order_loss(logits_pos, logits_neg, weight),
        "weight": weight,
    }
    if text_pos is not None:
        classes = top1_classes(teacher_prob) if classes is None else classes
        terms["diff2"] = _second_order_loss(_at_least_fp32(text_pos), _at_least_fp32(text_neg), classes)
    return terms


def weighted_total(terms, lambda_neg, lambda_diff1, lambda_diff2):
    """L = pos + lambda_neg neg + lambda_diff1 diff1 + lambda_diff2 diff2 (DESIGN 5).

    A zero weight leaves its term out of the sum and the graph, so ablations are exact; a term that was
    not computed (no `diff2` without text features) must have weight zero.
    """
    total = terms["pos"]
    for name, factor in (("neg", lambda_neg), ("diff1", lambda_diff1), ("diff2", lambda_diff2)):
        if factor == 0:
            continue
        if name not in terms:
            raise ValueError(f"L_{name} has weight {factor} but was not computed (the model exposes no text features)")
        total = total + factor * terms[name]
    return total


def distillation_kl(student_logits, teacher_logits, temperature=1.0):
    """T^2 KL(softmax(t / T) || softmax(s / T)) summed over the (B, C) logits and divided by B * C.

    PromptKD's published normalisation (so its KD_WEIGHT of 1000 applies), used by PromptKD and
    CasPL's online teacher; computed in fp32, no gradient reaches the teacher.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "must both be (B, C) over the same classes"
        )
    student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(student, teacher, reduction="sum", log_target=True)
    return kl * temperature**2 / student_logits.numel()
