"""scripts/lib/run_settings.py: which recorded settings make a protocol step's folder another run's."""
import os
import shlex
import subprocess
import sys

from tests.conftest import REPO_ROOT

RUN_SETTINGS = os.path.join(REPO_ROOT, "scripts", "lib", "run_settings.py")


def table_command(repo, out, config="FDBPL/vit_b32_ep50.yaml", regions="4"):
    return ["python3", "-m", "ril", "precompute", "--root", "/data", "--seed", "1", "--dataset-config-file",
            f"{repo}/configs/datasets/oxford_pets.yaml", "--config-file", f"{repo}/configs/trainers/{config}",
            "--teacher", f"{out}/teacher.pt", "--regions", regions, "--topk", "20", "--out",
            f"{out}/ril/oxford_pets/seed1/table.h5", "DATASET.NUM_SHOTS", "16"]


def compare(folder, out, command):
    return subprocess.run([sys.executable, RUN_SETTINGS, str(folder), str(out), REPO_ROOT, "--", *command],
                          capture_output=True, text=True)


def test_a_table_is_shared_by_method_configs_and_survives_a_moved_repository(tmp_path):
    out = tmp_path / "out"
    folder = out / "ril" / "oxford_pets" / "seed1"
    folder.mkdir(parents=True)
    (folder / "settings.txt").write_text(shlex.join(table_command("/old/checkout", out)))

    twin = compare(folder, out, table_command(REPO_ROOT, out, config="CoCoOp_FDBPL/vit_b32_c4_ep10_batch1_ctxv1.yaml"))
    assert (twin.returncode, twin.stdout) == (0, "")

    other = compare(folder, out, table_command(REPO_ROOT, out, regions="8"))
    assert other.returncode == 1 and "--regions: recorded 4, now 8" in other.stdout

    user_config = table_command(REPO_ROOT, out)
    user_config[user_config.index("--dataset-config-file") + 1] = "/mine/oxford_pets.yaml"
    mine = compare(folder, out, user_config)
    assert mine.returncode == 1
    assert "--dataset-config-file: recorded configs/datasets/oxford_pets.yaml, now /mine/oxford_pets.yaml" \
        in mine.stdout
