"""RIL tables under the faults a hostile user meets: a full disk, a file size limit, flipped bytes in
stored paths, rows and HDF5 metadata, NaN from a teacher, invalid requests, an unwritable --out, a
truncated image. Each ends in one clear error (exit status 2 from `python -m ril`) or a detected
problem: never a table that claims to be complete, never a crash, and no temporary file left."""
import errno
import glob
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys

import h5py
import numpy as np
import pytest

import ril.probe
import ril.writer
from ril.features import add_student_features
from ril.format import RILTableError, make_attrs
from ril.merge import merge_tables
from ril.precompute import RegionSpec, precompute
from ril.reader import RILTable
from ril.region_dataset import RegionDataset
from ril.summary import verify
from ril.writer import TableWriter, complete_table, create_table
from tests.conftest import REPO_ROOT, requires_dassl
from tests.test_ril_cli import precompute_args, ril_main
from tests.test_ril_format import build_table, settings, toy_fingerprint
from tests.test_ril_precompute import assert_same_results

TEMPORARY = ("*.creating-*", "*.merging-*", "*.features-*")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def leftovers(directory):
    return [name for pattern in TEMPORARY for name in glob.glob(os.path.join(directory, pattern))]


def offset_of(path, name, index=0):
    """File offset of row `index` of dataset `name`."""
    with h5py.File(path, "r") as handle:
        dataset = handle[name]
        return dataset.id.get_offset() + index * dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))


def flip(path, offset, mask=0xFF):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ mask]))


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_teacher):
    """(table, image root, paths, labels, teacher): 6 images x 5 regions, top-2 of 4 classes."""
    return build_table(str(tmp_path_factory.mktemp("faults_tables")), tiny_teacher)


@pytest.fixture
def table(built, tmp_path):
    copy = str(tmp_path / "table.h5")
    shutil.copy(built[0], copy)
    return copy


def cli_error(capsys, args):
    """The error of `python -m ril ARGS` run in this process, which must end with one message, exit status 2."""
    assert ril_main(args) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("error: ") == 1 and "Traceback" not in stderr, stderr
    return stderr[stderr.index("error: "):]


# --- writes that fail ------------------------------------------------------------------------------


def table_args(root, teacher, out):
    """`python -m ril precompute` of the Synthetic dataset, 96 regions per image: a 70 KiB table."""
    args = precompute_args(root, teacher, out)
    args[args.index("--regions") + 1] = "96"
    return args


@pytest.fixture(scope="module")
def synthetic_reference(tmp_path_factory, tiny_teacher):
    """A complete table of the Synthetic dataset made by `python -m ril precompute`, and its data root."""
    directory = tmp_path_factory.mktemp("faults_synthetic")
    out = directory / "reference.h5"
    assert ril_main(table_args(directory / "data", tiny_teacher, out)) == 0
    return out, directory / "data"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 48 KiB tmpfs, smaller than the 72 KiB table: a disk that fills up (write() fails with ENOSPC)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; test_a_file_size_limit_* covers failing writes without it")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True,
                            encoding="utf-8")
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def no_preallocation(fd, offset, length):
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


@requires_dassl
def test_a_full_disk_is_an_error_and_after_freeing_space_the_same_command_resumes(
        synthetic_reference, tiny_teacher, small_tmpfs, monkeypatch, capsys):
    reference, root = synthetic_reference
    out = small_tmpfs / "table.h5"
    args = table_args(root, tiny_teacher, out)
    error = cli_error(capsys, args)
    assert f"cannot create RIL table {out}: No space left on device; free space on that disk" in error
    assert os.listdir(small_tmpfs) == []  # the half-made temporary file is gone
    monkeypatch.setattr(os, "posix_fallocate", no_preallocation)  # a file system that cannot preallocate
    error = cli_error(capsys, args)
    assert f"to RIL table {out}: No space left on device" in error and "rerunning the same command resumes" in error
    unfinished = RILTable(out, require_complete=False)
    assert not unfinished.attrs["complete"] and 0 < unfinished.done.sum() < unfinished.num_images
    assert [problem for problem in verify(out, deep=True).problems if "unfinished" not in problem] == []
    with pytest.raises(RILTableError, match="unfinished"):
        RILTable(out)  # never trained from
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_tmpfs)], check=True)
    assert ril_main(args) == 0
    assert_same_results(reference, out)
    assert os.listdir(small_tmpfs) == ["table.h5"]


