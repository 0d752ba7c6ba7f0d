"""Shared fixtures: tiny CLIP checkpoints, and the Dassl skip rule with its summary line."""
import importlib.util
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

DASSL_AVAILABLE = importlib.util.find_spec("dassl") is not None
DASSL_SKIP_REASON = (
    "Dassl.pytorch is not importable: install it with scripts/install.sh "
    "(DASSL_SRC=/path/to/Dassl.pytorch for a local checkout)"
)
requires_dassl = pytest.mark.skipif(not DASSL_AVAILABLE, reason=DASSL_SKIP_REASON)


def pytest_configure(config):
    for message in ("pkg_resources is deprecated", "`torch.jit", "Converting a tensor to a Python boolean"):
        config.addinivalue_line("filterwarnings", f"ignore:{message}")


def pytest_terminal_summary(terminalreporter):
    """One line per reason tests were skipped (Dassl missing, open_clip_torch missing), or that none were."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2].removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else ""
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        terminalreporter.write_line(f"{count} test(s) skipped because {reason}", yellow=True)
    if DASSL_AVAILABLE and not any(DASSL_SKIP_REASON in reason for reason in reasons):
        terminalreporter.write_line("Dassl.pytorch is importable: no test was skipped for it")


def run_script(*args, cwd=REPO_ROOT, env=None, timeout=900):
    """Run a repository entry point the way a user does; fail with its output on error."""
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny student (width 64, 2 layers) and a larger teacher (width 128, 3 layers), 32 px input."""
    directory = tmp_path_factory.mktemp("tiny_clip")
    run_script("scripts/make_tiny_clip.py", "--out", str(directory / "student.pt"), "--seed", "1")
    run_script(
        "scripts/make_tiny_clip.py", "--out", str(directory / "teacher.pt"),
        "--width", "128", "--layers", "3", "--seed", "2",
    )
    return directory


@pytest.fixture(scope="session")
def tiny_student(tiny_clip_dir):
    return str(tiny_clip_dir / "student.pt")


@pytest.fixture(scope="session")
def tiny_teacher(tiny_clip_dir):
    return str(tiny_clip_dir / "teacher.pt")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A DATASET.ROOT where the Synthetic dataset is generated on first use."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def ril_table(synthetic_root, tiny_teacher, tmp_path_factory):
    """RIL table of the Synthetic base classes (4 shots, seed 1, 12 regions, top-3), built with a copy
    of the teacher that is deleted afterwards: training must never need the teacher."""
    import shutil

    from tests.cli_runs import config_path, precompute_table

    directory = tmp_path_factory.mktemp("ril")
    teacher = shutil.copy(tiny_teacher, directory / "teacher_copy.pt")
    path = precompute_table(synthetic_root, teacher, directory / "synthetic_base_4shot.h5", config_path("FDBPL"))
    os.remove(teacher)
    return path


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """{"student": path, "teacher": path} of the pretrained tiny CLIPs (tests/pretrained_clips.py), made once."""
    from tests.pretrained_clips import pretrained_clips

    return pretrained_clips(tmp_path_factory)
