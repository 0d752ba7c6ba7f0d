"""FDBPL supervision for other trainers: CoOp_FDBPL, MaPLe_FDBPL, PromptSRC_FDBPL, and your own."""
import subprocess
import sys

import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT, requires_dassl
from tests.cli_runs import BASE_OPTS, SYNTHETIC, build_trainer, log_accuracy, train

pytestmark = requires_dassl

NEW_OPTS = ("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new")


def train_then_eval_new(trainer, synthetic_root, ril_table, student, tmp_path, *opts):
    """Train on base classes from the table, evaluate on new classes without it; the training stdout."""
    base_dir, new_dir = tmp_path / "base", tmp_path / "new"
    result = train(synthetic_root, base_dir, trainer, student, *BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table, *opts)
    train(synthetic_root, new_dir, trainer, student, *NEW_OPTS, *opts, eval_only_from=base_dir)
    assert 0.0 <= log_accuracy(base_dir) <= 100.0 and 0.0 <= log_accuracy(new_dir) <= 100.0
    return base_dir, result.stdout


def test_coop_fdbpl_trains_with_l_pos_only(synthetic_root, ril_table, tiny_student, tmp_path):
    base_dir, stdout = train_then_eval_new("CoOp_FDBPL", synthetic_root, ril_table, tiny_student, tmp_path)
    assert " pos " in stdout and " neg " not in stdout
    assert not (base_dir / "prompt_learner_neg").exists()


def test_coop_fdbpl_with_dual_prompts(synthetic_root, ril_table, tiny_student, tmp_path):
    base_dir, stdout = train_then_eval_new("CoOp_FDBPL", synthetic_root, ril_table, tiny_student, tmp_path,
                                           "TRAINER.FDBPL.DUAL_PROMPTS", "True")
    assert all(f" {term} " in stdout for term in ("pos", "neg", "diff1", "diff2"))
    assert (base_dir / "prompt_learner_neg" / "model.pth.tar-2").is_file()


def test_maple_fdbpl_with_dual_prompts(synthetic_root, ril_table, tiny_student, tmp_path):
    base_dir, stdout = train_then_eval_new("MaPLe_FDBPL", synthetic_root, ril_table, tiny_student, tmp_path,
                                           "TRAINER.FDBPL.DUAL_PROMPTS", "True")
    assert all(f" {term} " in stdout for term in ("pos", "neg", "diff1", "diff2"))
    assert (base_dir / "prompt_learner_neg" / "model.pth.tar-2").is_file()


def test_promptsrc_fdbpl_keeps_its_regularisers(synthetic_root, ril_table, tiny_student, tmp_path):
    _, stdout = train_then_eval_new("PromptSRC_FDBPL", synthetic_root, ril_table, tiny_student, tmp_path)
    assert all(f" {term} " in stdout for term in ("pos", "scl_text", "scl_image", "scl_logits"))
    assert " ce " not in stdout


def test_negative_context_differs_at_the_input_of_a_deep_prompted_tower(synthetic_root, tiny_student, tmp_path):
    trainer = build_trainer(synthetic_root, "MaPLe_FDBPL", tiny_student, tmp_path,
                            opts=(*BASE_OPTS, "TRAINER.FDBPL.DUAL_PROMPTS", "True"))
    model = trainer.model
    assert model.prompt_learner_neg.n_ctx == model.prompt_learner.n_ctx == 2
    text_pos, text_neg = model.encode_text_pair()
    assert torch.allclose(text_pos, model.encode_text(), atol=1e-6)
    assert not torch.allclose(text_pos, text_neg, atol=1e-3)


