"""CLIP loading: state dicts, TorchScript archives read without torch.jit.load, model names, precision, errors."""
import argparse
import shutil
import urllib.request

import pytest
import torch
from clip import clip
from clip.model import CLIP, build_model, convert_weights

from trainers.clip_loading import (
    file_sha256, is_torchscript_archive, load_clip, read_state_dict, read_torchscript_weights, resolve_precision,
)

# ModifiedResNet needs 32x its attention-pool grid; width 8 keeps it tiny (heads = width * 32 / 64).
RESNET_CLIP = dict(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
                   vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                   transformer_heads=1, transformer_layers=1)


def save_traced_clip(model, path):
    """A TorchScript archive as OpenAI ships them: the whole CLIP, fp16 weights, state-dict key names."""
    size = model.visual.input_resolution
    traced = torch.jit.trace_module(model.eval(), {"encode_image": torch.randn(1, 3, size, size)})
    torch.jit.save(traced, str(path))
    return str(path)


@pytest.fixture(scope="module")
def clip_archives(tiny_student, tmp_path_factory):
    directory = tmp_path_factory.mktemp("torchscript")
    torch.manual_seed(0)
    resnet = CLIP(**RESNET_CLIP)
    convert_weights(resnet)
    return {
        "vit": save_traced_clip(build_model(read_state_dict(tiny_student)), directory / "vit.pt"),
        "resnet": save_traced_clip(resnet, directory / "resnet.pt"),
    }


@pytest.fixture
def no_torch_jit_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", refuse)


class Toy(torch.nn.Module):
    """Every kind of attribute a scripted module can hold, as torch.jit.load's state_dict sees them."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 3, bias=False)
        self.norm = torch.nn.BatchNorm1d(3)
        self.register_buffer("kept", torch.arange(4.0))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.plain = torch.full((2,), 7.0)
        self.count = 3

    def forward(self, x):
        return self.norm(self.linear(x)) + self.kept.sum() + self.scratch.sum() + self.plain.sum() + self.count


class ToyWithList(torch.nn.Module):
    """A List[int] attribute: TorchScript pickles it through a global outside the allow-list."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.sizes = [1, 2]

    def forward(self, x):
        return x * self.weight + self.sizes[0]


