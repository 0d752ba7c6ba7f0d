"""FDBPL for Dassl trainers as labs have them: plugins, RILSupervision on a plain TrainerX, online teachers.

The outside trainers are tests/outside_trainers.py (CoOp-repository style CoCoOp and KgCoOp), loaded
with --plugin exactly as a user loads theirs.
"""
import math
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from tests.cli_runs import BASE_OPTS, SYNTHETIC, build_trainer, config_path, log_accuracy, train_args
from tests.conftest import REPO_ROOT, requires_dassl, run_script

pytestmark = requires_dassl

PLUGIN = ("--plugin", "tests.outside_trainers")
CONFIG = config_path("CoOp_FDBPL")
REGIONS = 12  # the ril_table fixture's regions per image
IMAGES = 20  # its images: 5 base classes x 4 shots
# One batch per epoch holding every region of every image: the epoch's loss is a function of the table and
# of the prompts the epoch starts from, whatever the order the loader draws.
WHOLE_TABLE = ("DATALOADER.TRAIN_X.BATCH_SIZE", str(IMAGES * REGIONS), "TRAINER.FDBPL.REPEAT", str(REGIONS),
               "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.LR", "0.05", "OPTIM.WARMUP_EPOCH", "0")
LOG_TERM = r"epoch \[2/2\] batch \[1/1\].* {term} ([0-9.]+) \("


def run(*args, expect=0):
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == expect, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def train_plugin(synthetic_root, output_dir, trainer, student, *opts, expect=0):
    return run("train.py", *PLUGIN, *train_args(synthetic_root, output_dir, trainer, student, CONFIG),
               *BASE_OPTS, *opts, expect=expect)


def logged(output_dir, term):
    """The value of `term` that Dassl logged for the only batch of epoch 2."""
    match = re.search(LOG_TERM.format(term=term), open(os.path.join(output_dir, "log.txt")).read())
    assert match, f"no '{term}' in epoch 2's log line"
    return float(match.group(1))


def table_targets(path, index, region, num_classes):
    """Dense smooth teacher distributions and information weights of (image, region) rows, read from the file."""
    with h5py.File(path, "r") as table:
        regions = table["regions"]
        topk_index = regions["topk_index"][:].astype(np.int64)[index, region]
        top_prob = np.exp(regions["topk_logprob"][:].astype(np.float64)[index, region])
        entropy = regions["entropy"][:].astype(np.float64)[index, region]
    others = num_classes - topk_index.shape[1]
    dense = np.repeat(np.maximum((1.0 - top_prob.sum(1)) / others, 1e-8)[:, None], num_classes, axis=1)
    np.put_along_axis(dense, topk_index, top_prob, axis=1)
    dense /= dense.sum(1, keepdims=True)
    return torch.tensor(dense), torch.tensor(1.0 - entropy / math.log(num_classes))


def kl(p, log_p, log_q):
    return (p * (log_p - log_q)).sum(1)


def independent_terms(logits, logits_neg, prob, weight, alpha=0.5):
    """L_pos and L_neg of DESIGN 5, written out for this test."""
    log_q = torch.log_softmax(logits.double(), 1)
    log_p = prob.log()
    pos = (weight * (alpha * kl(prob, log_p, log_q) + (1 - alpha) * kl(log_q.exp(), log_q, log_p))).mean()
    if logits_neg is None:
        return pos.item(), None
    log_n = torch.log_softmax(logits_neg.double(), 1)
    neg = ((1 - weight) * ((log_n.exp() * log_n).sum(1) + math.log(prob.shape[1]))).mean()
    return pos.item(), neg.item()


def epoch_two_terms(trainer_name, output_dir, synthetic_root, student, ril_table, *opts):
    """Independent L_pos (and L_neg) of epoch 2: the model as epoch 1 saved it, on every region of the table."""
    from ril.region_dataset import RegionDataset, collate_regions
    from trainers.plugins import load_plugins
    from trainers.ril_supervision import swapped_context

    load_plugins(["tests.outside_trainers"])
    trainer = build_trainer(synthetic_root, trainer_name, student, output_dir / "rebuilt", config=CONFIG,
                            opts=(*PLUGIN, *BASE_OPTS, *opts))
    trainer.load_model(str(output_dir), epoch=1)
    cfg = trainer.cfg
    dataset = RegionDataset(ril_table, cfg.DATASET.ROOT, cfg.INPUT.SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                            repeat=REGIONS)
    batch = collate_regions([dataset[i] for i in range(len(dataset))])
    prob, weight = table_targets(ril_table, batch["index"].numpy(), batch["region"].numpy(),
                                 len(trainer.dm.dataset.classnames))
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(batch["img"])
        logits = logits[0] if isinstance(logits, tuple) else logits
        logits_neg = None
        if "prompt_learner_neg" in trainer.get_model_names():
            negative = trainer.negative_context.ctx
            negative.data.copy_(torch.load(output_dir / "prompt_learner_neg" / "model.pth.tar-1")["state_dict"]["ctx"])
            with swapped_context(model.prompt_learner, negative):
                logits_neg = model(batch["img"])
    return independent_terms(logits, logits_neg, prob, weight)


