"""Reader: densification, random access on disk / in memory / in workers."""
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ril.format import RILTableError
from ril.precompute import region_statistics
from ril.reader import RILTable, densify, top_probabilities
from tests.test_ril_format import build_table


def _stored(full_logits, topk):
    """What precompute stores for fp32 logits (B, C): top-K classes and log-probabilities (fp16)."""
    rows = region_statistics(torch.as_tensor(full_logits, dtype=torch.float32), topk)
    return rows["regions/topk_index"], rows["regions/topk_logprob"]


def test_smooth_keeps_the_teacher_softmax_on_top_k_and_spreads_the_rest():
    logits = [[2.0, 1.0, 0.0, -1.0], [0.5, 3.0, 0.25, 0.0]]
    index, log_prob = _stored(logits, 2)
    dense = densify(index, log_prob, 4, "smooth")
    exact = torch.softmax(torch.tensor(logits), dim=1)
    # row 0: top-2 = classes 0, 1 keep exp(logprob); classes 2, 3 share the rest equally
    top = torch.exp(torch.tensor(log_prob.astype(np.float32)))
    assert index.tolist() == [[0, 1], [1, 0]]
    assert torch.equal(dense[0, :2], top[0]) and torch.equal(dense[1, [1, 0]], top[1])
    assert torch.allclose(dense[0, :2], exact[0, :2], rtol=2e-3)
    rest = (1 - exact[0, :2].sum()) / 2
    assert torch.allclose(dense[0, 2:], torch.stack([rest, rest]), rtol=1e-2)
    assert torch.allclose(dense.sum(1), torch.ones(2), atol=1e-6) and (dense > 0).all()


def test_renorm_rescales_top_k_and_zeroes_the_rest():
    """The zeros mark the teacher's support, on which positive_kd_loss takes both KL halves."""
    index, log_prob = _stored([[2.0, 1.0, 0.0, -1.0]], 2)
    dense = densify(index, log_prob, 4, "renorm")
    top = np.exp(log_prob.astype(np.float64))[0]
    assert np.allclose(dense[0, :2].numpy(), top / top.sum(), rtol=1e-6)
    assert torch.equal(dense[0, 2:], torch.zeros(2))
    assert abs(float(dense.sum()) - 1) < 1e-6


@pytest.mark.parametrize("mode", ["smooth", "renorm"])
def test_densified_rows_are_distributions_even_for_a_certain_teacher(mode):
    """smooth is positive everywhere; renorm exactly on the top-K (every class when K = C)."""
    logits = np.zeros((3, 50), dtype=np.float32)
    logits[0, 7] = 60.0  # top-1 carries all but ~1e-24 of the mass
    logits[1] = np.linspace(-3, 3, 50)
    logits[2] = 0.0  # uniform
    for topk in (1, 5, 50):
        index = _stored(logits, topk)[0]
        dense = densify(*_stored(logits, topk), 50, mode)
        on_top_k = torch.zeros(3, 50, dtype=torch.bool).scatter(1, torch.as_tensor(index.astype(np.int64)), True)
        assert torch.isfinite(dense).all() and (dense[on_top_k] > 0).all()
        assert torch.equal(dense > 0, torch.ones_like(on_top_k) if mode == "smooth" else on_top_k)
        assert torch.allclose(dense.sum(1), torch.ones(3), atol=1e-5)
    assert int(dense[0].argmax()) == 7


def test_logit_scale_100_confident_teacher_keeps_exact_top_k_and_a_non_negative_residual():
    """Version 2: top-K log-probabilities in fp16 give p_k within fp16 rounding (|l_k| 2^-11 relative) of
    the teacher's; version 1's fp16 logits 16-32 were off by up to ~1%, and the residual went negative."""
    generator = torch.Generator().manual_seed(0)
    cosine = 0.15 + 0.02 * torch.randn(64, 1000, generator=generator)
    cosine[:, 7] = 0.30 + 0.02 * torch.rand(64, generator=generator)  # a confident teacher: class 7, p ~ 0.99
    logits = 100.0 * cosine  # CLIP's logit scale: logits 10-32
    exact = torch.softmax(logits.double(), dim=1)
    index, log_prob = _stored(logits, 20)
    exact_top = exact.gather(1, torch.as_tensor(index.astype(np.int64)))
    top_prob, residual = top_probabilities(log_prob)
    rounding = exact_top * torch.as_tensor(np.abs(log_prob.astype(np.float64))) * 2.0 ** -11 + 1e-7
    assert exact_top[:, 0].min() > 0.98 and (top_prob.double() - exact_top).abs().le(rounding).all()
    raw_residual = 1.0 - top_prob.double().sum(dim=1)
    assert raw_residual.min() >= -rounding.sum(dim=1).max() and (residual >= 0).all()
    assert torch.allclose(residual.double(), 1.0 - exact_top.sum(dim=1), atol=float(rounding.sum(dim=1).max()))
    dense = densify(index, log_prob, 1000)
    assert torch.allclose(dense.double(), exact, atol=1e-3) and (dense > 0).all()
    version_1 = torch.exp(logits.topk(20, dim=1).values.half().float() - torch.logsumexp(logits, 1)[:, None])
    assert (version_1.double() - exact_top).abs().max() > 2e-3 and (1.0 - version_1.sum(dim=1)).min() < 0


