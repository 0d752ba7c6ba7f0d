"""Flip bytes of a small RIL table one at a time and check that every change is caught or harmless.

The table (N images x M regions, top-K of C classes, valid random teacher rows) is written by the
project's own writer. Each chosen byte is XORed with 0xFF (with --bits: each of its 8 bits in
turn), the deep check runs in a forked child process with a timeout, and the byte is restored.
The check is `ril.summary.verify(deep=True)`, preceded by the same HDF5 reads `ril.probe` makes
(the forked child stands in for the probe's child process). Outcomes:

  detected    verify reported a problem, or refused to open the table with a clear error
  contained   HDF5 crashed (a signal) or hung (timeout) in the child, or raised an unexpected error
              there: the probe turns each into "RIL table ... is a corrupt file", exit status 2
  harmless    nothing reported, and the table as any reader sees it is unchanged: the root and
              feature attributes, stored paths and labels, done flags, checksums, and for every
              dataset its offset, shape, dtype and bytes are identical to the unflipped table's
  UNDETECTED  nothing reported, yet a reader would see different values: a hole in the checks
  BUG         an unexpected exception after the structure was read (a raw traceback for a user)

Bytes are grouped by the dataset whose stored bytes hold them, or "HDF5 metadata" for the rest.
Exit status 1 when any flip is UNDETECTED or a BUG.

    python scripts/byte_flip_sweep.py                       # every byte of the file (minutes)
    python scripts/byte_flip_sweep.py --region images/path --region rows:200
"""
import argparse
import hashlib
import json
import os
import select
import signal
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

import ril.probe  # noqa: E402
from ril.crops import sample_regions  # noqa: E402
from ril.format import (  # noqa: E402
    PATH_DATASET, RILTableError, expected_fingerprint, make_attrs, open_table_file, read_layout,
)
from ril.reader import RILTable  # noqa: E402
from ril.summary import verify  # noqa: E402
from ril.writer import TableWriter, complete_table, create_table  # noqa: E402

OUTCOMES = ("detected", "contained", "harmless", "UNDETECTED", "BUG")
CHILD_CODES = {0: "clean", 1: "detected", 2: "detected", 3: "HDF5 error", 4: "BUG"}
METADATA = "HDF5 metadata"
ROWS = "rows"  # --region shorthand: every per-image and per-region dataset but images/path


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="N (default 4)")
    parser.add_argument("--regions", type=int, default=3, help="M (default 3)")
    parser.add_argument("--topk", type=int, default=2, help="K (default 2)")
    parser.add_argument("--classes", type=int, default=3, help="C (default 3)")
    parser.add_argument("--region", action="append", default=[], metavar="NAME[:N]",
                        help=f"sweep only these parts: a dataset name, '{ROWS}' (every dataset but {PATH_DATASET}) "
                        f"or '{METADATA}'; with :N at most N bytes of each, evenly spaced (default: every byte)")
    parser.add_argument("--bits", action="store_true", help="flip each bit of a byte in turn instead of XOR 0xFF")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds until a check counts as hung; some "
                        "damaged attribute sizes take seconds to be refused on a busy machine (default 60)")
    parser.add_argument("--json", default="", help="also write the counts and the offsets of notable flips here")
    parser.add_argument("--workdir", default="", help="where the table is written (default: a temporary folder)")
    return parser.parse_args(argv)


def valid_rows(rng, num_regions, topk, num_classes, width, height, index):
    """Rows a teacher could have produced: random logits, their top-K, log-sum-exp and entropy."""
    logits = rng.normal(0.0, 3.0, (num_regions, num_classes)).astype(np.float32)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :topk]
    peak = logits.max(axis=1, keepdims=True)
    logsumexp = (np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)) + peak)[:, 0]
    log_prob = logits - logsumexp[:, None]
    boxes, flips = sample_regions(width, height, num_regions, 0, index, (0.08, 1.0), (3 / 4, 4 / 3), 0.5)
    return {
        "regions/box": boxes, "regions/flip": flips, "regions/topk_index": order.astype(np.uint16),
        "regions/topk_logprob": np.take_along_axis(log_prob, order, axis=1).astype(np.float16),
        "regions/teacher_top1": order[:, :1].astype(np.uint16),
        "regions/logsumexp": logsumexp, "regions/entropy": -(np.exp(log_prob) * log_prob).sum(axis=1),
    }