@pytest.mark.parametrize("trainer", ["LabCoCoOp_FDBPL", "LabKgCoOp_FDBPL"])
@pytest.mark.parametrize("dual", [False, True], ids=["pos", "dual"])
def test_outside_trainer_trains_from_a_table_with_the_fdbpl_loss(trainer, dual, synthetic_root, ril_table,
                                                                   tiny_student, tmp_path):
    opts = ("TRAINER.FDBPL.DUAL_PROMPTS", "True", "TRAINER.FDBPL.LAMBDA_DIFF2", "0.0") if dual else ()
    out = tmp_path / "run"
    result = train_plugin(synthetic_root, out, trainer, tiny_student, "TRAINER.FDBPL.RIL_TABLE", ril_table,
                          *WHOLE_TABLE, *opts)
    assert "Training from RIL table" in result.stdout
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    assert (out / "prompt_learner_neg" / "model.pth.tar-2").is_file() == dual
    assert (" extra " in result.stdout) == (trainer == "LabKgCoOp_FDBPL")
    pos, neg = epoch_two_terms(trainer, out, synthetic_root, tiny_student, ril_table, *opts)
    assert logged(out, "pos") == pytest.approx(pos, abs=1.5e-4)
    if dual:
        assert logged(out, "neg") == pytest.approx(neg, abs=1.5e-4)
    assert 0.0 <= log_accuracy(out) <= 100.0


def test_the_independent_terms_tell_a_trained_model_from_its_first_epoch(synthetic_root, ril_table, tiny_student,
                                                                          tmp_path):
    """The check above compares against the prompts epoch 1 saved: the initial prompts give another L_pos, so a
    log computed from the wrong state (or a loss that ignored the table) would not match it."""
    out = tmp_path / "run"
    train_plugin(synthetic_root, out, "LabKgCoOp_FDBPL", tiny_student, "TRAINER.FDBPL.RIL_TABLE", ril_table,
                 *WHOLE_TABLE)
    pos_after_epoch_1, _ = epoch_two_terms("LabKgCoOp_FDBPL", out, synthetic_root, tiny_student, ril_table)
    initial = tmp_path / "initial"
    (initial / "prompt_learner").mkdir(parents=True)
    trainer = build_trainer(synthetic_root, "LabKgCoOp_FDBPL", tiny_student, tmp_path / "fresh", config=CONFIG,
                            opts=(*PLUGIN, *BASE_OPTS))
    torch.save({"state_dict": trainer.model.prompt_learner.state_dict(), "epoch": 1},
               initial / "prompt_learner" / "model.pth.tar-1")
    pos_initial, _ = epoch_two_terms("LabKgCoOp_FDBPL", initial, synthetic_root, tiny_student, ril_table)
    assert abs(pos_initial - pos_after_epoch_1) > 1e-3
    assert logged(out, "pos") != pytest.approx(pos_initial, abs=1.5e-4)


def test_fdbpl_lines_of_the_plugin_are_at_most_ten():
    source = open(os.path.join(REPO_ROOT, "tests", "outside_trainers.py")).read()
    fdbpl_part = source[source.index("# FDBPL added to both"):].strip().splitlines()
    assert len([line for line in fdbpl_part if line.strip()]) <= 10


def test_a_table_given_to_a_trainer_that_does_not_read_tables_stops_the_run(synthetic_root, ril_table, tiny_student,
                                                                              tmp_path):
    result = train_plugin(synthetic_root, tmp_path, "LabCoCoOp", tiny_student, "TRAINER.FDBPL.RIL_TABLE", ril_table,
                          expect=2)
    assert "TRAINER.FDBPL.RIL_TABLE is set, but LabCoCoOp does not train from RIL tables" in result.stderr
    assert not (tmp_path / "prompt_learner").exists()


def test_a_loader_replaced_after_the_mixin_built_it_stops_the_run(synthetic_root, ril_table, tiny_student, tmp_path):
    from trainers.base import TrainingSetupError
    from trainers.plugins import load_plugins

    load_plugins(["tests.outside_trainers"])
    trainer = build_trainer(synthetic_root, "LabKgCoOp_FDBPL", tiny_student, tmp_path, config=CONFIG,
                            opts=(*PLUGIN, *BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table))
    hard_labels = trainer.train_loader_x
    trainer.prepare_training = lambda: setattr(trainer, "train_loader_x", hard_labels)  # e.g. a subclass's override
    before = trainer.model.prompt_learner.ctx.detach().clone()
    with pytest.raises(TrainingSetupError, match="without soft labels"):
        trainer.train()
    assert torch.equal(trainer.model.prompt_learner.ctx, before)


