"""K = min(K, C) through the CLI: a table asked for more classes than the run has, verified and trained from."""
import math

import pytest

from tests.cli_runs import BASE_OPTS, SYNTHETIC, build_trainer, config_path
from tests.conftest import requires_dassl, run_script
from tests.test_fdbpl import first_batch_summary

pytestmark = requires_dassl


@pytest.fixture(scope="module")
def wide_table(synthetic_root, tiny_teacher, tmp_path_factory):
    """`python -m ril precompute --topk 20` on the 5 Synthetic base classes: (table path, precompute stderr)."""
    out = tmp_path_factory.mktemp("ril_k20") / "synthetic_base_k20.h5"
    result = run_script(
        "-m", "ril", "precompute", "--root", synthetic_root, "--seed", "1", "--dataset-config-file", SYNTHETIC,
        "--config-file", config_path("FDBPL"), "--teacher", tiny_teacher, "--regions", "6", "--topk", "20",
        "--out", str(out), "--workers", "0", "--device", "cpu", *BASE_OPTS,
    )
    return str(out), result.stderr


def test_the_table_keeps_every_class_and_the_log_says_so(wide_table, synthetic_root):
    from ril.reader import RILTable

    path, log = wide_table
    assert "--topk 20 requested, the run has 5 classes, so the table keeps K = 5 classes per region" in log
    assert "Teacher class texts: 1 template(s) ['a photo of a {}.']" in log
    assert RILTable(path).topk == 5
    verified = run_script("-m", "ril", "verify", "--table", path, "--root", synthetic_root, "--seed", "1",
                          "--dataset-config-file", SYNTHETIC, *BASE_OPTS)
    assert "OK (structure, stored paths, completeness, rows of 20 of 20 images and fingerprint)" in verified.stdout


@pytest.mark.parametrize("trainer, densify", [("FDBPL", "smooth"), ("FDBPL", "renorm"), ("CasPL_Boost", "smooth")])
def test_training_reads_the_table(wide_table, synthetic_root, tiny_student, tmp_path, trainer, densify):
    opts = (*BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", wide_table[0], "TRAINER.FDBPL.DENSIFY", densify)
    if trainer == "CasPL_Boost":
        opts += ("TRAINER.CASPL.TEACHER_SOURCE", "ril")
    batch, summary = first_batch_summary(build_trainer(synthetic_root, trainer, tiny_student, tmp_path, opts=opts))
    assert batch["soft_label"].shape == (8, 5)
    assert all(math.isfinite(value) for value in summary.values())


def test_renorm_trains_on_a_top_k_smaller_than_the_class_count(ril_table, synthetic_root, tiny_student, tmp_path):
    """The shared table keeps K = 3 of 5 classes: renorm's zeros stay out of the log, every term is finite."""
    opts = (*BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table, "TRAINER.FDBPL.DENSIFY", "renorm")
    batch, summary = first_batch_summary(build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path, opts=opts))
    assert ((batch["soft_label"] > 0).sum(dim=1) <= 3).all()
    assert all(math.isfinite(value) for value in summary.values()) and summary["pos"] > 0
