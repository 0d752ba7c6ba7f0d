"""scripts/benchmark_speed.py: the quick mode runs every measurement and reports it (the lazy table's
second run scores nothing); the architecture shapes are OpenAI's; the epoch view's arithmetic."""
import json
import math

import pytest
import torch
from clip.model import build_model

from tests.conftest import DASSL_AVAILABLE, requires_dassl

if DASSL_AVAILABLE:  # the benchmark drives Dassl's data loaders
    from scripts import benchmark_speed as benchmark

pytestmark = requires_dassl

# Parameter counts of OpenAI's released CLIP models (as their model card and notebook print them).
OPENAI_PARAMETERS = {
    "RN50": 102_007_137, "RN101": 119_688_033, "ViT-B/32": 151_277_313, "ViT-B/16": 149_620_737,
    "ViT-L/14": 427_616_513, "ViT-L/14@336px": 427_944_193,
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("speed")
    json_path, markdown_path = directory / "speed.json", directory / "speed.md"
    benchmark.main(["--quick", "--workdir", str(directory / "work"), "--json", str(json_path),
                    "--markdown", str(markdown_path)])
    return json.loads(json_path.read_text()), markdown_path.read_text()


def test_quick_mode_times_every_mode(quick_run):
    results, _ = quick_run
    runs = {run["mode"]: run for run in results["steps"]}
    assert set(runs) == set(benchmark.MODES) - {benchmark.LAZY} | set(benchmark.LAZY_RUNS)
    for run in runs.values():
        assert run["student"] == "tiny-student" and len(run["step_ms"]) == 2 and len(run["data_ms"]) == 2
        assert 0 < run["min_ms"] <= run["median_ms"] <= run["max_ms"]
        assert all(data <= step for data, step in zip(run["data_ms"], run["step_ms"]))
        assert run["peak_memory"] > 0


def test_quick_mode_lazy_runs_fill_then_reread_the_same_regions(quick_run):
    """Counts, not times: the 1st run's teacher scores every region its timed steps draw (none was filled by
    its warm-up), the 2nd run draws the same regions and runs the teacher on none."""
    results, markdown = quick_run
    first, second = (next(run for run in results["steps"] if run["mode"] == label) for label in benchmark.LAZY_RUNS)
    batch, warmup, steps = (results["settings"][key] for key in ("batch_size", "warmup", "steps"))
    assert first["teacher_forwards"] == warmup + steps and first["scored_regions"] == batch * (warmup + steps)
    assert first["timed_scored_regions"] == len(first["timed_pairs"]) == batch * steps
    assert second["teacher_forwards"] == second["scored_regions"] == 0
    assert second["timed_pairs"] == first["timed_pairs"] and second["same_timed_regions"]
    assert "### Lazy RIL table (fdbpl-lazy)" in markdown and "fdbpl-lazy 2nd run: teacher forwards = 0" in markdown


def test_quick_mode_reports_breakdown_truncation_evaluation_and_epochs(quick_run):
    results, markdown = quick_run
    lengths = {(run["classes"], run["truncate"]): run["text_length"] for run in results["truncation"]}
    assert set(lengths) == {(20, True), (20, False), (60, True), (60, False)}
    assert lengths[(20, False)] == lengths[(60, False)] == 77
    assert lengths[(20, True)] == lengths[(60, True)] < 77
    evaluation = results["eval"]
    assert evaluation["batches"] == 2 and evaluation["agreement"] == 1.0
    assert evaluation["before_s"] > 0 and 0 < evaluation["text_s"] < evaluation["after_s"]
    (breakdown,) = results["breakdown"]
    assert list(breakdown["stage_ms"]) == list(benchmark.STAGES) and breakdown["text_sequences"] == 40
    assert all(milliseconds > 0 for milliseconds in breakdown["stage_ms"].values())
    assert {row["mode"] for row in results["epochs"]} == {"fdbpl-pixels", "fdbpl-cache", "fdbpl-lazy"}
    assert results["precompute"]["seconds_per_region"] > 0 and results["cache_s_per_region"]["tiny-student"] > 0
    for title in ("Training step time", "Targets", "Where an fdbpl-pixels step", "Text truncation", "Evaluation, 100 classes", "Epoch view"):
        assert f"### {title}" in markdown


@pytest.mark.parametrize("name", sorted(OPENAI_PARAMETERS))
def test_architectures_have_openai_shapes(name):
    with torch.device("meta"):
        model = benchmark.build_architecture(name)
    assert sum(param.numel() for param in model.parameters()) == OPENAI_PARAMETERS[name]


def test_random_checkpoint_round_trips_through_clip_loading(tmp_path):
    path = benchmark.model_checkpoint("tiny-student", str(tmp_path))
    rebuilt = build_model(torch.load(path, weights_only=True))
    assert rebuilt.visual.input_resolution == 32 and rebuilt.transformer.width == 64
    assert benchmark.model_checkpoint(path, str(tmp_path)) == path


def test_epoch_view_by_hand():
    """Online 3.2 s and FDBPL 1.6 s per batch of 32 (0.1 and 0.05 s per image and epoch); 0.5 s per
    precomputed region, M = 500: one-off 250 s per image, repaid after 250 / 0.05 = 5000 epochs."""
    args = benchmark.parse_args(["--students", "ViT-B/32", "--paper-regions", "500", "--paper-epochs", "50"])
    steps = [{"student": "ViT-B/32", "mode": "online-teacher", "median_ms": 3200.0},
             {"student": "ViT-B/32", "mode": "fdbpl-pixels", "median_ms": 1600.0}]
    (row,) = benchmark.epoch_view(args, steps, 0.5, {})
    assert row["one_off_s_per_image"] == pytest.approx(250.0)
    assert row["epoch_s_per_image"] == pytest.approx(0.05)
    assert row["payback_epochs"] == pytest.approx(5000.0)
    assert row["online_total_s_per_image"] == pytest.approx(5.0)
    assert row["fdbpl_total_s_per_image"] == pytest.approx(252.5)
    assert row["break_even_regions"] == pytest.approx(5.0)
    steps[1]["median_ms"] = 4000.0
    assert math.isinf(benchmark.epoch_view(args, steps, 0.5, {})[0]["payback_epochs"])


@pytest.mark.parametrize("argv, message", [
    (["--modes", "coop,teacherless"], "unknown teacherless"),
    (["--parts", "eval,epochs"], "epochs needs"),
    (["--students", "ViT-B/99"], "neither an architecture"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(argv)
    assert message in capsys.readouterr().err
