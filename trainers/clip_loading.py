"""The one place CLIP models are loaded: by OpenAI model name or local checkpoint path.

A name is fetched with clip's download helper (which checks the SHA-256 in OpenAI's URL) and read
like a path. A path may hold an OpenAI state dict (`torch.save(model.state_dict())`, what
`scripts/make_tiny_clip.py` writes) or a TorchScript archive (the files OpenAI distributes). State
dicts are read with `torch.load(weights_only=True)`; TorchScript archives by a restricted reader
that takes only their tensors, because `torch.jit.load` runs code stored in the archive
(`__setstate__`). Both are rebuilt with `clip.model.build_model`, so no code from the file runs.
"""
import ast
import collections
import hashlib
import io
import os
import pickle
import re
import zipfile
from typing import NamedTuple

import torch
from clip import clip
from clip.model import build_model, convert_weights

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # PROTO opcode: torch.save's pre-zip format starts with a protocol-2 pickle
CLIP_KEY = "visual.conv1.weight"
# TorchScript pickles name storages by their legacy class; these are all the dtypes a CLIP can hold.
STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
CLASS_LINE = re.compile(r"^class (\w+)(?:\((\w+)\))?:")
SLOT_LIST_LINE = re.compile(r"^  (__parameters__|__buffers__) = (\[.*\])\s*$")
METHOD_LINE = re.compile(r"^  def (\w+)\(")


def resolve_precision(prec, device):
    """The precision actually used: fp16 and amp need CUDA, so CPU always runs fp32."""
    if prec not in ("fp16", "fp32", "amp"):
        raise ValueError(f"PREC must be one of fp16, fp32, amp; got {prec!r}")
    return prec if torch.device(device).type == "cuda" else "fp32"


def is_torchscript_archive(path):
    """TorchScript archives carry compiled code (`code/`); plain `torch.save` zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


class _ModuleType(NamedTuple):
    """What a TorchScript module class declares: which attributes are parameters and buffers."""
    parameters: frozenset
    buffers: frozenset
    runs_code_on_load: bool  # it defines __setstate__, which torch.jit.load would run


def _declared_module_types(archive, prefix):
    """{qualified class name: _ModuleType} of every `class X(Module)` in the archive's `code/` text.

    The text is only matched line by line, as torch's importer reads `__parameters__` and `__buffers__`;
    a class `a.b.C` lives in `code/a/b.py`, as torch's importer looks it up.
    """
    types, code_dir = {}, f"{prefix}/code/"
    for name in archive.namelist():
        if not (name.startswith(code_dir) and name.endswith(".py")):
            continue
        qualifier = name[len(code_dir):-len(".py")].replace("/", ".")
        current = None
        for line in archive.read(name).decode("utf-8").splitlines():
            if match := CLASS_LINE.match(line):
                current = f"{qualifier}.{match[1]}" if match[2] == "Module" else None
                if current:
                    types[current] = {"__parameters__": [], "__buffers__": [], "methods": set()}
            elif current and (match := SLOT_LIST_LINE.match(line)):
                types[current][match[1]] = ast.literal_eval(match[2])
            elif current and (match := METHOD_LINE.match(line)):
                types[current]["methods"].add(match[1])
    return {
        qualified: _ModuleType(frozenset(found["__parameters__"]), frozenset(found["__buffers__"]),
                              "__setstate__" in found["methods"])
        for qualified, found in types.items()
    }


class _ScriptObject:
    """A TorchScript module as plain data: its class name and the attribute dict BUILD hands it."""
    qualified_name = ""
    state = None

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(flat, offset, size, stride, requires_grad, backward_hooks):
    """`torch._utils._rebuild_tensor_v2` for our flat storages; `as_strided` checks the bounds."""
    if not isinstance(flat, torch.Tensor) or not isinstance(requires_grad, bool) or backward_hooks:
        raise pickle.UnpicklingError("a tensor record is malformed")
    return flat.as_strided(size, stride, offset)


class _WeightsUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl` admitting only tensors, storages and declared module classes."""

    def __init__(self, archive, prefix, module_types, byte_order):
        super().__init__(io.BytesIO(archive.read(f"{prefix}/data.pkl")))
        self.archive, self.prefix, self.byte_order = archive, prefix, byte_order
        self.module_types = module_types
        self.classes, self.storages = {}, {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        qualified = f"{module}.{name}"
        if module.split(".")[0] != "__torch__":
            raise pickle.UnpicklingError(f"global {qualified} is not allowed")
        module_type = self.module_types.get(qualified)
        if module_type is None:
            raise pickle.UnpicklingError(f"class {qualified} is not a module declared in the archive")
        if module_type.runs_code_on_load:
            raise pickle.UnpicklingError(f"class {qualified} runs its own code when loaded (__setstate__)")
        if qualified not in self.classes:
            self.classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
        return self.classes[qualified]

    def persistent_load(self, pid):
        """A storage record `<prefix>/data/<key>` as a flat tensor of the pickled dtype."""
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"persistent id {pid!r} is not a storage")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}/data/{key}")
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} holds {len(raw)} bytes, not {numel} {dtype}")
            storage = torch.UntypedStorage.from_buffer(raw, byte_order=self.byte_order, dtype=dtype)
            self.storages[key] = torch.empty(0, dtype=dtype).set_(storage)
        if self.storages[key].dtype != dtype:
            raise pickle.UnpicklingError(f"storage {key} is read as two dtypes")
        return self.storages[key]


