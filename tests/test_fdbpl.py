"""FDBPL end to end: RIL table -> training without a teacher -> evaluation on new classes."""
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT, requires_dassl, run_script
from tests.cli_runs import BASE_OPTS, SYNTHETIC, build_trainer, log_accuracy, train

pytestmark = requires_dassl


@pytest.fixture(scope="module")
def fdbpl_run(synthetic_root, ril_table, tiny_student, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("fdbpl_base")
    result = train(synthetic_root, output_dir, "FDBPL", tiny_student, *BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table)
    return output_dir, result.stdout


def test_fdbpl_trains_from_the_table_without_a_teacher(fdbpl_run):
    output_dir, stdout = fdbpl_run
    assert (output_dir / "prompt_learner" / "model.pth.tar-2").is_file()
    assert (output_dir / "prompt_learner_neg" / "model.pth.tar-2").is_file()
    for term in ("pos", "neg", "diff1", "diff2"):
        assert f" {term} " in stdout, f"loss term {term} is not logged"
    assert 0.0 <= log_accuracy(output_dir) <= 100.0


def test_eval_only_on_new_classes_needs_no_table(fdbpl_run, synthetic_root, tiny_student, tmp_path):
    output_dir, _ = fdbpl_run
    train(synthetic_root, tmp_path, "FDBPL", tiny_student, "DATASET.NUM_SHOTS", "4",
          "DATASET.SUBSAMPLE_CLASSES", "new", eval_only_from=output_dir)
    assert 0.0 <= log_accuracy(tmp_path) <= 100.0


def test_negative_prompts_are_trained_saved_and_reloaded(fdbpl_run, synthetic_root, tiny_student, tmp_path):
    """The official code optimises its negative prompts but never saves them."""
    output_dir, _ = fdbpl_run
    trainer = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path, opts=BASE_OPTS)
    initial = trainer.model.prompt_learner_neg.ctx.detach().clone()
    trainer.load_model(str(output_dir), epoch=2)
    saved = torch.load(output_dir / "prompt_learner_neg" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert torch.equal(trainer.model.prompt_learner_neg.ctx, saved["ctx"])
    assert not torch.equal(saved["ctx"], initial), "the negative prompts did not train"


def test_inference_uses_the_positive_prompts_only(synthetic_root, tiny_student, tmp_path):
    trainer = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path, opts=BASE_OPTS)
    model = trainer.model.eval()
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(image)
        model.prompt_learner_neg.ctx.add_(1.0)
        assert torch.equal(model(image), before)
        model.prompt_learner.ctx.add_(1.0)
        assert not torch.equal(model(image), before)


def test_table_of_other_shots_is_refused_with_the_field(synthetic_root, ril_table, tiny_student, tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "--root", synthetic_root, "--seed", "1", "--trainer", "FDBPL",
         "--dataset-config-file", SYNTHETIC,
         "--config-file", "configs/trainers/FDBPL/tiny_ep2.yaml", "--output-dir", str(tmp_path),
         "--backbone", tiny_student, "DATASET.NUM_SHOTS", "2", "DATASET.SUBSAMPLE_CLASSES", "base",
         "TRAINER.FDBPL.RIL_TABLE", ril_table],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "num_shots=4" in result.stderr and "DATASET.NUM_SHOTS=2" in result.stderr
    assert "Traceback" not in result.stderr


def first_batch_summary(trainer):
    """Loss terms of the first training batch, as training computes them."""
    trainer.before_train()
    trainer.epoch, trainer.batch_idx = 0, 0
    trainer.before_epoch()
    trainer.num_batches = len(trainer.train_loader_x)
    torch.manual_seed(0)
    batch = next(iter(trainer.train_loader_x))
    return batch, trainer.forward_backward(batch)


def test_feature_cache_decodes_no_image_and_gives_the_pixel_losses(synthetic_root, ril_table, tiny_student, tmp_path,
                                                                   monkeypatch):
    cached = shutil.copy(ril_table, tmp_path / "with_features.h5")
    run_script("-m", "ril", "add-features", "--table", str(cached), "--model", tiny_student,
               "--root", synthetic_root, "--device", "cpu", "--workers", "0")
    opts = (*BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", str(cached))
    pixel_batch, pixel_summary = first_batch_summary(
        build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "pixels", opts=opts))

    import ril.region_dataset

    def no_decoding(path):
        raise AssertionError(f"decoded {path} with the feature cache on")

    monkeypatch.setattr(ril.region_dataset, "load_rgb", no_decoding)
    feature_batch, feature_summary = first_batch_summary(build_trainer(
        synthetic_root, "FDBPL", tiny_student, tmp_path / "features", opts=(*opts, "TRAINER.FDBPL.FEATURE_CACHE", "True")))
    assert "img" not in feature_batch and feature_batch["feature"].shape == (8, 64)
    assert torch.equal(feature_batch["region"], pixel_batch["region"])
    assert torch.equal(feature_batch["index"], pixel_batch["index"])
    for term in ("pos", "neg", "diff1", "diff2"):
        assert feature_summary[term] == pytest.approx(pixel_summary[term], rel=2e-3, abs=1e-5), term
