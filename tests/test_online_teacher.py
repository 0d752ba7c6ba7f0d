"""The online teacher (PromptKD, CasPL): student pixels re-normalised for it, zero-shot or prompted class features."""
import pytest
import torch
import torch.nn.functional as F

from ril.teachers import CLIP_MEAN, CLIP_STD, load_teacher
from tests.conftest import requires_dassl
from trainers.clip_loading import load_clip
from trainers.text_encoder import template_text_features

pytestmark = requires_dassl  # trainers.online_teacher reads checkpoints through Dassl's loader
CLASSNAMES = ["red circle", "green square", "blue triangle"]


def normalised(values, mean, std):
    return (values - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_student_pixels_reach_the_teacher_in_its_own_normalisation_and_size(tiny_teacher):
    from trainers.online_teacher import load_online_teacher

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    online = load_online_teacher(tiny_teacher, CLASSNAMES, mean, std, "cpu")
    reference = load_teacher(tiny_teacher)
    features = reference.class_features(CLASSNAMES, ("a photo of a {}.",))
    raw = torch.rand(2, 3, 48, 48)
    expected = reference.logits(
        F.interpolate(normalised(raw, CLIP_MEAN, CLIP_STD), size=(32, 32), mode="bicubic", align_corners=False),
        features)
    assert torch.allclose(online.logits(normalised(raw, mean, std)), expected, atol=1e-4)


def test_zero_shot_teacher_is_plain_clip_with_the_template(tiny_teacher):
    from trainers.online_teacher import load_online_teacher

    teacher = load_online_teacher(tiny_teacher, CLASSNAMES, CLIP_MEAN, CLIP_STD, templates=("itap of a {}.",))
    clip_model = load_clip(tiny_teacher)
    text = template_text_features(clip_model, CLASSNAMES, ["itap of a {}."])
    torch.testing.assert_close(teacher.class_features, text)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = clip_model.logit_scale.exp() * F.normalize(clip_model.encode_image(image), dim=-1) @ text.t()
    torch.testing.assert_close(teacher.logits(image), plain, rtol=1e-4, atol=1e-4)


def test_published_teacher_folder_gives_a_prompted_teacher(tiny_teacher, tmp_path):
    from trainers.online_teacher import load_online_teacher

    torch.manual_seed(0)
    state = {
        "prompt_learner.ctx": torch.randn(4, 128),
        "prompt_learner.token_prefix": torch.randn(10, 1, 128),
        "image_encoder.VPT": torch.randn(4, 128),
        "image_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 128),
        "text_encoder.transformer.resblocks.1.VPT_shallow": torch.randn(4, 128),
        "image_encoder.conv1.weight": load_clip(tiny_teacher).visual.conv1.weight.half(),  # frozen: checked
    }
    (tmp_path / "VLPromptLearner").mkdir()
    torch.save({"state_dict": state, "epoch": 20}, tmp_path / "VLPromptLearner" / "model-best.pth.tar")
    prompted = load_online_teacher(tiny_teacher, CLASSNAMES, CLIP_MEAN, CLIP_STD, prompt_dir=str(tmp_path))
    learner = prompted.prompted.prompt_learner
    assert torch.equal(learner.ctx, state["prompt_learner.ctx"])
    assert torch.equal(learner.vision_prompts.layer["0"], state["image_encoder.VPT"])
    assert torch.equal(learner.vision_prompts.layer["1"], state["image_encoder.transformer.resblocks.1.VPT_shallow"])
    assert torch.equal(learner.text_prompts.layer["1"], state["text_encoder.transformer.resblocks.1.VPT_shallow"])
    zero_shot = load_online_teacher(tiny_teacher, CLASSNAMES, CLIP_MEAN, CLIP_STD)
    image = torch.randn(2, 3, 32, 32)
    assert (prompted.logits(image, zero_shot.class_features) - zero_shot.logits(image)).abs().max() > 1e-3


def test_a_missing_teacher_folder_is_named(tiny_teacher, tmp_path):
    from trainers.online_teacher import load_online_teacher

    with pytest.raises(FileNotFoundError, match="neither prompt_learner/"):
        load_online_teacher(tiny_teacher, CLASSNAMES, CLIP_MEAN, CLIP_STD, prompt_dir=str(tmp_path))
