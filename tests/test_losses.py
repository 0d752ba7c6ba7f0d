"""FDBPL loss terms: hand-computed values, gradient routing, ablation switches, numerics."""
import math

import pytest
import torch

from trainers.losses import (
    distillation_kl,
    fdbpl_loss_terms,
    information_weight,
    positive_kd_loss,
    weighted_total,
)

LOGITS_POS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
LOGITS_NEG = [[0.0, 1.0, 3.0], [-2.0, 0.0, 1.0]]
TEACHER = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]
TEXT_POS = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
TEXT_NEG = [[0.0, 1.0], [1.0, 0.0], [0.8, -0.6]]


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def entropy(row):
    return -sum(p * math.log(p) for p in row)


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def hand_weights(teacher=TEACHER):
    return [1.0 - entropy(row) / math.log(len(row)) for row in teacher]


def terms_for(teacher=TEACHER, alpha=0.5, dtype=torch.float64, **overrides):
    args = dict(
        logits_pos=t(LOGITS_POS, dtype), logits_neg=t(LOGITS_NEG, dtype),
        text_pos=t(TEXT_POS, dtype), text_neg=t(TEXT_NEG, dtype), teacher_prob=t(teacher, dtype),
        teacher_entropy=t([entropy(row) for row in teacher], dtype),
    )
    args.update(overrides)
    return fdbpl_loss_terms(alpha=alpha, **args)


def test_information_weight_hand_values_and_range():
    weight = information_weight(t([0.0, math.log(3) / 2, math.log(3)]), 3)
    torch.testing.assert_close(weight, t([1.0, 0.5, 0.0]))
    uniform = entropy([0.25] * 4)
    one_hot_ish = entropy([1 - 3e-9, 1e-9, 1e-9, 1e-9])
    weight = information_weight(t([uniform, one_hot_ish, 0.0], torch.float32), 4)
    assert weight[0].item() == pytest.approx(0.0, abs=1e-6)
    assert weight[1].item() == pytest.approx(1.0, abs=1e-6)
    assert weight[2].item() == 1.0
    generator = torch.Generator().manual_seed(0)
    random_prob = torch.softmax(torch.randn(64, 5, generator=generator) * 3, dim=1)
    random_entropy = -(random_prob * random_prob.log()).sum(1)
    weight = information_weight(random_entropy, 5)
    assert ((weight >= 0) & (weight <= 1)).all() and weight.std() > 0.01


def test_information_weight_absorbs_rounding_and_rejects_foreign_entropy():
    weight = information_weight(t([math.log(3) + 1e-6, -1e-6]), 3)
    assert weight.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="teacher_entropy.*log 3"):
        information_weight(t([math.log(10)]), 3)
    with pytest.raises(ValueError, match="teacher_entropy"):
        information_weight(t([float("nan")]), 3)


def test_information_weight_carries_no_gradient():
    entropy_leaf = t([0.3, 0.9]).requires_grad_()
    assert not information_weight(entropy_leaf, 3).requires_grad
    teacher_leaf = t(TEACHER).requires_grad_()
    logits = t(LOGITS_POS).requires_grad_()
    positive_kd_loss(logits, teacher_leaf, t([1.0, 1.0]), 0.5).backward()
    assert teacher_leaf.grad is None and logits.grad is not None


def test_pos_hand_computed():
    weights = hand_weights()
    student = [softmax(row) for row in LOGITS_POS]
    for alpha in (0.5, 0.3):
        expected = sum(
            w * (alpha * kl(p, q) + (1 - alpha) * kl(q, p))
            for w, p, q in zip(weights, TEACHER, student)
        ) / 2
        assert terms_for(alpha=alpha)["pos"].item() == pytest.approx(expected, rel=1e-12)


def test_alpha_one_is_forward_kl_and_zero_is_reverse_kl():
    weights = hand_weights()
    student = [softmax(row) for row in LOGITS_POS]
    forward = sum(w * kl(p, q) for w, p, q in zip(weights, TEACHER, student)) / 2
    reverse = sum(w * kl(q, p) for w, p, q in zip(weights, TEACHER, student)) / 2
    assert abs(forward - reverse) > 1e-3
    assert terms_for(alpha=1.0)["pos"].item() == pytest.approx(forward, rel=1e-12)
    assert terms_for(alpha=0.0)["pos"].item() == pytest.approx(reverse, rel=1e-12)


