"""TRAINER.FDBPL.TEACHER_SOURCE online (KDPL): FDBPL's losses against a teacher run on every batch."""
import pytest
import torch

from tests.cli_runs import BASE_OPTS, build_trainer, config_path, log_accuracy, precompute_table, train
from tests.conftest import requires_dassl

pytestmark = requires_dassl

CONFIG = config_path("CoOp_FDBPL")
DUAL = ("TRAINER.FDBPL.DUAL_PROMPTS", "True")


@pytest.fixture(scope="module")
def full_table(synthetic_root, tiny_teacher, tmp_path_factory):
    """A table that keeps every base class (K = C = 5), so its soft labels are the teacher's whole softmax."""
    out = tmp_path_factory.mktemp("full") / "all_classes.h5"
    return precompute_table(synthetic_root, tiny_teacher, out, CONFIG, regions=3, topk=5)


def test_online_teacher_and_table_give_the_same_loss_for_the_same_regions(synthetic_root, full_table, tiny_student,
                                                                          tiny_teacher, tmp_path):
    """The online teacher scores the table's own regions (the region loader's pixels): same targets, same loss."""
    from_table = build_trainer(synthetic_root, "CoOp_FDBPL", tiny_student, tmp_path / "ril", config=CONFIG,
                               opts=(*BASE_OPTS, *DUAL, "TRAINER.FDBPL.RIL_TABLE", full_table))
    online = build_trainer(synthetic_root, "CoOp_FDBPL", tiny_student, tmp_path / "online", config=CONFIG,
                           opts=(*BASE_OPTS, *DUAL, "TRAINER.FDBPL.TEACHER_SOURCE", "online",
                                 "TRAINER.FDBPL.TEACHER_BACKBONE", tiny_teacher))
    from_table.prepare_training()
    online.prepare_training()
    online.model.load_state_dict(from_table.model.state_dict())
    batch = next(iter(from_table.train_loader_x))
    with torch.no_grad():
        images, table_targets = from_table.parse_ril_batch(batch)
        _, online_targets = online.parse_ril_batch({"img": images, "label": batch["label"]})
        assert torch.allclose(online_targets.soft_label, table_targets.soft_label, atol=2e-3)
        assert torch.allclose(online_targets.entropy, table_targets.entropy, atol=2e-3)
        assert online_targets.soft_label.max() < 0.99  # soft labels, not the hard ones
        table_loss = from_table.ril_forward(images, table_targets)
        online_loss = online.ril_forward(images, online_targets)
    assert set(online_loss.summary) == {"loss", "pos", "neg", "diff1", "diff2"}
    for term, value in table_loss.summary.items():
        assert online_loss.summary[term] == pytest.approx(value, rel=1e-3, abs=1e-4), term
    online.ril_teacher.scale = online.ril_teacher.scale * 1.5  # the fault: pixels normalised otherwise
    with torch.no_grad():
        _, faulty_targets = online.parse_ril_batch({"img": images, "label": batch["label"]})
    assert not torch.allclose(faulty_targets.soft_label, table_targets.soft_label, atol=2e-3)


def test_online_teacher_source_trains_without_a_table(synthetic_root, tiny_student, tiny_teacher, tmp_path):
    result = train(synthetic_root, tmp_path, "CoOp_FDBPL", tiny_student, *BASE_OPTS, *DUAL,
                   "TRAINER.FDBPL.TEACHER_SOURCE", "online", "TRAINER.FDBPL.TEACHER_BACKBONE", tiny_teacher,
                   config=CONFIG)
    assert "(TRAINER.FDBPL.TEACHER_SOURCE online)" in result.stdout and "Training from RIL table" not in result.stdout
    assert all(f" {term} " in result.stdout for term in ("pos", "neg", "diff1", "diff2"))
    assert (tmp_path / "prompt_learner_neg" / "model.pth.tar-2").is_file()
    assert 0.0 <= log_accuracy(tmp_path) <= 100.0


def test_online_teacher_source_with_a_table_is_refused(synthetic_root, ril_table, tiny_student, tiny_teacher,
                                                       tmp_path):
    import subprocess
    import sys

    from tests.cli_runs import train_args
    from tests.conftest import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "train.py", *train_args(synthetic_root, tmp_path, "CoOp_FDBPL", tiny_student, CONFIG),
         *BASE_OPTS, "TRAINER.FDBPL.TEACHER_SOURCE", "online", "TRAINER.FDBPL.RIL_TABLE", ril_table],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 2 and "TEACHER_SOURCE online runs the teacher on every batch" in result.stderr