def build_table(path, num_images, num_regions, topk, num_classes):
    rng = np.random.default_rng(0)
    paths = [f"class{index % num_classes}/image_{index:03d}.jpg" for index in range(num_images)]
    labels = [index % num_classes for index in range(num_images)]
    classnames = [f"class {label}" for label in range(num_classes)]
    settings = {"teacher": ["sweep"], "teacher_sha256": [""], "ensemble": "none", "templates": ["a photo of a {}."],
                "logit_scale": [100.0], "num_regions": num_regions, "topk": topk, "output_size": [32, 32],
                "crop_scale": [0.08, 1.0], "crop_ratio": [0.75, 4 / 3], "flip_prob": 0.5, "interpolation": "bicubic",
                "crop_seed": 0}
    fingerprint = expected_fingerprint("Sweep", 4, 1, "all", classnames, paths, labels)
    create_table(path, make_attrs(fingerprint, settings), paths, labels)
    with TableWriter(path) as writer:
        for index in range(num_images):
            height, width = int(rng.integers(24, 72)), int(rng.integers(24, 72))
            rows = valid_rows(rng, num_regions, topk, num_classes, width, height, index)
            writer.write_image(index, np.array([height, width], np.int32), rows)
    complete_table(path)


def reader_view(path):
    """sha256 of everything a reader of the table obtains (see the module docstring)."""
    table = RILTable(path, require_complete=False)
    digest = hashlib.sha256()
    locations = {name: [offset, list(shape), str(dtype)] for name, (offset, shape, dtype) in table.locations.items()}
    digest.update(json.dumps([table.attrs, table.features_attrs, locations], sort_keys=True).encode("utf-8"))
    digest.update("\n".join(table.image_paths).encode("utf-8"))
    for array in (table.labels, table.done, table.checksums, *(table.array(name) for name in table.locations)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _child_check(path, pipe):
    """In the forked child: probe-equivalent reads, then the deep verify; exit with a CHILD_CODES key."""
    try:
        with open_table_file(path) as handle:
            read_layout(handle, path)
    except (RILTableError, OSError):
        os._exit(2)
    except Exception:  # noqa: BLE001  whatever HDF5 raises here, the probe reports as a corrupt file
        os._exit(3)
    ril.probe.probe_table = lambda *args, **kwargs: None  # this forked child is the isolation
    try:
        problems = verify(path, deep=True).problems
        view = "" if problems else reader_view(path)
    except (RILTableError, OSError):
        os._exit(2)
    except Exception:  # noqa: BLE001  a raw traceback a user would see: counted as a BUG
        os._exit(4)
    os.write(pipe, view.encode("ascii"))
    os._exit(1 if problems else 0)


def check_in_child(path, timeout):
    """(child outcome, reader view or "") of the deep check of `path`, run in a forked child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _child_check(path, write_end)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    view = b""
    while True:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(read_end, 4096) if ready else b""
        view += chunk
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            break
    if not done:  # hung: kill it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return "hang", ""
    view += os.read(read_end, 4096)
    os.close(read_end)
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}", ""
    return CHILD_CODES[os.WEXITSTATUS(status)], view.decode("ascii")


def byte_owners(path):
    """{part name: [file offsets]}: each dataset's stored bytes, and HDF5 metadata for the rest."""
    with open_table_file(path) as handle:
        layout = read_layout(handle, path)
    size = os.path.getsize(path)
    owner = np.full(size, "", dtype=object)
    for name, (offset, shape, dtype) in layout.locations.items():
        owner[offset:offset + dtype.itemsize * int(np.prod(shape))] = name
    owner[owner == ""] = METADATA
    return {name: np.flatnonzero(owner == name).tolist() for name in dict.fromkeys(owner.tolist())}


def select_offsets(owners, regions):
    """{part: offsets to flip} for `--region` values (all of every part when there are none)."""
    samples = {}  # part -> at most this many bytes (0: all)
    for region in regions or list(owners):
        name, _, sample = region.rpartition(":") if region.rpartition(":")[2].isdigit() else (region, "", "0")
        parts = [part for part in owners if part not in (PATH_DATASET, METADATA)] if name == ROWS else [name]
        samples.update(dict.fromkeys(parts, int(sample)))
    chosen = {}
    for name, sample in samples.items():
        offsets = owners[name]
        if sample and len(offsets) > sample:
            offsets = [offsets[int(i)] for i in np.linspace(0, len(offsets) - 1, sample).round()]
        chosen[name] = offsets
    return chosen


def classify(outcome, view, original_view):
    if outcome in ("detected", "BUG"):
        return outcome
    if outcome == "clean":
        return "harmless" if view == original_view else "UNDETECTED"
    return "contained"  # a signal, a hang, or an HDF5 error while reading the structure


def sweep(path, chosen, masks, timeout):
    """{part: {outcome: count}} and the notable flips [(part, offset, mask, outcome)]."""
    original = bytearray(open(path, "rb").read())
    original_view = reader_view(path)
    counts, notable = {}, []
    bar = tqdm(total=sum(map(len, chosen.values())) * len(masks), unit="flip", desc="byte flips")
    with open(path, "r+b") as handle, bar:
        for name, offsets in chosen.items():
            counts[name] = dict.fromkeys(OUTCOMES, 0)
            for offset in offsets:
                bar.update(len(masks))
                for mask in masks:
                    handle.seek(offset)
                    handle.write(bytes([original[offset] ^ mask]))
                    handle.flush()
                    outcome, view = check_in_child(path, timeout)
                    handle.seek(offset)
                    handle.write(bytes([original[offset]]))
                    handle.flush()
                    verdict = classify(outcome, view, original_view)
                    counts[name][verdict] += 1
                    if verdict not in ("detected", "harmless"):
                        notable.append((name, offset, mask, outcome if verdict == "contained" else verdict))
    return counts, notable


def report(counts, notable, total_bytes):
    print(f"{'part':<22}" + "".join(f"{outcome:>12}" for outcome in OUTCOMES))
    for name, row in counts.items():
        print(f"{name:<22}" + "".join(f"{row[outcome]:>12}" for outcome in OUTCOMES))
    totals = {outcome: sum(row[outcome] for row in counts.values()) for outcome in OUTCOMES}
    print(f"{'total':<22}" + "".join(f"{totals[outcome]:>12}" for outcome in OUTCOMES))
    print(f"file size {total_bytes} bytes")
    for name, offset, mask, what in notable:
        print(f"  {what}: {name} byte {offset} ^ {mask:#04x}")
    return totals


def main(argv=None):
    args = parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="byte_flip_sweep_")
    path = os.path.join(workdir, "sweep.h5")
    if os.path.exists(path):
        os.remove(path)
    build_table(path, args.images, args.regions, args.topk, args.classes)
    chosen = select_offsets(byte_owners(path), args.region)
    masks = [1 << bit for bit in range(8)] if args.bits else [0xFF]
    start = time.perf_counter()
    counts, notable = sweep(path, chosen, masks, args.timeout)
    totals = report(counts, notable, os.path.getsize(path))
    print(f"{sum(totals.values())} flips in {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"counts": counts, "totals": totals, "notable": notable, "file_bytes": os.path.getsize(path),
                       "table": vars(args)}, handle, indent=1)
    return 1 if totals["UNDETECTED"] or totals["BUG"] else 0


if __name__ == "__main__":
    sys.exit(main())