def test_neg_hand_computed():
    weights = hand_weights()
    expected = sum(
        (1 - w) * kl(softmax(row), [1 / 3] * 3) for w, row in zip(weights, LOGITS_NEG)
    ) / 2
    assert terms_for()["neg"].item() == pytest.approx(expected, rel=1e-12)


def test_diff1_hand_computed():
    weights = hand_weights()
    expected = sum(
        w * cosine(p, n) for w, p, n in zip(weights, LOGITS_POS, LOGITS_NEG)
    ) / 2
    assert terms_for()["diff1"].item() == pytest.approx(expected, rel=1e-12)


def hand_diff2(classes):
    shift = [[p - n for p, n in zip(TEXT_POS[k], TEXT_NEG[k])] for k in classes]
    pairs = [(i, j) for i in range(len(shift)) for j in range(len(shift)) if i != j]
    total = sum(sum((a - b) ** 2 for a, b in zip(shift[i], shift[j])) for i, j in pairs)
    return total / len(pairs) / len(TEXT_POS[0])


def test_diff2_hand_computed_and_not_identically_zero():
    # Top-1 classes of TEACHER are {0, 2}. The official code summed signed differences over
    # ordered pairs, which cancel to exactly zero; this term must not.
    value = terms_for()["diff2"].item()
    assert value == pytest.approx(hand_diff2([0, 2]), rel=1e-12)
    assert value > 0.1


def test_diff2_uses_distinct_top1_classes_only():
    teacher = [[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]
    extra = dict(logits_pos=t(LOGITS_POS * 2), logits_neg=t(LOGITS_NEG * 2))
    value = terms_for(teacher=teacher, **extra)["diff2"].item()
    assert value == pytest.approx(hand_diff2([0, 1, 2]), rel=1e-12)


def test_diff2_matches_pairwise_distances_on_many_classes():
    generator = torch.Generator().manual_seed(1)
    text_pos = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=1)
    text_neg = torch.nn.functional.normalize(torch.randn(40, 16, generator=generator), dim=1)
    teacher = torch.softmax(torch.randn(64, 40, generator=generator) * 4, dim=1)
    logits = torch.randn(64, 40, generator=generator)
    value = fdbpl_loss_terms(
        logits, logits, text_pos, text_neg, teacher, torch.zeros(64)
    )["diff2"]
    classes = teacher.argmax(1).unique()
    shift = (text_pos - text_neg)[classes]
    pairwise = torch.cdist(shift.double(), shift.double()) ** 2
    count = len(classes) * (len(classes) - 1)
    assert len(classes) > 10
    assert value.item() == pytest.approx(pairwise.sum().item() / count / 16, rel=1e-5)


def test_diff2_zero_when_shifts_equal_or_fewer_than_two_classes():
    text_pos = t(TEXT_POS)
    equal_shift = terms_for(text_neg=text_pos - t([0.3, -0.7]))["diff2"]
    torch.testing.assert_close(equal_shift, t(0.0), atol=1e-12, rtol=0)
    same_top1 = [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]
    assert terms_for(teacher=same_top1)["diff2"].item() == 0.0
    single = fdbpl_loss_terms(
        t([LOGITS_POS[0]]), t([LOGITS_NEG[0]]), text_pos, t(TEXT_NEG), t([TEACHER[0]]),
        t([entropy(TEACHER[0])]),
    )
    assert single["diff2"].item() == 0.0


def build_from_prompts(seed=0, scale=1.0):
    """Leaf 'prompts' for each side -> text features -> logits, as a CLIP student would."""
    generator = torch.Generator().manual_seed(seed)
    prompt_pos = torch.randn(3, 4, generator=generator).requires_grad_()
    prompt_neg = torch.randn(3, 4, generator=generator).requires_grad_()
    image_features = torch.nn.functional.normalize(torch.randn(4, 4, generator=generator), dim=1)
    text_pos = torch.nn.functional.normalize(prompt_pos, dim=1)
    text_neg = torch.nn.functional.normalize(prompt_neg, dim=1)
    teacher = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.4, 0.4, 0.2]])
    terms = fdbpl_loss_terms(
        scale * image_features @ text_pos.T, scale * image_features @ text_neg.T,
        text_pos, text_neg, teacher, -(teacher * teacher.log()).sum(1),
    )
    return terms, prompt_pos, prompt_neg


