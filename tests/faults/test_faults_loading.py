"""Hostile CLIP files: a TorchScript archive whose code writes a file when loaded, an object pickle and a
forged `data.pkl` that do the same, a truncated archive. torch's own loaders run each payload (so these
tests can fail); our loader, and every CLI that takes a CLIP path, refuses the file with one message and
nothing in it runs."""
import os
import pickle
import subprocess
import sys
import zipfile
from typing import Tuple

import pytest
import torch
from clip.model import build_model

from tests.conftest import REPO_ROOT, requires_dassl
from tests.cli_runs import SYNTHETIC, config_path
from trainers.clip_loading import load_clip, read_state_dict


class WritesOnLoad(torch.nn.Module):
    """TorchScript code in `__setstate__`, which torch.jit.load runs while reading the archive."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        torch.ops.aten.save(torch.zeros(1), self.target)  # a TorchScript op that writes a file


class OpensOnUnpickle:
    """Unpickling calls `open(target, "w")`, which creates the file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (self.target, "w")


def payload_archive(tiny_student, path, marker):
    """A tiny CLIP traced as OpenAI ships it, plus a scripted submodule with no weights that writes `marker`
    when loaded: torch.jit.load gives exactly the CLIP's state dict, after running the payload."""
    model = build_model(read_state_dict(tiny_student)).eval()
    model.payload = torch.jit.script(WritesOnLoad(str(marker)))
    traced = torch.jit.trace_module(model, {"encode_image": torch.randn(1, 3, 32, 32)})
    torch.jit.save(traced, str(path))
    return str(path)


def payload_pickle(tiny_student, path, marker):
    """CLIP weights saved with `torch.save` next to an object whose unpickling creates `marker`."""
    torch.save({**torch.load(tiny_student, weights_only=True), "extra": OpensOnUnpickle(str(marker))}, path)
    return str(path)


def forged_archive(tiny_student, path, marker):
    """A real CLIP archive whose data.pkl is replaced by a pickle that creates `marker` (the classic attack)."""
    source = payload_archive(tiny_student, path.with_name("source.pt"), marker)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as forged:
        for name in original.namelist():
            data = original.read(name)
            forged.writestr(name, pickle.dumps(OpensOnUnpickle(str(marker)), protocol=2)
                            if name.endswith("/data.pkl") else data)
    return str(path)


def refused_by_cli(*args):
    """stderr of an entry point that must refuse its input: exit status 2 and one `error:` line, no traceback."""
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_archive_that_runs_code_is_refused_unrun_though_torch_jit_load_runs_it(tiny_student, tmp_path):
    marker = tmp_path / "ran"
    archive = payload_archive(tiny_student, tmp_path / "clip.pt", marker)
    for load in (read_state_dict, load_clip):
        with pytest.raises(ValueError) as refused:
            load(archive)
        message = str(refused.value)
        assert message.startswith(f'"{archive}" is a TorchScript archive that holds something other than CLIP weights')
        assert "WritesOnLoad runs its own code when loaded (__setstate__)" in message
        assert "no code from it ran" in message
    assert not marker.exists()
    weights = torch.jit.load(archive).state_dict()
    assert marker.exists(), "the payload must be live, or this test proves nothing"
    assert set(weights) == set(torch.load(tiny_student, weights_only=True)), "and torch.jit.load sees a CLIP"


def test_object_pickle_is_refused_unrun_though_torch_load_runs_it(tiny_student, tmp_path):
    marker = tmp_path / "ran"
    path = payload_pickle(tiny_student, tmp_path / "clip.pt", marker)
    with pytest.raises(ValueError, match="not a CLIP checkpoint: it holds Python objects other than") as refused:
        read_state_dict(path)
    assert "weights_only" not in str(refused.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists(), "the payload must be live, or this test proves nothing"


def test_forged_data_pickle_is_refused_unrun_though_pickle_runs_it(tiny_student, tmp_path):
    marker = tmp_path / "ran"
    archive = forged_archive(tiny_student, tmp_path / "clip.pt", marker)
    with pytest.raises(ValueError, match=r"holds something other than CLIP weights \(global [\w.]*open is not allowed"):
        read_state_dict(archive)
    assert not marker.exists()
    with zipfile.ZipFile(archive) as forged:
        pickle.loads(forged.read(next(name for name in forged.namelist() if name.endswith("/data.pkl"))))
    assert marker.exists(), "the payload must be live, or this test proves nothing"


def hostile_file(kind, tiny_student, tmp_path, marker):
    if kind == "payload_archive":
        return payload_archive(tiny_student, tmp_path / "clip.pt", marker)
    if kind == "object_pickle":
        return payload_pickle(tiny_student, tmp_path / "clip.pt", marker)
    whole = open(payload_archive(tiny_student, tmp_path / "whole.pt", marker), "rb").read()
    (tmp_path / "clip.pt").write_bytes(whole[: len(whole) // 2])
    return str(tmp_path / "clip.pt")


@requires_dassl
@pytest.mark.parametrize("kind, reason", [
    ("payload_archive", "is a TorchScript archive that holds something other than CLIP weights"),
    ("object_pickle", "is not a CLIP checkpoint: it holds Python objects other than tensors"),
    ("truncated_archive", "is not a CLIP checkpoint: it is a damaged or truncated zip archive"),
])
def test_train_refuses_a_hostile_backbone_with_one_message(kind, reason, tiny_student, synthetic_root, tmp_path):
    marker = tmp_path / "ran"
    path = hostile_file(kind, tiny_student, tmp_path, marker)
    error = refused_by_cli(
        "train.py", "--root", synthetic_root, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", SYNTHETIC,
        "--config-file", config_path("CoOp"), "--output-dir", str(tmp_path / "out"), "--backbone", path,
    )
    assert error.startswith(f'error: "{path}" {reason}') and "weights_only" not in error
    assert not marker.exists()


@requires_dassl
def test_ril_precompute_refuses_a_teacher_archive_that_runs_code(tiny_student, synthetic_root, tmp_path):
    marker = tmp_path / "ran"
    archive = payload_archive(tiny_student, tmp_path / "teacher.pt", marker)
    error = refused_by_cli(
        "-m", "ril", "precompute", "--root", synthetic_root, "--seed", "1", "--dataset-config-file", SYNTHETIC,
        "--config-file", config_path("FDBPL"), "--teacher", archive, "--regions", "2", "--topk", "2",
        "--out", str(tmp_path / "table.h5"), "--workers", "0", "--device", "cpu",
    )
    assert error.startswith(f'error: "{archive}" is a TorchScript archive that holds something other than CLIP')
    assert not marker.exists() and not (tmp_path / "table.h5").exists()


def test_ril_add_features_refuses_a_student_archive_that_runs_code(tiny_student, tmp_path):
    marker = tmp_path / "ran"
    archive = payload_archive(tiny_student, tmp_path / "student.pt", marker)
    error = refused_by_cli("-m", "ril", "add-features", "--table", str(tmp_path / "table.h5"), "--model", archive,
                           "--root", str(tmp_path), "--workers", "0", "--device", "cpu")
    assert error.startswith(f'error: "{archive}" is a TorchScript archive that holds something other than CLIP')
    assert not marker.exists()
