"""Benchmark RIL tables on this machine, in one run.

1. Precompute: crops/s of `ril.precompute` (decode, crop, teacher, write) against the teacher's
   bare forward on the same batch size.
2. Random access, one (image, region) at a time: regions/s of the table on disk (page cache
   warm) and in memory, against the official FDBPL layout, one `torch.load`ed file per image
   holding M x 4 boxes, M flips and M x 2 x K labels (stored as tensors so that
   `weights_only=True` can read them).
3. Bytes per region and per image of both layouts.

    python scripts/benchmark_ril.py                        # tiny random teacher, synthetic images
    python scripts/benchmark_ril.py --teacher ViT-L/14 --device cuda --images 200 --regions 500 \\
        --topk 20 --classes 1000 --image-size 500
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

from ril.format import expected_fingerprint  # noqa: E402
from ril.precompute import RegionSpec, precompute  # noqa: E402
from ril.reader import RILTable  # noqa: E402
from ril.summary import bytes_per_region  # noqa: E402
from ril.teachers import load_teacher  # noqa: E402
from ril.templates import resolve_templates  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="", help="teacher spec (see python -m ril precompute --help); default: a tiny random CLIP")
    parser.add_argument("--images", type=int, default=48, help="synthetic images N (default 48)")
    parser.add_argument("--regions", type=int, default=64, help="regions per image M (default 64)")
    parser.add_argument("--topk", type=int, default=20, help="classes kept per region K (default 20)")
    parser.add_argument("--classes", type=int, default=100, help="number of classes C (default 100)")
    parser.add_argument("--image-size", type=int, default=96, help="side of the synthetic source images in pixels (default 96)")
    parser.add_argument("--batch-size", type=int, default=64, help="regions per teacher forward (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="precompute DataLoader workers (default 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="teacher device")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum duration of each read measurement (default 2)")
    parser.add_argument("--workdir", default="", help="where images and tables go (default: a temporary folder)")
    return parser.parse_args(argv)


def make_images(root, count, size, num_classes):
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for index in range(count):
        relative = f"images/{index:05d}.jpg"
        os.makedirs(os.path.join(root, "images"), exist_ok=True)
        height, width = size, int(size * rng.uniform(0.75, 1.33))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(os.path.join(root, relative), quality=90)
        paths.append(relative)
        labels.append(index % num_classes)
    return paths, labels


def tiny_teacher(workdir):
    path = os.path.join(workdir, "tiny_teacher.pt")
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "make_tiny_clip.py"), "--out", path,
                    "--width", "128", "--layers", "3"], check=True, capture_output=True)
    return path


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_rate(teacher, class_features, batch_size, seconds):
    """Crops/s of the teacher alone on a ready normalised batch."""
    images = torch.randn(batch_size, 3, *teacher.input_size, device=teacher.device)
    teacher.logits(images, class_features)
    synchronize(teacher.device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        teacher.logits(images, class_features)
        count += 1
    synchronize(teacher.device)
    return count * batch_size / (time.perf_counter() - start)


def read_rate(read, pairs, seconds):
    """Reads/s of `read(image, region)` over random pairs, for at least `seconds`."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        image, region = pairs[count % len(pairs)]
        read(image, region)
        count += 1
    return count / (time.perf_counter() - start)


def write_pickle_layout(table, directory):
    """One file per image, as the official code: [boxes (M, 4), flips (M,), labels (M, 2, K)]."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for index in range(table.num_images):
        regions = np.arange(table.num_regions)
        rows = table.read(np.full_like(regions, index), regions)
        probabilities = np.exp(rows["topk_logprob"].astype(np.float32))
        labels = np.stack([rows["topk_index"].astype(np.float32), probabilities], axis=1)
        path = os.path.join(directory, f"{index:05d}.tar")
        torch.save([torch.from_numpy(rows["box"]), torch.from_numpy(rows["flip"].astype(bool)),
                    torch.from_numpy(labels)], path)
        paths.append(path)
    return paths


def run(args, workdir):
    teacher = load_teacher(args.teacher or tiny_teacher(workdir), args.device)
    classnames = [f"class {index}" for index in range(args.classes)]
    paths, labels = make_images(workdir, args.images, args.image_size, args.classes)
    spec = RegionSpec(num_regions=args.regions, topk=args.topk, output_size=teacher.input_size)
    fingerprint = expected_fingerprint("Benchmark", -1, 0, "all", classnames, paths, labels)
    out = os.path.join(workdir, "table.h5")
    start = time.perf_counter()
    precompute(out, workdir, paths, labels, fingerprint, teacher, spec, args.batch_size, args.workers, overwrite=True)
    precompute_rate = args.images * args.regions / (time.perf_counter() - start)
    templates = resolve_templates(spec.templates, fingerprint["dataset"])  # as precompute resolved them
    forward_rate = bare_forward_rate(teacher, teacher.class_features(classnames, templates),
                                     min(args.batch_size, args.regions), args.seconds)

    rng = np.random.default_rng(1)
    pairs = list(zip(rng.integers(0, args.images, 10000).tolist(), rng.integers(0, args.regions, 10000).tolist()))
    on_disk, in_memory = RILTable(out), RILTable(out, in_memory=True)
    pickles = write_pickle_layout(on_disk, os.path.join(workdir, "pickles"))

    def read_pickle(image, region):
        boxes, flips, labels_ = torch.load(pickles[image], weights_only=True)
        return boxes[region], flips[region], labels_[region]

    rates = {
        "table on disk": read_rate(lambda i, m: on_disk.read([i], [m]), pairs, args.seconds),
        "table in memory": read_rate(lambda i, m: in_memory.read([i], [m]), pairs, args.seconds),
        "pickle per image": read_rate(read_pickle, pairs, args.seconds),
    }
    pickle_bytes = float(np.mean([os.path.getsize(path) for path in pickles]))
    table_bytes = bytes_per_region(on_disk)
    return precompute_rate, forward_rate, rates, table_bytes, pickle_bytes, teacher.teacher_id


def report(args, precompute_rate, forward_rate, rates, table_bytes, pickle_bytes, teacher_id):
    print(f"teacher {teacher_id} on {args.device}; N={args.images} images of ~{args.image_size} px, "
          f"M={args.regions} regions, K={args.topk}, C={args.classes}, batch {args.batch_size}")
    print(tabulate([
        ["precompute (decode + crop + teacher + write)", f"{precompute_rate:,.0f} crops/s", ""],
        ["teacher bare forward, same batch", f"{forward_rate:,.0f} crops/s",
         f"precompute / bare = {precompute_rate / forward_rate:.2f}"],
    ], headers=["precompute", "throughput", "ratio"]))
    print()
    pickle_rate = rates["pickle per image"]
    print(tabulate([[name, f"{rate:,.0f} regions/s", f"{rate / pickle_rate:.1f}x"] for name, rate in rates.items()],
                   headers=["random access (one region per read)", "throughput", "vs pickle"]))
    print()
    print(tabulate([
        ["RIL table", table_bytes, table_bytes * args.regions],
        ["pickle per image", f"{pickle_bytes / args.regions:.1f}", f"{pickle_bytes:.0f}"],
    ], headers=["layout", "bytes per region", "bytes per image"]))


def main(argv=None):
    args = parse_args(argv)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        report(args, *run(args, args.workdir))
        return
    with tempfile.TemporaryDirectory(prefix="ril-benchmark-") as workdir:
        report(args, *run(args, workdir))


if __name__ == "__main__":
    main()