def test_unknown_densify_mode_is_refused():
    with pytest.raises(ValueError, match="smooth"):
        densify(*_stored([[1.0, 0.0]], 1), 2, "sharpen")


@pytest.fixture(scope="module")
def table_path(tmp_path_factory, tiny_teacher):
    return build_table(str(tmp_path_factory.mktemp("reader")), tiny_teacher, count=5, regions=6, topk=3)[0]


def test_random_access_matches_the_file_on_disk_and_in_memory(table_path):
    images, regions = np.array([4, 0, 2, 2, 4]), np.array([5, 0, 3, 1, 5])
    with h5py.File(table_path, "r") as handle:
        expected = {name.split("/")[1]: handle[name][()][images, regions] for name in
                    ("regions/box", "regions/flip", "regions/topk_index", "regions/topk_logprob",
                     "regions/logsumexp", "regions/entropy", "regions/teacher_top1")}
    for table in (RILTable(table_path), RILTable(table_path, in_memory=True)):
        rows = table.read(images, regions)
        assert set(rows) == set(expected)
        for name, value in expected.items():
            assert rows[name].dtype == value.dtype and np.array_equal(rows[name], value), name
    table = RILTable(table_path)
    assert (table.num_images, table.num_regions, table.topk, table.num_classes) == (5, 6, 3, 4)


class _Reads(Dataset):
    def __init__(self, table):
        self.table = table

    def __len__(self):
        return self.table.num_images

    def __getitem__(self, index):
        return torch.from_numpy(self.table.read([index] * 2, [0, 5])["logsumexp"])


def test_table_is_safe_in_dataloader_workers_and_pickles_without_handles(table_path):
    table = RILTable(table_path)
    table.read([0], [0])  # maps the file in this process before the workers fork
    in_workers = torch.cat(list(DataLoader(_Reads(table), batch_size=None, num_workers=2)))
    assert torch.equal(in_workers, torch.cat([_Reads(table)[i] for i in range(table.num_images)]))
    clone = pickle.loads(pickle.dumps(table))
    assert clone._maps is None and np.array_equal(clone.read([1], [2])["entropy"], table.read([1], [2])["entropy"])


def test_unfinished_table_is_refused_for_training(table_path, tmp_path):
    unfinished = tmp_path / "unfinished.h5"
    shutil.copy(table_path, unfinished)
    with h5py.File(unfinished, "r+") as handle:
        handle["progress/done"][3] = 0
        handle.attrs["complete"] = False
    with pytest.raises(RILTableError, match="unfinished: 4 of 5 images done.*python -m ril precompute"):
        RILTable(str(unfinished))
    assert RILTable(str(unfinished), require_complete=False).done.sum() == 4


def test_a_repacked_chunked_table_must_be_loaded_in_memory(table_path, tmp_path):
    chunked = str(tmp_path / "chunked.h5")
    with h5py.File(table_path, "r") as source, h5py.File(chunked, "w") as target:
        for key, value in source.attrs.items():
            target.attrs[key] = value
        target.create_dataset("images/path", data=source["images/path"][()], dtype=source["images/path"].dtype)
        for name in ("images/label", "images/size", "images/checksum", "progress/done", "regions/box", "regions/flip",
                     "regions/topk_index", "regions/topk_logprob", "regions/logsumexp", "regions/entropy",
                     "regions/teacher_top1"):
            target.create_dataset(name, data=source[name][()], chunks=True, compression="gzip")
    with pytest.raises(RILTableError, match="not stored contiguously.*IN_MEMORY"):
        RILTable(chunked)
    in_memory = RILTable(chunked, in_memory=True)
    assert np.array_equal(in_memory.read_image(1, [1])["box"], RILTable(table_path).read_image(1, [1])["box"])
