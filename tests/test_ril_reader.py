"""Reader: densification, random access on disk / in memory / in workers."""
import pickle
import shutil

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ril.format import RILTableError
from ril.reader import RILTable, densify
from tests.test_ril_format import build_table


def _stored(full_logits, topk):
    """What precompute stores for fp32 logits (B, C): top-K (fp16), logsumexp."""
    logits = torch.tensor(full_logits, dtype=torch.float32)
    values, index = logits.topk(topk, dim=1)
    return index.numpy().astype(np.uint16), values.numpy().astype(np.float16), torch.logsumexp(logits, 1).numpy()


def test_smooth_keeps_the_teacher_softmax_on_top_k_and_spreads_the_rest():
    logits = [[2.0, 1.0, 0.0, -1.0], [0.5, 3.0, 0.25, 0.0]]
    index, values, lse = _stored(logits, 2)
    dense = densify(index, values, lse, 4, "smooth")
    exact = torch.softmax(torch.tensor(logits), dim=1)
    # row 0: top-2 = classes 0, 1 keep exp(z - lse); classes 2, 3 share the rest equally
    top = torch.exp(torch.tensor(values.astype(np.float32)) - torch.tensor(lse)[:, None])
    assert index.tolist() == [[0, 1], [1, 0]]
    assert torch.equal(dense[0, :2], top[0]) and torch.equal(dense[1, [1, 0]], top[1])
    assert torch.allclose(dense[0, :2], exact[0, :2], rtol=2e-3)
    rest = (1 - exact[0, :2].sum()) / 2
    assert torch.allclose(dense[0, 2:], torch.stack([rest, rest]), rtol=1e-2)
    assert torch.allclose(dense.sum(1), torch.ones(2), atol=1e-6) and (dense > 0).all()


def test_renorm_rescales_top_k_and_zeroes_the_rest():
    """The zeros mark the teacher's support, on which positive_kd_loss takes both KL halves."""
    index, values, lse = _stored([[2.0, 1.0, 0.0, -1.0]], 2)
    dense = densify(index, values, lse, 4, "renorm")
    top = np.exp(values.astype(np.float64) - lse[:, None])[0]
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
                    ("regions/box", "regions/flip", "regions/topk_index", "regions/topk_logit",
                     "regions/logsumexp", "regions/entropy")}
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
                     "regions/topk_index", "regions/topk_logit", "regions/logsumexp", "regions/entropy"):
            target.create_dataset(name, data=source[name][()], chunks=True, compression="gzip")
    with pytest.raises(RILTableError, match="not stored contiguously.*IN_MEMORY"):
        RILTable(chunked)
    in_memory = RILTable(chunked, in_memory=True)
    assert np.array_equal(in_memory.read_image(1, [1])["box"], RILTable(table_path).read_image(1, [1])["box"])
