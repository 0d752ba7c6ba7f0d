"""Tables in shards read as one (OUT.shards.json): built by separate processes (`--shard I/S`) or by a
two-node torchrun (`--keep-shards`, two local launches with the c10d rendezvous), they read and train
exactly as the one-file table of the same request; a shard resumes on its own; a manifest that does not
match its shards is refused."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ril.format import REGION_DATASETS
from ril.reader import RILTable
from ril.shards import open_table
from tests.cli_runs import BASE_OPTS, SYNTHETIC, build_trainer, config_path, precompute_table
from tests.conftest import REPO_ROOT, requires_dassl, run_script


def precompute_args(data_root, teacher, out, *flags):
    return ["-m", "ril", "precompute", "--root", data_root, "--seed", "1", "--dataset-config-file", SYNTHETIC,
            "--config-file", config_path("FDBPL"), "--teacher", teacher, "--regions", "12", "--topk", "3",
            "--out", str(out), "--workers", "0", "--device", "cpu", *flags, *BASE_OPTS]


def run_together(commands, timeout=600):
    """Start the commands at once (separate processes, as on separate machines); each must succeed."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    processes = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for command in commands]
    outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return outputs


@pytest.fixture(scope="module")
def one_file(synthetic_root, tiny_teacher, tmp_path_factory):
    return precompute_table(synthetic_root, tiny_teacher, tmp_path_factory.mktemp("one") / "table.h5",
                            config_path("FDBPL"))


@pytest.fixture(scope="module")
def three_shards(synthetic_root, tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "table.h5"
    run_together([[sys.executable, *precompute_args(synthetic_root, tiny_teacher, out, "--shard", f"{index}/3")]
                  for index in range(3)])
    return f"{out}.shards.json"


def assert_reads_as(sharded_path, one_file_path):
    sharded, whole = open_table(sharded_path), RILTable(one_file_path)
    assert sharded.attrs["complete"] and sharded.num_images == whole.num_images
    assert sharded.image_paths == whole.image_paths and np.array_equal(sharded.labels, whole.labels)
    every = np.arange(whole.num_regions)
    for index in range(whole.num_images):
        ours, theirs = sharded.read_image(index, every), whole.read_image(index, every)
        for field in ours:
            assert np.array_equal(ours[field], theirs[field]), (index, field)
    for name in REGION_DATASETS:
        assert np.array_equal(sharded.array(name), np.asarray(whole.array(name))), name


def test_three_shards_made_by_separate_processes_read_as_the_one_file_table(three_shards, one_file):
    manifest = json.load(open(three_shards, encoding="utf-8"))
    assert manifest["shards"] == [f"table.h5.rank{index}-of-3" for index in range(3)]
    assert_reads_as(three_shards, one_file)
    assert run_script("-m", "ril", "verify", "--table", three_shards, "--deep").stdout.rstrip().endswith(
        "OK (structure, stored paths, completeness, rows of 20 of 20 images)")
    assert "progress: 20 of 20 images done, complete" in run_script("-m", "ril", "inspect", "--table",
                                                                    three_shards).stdout


@requires_dassl
def test_training_from_the_manifest_gives_the_prompts_of_the_one_file_table(three_shards, one_file, synthetic_root,
                                                                           tiny_student, tmp_path):
    contexts = []
    for name, table in (("sharded", three_shards), ("one_file", one_file)):
        trainer = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path / name,
                                opts=(*BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", table))
        trainer.train()
        contexts.append(trainer.model.prompt_learner.ctx.detach().clone())
    assert torch.equal(*contexts)


def test_a_shard_resumes_on_its_own(three_shards, one_file, synthetic_root, tiny_teacher, tmp_path):
    """Shard 1 as a kill leaves it (image 4 not marked done, the shard unfinished): refused when read, and
    resumed by its own command."""
    import shutil

    import h5py

    from ril.probe import load_layout
    from ril.writer import RawFile

    folder = tmp_path / "copy"
    shutil.copytree(os.path.dirname(three_shards), folder)
    shard = folder / "table.h5.rank1-of-3"
    done_offset = load_layout(shard).locations["progress/done"][0]
    raw = RawFile(shard)
    raw.write(done_offset + 4, np.uint8(0))
    raw.close()
    with h5py.File(shard, "r+") as handle:
        handle.attrs["complete"] = False
    with pytest.raises(Exception, match=r"has unfinished shards: .*table.h5.rank1-of-3 \(6 of 7 images\)"):
        open_table(folder / "table.h5.shards.json")
    output = run_script(*precompute_args(synthetic_root, tiny_teacher, folder / "table.h5", "--shard", "1/3")).stderr
    assert "6 of 7 images already done" in output
    assert_reads_as(folder / "table.h5.shards.json", one_file)


def test_a_manifest_that_does_not_match_its_shards_is_refused(three_shards, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(os.path.dirname(three_shards), folder)
    manifest = folder / "table.h5.shards.json"
    content = json.load(open(manifest, encoding="utf-8"))
    content["shards"][0], content["shards"][1] = content["shards"][1], content["shards"][0]
    manifest.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(Exception, match="table.h5.rank1-of-3 is shard 1 of 3, but .* lists it as shard 0 of 3"):
        open_table(manifest)
    os.remove(folder / "table.h5.rank2-of-3")
    content["shards"][0], content["shards"][1] = content["shards"][1], content["shards"][0]
    manifest.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"table.h5.rank2-of-3 \(listed in .*\) does not exist: build it "
                                                r"with python -m ril precompute --shard 2/3"):
        open_table(manifest)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_of_torchrun_keep_their_shards_and_read_as_the_one_file_table(one_file, synthetic_root,
                                                                                tiny_teacher, tmp_path):
    """The CPU twin of `torchrun --nnodes 2 --rdzv-backend c10d`: two launches on this machine, one process
    each, meeting at a c10d rendezvous (gloo)."""
    out = tmp_path / "table.h5"
    endpoint = f"127.0.0.1:{free_port()}"
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "shards-test"]
    run_together([[*launch, *precompute_args(synthetic_root, tiny_teacher, out, "--keep-shards")]] * 2)
    assert sorted(os.listdir(tmp_path)) == ["table.h5.rank0-of-2", "table.h5.rank1-of-2", "table.h5.shards.json"]
    assert_reads_as(f"{out}.shards.json", one_file)