LIMITED_WRITE = """
import sys
import h5py
from ril.format import REGION_DATASETS, read_attrs
from ril.writer import TableWriter, create_table
out, reference, step = sys.argv[1:]
with h5py.File(reference, "r") as handle:
    attrs, labels = read_attrs(handle.attrs), handle["images/label"][()]
    paths = handle["images/path"].asstr()[()].tolist()
    rows, size = {name: handle[name][8] for name in REGION_DATASETS}, handle["images/size"][8]
if step == "create":
    create_table(out, dict(attrs, complete=False), paths, labels)
else:
    with TableWriter(out) as writer:
        writer.write_image(8, size, rows)
"""


def limited_write(out, reference, step, limit):
    """Create `out`, or write image 8 into it, in a child process under `ulimit -f` of `limit` bytes. SIGXFSZ is
    ignored, as a shell's `trap '' XFSZ` does, so write() fails with EFBIG instead of killing the process."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-c", LIMITED_WRITE, str(out), str(reference), step], cwd=REPO_ROOT,
                          capture_output=True, encoding="utf-8", preexec_fn=limit_file_size, timeout=300)


@requires_dassl
def test_a_file_size_limit_stops_writes_with_a_message_and_the_run_resumes(synthetic_reference, tiny_teacher,
                                                                           tmp_path, capsys):
    """What test_a_full_disk_* checks without root: the writes of creation and of rows that fail."""
    reference, root = synthetic_reference
    out = tmp_path / "table.h5"
    created = limited_write(out, reference, "create", 4096)
    assert f"TableWriteError: cannot create RIL table {out}: File too large;" in created.stderr, created.stderr
    assert os.listdir(tmp_path) == []
    shutil.copy(reference, out)
    with h5py.File(out, "r+") as handle:
        handle["progress/done"][8:] = 0
        handle["images/checksum"][8:] = 0
        handle["regions/entropy"][8:] = 0
        handle.attrs["complete"] = False
    written = limited_write(out, reference, "row", offset_of(out, "regions/box", 8))
    assert (f"TableWriteError: cannot write image 8 (synthetic/images/blue_triangle/0003.png) to RIL table {out}: "
            "File too large") in written.stderr, written.stderr
    assert RILTable(out, require_complete=False).done.sum() == 8
    assert ril_main(table_args(root, tiny_teacher, out)) == 0
    assert_same_results(reference, out)
    assert "already complete" in cli_error(capsys, table_args(root, tiny_teacher, out))


def test_rows_that_read_back_changed_leave_the_table_unfinished(built, tmp_path, monkeypatch):
    _, root, paths, labels, teacher = built
    out = str(tmp_path / "table.h5")

    def damage_instead(path):  # a disk that returns other bytes than were written to it
        flip(path, offset_of(path, "regions/entropy", 3))

    monkeypatch.setattr(ril.writer, "_drop_cached_pages", damage_instead)
    with pytest.raises(RILTableError, match=r"failed its read-back check, so it was not finished: the rows of image 3 "
                                            r"\(class3/img003.png\) do not match their checksum"):
        precompute(out, root, paths, labels, toy_fingerprint(paths, labels), teacher,
                   RegionSpec(num_regions=5, topk=2, output_size=(32, 32)), batch_size=4, workers=0)
    assert RILTable(out, require_complete=False).attrs["complete"] is False


def test_a_teacher_that_returns_nan_is_refused_before_the_image_is_written(built, tmp_path, monkeypatch):
    _, root, paths, labels, teacher = built
    out = str(tmp_path / "nan.h5")
    scored, logits = [], teacher.logits

    def third_image_nan(pixels, class_features):  # batch_size 8 > 5 regions: one forward per image
        scored.append(len(scored))
        return logits(pixels, class_features) * (float("nan") if len(scored) == 3 else 1.0)

    monkeypatch.setattr(teacher, "logits", third_image_nan)
    spec = RegionSpec(num_regions=5, topk=2, output_size=(32, 32))
    problem = r"top-K log-probabilities not finite and <= 0.*nothing of this image was written"
    written = r"refusing to write image 2 \(class2/img002.png\) to RIL table .*"
    with pytest.raises(RILTableError, match=written + problem):
        precompute(out, root, paths, labels, toy_fingerprint(paths, labels), teacher, spec, batch_size=8, workers=0)
    assert RILTable(out, require_complete=False).done.tolist() == [True, True, False, False, False, False]


@pytest.mark.parametrize("name,value,problem", [
    ("regions/entropy", np.float32("nan"), "entropy not finite and within"),
    ("regions/logsumexp", np.float32("inf"), "non-finite logsumexp"),
    ("regions/topk_index", np.uint16(4), "topk_index >= number of classes"),
    ("regions/box", np.float32(1.5), "boxes not finite and inside the image"),
])
def test_rows_no_teacher_could_produce_are_refused_at_write_time(table, name, value, problem):
    reader = RILTable(table)
    rows, size = reader.image_rows(1)
    rows[name] = rows[name].copy()
    rows[name].reshape(-1)[0] = value
    with TableWriter(table) as writer, pytest.raises(RILTableError, match=f"refusing to write image 1.*{problem}"):
        writer.write_image(1, size, rows)
    assert verify(table, deep=True).problems == []  # nothing of it was written


# --- bytes that change after they were written ---------------------------------------------------


def test_a_flipped_path_byte_is_detected_when_the_table_is_opened(table, capsys):
    flip(table, offset_of(table, "images/path", 3) + 2, 0x01)  # class3/img003.png -> cl`ss3/img003.png
    for in_memory in (False, True):
        with pytest.raises(RILTableError, match="is damaged: the stored image paths and labels .* do not match "
                                                "image_list_sha256"):
            RILTable(table, in_memory=in_memory)
    error = cli_error(capsys, ["verify", "--table", table])
    assert "could be paired with the wrong images" in error and "copy it again from a good source" in error


def poke(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


@pytest.mark.parametrize("name,byte,change", [
    ("regions/topk_index", 0, lambda path, offset: flip(path, offset, 0x01)),  # another valid class
    ("regions/entropy", 4, lambda path, offset: poke(path, offset, np.float32("nan").tobytes())),
    ("regions/box", 1, lambda path, offset: flip(path, offset, 0x10)),
    ("images/size", 0, lambda path, offset: flip(path, offset, 0x01)),
    ("images/checksum", 2, lambda path, offset: flip(path, offset, 0x80)),
])
def test_a_changed_row_byte_is_named_by_the_region_loader_and_verify(built, table, capsys, name, byte, change):
    change(table, offset_of(table, name, 4) + byte)
    dataset = RegionDataset(table, built[1], (32, 32), MEAN, STD, repeat=2)
    with pytest.raises(RILTableError, match=rf"RIL table {table} is damaged: the rows of image 4 \(class0/img004.png\)"
                                            r" do not match their checksum"):
        dataset[4]
    dataset[3]  # the other images still serve
    assert ril_main(["verify", "--table", table, "--deep"]) == 1
    assert "PROBLEM: the rows of image 4 (class0/img004.png) do not match their checksum" in capsys.readouterr().out


def test_a_flipped_done_flag_is_detected(table):
    flip(table, offset_of(table, "progress/done", 2), 0x02)
    with pytest.raises(RILTableError, match="dataset progress/done holds values other than 0 and 1"):
        RILTable(table)


def test_the_byte_flip_sweep_detects_every_flip_of_paths_and_rows(tmp_path):
    """scripts/byte_flip_sweep.py: every byte of images/path and an even sample of every other stored
    dataset, each flipped and checked with the deep verify (the full sweep is in README)."""
    report = tmp_path / "sweep.json"
    result = subprocess.run(
        [sys.executable, "scripts/byte_flip_sweep.py", "--images", "2", "--region", "images/path", "--region", "rows:6",
         "--json", str(report), "--workdir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, encoding="utf-8", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = json.loads(report.read_text(encoding="utf-8"))["counts"]
    assert counts["images/path"]["detected"] == 2 * len("class0/image_000.jpg")  # every stored path byte
    assert len(counts) == 12 and all(row["detected"] == sum(row.values()) > 0 for row in counts.values())


# --- HDF5 metadata that crashes or hangs the library ---------------------------------------------


def attribute_type_byte(path, name):
    """The offset of the first class-bit byte of the datatype of root attribute `name`, a variable-length
    string (datatype version 1, class 9: 0x19). scripts/byte_flip_sweep.py found that flipping it makes
    HDF5 segfault while reading the attribute."""
    data = open(path, "rb").read()
    return data.index(b"\x19\x01", data.index(name.encode("ascii") + b"\x00")) + 1


def last_heap_object_size(path):
    """The offset of the size field of the last object in the table's global heap (the values of its
    string attributes). scripts/byte_flip_sweep.py found that flipping it makes HDF5 loop forever."""
    data = open(path, "rb").read()
    position, last = data.index(b"GCOL") + 16, None  # signature, version, reserved, collection size
    while int.from_bytes(data[position:position + 2], "little"):  # object index 0 marks the free space
        last = position
        position += 16 + -(-int.from_bytes(data[position + 8:position + 16], "little") // 8) * 8
    return last + 8


def test_metadata_that_crashes_hdf5_is_reported_as_a_corrupt_file(table, capsys):
    flip(table, attribute_type_byte(table, "interpolation"))
    unprotected = subprocess.run([sys.executable, "-c", f"import h5py; dict(h5py.File({table!r}, 'r').attrs)"],
                                 capture_output=True, timeout=120)
    assert unprotected.returncode == -signal.SIGSEGV, "HDF5 no longer crashes on this flip: pick one that does"
    with pytest.raises(RILTableError, match=r"is a corrupt file: the HDF5 library crashed \(SIGSEGV\) while reading "
                                            "its HDF5 structure; copy it again from a good source"):
        RILTable(table)  # what training opens
    assert "is a corrupt file: the HDF5 library crashed (SIGSEGV)" in cli_error(capsys, ["verify", "--table", table])


def test_metadata_that_hangs_hdf5_is_reported_as_a_corrupt_file(table, monkeypatch):
    flip(table, last_heap_object_size(table))
    monkeypatch.setattr(ril.probe, "PROBE_SECONDS", 3)
    with pytest.raises(RILTableError, match="is a corrupt file: reading its HDF5 structure did not finish within 3 s"):
        RILTable(table)


# --- requests that cannot be met ------------------------------------------------------------------


@pytest.mark.parametrize("flags,message", [
    (["--scale", "1.5", "0.1"], "--scale 1.5 0.1: the crop area range MIN MAX needs 0 < MIN <= MAX <= 1"),
    (["--scale", "nan", "1"], "--scale nan 1.0:"),
    (["--regions", "0"], "--regions 0: M, the regions per image, must be at least 1"),
    (["--topk", "0"], "--topk 0: K"),
    (["--crop-seed", "-1"], "--crop-seed -1 must be >= 0"),
    (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    (["--workers", "-1"], "--workers -1 >= 0"),
])
def test_invalid_requests_are_refused_before_anything_is_made(tmp_path, capsys, flags, message):
    args = ["precompute", "--root", str(tmp_path / "data"), "--dataset-config-file", str(tmp_path / "none.yaml"),
            "--out", str(tmp_path / "ril" / "table.h5"), *flags]
    assert message in cli_error(capsys, args)
    assert os.listdir(tmp_path) == []


@requires_dassl
def test_a_config_key_typo_is_one_message(synthetic_reference, tiny_teacher, tmp_path, capsys):
    out = tmp_path / "table.h5"
    error = cli_error(capsys, [*table_args(synthetic_reference[1], tiny_teacher, out), "DATASET.NUM_SHOT", "4"])
    assert "DATASET.NUM_SHOT" in error and "DATASET.NUM_SHOTS" in error
    assert os.listdir(tmp_path) == []


def test_an_unwritable_out_is_one_message_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    base = ["precompute", "--root", str(tmp_path), "--dataset-config-file", str(tmp_path / "none.yaml")]
    error = cli_error(capsys, [*base, "--out", str(blocker / "table.h5")])
    assert f"cannot create the folder of RIL table {blocker / 'table.h5'}" in error
    assert "a part of the path is a file, not a folder" in error
    assert "that path is a folder" in cli_error(capsys, [*base, "--out", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_a_truncated_image_is_named_and_the_table_resumes(built, tmp_path):
    _, root, paths, labels, teacher = built
    images = str(tmp_path / "images")
    shutil.copytree(root, images)
    damaged_image = os.path.join(images, paths[2])
    with open(damaged_image, "r+b") as handle:
        handle.truncate(os.path.getsize(damaged_image) // 2)
    spec = RegionSpec(num_regions=5, topk=2, output_size=(32, 32))
    out = str(tmp_path / "table.h5")
    with pytest.raises(OSError) as error:  # decoded in a DataLoader worker: one line, not the worker's traceback
        precompute(out, images, paths, labels, toy_fingerprint(paths, labels), teacher, spec, batch_size=4, workers=2)
    assert str(error.value).startswith(f"image {damaged_image} cannot be decoded (image file is truncated")
    assert "\n" not in str(error.value) and "the file is truncated or corrupt" in str(error.value)
    assert RILTable(out, require_complete=False).done.tolist() == [True, True, False, False, False, False]
    with pytest.raises(OSError, match=f"image {damaged_image} cannot be decoded"):
        RegionDataset(built[0], images, (32, 32), MEAN, STD)[2]
    shutil.copy(os.path.join(root, paths[2]), damaged_image)
    precompute(out, images, paths, labels, toy_fingerprint(paths, labels), teacher, spec, batch_size=4, workers=0)
    assert_same_results(built[0], out)
    assert leftovers(tmp_path) == []


def test_a_merge_of_a_damaged_shard_stops_naming_it_and_leaves_nothing(built, table, tmp_path):
    flip(table, offset_of(table, "regions/logsumexp", 1))
    out = tmp_path / "merged" / "table.h5"
    with pytest.raises(RILTableError, match=f"RIL table {table} is damaged: the rows of image 1 "):
        merge_tables([table], str(out))
    assert not out.exists() and leftovers(out.parent) == []


def test_tables_are_created_with_the_users_umask(tmp_path):
    paths, labels = ["a/0.png", "b/1.png"], [0, 1]
    attrs = make_attrs(toy_fingerprint(paths, labels), settings())
    for umask in (0o022, 0o007):
        previous = os.umask(umask)
        try:
            create_table(str(tmp_path / f"{umask:o}.h5"), attrs, paths, labels)
        finally:
            os.umask(previous)
        assert stat.S_IMODE(os.stat(tmp_path / f"{umask:o}.h5").st_mode) == 0o666 & ~umask


def test_image_paths_are_utf8_in_the_file_and_escaped_under_an_ascii_locale(tmp_path):
    paths, labels = ["café/crème.png", "日本/猫.png"], [0, 1]
    out = str(tmp_path / "utf8.h5")
    create_table(out, make_attrs(toy_fingerprint(paths, labels), settings(num_regions=2)), paths, labels)
    rows = {"regions/box": np.array([[0, 0, 1, 1], [0.25, 0.5, 0.5, 0.5]], np.float32),
            "regions/flip": np.array([0, 1], np.uint8), "regions/topk_index": np.array([[0, 3], [2, 1]], np.uint16),
            "regions/topk_logprob": np.array([[-0.5, -1.5], [-0.5, -3.0]], np.float16),
            "regions/teacher_top1": np.array([[0], [2]], np.uint16),
            "regions/logsumexp": np.array([2.5, 2.0], np.float32), "regions/entropy": np.array([0.5, 1], np.float32)}
    with TableWriter(out) as writer:
        for index in range(2):
            writer.write_image(index, [40, 50], rows)
    complete_table(out)
    with h5py.File(out, "r") as handle:
        assert handle["images/path"].dtype.itemsize == len("café/crème.png".encode("utf-8")) == 16
    assert RILTable(out).image_paths == paths
    flip(out, offset_of(out, "regions/entropy", 0))
    ascii_locale = {key: value for key, value in os.environ.items() if key != "PYTHONIOENCODING"}
    result = subprocess.run([sys.executable, "-m", "ril", "verify", "--table", out, "--deep"], cwd=REPO_ROOT,
                            capture_output=True, timeout=300, env=dict(ascii_locale, LC_ALL="C", LANG="C", PYTHONUTF8="0"))
    assert result.returncode == 1, result.stderr.decode("ascii", "replace")[-3000:]
    assert b"PROBLEM: the rows of image 0 (caf\\xe9/cr\\xe8me.png) do not match their checksum" in result.stdout


def test_damaged_student_features_are_named_by_the_feature_loader_and_verify(built, table, tiny_student, capsys):
    add_student_features(table, built[1], tiny_student, workers=0)
    flip(table, offset_of(table, "student/features", 3) + 2 * 64 * 4 + 1, 0x40)  # region 4, first value
    dataset = RegionDataset(table, built[1], (32, 32), MEAN, STD, repeat=5, features=True)
    with pytest.raises(RILTableError, match=r"the student features of image 3 \(class3/img003.png\), region 4, "
                                            r"do not match their checksum"):
        dataset[3]
    dataset[2]
    assert ril_main(["verify", "--table", table, "--deep"]) == 1
    assert "PROBLEM: the student features of image 3" in capsys.readouterr().out
    with TableWriter(table) as writer, pytest.raises(RILTableError, match="non-finite student features"):
        writer.write_features(3, np.full((5, 64), np.inf, np.float32))