@pytest.mark.parametrize(
    "name, reaches_pos, reaches_neg",
    [("pos", True, False), ("neg", False, True), ("diff1", True, True), ("diff2", True, True)],
)
def test_gradients_reach_exactly_the_right_prompts(name, reaches_pos, reaches_neg):
    terms, prompt_pos, prompt_neg = build_from_prompts()
    grads = torch.autograd.grad(terms[name], (prompt_pos, prompt_neg), allow_unused=True)
    for grad, expected in zip(grads, (reaches_pos, reaches_neg)):
        reached = grad is not None and grad.abs().max().item() > 1e-8
        assert reached == expected


@pytest.mark.parametrize("zeroed", ["neg", "diff1", "diff2"])
def test_zero_weight_removes_term_and_its_gradient(zeroed):
    lambdas = {"neg": 1.0, "diff1": 0.5, "diff2": 2.0}
    terms, prompt_pos, prompt_neg = build_from_prompts()
    expected = terms["pos"] + sum(
        lambdas[k] * terms[k] for k in lambdas if k != zeroed
    )
    lambdas[zeroed] = 0.0
    total = weighted_total(terms, lambdas["neg"], lambdas["diff1"], lambdas["diff2"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    got = torch.autograd.grad(total, (prompt_pos, prompt_neg), retain_graph=True)
    want = torch.autograd.grad(expected, (prompt_pos, prompt_neg))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    poisoned = dict(terms, **{zeroed: torch.tensor(float("nan"), requires_grad=True)})
    assert torch.isfinite(weighted_total(poisoned, *lambdas.values()))


def test_weighted_total_hand_sum_and_all_off():
    values = {"pos": 1.0, "neg": 2.0, "diff1": 3.0, "diff2": 4.0}
    terms = {name: torch.tensor(value) for name, value in values.items()}
    assert weighted_total(terms, 0.5, 0.1, 10.0).item() == pytest.approx(1 + 1 + 0.3 + 40)
    built, prompt_pos, prompt_neg = build_from_prompts()
    weighted_total(built, 0.0, 0.0, 0.0).backward()
    assert prompt_pos.grad is not None and prompt_neg.grad is None


EXTREMES = {
    "large": [[1e4, 1e4, 1e4], [1e4, 0.0, 1e4]],
    "small": [[-1e4, -1e4, -1e4], [-1e4, 0.0, -1e4]],
    "mixed": [[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]],
    "zeros": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
}


@pytest.mark.parametrize("pos_case", sorted(EXTREMES))
@pytest.mark.parametrize("neg_case", ["mixed", "zeros", "large"])
def test_extreme_logits_give_finite_values_and_gradients(pos_case, neg_case):
    logits_pos = torch.tensor(EXTREMES[pos_case]).requires_grad_()
    logits_neg = torch.tensor(EXTREMES[neg_case]).requires_grad_()
    teacher = [[1 - 2e-7, 1e-7, 1e-7], [0.3, 0.3, 0.4]]
    terms = terms_for(
        teacher=teacher, dtype=torch.float32, logits_pos=logits_pos, logits_neg=logits_neg
    )
    for name in ("pos", "neg", "diff1", "diff2"):
        assert torch.isfinite(terms[name]), name
    weighted_total(terms, 1.0, 1.0, 1.0).backward()
    assert torch.isfinite(logits_pos.grad).all() and torch.isfinite(logits_neg.grad).all()


def test_half_precision_inputs_are_computed_in_fp32():
    reference = terms_for(dtype=torch.float32)
    logits_pos = t(LOGITS_POS, torch.float16).requires_grad_()
    half = terms_for(dtype=torch.float16, logits_pos=logits_pos)
    for name in ("pos", "neg", "diff1", "diff2"):
        assert half[name].dtype == torch.float32
        assert half[name].item() == pytest.approx(reference[name].item(), rel=2e-3, abs=1e-4)
    huge = torch.full((2, 3), 6e4, dtype=torch.float16)
    huge[0, 0] = -6e4
    huge_terms = terms_for(dtype=torch.float16, logits_pos=huge, logits_neg=huge)
    assert all(torch.isfinite(huge_terms[k]) for k in ("pos", "neg", "diff1"))
    half["pos"].backward()
    assert logits_pos.grad.dtype == torch.float16 and torch.isfinite(logits_pos.grad).all()


def test_autocast_region_keeps_losses_in_fp32():
    reference = terms_for(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = terms_for(dtype=torch.float32)
    for name in ("pos", "neg", "diff1", "diff2"):
        assert inside[name].dtype == torch.float32
        torch.testing.assert_close(inside[name], reference[name])


def test_single_class_is_safe():
    terms = fdbpl_loss_terms(
        t([[3.0], [-2.0]]), t([[1.0], [1.0]]), t([[1.0, 0.0]]), t([[0.0, 1.0]]),
        t([[1.0], [1.0]]), t([0.0, 0.0]),
    )
    assert terms["weight"].tolist() == [1.0, 1.0]
    assert terms["pos"].item() == 0.0 and terms["neg"].item() == 0.0
    assert terms["diff1"].item() == pytest.approx(0.0)


def test_pos_on_the_top_k_support_of_a_renormalised_teacher_by_hand():
    """renorm: p_t = (0.75, 0.25, 0, 0); both halves on q~ = q / q(S), S = {0, 1}, plus -log q(S)."""
    logits, teacher, weight = [1.0, 0.0, 0.5, -1.0], [0.75, 0.25, 0.0, 0.0], 0.6
    q = softmax(logits)
    mass = q[0] + q[1]
    q_tilde = [q[0] / mass, q[1] / mass]
    forward = kl(teacher[:2], q_tilde) - math.log(mass)
    assert forward == pytest.approx(sum(p * math.log(p / q_c) for p, q_c in zip(teacher[:2], q[:2])))
    for alpha in (0.5, 0.0, 1.0):
        expected = weight * (alpha * kl(teacher[:2], q_tilde) + (1 - alpha) * kl(q_tilde, teacher[:2])
                             - math.log(mass))
        logits_leaf = t([logits]).requires_grad_()
        loss = positive_kd_loss(logits_leaf, t([teacher]), t([weight]), alpha)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits_leaf.grad).all()
        assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert positive_kd_loss(t([logits]), t([teacher]), t([weight]), 1.0).item() == pytest.approx(weight * forward)


def test_pos_on_a_support_far_from_the_student_stays_finite():
    logits = torch.tensor([[-200.0, 0.0, 0.0], [0.0, 80.0, -80.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    loss = positive_kd_loss(logits, teacher, torch.ones(2), 0.5)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 100 and torch.isfinite(logits.grad).all()


def test_bad_inputs_raise_with_the_tensor_named():
    with pytest.raises(ValueError, match="text_neg has shape"):
        terms_for(text_neg=t(TEXT_NEG[:2]))
    with pytest.raises(ValueError, match="teacher_entropy has shape"):
        terms_for(teacher_entropy=t([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="expected probabilities"):
        terms_for(teacher_prob=t([[1.1, -0.1, 0.0], [0.1, 0.3, 0.6]]))
    with pytest.raises(ValueError, match="not logits"):
        terms_for(teacher_prob=t(LOGITS_POS).exp())
    with pytest.raises(ValueError, match="ALPHA"):
        terms_for(alpha=1.5)


def test_distillation_kl_at_temperature_two_by_hand():
    teacher = torch.tensor([[0.0, 2 * math.log(3.0)], [2 * math.log(3.0), 0.0]])
    # at T = 2 the teacher gives (1/4, 3/4) and (3/4, 1/4); the student is uniform
    kl_row = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    loss = distillation_kl(torch.zeros(2, 2), teacher, temperature=2.0)
    assert loss.item() == pytest.approx(2 * kl_row * 2**2 / 4)


def test_distillation_kl_matches_hand_computed_values():
    student, teacher = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    kl_t1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # p_t = (3/4, 1/4), q = (1/2, 1/2)
    assert distillation_kl(student, teacher, 1.0).item() == pytest.approx(kl_t1 / 2, rel=1e-6)
    p = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)  # T = 2 halves the logits: p_t proportional to (sqrt 3, 1)
    kl_t2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert distillation_kl(student, teacher, 2.0).item() == pytest.approx(4.0 * kl_t2 / 2, rel=1e-6)
    assert distillation_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="same classes"):
        distillation_kl(torch.zeros(1, 3), teacher)
