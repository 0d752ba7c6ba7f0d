"""Lazy RIL tables (`precompute --lazy`, TRAINER.FDBPL.RIL_FILL): training fills exactly the regions it
draws with the values a full precompute gives them, a rerun scores nothing, a killed run leaves a
consistent table, and precompute finishes a partly filled table into the full one."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ril.format import FILLED_DATASET, REGION_DATASETS
from ril.reader import RILTable
from tests.cli_runs import (
    BASE_OPTS, SYNTHETIC, build_trainer, config_path, kill_after_first_checkpoint, precompute_table, train_args,
)
from tests.conftest import REPO_ROOT, requires_dassl, run_script

VALUES = [name for name in REGION_DATASETS if name not in ("regions/box", "regions/flip")]


@pytest.fixture(scope="module")
def tables(synthetic_root, tiny_teacher, tmp_path_factory):
    """(full table, empty lazy table) of the same request: Synthetic base classes, 4 shots, 12 regions, top-3."""
    directory = tmp_path_factory.mktemp("lazy")
    config = config_path("FDBPL")
    full = precompute_table(synthetic_root, tiny_teacher, directory / "full.h5", config)
    lazy = precompute_table(synthetic_root, tiny_teacher, directory / "lazy.h5", config, "--lazy", *BASE_OPTS)
    return full, lazy


def lazy_copy(tables, tmp_path, name="lazy.h5"):
    return shutil.copy(tables[1], tmp_path / name)


def fill_opts(table, teacher):
    return (*BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", str(table), "TRAINER.FDBPL.RIL_FILL", "True",
            "TRAINER.FDBPL.TEACHER_BACKBONE", teacher)


def filled_pairs(path):
    """{(image, region)} whose teacher values the table stores."""
    return {tuple(pair) for pair in np.argwhere(RILTable(path, require_complete=False).filled_regions())}


def mismatches(lazy_path, full_path):
    """Where the filled regions of a lazy table differ from another table: classes, boxes and flips exactly,
    values beyond float rounding (a teacher forward over other regions may round differently)."""
    lazy, full = RILTable(lazy_path, require_complete=False), RILTable(full_path, require_complete=False)
    pairs = np.argwhere(lazy.filled_regions())
    problems = [f"image {index}: {problem}" for index in range(lazy.num_images)
                for problem in lazy.image_problems(index)]
    ours, theirs = lazy.read(pairs[:, 0], pairs[:, 1]), full.read(pairs[:, 0], pairs[:, 1])
    for field, value in ours.items():
        if value.dtype.kind == "f":
            rtol = 2.0 ** -10 if value.dtype == np.float16 else 1e-6
            same = np.allclose(value.astype(np.float64), theirs[field].astype(np.float64), rtol=rtol, atol=1e-6)
        else:
            same = np.array_equal(value, theirs[field])
        if not same:
            problems.append(f"{field} differs")
    return problems


def trained(trainer):
    """Train, recording the (image, region) pairs each batch drew; returns them and the positive context."""
    drawn, forward_backward = set(), trainer.forward_backward

    def recording(batch):
        drawn.update(zip(batch["index"].tolist(), batch["region"].tolist()))
        return forward_backward(batch)

    trainer.forward_backward = recording
    trainer.train()
    return drawn, trainer.model.prompt_learner.ctx.detach().clone()


@requires_dassl
def test_training_fills_exactly_the_drawn_regions_and_a_rerun_scores_nothing(tables, synthetic_root, tiny_student,
                                                                            tiny_teacher, tmp_path):
    full, _ = tables
    table = lazy_copy(tables, tmp_path)
    first = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "first", opts=fill_opts(table, tiny_teacher))
    drawn, first_ctx = trained(first)
    assert drawn and filled_pairs(table) == drawn
    assert first.ril_filler.scored_regions == len(drawn)
    assert first.ril_filler.teacher_forwards == 4  # 2 epochs x 2 batches of 8 regions, one forward each
    assert mismatches(table, full) == []

    second = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "second",
                           opts=fill_opts(table, tiny_teacher))
    second_drawn, second_ctx = trained(second)
    assert second_drawn == drawn
    assert (second.ril_filler.scored_regions, second.ril_filler.teacher_forwards) == (0, 0)
    assert first.ril_filler.teachers_loaded and not second.ril_filler.teachers_loaded
    assert torch.equal(second_ctx, first_ctx), "soft labels scored during training differ from those read back"

    precomputed = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "full",
                                opts=(*BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", full))
    assert torch.allclose(trained(precomputed)[1], first_ctx, rtol=1e-4, atol=1e-6)


@requires_dassl
def test_the_check_catches_a_filler_that_scores_other_pixels(tables, synthetic_root, tiny_student, tiny_teacher,
                                                             tmp_path, monkeypatch):
    """Pixels paired with the wrong regions keep every checksum consistent: only the comparison with a
    precomputed table shows it."""
    from ril.lazy import TableFiller

    fill = TableFiller.fill
    monkeypatch.setattr(TableFiller, "fill", lambda self, images, regions, pixels: fill(self, images, regions,
                                                                                         pixels.flip(0)))
    table = lazy_copy(tables, tmp_path)
    trained(build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "run", opts=fill_opts(table, tiny_teacher)))
    assert {"topk_logprob differs", "logsumexp differs", "entropy differs"} <= set(mismatches(table, tables[0]))


@requires_dassl
def test_rows_written_but_never_marked_are_scored_again(tables, synthetic_root, tiny_student, tiny_teacher, tmp_path,
                                                        monkeypatch):
    """A crash between storing a batch's rows and marking them leaves them unmarked: a rerun scores them."""
    from ril.writer import TableWriter

    def crash(self, index, regions):
        raise KeyboardInterrupt("killed before the filled flags")

    table = lazy_copy(tables, tmp_path)
    crashed = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "crashed",
                            opts=fill_opts(table, tiny_teacher))
    with monkeypatch.context() as patch:
        patch.setattr(TableWriter, "mark_filled", crash)
        with pytest.raises(KeyboardInterrupt):
            trained(crashed)
    crashed.ril_filler.close(finish=False)  # what the end of the killed process does
    assert filled_pairs(table) == set()
    rerun = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "rerun", opts=fill_opts(table, tiny_teacher))
    drawn, _ = trained(rerun)
    assert filled_pairs(table) == drawn and rerun.ril_filler.scored_regions == len(drawn)
    assert mismatches(table, tables[0]) == []


