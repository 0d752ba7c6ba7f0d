"""The tiny CLIPs pretrained by scripts/pretrain_tiny_clip.py for the tests that need models that have
learned something (tests/test_learning.py, tests/test_ood.py); the `pretrained` fixture (conftest.py)
makes them once per test session: under pytest-xdist the first worker that needs them pretrains them into
the session's shared temporary folder while the others wait on a lock, then all read the same files.

FDBPL_TEST_PRETRAINED=<dir> reuses <dir>/student.pt and <dir>/teacher.pt instead, each only if its sidecar
(<name>.pt.json) records exactly the current preset's settings and the file's sha256.
"""
import fcntl
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED_ENV = "FDBPL_TEST_PRETRAINED"
PRESETS = ("student", "teacher")


def preset_settings(preset):
    """The settings a sidecar records for `preset` at its defaults, less those that cannot change the weights."""
    from scripts.pretrain_tiny_clip import parse_args

    settings = vars(parse_args(["--preset", preset, "--out", "unused.pt"]))
    for key in ("out", "workers", "probe_every", "probe_images"):
        settings.pop(key)
    return settings


def reusable(path, preset):
    """Why `path` cannot stand for `preset` (a sentence), or "" when its sidecar matches."""
    from trainers.clip_loading import file_sha256

    if not (os.path.isfile(path) and os.path.isfile(f"{path}.json")):
        return f"{path} or its sidecar is missing"
    record, expected = json.load(open(f"{path}.json")), preset_settings(preset)
    differing = [key for key in expected if record["settings"].get(key) != expected[key]]
    if differing:
        found = {key: record["settings"].get(key) for key in differing}
        wanted = {key: expected[key] for key in differing}
        return f"{path}.json records {found}, where the {preset} preset has {wanted}"
    if record.get("sha256") != file_sha256(path):
        return f"{path} is not the file its sidecar describes (sha256 differs)"
    return ""


def pretrain(presets, directory):
    """Pretrain `presets` at once, one process and one thread each, into directory/<preset>.pt."""
    script = os.path.join(REPO_ROOT, "scripts", "pretrain_tiny_clip.py")
    runs = {}
    for preset in presets:
        log = open(directory / f"{preset}.log", "w")
        command = [sys.executable, script, "--preset", preset, "--out", str(directory / f"{preset}.pt")]
        runs[preset] = (subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT), log)
    codes = {preset: process.wait(timeout=1800) for preset, (process, _) in runs.items()}
    for preset, code in codes.items():
        runs[preset][1].close()
        if code:
            tail = open(directory / f"{preset}.log").read()[-3000:]
            raise AssertionError(f"pretraining the {preset} preset exited with {code}:\n{tail}")


def pretrained_clips(tmp_path_factory):
    """{"student": path, "teacher": path}: reused from $FDBPL_TEST_PRETRAINED where valid, else pretrained."""
    reuse_dir = os.environ.get(PRETRAINED_ENV)
    paths, missing = {}, []
    for preset in PRESETS:
        path = os.path.join(reuse_dir, f"{preset}.pt") if reuse_dir else ""
        reason = reusable(path, preset) if reuse_dir else f"{PRETRAINED_ENV} is not set"
        if reason:
            print(f"pretraining the {preset} preset: {reason}")
            missing.append(preset)
        else:
            paths[preset] = path
    if missing:
        directory = shared_directory(tmp_path_factory)
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if pretraining fails
            todo = [preset for preset in missing if reusable(str(directory / f"{preset}.pt"), preset)]
            if todo:
                pretrain(todo, directory)
            reused = sorted(set(missing) - set(todo))
            if reused:
                print(f"pretrained {', '.join(reused)} reused from another test process ({directory})")
        paths.update({preset: str(directory / f"{preset}.pt") for preset in missing})
    return paths


def shared_directory(tmp_path_factory):
    """The test session's folder for the pretrained CLIPs: under pytest-xdist, beside the workers' own."""
    base = tmp_path_factory.getbasetemp()
    directory = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "pretrained"
    directory.mkdir(exist_ok=True)
    return directory