def _collect_state_dict(module, prefix, module_types, out):
    """Parameters, then buffers, then each submodule's, in slot order: what `state_dict()` gives."""
    if not isinstance(module.state, dict):
        raise pickle.UnpicklingError(f"{module.qualified_name} has no attribute dict")
    module_type = module_types[module.qualified_name]
    for declared in (module_type.parameters, module_type.buffers):
        for name, value in module.state.items():
            if name in declared and isinstance(value, torch.Tensor):
                out[prefix + name] = value
    for name, value in module.state.items():
        if isinstance(value, _ScriptObject):
            _collect_state_dict(value, f"{prefix}{name}.", module_types, out)
    return out


def _archive_prefix(archive):
    """The archive's top folder, the one holding `data.pkl`."""
    prefixes = [name[:-len("/data.pkl")] for name in archive.namelist()
                if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(prefixes) != 1:
        raise pickle.UnpicklingError(f"expected one <folder>/data.pkl, found {len(prefixes)}")
    return prefixes[0]


def read_torchscript_weights(path):
    """The `{name: tensor}` that `torch.jit.load(path).state_dict()` gives, without running the archive's code."""
    with zipfile.ZipFile(path) as archive:
        try:
            prefix = _archive_prefix(archive)
            order_record = f"{prefix}/byteorder"  # absent from old archives; torch.load then assumes little
            byte_order = archive.read(order_record).decode() if order_record in archive.namelist() else "little"
            if byte_order not in ("little", "big"):
                raise pickle.UnpicklingError(f"byte order {byte_order!r} is unknown")
            module_types = _declared_module_types(archive, prefix)
            root = _WeightsUnpickler(archive, prefix, module_types, byte_order).load()
            if not isinstance(root, _ScriptObject):
                raise pickle.UnpicklingError("data.pkl does not hold a module")
            return _collect_state_dict(root, "", module_types, collections.OrderedDict())
        except Exception as error:  # untrusted bytes can fail in any way, and every way means this one refusal
            raise ValueError(
                f'"{path}" is a TorchScript archive that holds something other than CLIP weights ({error}). '
                "It was not loaded, and no code from it ran. Give an OpenAI CLIP TorchScript archive or "
                "state dict, or a CLIP model name."
            ) from error


def _not_a_clip(path, reason):
    return ValueError(
        f'"{path}" is not a CLIP checkpoint: {reason}. Expected an OpenAI CLIP state dict (keys such as '
        f"'{CLIP_KEY}', as scripts/make_tiny_clip.py writes) or an OpenAI TorchScript archive."
    )


def _load_weights_only(path):
    """A `torch.save` file read weights-only; its format is told by its first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(len(ZIP_MAGIC))
    if head == ZIP_MAGIC and not zipfile.is_zipfile(path):
        raise _not_a_clip(path, "it is a damaged or truncated zip archive")
    if head != ZIP_MAGIC and not head.startswith(PICKLE_MAGIC):
        raise _not_a_clip(path, "it is neither a zip archive nor a torch.save pickle")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, i.e. running the file's code: not advice to relay.
        raise _not_a_clip(path, "it holds Python objects other than tensors (never unpickled here, as that "
                               "can run code), or is damaged") from None
    except (RuntimeError, EOFError) as error:
        raise _not_a_clip(path, f"it is damaged or truncated ({error})") from error


def read_state_dict(path):
    """The CLIP weights in a checkpoint file, state dict or TorchScript archive; no code from it runs."""
    if is_torchscript_archive(path):
        state_dict = read_torchscript_weights(path)
    else:
        state_dict = _load_weights_only(path)
    if not isinstance(state_dict, dict) or CLIP_KEY not in state_dict:
        raise _not_a_clip(path, f"it holds no '{CLIP_KEY}'")
    return state_dict


def _download_openai_clip(name):
    """The local copy of OpenAI's file for `name`, where `clip.load` keeps it (~/.cache/clip).

    clip's private `_download` is the one helper that checks the SHA-256 in the URL without then
    calling `torch.jit.load` on the file, as the public `clip.load` does.
    """
    return clip._download(clip._MODELS[name], os.path.expanduser("~/.cache/clip"))


def load_clip(name_or_path, precision="fp32", device="cpu"):
    """A CLIP model in eval mode on `device`, weights in the resolved precision (fp16 or fp32).

    Args:
        name_or_path: an OpenAI model name (`clip.available_models()`) or a checkpoint file.
        precision: fp16, fp32 or amp as in CoOp's PREC; amp keeps fp32 weights.
    """
    if name_or_path in clip.available_models():
        model = build_model(read_state_dict(_download_openai_clip(name_or_path)))
    elif os.path.isfile(os.path.expanduser(name_or_path)):
        model = build_model(read_state_dict(os.path.expanduser(name_or_path)))
    else:
        raise ValueError(
            f"MODEL.BACKBONE.NAME = {name_or_path!r} is neither a CLIP model name "
            f"({', '.join(clip.available_models())}) nor an existing checkpoint file. "
            "Give a model name, or a path to a CLIP checkpoint (scripts/make_tiny_clip.py "
            "writes a small one for tests)."
        )
    model.float()
    if resolve_precision(precision, device) == "fp16":
        convert_weights(model)
    return model.to(device).eval()


def backbone_id(name_or_path):
    """A stable identity for fingerprints: the name, or the path plus the file's sha256."""
    if name_or_path in clip.available_models():
        return name_or_path
    return f"{os.path.abspath(os.path.expanduser(name_or_path))}#sha256={file_sha256(name_or_path)}"


def file_sha256(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(os.path.expanduser(path), "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()