def test_an_image_checksummed_but_not_marked_done_is_finished_by_the_next_filler(tables, tiny_teacher, tmp_path):
    """A crash after an image's full checksum was written and before its done flag: its regions are all
    filled, so it reads region by region, and the next filler marks it done."""
    from ril.lazy import TableFiller
    from ril.teachers import load_teacher
    from ril.writer import RawFile

    table = lazy_copy(tables, tmp_path)
    teacher = load_teacher(tiny_teacher)
    pixels = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    with TableFiller(table, [teacher]) as filler:
        filler.fill(np.zeros(12, dtype=np.int64), np.arange(12), pixels)
    assert RILTable(table, require_complete=False).image_done(0)
    offset = RILTable(table, require_complete=False).locations["progress/done"][0]
    raw = RawFile(table)
    raw.write(offset, np.uint8(0))
    raw.close()
    reopened = RILTable(table, require_complete=False)
    assert not reopened.image_done(0) and reopened.filled([0], [3]).all()
    assert reopened.read_regions(0, [3, 7])[1].all() and reopened.image_problems(0) == []
    with TableFiller(table, [teacher]) as filler:
        filler.finish_images([0])
    assert RILTable(table, require_complete=False).image_done(0)


@requires_dassl
def test_a_run_killed_mid_epoch_and_rerun_fills_the_table_of_an_uninterrupted_run(tables, synthetic_root,
                                                                                   tiny_student, tiny_teacher,
                                                                                   tmp_path):
    """SIGKILL inside epoch 2 while loader workers read the file the training process writes; the rerun
    resumes and ends with the table and the prompts of a run never interrupted (to float rounding: the
    rerun's teacher forwards hold fewer regions of epoch 2, as some were stored before the kill)."""
    opts = (*BASE_OPTS, "OPTIM.MAX_EPOCH", "12", "DATALOADER.NUM_WORKERS", "1")
    whole, killed = lazy_copy(tables, tmp_path, "whole.h5"), lazy_copy(tables, tmp_path, "killed.h5")

    def command(output_dir, table):
        return ["train.py", *train_args(synthetic_root, output_dir, "FDBPL", tiny_student),
                *opts, *fill_opts(table, tiny_teacher)[len(BASE_OPTS):]]

    run_script(*command(tmp_path / "whole", whole))
    kill_after_first_checkpoint(command(tmp_path / "killed", killed), tmp_path / "killed",
                                ["prompt_learner", "prompt_learner_neg"])
    partial = RILTable(killed, require_complete=False)
    assert 0 < len(filled_pairs(killed)) < len(filled_pairs(whole))
    assert [problem for index in range(partial.num_images) for problem in partial.image_problems(index)] == []
    stdout = run_script(*command(tmp_path / "killed", killed)).stdout
    assert "Found checkpoints of epoch" in stdout
    assert filled_pairs(killed) == filled_pairs(whole)
    assert mismatches(killed, whole) == [] and mismatches(killed, tables[0]) == []
    for name in ("prompt_learner", "prompt_learner_neg"):
        ours = torch.load(tmp_path / "killed" / name / "model.pth.tar-12", weights_only=True)["state_dict"]
        theirs = torch.load(tmp_path / "whole" / name / "model.pth.tar-12", weights_only=True)["state_dict"]
        assert all(torch.allclose(value, theirs[key], rtol=1e-4, atol=1e-6) for key, value in ours.items()), name


