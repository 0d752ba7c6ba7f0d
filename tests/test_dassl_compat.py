"""Each Dassl fix: the breakage is real in unpatched Dassl (run in a subprocess), and gone here."""
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import REPO_ROOT, requires_dassl

pytestmark = requires_dassl

# Runs in a fresh interpreter that imports Dassl *without* trainers.dassl_compat.
UNPATCHED_PROBES = textwrap.dedent(
    """
    import json, os, sys, tempfile
    import torch
    from PIL import Image
    from dassl.config import get_cfg_default
    from dassl.optim import build_lr_scheduler
    from dassl.data.transforms import randaugment
    from dassl.engine.trainer import TrainerBase
    from dassl.utils import save_checkpoint, load_checkpoint

    def probe(function):
        try:
            function()
            return "ok"
        except Exception as error:
            return type(error).__name__

    cfg = get_cfg_default()
    cfg.OPTIM.WARMUP_EPOCH = 1
    cfg.OPTIM.WARMUP_TYPE = "constant"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    results = {"warmup_init": probe(lambda: build_lr_scheduler(optimizer, cfg.OPTIM))}

    sys.path.insert(0, os.environ["REPO_ROOT"])
    import torch.optim.lr_scheduler as sched
    successor = sched.CosineAnnealingLR(optimizer, 5.0)
    from dassl.optim.lr_scheduler import ConstantWarmupScheduler
    warmup = ConstantWarmupScheduler.__new__(ConstantWarmupScheduler)
    warmup.successor, warmup.warmup_epoch, warmup.cons_lr = successor, 1, 1e-5
    sched.LRScheduler.__init__(warmup, optimizer)
    directory = tempfile.mkdtemp()
    save_checkpoint({"state_dict": {}, "epoch": 1, "scheduler": warmup.state_dict(), "val_result": None},
                    directory, model_name="model.pth.tar-1")
    results["scheduler_checkpoint"] = probe(lambda: load_checkpoint(os.path.join(directory, "model.pth.tar-1")))

    save_checkpoint({"state_dict": {}, "epoch": 1, "val_result": None}, os.path.join(directory, "net"),
                    model_name="model.pth.tar-1")
    trainer = TrainerBase()
    trainer.register_model("net", torch.nn.Module())
    results["val_result_none"] = probe(lambda: trainer.load_model(directory, epoch=1))

    results["np_int"] = probe(lambda: randaugment.SolarizeAdd(Image.new("RGB", (4, 4)), 10))

    torch.save({"state_dict": {"w": torch.zeros(64)}}, os.path.join(directory, "whole.pth"))
    data = open(os.path.join(directory, "whole.pth"), "rb").read()
    open(os.path.join(directory, "half.pth"), "wb").write(data[: len(data) // 2])
    results["truncated_checkpoint"] = probe(lambda: load_checkpoint(os.path.join(directory, "half.pth")))

    from dassl.data.data_manager import read_image
    Image.new("RGB", (64, 64), (9, 99, 199)).save(os.path.join(directory, "image.jpg"))
    data = open(os.path.join(directory, "image.jpg"), "rb").read()
    open(os.path.join(directory, "cut.jpg"), "wb").write(data[: len(data) // 2])
    try:
        read_image(os.path.join(directory, "cut.jpg"))
        results["image_error_names_path"] = None
    except OSError as error:
        results["image_error_names_path"] = "cut.jpg" in str(error)
    import logging
    results["warnings_logged"] = logging.getLogger("any.library").isEnabledFor(logging.WARNING)
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def unpatched_results():
    result = subprocess.run(
        [sys.executable, "-c", UNPATCHED_PROBES],
        env=dict(os.environ, REPO_ROOT=REPO_ROOT, PYTHONWARNINGS="ignore"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _warmup_cfg():
    import trainers.dassl_compat  # noqa: F401  (applies the fixes)
    from trainers.config import get_cfg

    cfg = get_cfg()
    cfg.OPTIM.MAX_EPOCH = 4
    cfg.OPTIM.LR = 0.1
    cfg.OPTIM.LR_SCHEDULER = "cosine"
    cfg.OPTIM.WARMUP_EPOCH = 1
    cfg.OPTIM.WARMUP_TYPE = "constant"
    cfg.OPTIM.WARMUP_CONS_LR = 1e-5
    return cfg


def test_warmup_scheduler_builds_and_schedules(unpatched_results):
    from dassl.optim import build_lr_scheduler

    assert unpatched_results["warmup_init"] == "TypeError"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(optimizer, _warmup_cfg().OPTIM)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-5)
    # WARMUP_RECOUNT (Dassl's default): the cosine restarts at its epoch 0 after the warm-up epoch.
    assert lrs[1:] == pytest.approx([0.1 * (1 + math.cos(k * math.pi / 4)) / 2 for k in (0, 1, 2)])


def test_scheduler_state_survives_weights_only_checkpoint(unpatched_results, tmp_path):
    from dassl.optim import build_lr_scheduler
    from dassl.utils import load_checkpoint, save_checkpoint

    assert unpatched_results["scheduler_checkpoint"] == "UnpicklingError"
    cfg = _warmup_cfg()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_lr_scheduler(optimizer, cfg.OPTIM)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    save_checkpoint(
        {"state_dict": {}, "epoch": 2, "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "val_result": None},
        str(tmp_path), model_name="model.pth.tar-2",
    )
    checkpoint = load_checkpoint(str(tmp_path / "model.pth.tar-2"))

    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    restored = build_lr_scheduler(fresh_optimizer, cfg.OPTIM)
    fresh_optimizer.load_state_dict(checkpoint["optimizer"])  # as Dassl's resume_from_checkpoint does
    restored.load_state_dict(checkpoint["scheduler"])
    assert restored.last_epoch == scheduler.last_epoch
    assert restored.successor.last_epoch == scheduler.successor.last_epoch
    optimizer.step()
    scheduler.step()
    fresh_optimizer.step()
    restored.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    from dassl.utils import load_checkpoint

    from trainers.dassl_compat import CheckpointError

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_load_model_accepts_val_result_none(unpatched_results, tmp_path, capsys):
    from dassl.engine.trainer import TrainerBase
    from dassl.utils import save_checkpoint

    import trainers.dassl_compat  # noqa: F401

    assert unpatched_results["val_result_none"] == "TypeError"
    net = torch.nn.Linear(2, 2)
    save_checkpoint({"state_dict": net.state_dict(), "epoch": 3, "val_result": None},
                    str(tmp_path / "net"), model_name="model.pth.tar-3")
    trainer = TrainerBase()
    target = torch.nn.Linear(2, 2)
    trainer.register_model("net", target)
    trainer.load_model(str(tmp_path), epoch=3)
    assert torch.equal(target.weight, net.weight)
    assert "val_result=n/a" in capsys.readouterr().out


def test_np_int_in_augmentations(unpatched_results):
    from PIL import Image
    from dassl.data.transforms import autoaugment, randaugment

    import trainers.dassl_compat  # noqa: F401

    assert unpatched_results["np_int"] == "AttributeError"
    image = Image.new("RGB", (8, 8), (100, 120, 140))
    assert randaugment.SolarizeAdd(image, 10).size == (8, 8)
    policy = autoaugment.ImageNetPolicy()
    assert policy(image).size == (8, 8)
    import numpy

    assert not hasattr(numpy, "int"), "the fix must not add np.int to NumPy itself"


def test_logging_is_not_disabled_by_dassl(unpatched_results):
    import logging

    import trainers.dassl_compat  # noqa: F401

    assert unpatched_results["warnings_logged"] is False
    assert logging.getLogger("any.library").isEnabledFor(logging.WARNING)


def test_truncated_or_damaged_checkpoint_is_named(unpatched_results, tmp_path):
    from dassl.utils import load_checkpoint

    from trainers.dassl_compat import CheckpointError

    assert unpatched_results["truncated_checkpoint"] == "RuntimeError"
    path = tmp_path / "model.pth.tar-2"
    torch.save({"state_dict": {"w": torch.arange(4096.0)}}, path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=rf'"{path}" is not a usable checkpoint: it is not a complete zip'):
        load_checkpoint(str(path))
    tensor_start = whole.index(torch.arange(4096.0).numpy().tobytes()[:64])
    path.write_bytes(whole[:tensor_start + 100] + b"\xff" * 8 + whole[tensor_start + 108:])
    with pytest.raises(CheckpointError, match=r"its member .*data/0 fails its checksum"):
        load_checkpoint(str(path))
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint(str(legacy))["w"], torch.ones(3))
    legacy.write_bytes(legacy.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="it ends early"):
        load_checkpoint(str(legacy))


def test_unreadable_image_is_named_also_from_a_loader_worker(unpatched_results, tmp_path):
    from PIL import Image
    from dassl.data.data_manager import read_image
    from torch.utils.data import DataLoader

    from trainers.dassl_compat import UnreadableImageError

    assert unpatched_results["image_error_names_path"] is False
    path = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (9, 99, 199)).save(path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UnreadableImageError, match=rf"^cannot read the image {path}: .*Replace the file"):
        read_image(str(path))
    loader = DataLoader([str(path)], num_workers=1, collate_fn=lambda paths: [read_image(p) for p in paths])
    with pytest.raises(UnreadableImageError) as error:
        next(iter(loader))
    assert str(error.value).startswith(f"cannot read the image {path}: ") and "Traceback" not in str(error.value)


LOCALE_PROBE = textwrap.dedent(  # raw: the command line itself must be ASCII under LC_ALL=C
    r"""
    import os, sys
    sys.path.insert(0, os.environ["REPO_ROOT"])
    if sys.argv[1] == "patched":
        import trainers.dassl_compat
    from dassl.utils.logger import Logger
    try:
        logger = Logger(sys.argv[2])
        logger.file.write("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e")
        logger.file.close()
        print("ok")
    except UnicodeEncodeError:
        print("UnicodeEncodeError")
    """
)


@pytest.mark.parametrize("mode, expected", [("unpatched", "UnicodeEncodeError"), ("patched", "ok")])
def test_log_file_is_utf8_under_an_ascii_locale(mode, expected, tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONIOENCODING", "LC_CTYPE")}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", REPO_ROOT=REPO_ROOT, PYTHONWARNINGS="ignore")
    log = tmp_path / "log.txt"
    result = subprocess.run([sys.executable, "-c", LOCALE_PROBE, mode, str(log)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == expected, result.stderr[-2000:]
    if mode == "patched":
        assert log.read_text(encoding="utf-8") == "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e"