def assert_bitwise_equal(ours, reference):
    assert list(ours) == list(reference)
    for key, tensor in reference.items():
        assert (ours[key].dtype, ours[key].shape) == (tensor.dtype, tensor.shape), key
        assert torch.equal(ours[key].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


def test_state_dict_checkpoint_loads_in_fp32_on_cpu(tiny_student):
    model = load_clip(tiny_student, precision="fp16", device="cpu")
    assert model.dtype == torch.float32, "fp16 needs CUDA: CPU must run fp32"
    assert model.visual.input_resolution == 32
    assert not model.training
    features = model.encode_text(clip.tokenize(["a photo of a cat"]))
    assert features.shape == (1, 64) and torch.isfinite(features).all()


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_torchscript_weights_are_the_jit_state_dict_bit_for_bit(clip_archives, kind):
    reference = torch.jit.load(clip_archives[kind], map_location="cpu").state_dict()
    assert {torch.float16, torch.float32} <= {tensor.dtype for tensor in reference.values()}
    assert_bitwise_equal(read_torchscript_weights(clip_archives[kind]), reference)


def test_scripted_module_gives_parameters_and_buffers_only(tmp_path):
    path = str(tmp_path / "toy.pt")
    torch.jit.save(torch.jit.script(Toy()), path)
    reference = torch.jit.load(path).state_dict()
    assert "plain" not in reference and "scratch" in reference and "norm.num_batches_tracked" in reference
    assert_bitwise_equal(read_torchscript_weights(path), reference)


def test_torchscript_archive_loads_without_torch_jit_load(clip_archives, tiny_student, no_torch_jit_load):
    image = torch.randn(1, 3, 32, 32)
    assert is_torchscript_archive(clip_archives["vit"]) and not is_torchscript_archive(tiny_student)
    reloaded = load_clip(clip_archives["vit"])
    assert torch.equal(reloaded.encode_image(image), load_clip(tiny_student).encode_image(image))
    resnet = load_clip(clip_archives["resnet"])
    assert resnet.visual.input_resolution == 64 and resnet.dtype == torch.float32


def test_model_name_is_fetched_by_clips_checked_download_and_never_jit_loaded(
        clip_archives, tiny_student, tmp_path, monkeypatch, no_torch_jit_load):
    cache = tmp_path / ".cache" / "clip"
    cache.mkdir(parents=True)
    cached = shutil.copy(clip_archives["vit"], cache / "Tiny.pt")
    url = f"https://openaipublic.azureedge.net/clip/models/{file_sha256(cached)}/Tiny.pt"
    monkeypatch.setitem(clip._MODELS, "Tiny/8", url)
    monkeypatch.setenv("HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise ConnectionError("download attempted")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    image = torch.randn(1, 3, 32, 32)
    assert torch.equal(load_clip("Tiny/8").encode_image(image), load_clip(tiny_student).encode_image(image))
    with open(cached, "ab") as handle:  # a cached copy that no longer matches the SHA-256 is fetched again
        handle.write(b"tampered")
    with pytest.warns(UserWarning, match="SHA256"), pytest.raises(ConnectionError, match="download attempted"):
        load_clip("Tiny/8")


def test_non_clip_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="other.pt.*not a CLIP checkpoint"):
        read_state_dict(str(path))


def test_torchscript_archive_of_another_model_is_not_a_clip(tmp_path):
    path = str(tmp_path / "toy.pt")
    torch.jit.save(torch.jit.script(Toy()), path)
    with pytest.raises(ValueError, match=r"toy.pt.*not a CLIP checkpoint: it holds no 'visual.conv1.weight'"):
        read_state_dict(path)


def test_torchscript_archive_with_an_unlisted_global_is_refused(tmp_path):
    path = str(tmp_path / "listed.pt")
    torch.jit.save(torch.jit.script(ToyWithList()), path)
    with pytest.raises(ValueError) as refused:
        read_state_dict(path)
    message = str(refused.value)
    assert message.startswith(f'"{path}" is a TorchScript archive that holds something other than CLIP weights')
    assert "torch.jit._pickle.build_intlist is not allowed" in message and "no code from it ran" in message


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_of_objects_is_refused_without_advice_to_unpickle_it(tmp_path, zip_format):
    path = tmp_path / "objects.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ValueError) as refused:
        read_state_dict(str(path))
    message = str(refused.value)
    assert message.startswith(f'"{path}" is not a CLIP checkpoint: it holds Python objects other than tensors')
    assert "weights_only" not in message and refused.value.__cause__ is None


@pytest.mark.parametrize("source, damage, reason", [
    ("state_dict", lambda data: data[: len(data) // 2], "a damaged or truncated zip archive"),
    ("torchscript", lambda data: data[: len(data) // 2], "a damaged or truncated zip archive"),
    ("state_dict", lambda data: b"", "neither a zip archive nor a torch.save pickle"),
    ("state_dict", lambda data: b"weights, honestly\n", "neither a zip archive nor a torch.save pickle"),
], ids=["truncated_state_dict", "truncated_torchscript", "empty", "text"])
def test_damaged_or_foreign_file_is_refused_with_one_message(tiny_student, clip_archives, tmp_path, source, damage,
                                                             reason):
    original = tiny_student if source == "state_dict" else clip_archives["vit"]
    path = tmp_path / "damaged.pt"
    path.write_bytes(damage(open(original, "rb").read()))
    with pytest.raises(ValueError, match=f'damaged.pt" is not a CLIP checkpoint: it is {reason}'):
        read_state_dict(str(path))


def test_unknown_name_lists_models_and_suggests_a_path():
    with pytest.raises(ValueError, match=r"MODEL.BACKBONE.NAME = 'ViT-Q/99'.*ViT-B/16.*checkpoint"):
        load_clip("ViT-Q/99")


@pytest.mark.parametrize("prec, device, expected", [
    ("fp16", "cpu", "fp32"), ("amp", "cpu", "fp32"), ("fp32", "cpu", "fp32"),
    ("fp16", "cuda", "fp16"), ("amp", "cuda", "amp"),
])
def test_precision_rule(prec, device, expected):
    assert resolve_precision(prec, device) == expected


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="PREC"):
        resolve_precision("bf16", "cpu")