def test_precompute_finishes_a_partly_filled_table_into_the_full_one(tables, synthetic_root, tiny_teacher, tmp_path):
    from ril.lazy import TableFiller
    from ril.teachers import load_teacher

    full, _ = tables
    table = lazy_copy(tables, tmp_path)
    first = RILTable(full)
    with TableFiller(table, [load_teacher(tiny_teacher)]) as filler:  # a few regions, as training would
        pairs = np.array([(0, 3), (0, 4), (5, 11)])
        rows = filler.fill(pairs[:, 0], pairs[:, 1], torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    assert filled_pairs(table) == {(0, 3), (0, 4), (5, 11)}
    zero_rows = {name: rows[name] for name in VALUES}
    assert mismatches(table, full) != []  # those came from black pixels, not the regions' pixels
    precompute_table(synthetic_root, tiny_teacher, table, config_path("FDBPL"))
    finished = RILTable(table)
    assert finished.attrs["complete"] and finished.filled_regions().all()
    others = ~np.isin(np.arange(12), [3, 4])
    for name in VALUES:  # the regions filled before are kept, the others scored as the full table has them
        assert np.array_equal(np.asarray(finished.array(name))[0, others], np.asarray(first.array(name))[0, others])
        assert np.array_equal(np.asarray(finished.array(name))[0, [3, 4]], zero_rows[name][:2])
    run_script("-m", "ril", "verify", "--table", table, "--deep")


def test_lazy_requests_that_cannot_work_are_refused(tables, synthetic_root, tiny_teacher, tmp_path):
    table = lazy_copy(tables, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ril", "precompute", "--root", synthetic_root, "--seed", "1", "--dataset-config-file",
         SYNTHETIC, "--config-file", config_path("FDBPL"), "--teacher", tiny_teacher, "--regions", "12", "--topk",
         "3", "--out", table, "--lazy", "--workers", "0", "--device", "cpu", *BASE_OPTS],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and f"RIL table {table} exists: a lazy table is filled by training" in result.stderr
    with pytest.raises(Exception, match="is a lazy table with 0 of 240 regions filled: train with "
                                        "TRAINER.FDBPL.RIL_FILL True"):
        RILTable(table)
    inspect = run_script("-m", "ril", "inspect", "--table", table).stdout
    assert "lazy table: 0 of 240 regions filled" in inspect
    assert not np.asarray(RILTable(table, require_complete=False).array(FILLED_DATASET)).any()


@requires_dassl
def test_a_filling_run_refuses_another_teacher_and_online_or_cached_settings(tables, synthetic_root, tiny_student,
                                                                             tmp_path):
    table = lazy_copy(tables, tmp_path)
    trainer = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "run",
                            opts=fill_opts(table, tiny_student))
    with pytest.raises(Exception, match="is scored by teacher"):
        trainer.before_train()
    with pytest.raises(ValueError, match="RIL_FILL scores a lazy table's missing regions from their pixels"):
        build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / "cached",
                      opts=(*fill_opts(table, tiny_student), "TRAINER.FDBPL.IN_MEMORY", "True"))