def test_the_mixin_placed_after_the_trainer_is_refused_when_the_class_is_defined():
    from trainers.plugins import load_plugins
    from trainers.ril_supervision import RILSupervision

    load_plugins(["tests.outside_trainers"])
    from tests.outside_trainers import LabCoCoOp

    with pytest.raises(TypeError, match=r"write class Wrong\(RILSupervision, LabCoCoOp\)"):
        type("Wrong", (LabCoCoOp, RILSupervision), {})


def test_a_model_that_returns_its_loss_while_training_needs_the_hook(synthetic_root, ril_table, tiny_student,
                                                                     tmp_path):
    plugin = tmp_path / "no_hook.py"
    plugin.write_text(
        "from dassl.engine import TRAINER_REGISTRY\n"
        "from tests.outside_trainers import LabCoCoOp\n"
        "from trainers.ril_supervision import RILSupervision\n\n\n"
        "@TRAINER_REGISTRY.register()\n"
        "class NoHook_FDBPL(RILSupervision, LabCoCoOp):\n"
        "    pass\n"
    )
    result = run("train.py", "--plugin", str(plugin), *PLUGIN,
                 *train_args(synthetic_root, tmp_path / "out", "NoHook_FDBPL", tiny_student, CONFIG), *BASE_OPTS,
                 "TRAINER.FDBPL.RIL_TABLE", ril_table, expect=2)
    assert "LOGITS_IN_EVAL_MODE = True on NoHook_FDBPL" in result.stderr


def test_plugin_keys_merge_and_unknown_nodes_point_to_plugins(synthetic_root, tiny_student, tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text(open(CONFIG).read() + "  LABKGCOOP:\n    W: 2.0\n")
    args = train_args(synthetic_root, tmp_path / "out", "LabKgCoOp", tiny_student, str(config))
    result = run("train.py", *args, *BASE_OPTS, expect=2)
    assert "unknown config key TRAINER.LABKGCOOP" in result.stderr and "--plugin MODULE" in result.stderr
    env = dict(os.environ, PYTHONWARNINGS="ignore", FDBPL_PLUGINS="tests.outside_trainers")
    done = subprocess.run([sys.executable, "train.py", *args, *BASE_OPTS], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "W: 2.0" in open(tmp_path / "out" / "log.txt").read()


def test_ril_precompute_takes_the_plugin_config(synthetic_root, tiny_teacher, tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text(open(CONFIG).read() + "  LABKGCOOP:\n    W: 2.0\n")
    out = tmp_path / "table.h5"
    run_script("-m", "ril", "precompute", *PLUGIN, "--root", synthetic_root, "--seed", "1",
               "--dataset-config-file", SYNTHETIC, "--config-file", str(config), "--teacher", tiny_teacher,
               "--regions", "2", "--topk", "3", "--out", str(out), "--workers", "0", "--device", "cpu", *BASE_OPTS)
    assert out.is_file()


@pytest.mark.parametrize("source, message", [
    ("from dassl.engine import TRAINER_REGISTRY, TrainerX\n\n\n@TRAINER_REGISTRY.register()\nclass CoOp(TrainerX):\n"
     "    pass\n", 'An object named "CoOp" was already registered'),
    ("from yacs.config import CfgNode as CN\n\n\ndef extend_cfg(cfg):\n    cfg.TRAINER.COOP = CN()\n"
     "    cfg.TRAINER.COOP.N_CTX = 16\n", "its extend_cfg changes"),
], ids=["trainer-name", "config-node"])
def test_plugins_that_clash_with_the_project_are_named(source, message, synthetic_root, tiny_student, tmp_path):
    plugin = tmp_path / "lab_plugin.py"
    plugin.write_text(source)
    args = train_args(synthetic_root, tmp_path / "out", "CoOp", tiny_student, config_path("CoOp"))
    result = run("train.py", "--plugin", str(plugin), *args, expect=2)
    assert message in result.stderr and "lab_plugin" in result.stderr


def test_a_plugin_file_named_like_an_imported_module_is_refused(tmp_path):
    import datasets  # imported before any plugin, as train.py and python -m ril do
    from trainers.plugins import PluginError, load_plugins

    (tmp_path / "datasets.py").write_text("raise AssertionError('must not run')\n")
    with pytest.raises(PluginError, match="named like the module 'datasets' that is already imported"):
        load_plugins([str(tmp_path / "datasets.py")])
    assert sys.modules["datasets"] is datasets


def test_a_plugin_that_is_not_found_is_named(synthetic_root, tiny_student, tmp_path):
    args = train_args(synthetic_root, tmp_path / "out", "CoOp", tiny_student, config_path("CoOp"))
    result = run("train.py", "--plugin", "lab_trainers.cocoop", *args, expect=2)
    assert "plugin 'lab_trainers.cocoop' cannot be imported" in result.stderr