def test_feature_cache_is_refused_where_the_image_encoder_is_prompted(synthetic_root, ril_table, tiny_student, tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--root", synthetic_root, "--seed", "1", "--trainer", "MaPLe_FDBPL",
         "--dataset-config-file", SYNTHETIC,
         "--config-file", "configs/trainers/MaPLe_FDBPL/tiny_ep2.yaml", "--output-dir", str(tmp_path),
         "--backbone", tiny_student, *BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table,
         "TRAINER.FDBPL.FEATURE_CACHE", "True"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "FEATURE_CACHE" in result.stderr and "MaPLe_FDBPL" in result.stderr


def test_add_fdbpl_supervision_to_your_own_trainer(synthetic_root, ril_table, tiny_student, tmp_path):
    """The README recipe, applied to a trainer that exists only in this file."""
    from dassl.engine import TRAINER_REGISTRY

    import trainers
    from trainers.base import PromptTrainer
    from trainers.prompt_learners import PromptLearner
    from trainers.prompted_clip import PromptedCLIP
    from trainers.ril_supervision import RILSupervision

    trainers.register_all()

    class LabTrainer(PromptTrainer):
        """A lab's own CoOp-style trainer: cross-entropy on hard labels."""

        CONFIG_NODE = "COOP"

        def build_model(self):
            clip_model = self.load_clip_model()
            learner = PromptLearner(clip_model, self.dm.dataset.classnames, n_ctx=None, ctx_init="a photo of a")
            self.model = PromptedCLIP(clip_model, learner).to(self.device)
            for name, param in self.model.named_parameters():
                param.requires_grad_(name.startswith("prompt_learner"))
            self.register_trainable("prompt_learner", learner)

        def forward_backward(self, batch):
            image, label = self.parse_batch_train(batch)
            loss = F.cross_entropy(self.model(image), label)
            self.backward_and_update(loss)
            self.end_of_epoch_step()
            return {"loss": loss.item()}

    # The recipe: one class line, one register line.
    @TRAINER_REGISTRY.register(force=True)
    class LabTrainer_FDBPL(RILSupervision, LabTrainer):
        pass

    config = f"{REPO_ROOT}/configs/trainers/CoOp_FDBPL/tiny_ep2.yaml"
    trainer = build_trainer(synthetic_root, "LabTrainer_FDBPL", tiny_student, tmp_path, config=config,
                            opts=(*BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table, "TRAINER.FDBPL.DUAL_PROMPTS", "True"))
    before = trainer.model.prompt_learner.ctx.detach().clone()
    trainer.train()
    assert set(trainer.get_model_names()) == {"prompt_learner", "prompt_learner_neg"}
    assert not torch.equal(trainer.model.prompt_learner.ctx, before)
    assert (tmp_path / "prompt_learner_neg" / "model.pth.tar-2").is_file()
    assert isinstance(trainer.train_loader_x.dataset, __import__("ril.region_dataset").region_dataset.RegionDataset)


def test_the_trainer_weighs_each_loss_term_with_its_own_lambda():
    """ril_loss forms the total from the configured lambdas: distinct values expose a swapped pair."""
    from types import SimpleNamespace

    from trainers.ril_supervision import RILSupervision, RegionTargets

    torch.manual_seed(0)
    batch, num_classes, width = 6, 5, 8
    lambdas = {"LAMBDA_NEG": 0.7, "LAMBDA_DIFF1": 3.0, "LAMBDA_DIFF2": 11.0}
    trainer = SimpleNamespace(ril_cfg=SimpleNamespace(ALPHA=0.5, **lambdas))
    teacher_prob = F.softmax(torch.randn(batch, num_classes) * 3, dim=1)
    targets = RegionTargets(
        teacher_prob, -(teacher_prob * teacher_prob.log()).sum(dim=1), torch.zeros(batch, dtype=torch.long)
    )
    text_pos = F.normalize(torch.randn(num_classes, width), dim=-1)
    text_neg = F.normalize(torch.randn(num_classes, width), dim=-1)
    logits_pos, logits_neg = torch.randn(batch, num_classes) * 5, torch.randn(batch, num_classes) * 5
    loss, summary = RILSupervision.ril_loss(trainer, logits_pos, targets, (logits_neg, text_pos, text_neg))
    assert min(abs(summary[name]) for name in ("neg", "diff1", "diff2")) > 1e-4  # every term counts
    expected = (
        summary["pos"] + lambdas["LAMBDA_NEG"] * summary["neg"]
        + lambdas["LAMBDA_DIFF1"] * summary["diff1"] + lambdas["LAMBDA_DIFF2"] * summary["diff2"]
    )
    assert loss.item() == summary["loss"]
    assert abs(loss.item() - expected) <= 1e-5 * max(1.0, abs(expected))
