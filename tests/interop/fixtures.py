"""Fixture generators for the `ckpt inspect` interop tests.

Every generator writes files with Debian's torch (`/usr/bin/python3`, torch 1.13.1) into a directory it is given
and returns `(path, expected)`. `expected` is what Python itself says about the file, shaped like the report
documented in docs/inspect-json.md. Keys that start with an underscore are test-only extras (for example
`_verify_tensors`, the NaN/Inf counts `--verify` must add to each floating tensor).

Values inside `expected` may be matcher objects (`ANY`, `Contains`, `OneOf`) where docs/inspect-json.md leaves
the exact rendering open; `match_errors` understands them.

Run this module directly to generate every fixture into a temporary directory and cross-check the expected
values against an independent reading of the written bytes (no `ckpt` binary needed):

    /usr/bin/python3 tests/interop/fixtures.py
"""

import collections
import copy
import importlib
import io
import json
import math
import os
import pickle
import random
import shutil
import struct
import sys
import tempfile
import textwrap
import zipfile

import _compat_pickle
import numpy as np
import torch

# --------------------------------------------------------------------------------------------------------------
# Matchers and comparison
# --------------------------------------------------------------------------------------------------------------


class _Matcher:
    """Matchers are immutable: copies are the object itself (identity checks survive copy.deepcopy)."""

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class _Any(_Matcher):
    """Matches any value; the key must still be present."""

    def __repr__(self):
        return "ANY"


ANY = _Any()


class Contains(_Matcher):
    """Matches a value whose JSON text contains every one of `needles` (and, if given, one of `any_of`)."""

    def __init__(self, needles, any_of=None):
        self.needles = list(needles)
        self.any_of = list(any_of) if any_of else None

    def check(self, actual):
        text = json.dumps(actual)
        missing = [n for n in self.needles if n not in text]
        if missing:
            return "JSON text %r lacks %r" % (text[:300], missing)
        if self.any_of is not None and not any(n in text for n in self.any_of):
            return "JSON text %r contains none of %r" % (text[:300], self.any_of)
        return None

    def __repr__(self):
        return "Contains(%r, any_of=%r)" % (self.needles, self.any_of)


class OneOf(_Matcher):
    """Matches a value equal to one of the alternatives (where the docs allow more than one reading)."""

    def __init__(self, *alternatives):
        self.alternatives = alternatives

    def __repr__(self):
        return "OneOf%r" % (self.alternatives,)


class Absent(_Matcher):
    """For a key: the key must be absent, or (if `or_value` is given) equal to it."""

    _unset = object()

    def __init__(self, or_value=_unset):
        self.or_value = or_value

    def __repr__(self):
        return "Absent()" if self.or_value is Absent._unset else "Absent(or %r)" % (self.or_value,)


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def match_errors(actual, expected, where="$"):
    """Returns a list of human-readable differences between a parsed JSON value and an expected value."""
    errors = []
    if expected is ANY:
        return errors
    if isinstance(expected, Contains):
        problem = expected.check(actual)
        return [] if problem is None else ["%s: %s" % (where, problem)]
    if isinstance(expected, OneOf):
        for alt in expected.alternatives:
            if not match_errors(actual, alt, where):
                return []
        return ["%s: %r matches none of %r" % (where, actual, expected.alternatives)]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return ["%s: expected an object, got %r" % (where, _short(actual))]
        for key, value in expected.items():
            if isinstance(key, str) and key.startswith("_"):
                continue
            if isinstance(value, Absent):
                if key in actual and (value.or_value is Absent._unset or
                                      match_errors(actual[key], value.or_value, where + "." + key)):
                    errors.append("%s.%s: should be absent, is %r" % (where, key, _short(actual[key])))
                continue
            if key not in actual:
                errors.append("%s: missing key %r" % (where, key))
                continue
            errors.extend(match_errors(actual[key], value, "%s.%s" % (where, key)))
        return errors
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, list):
            return ["%s: expected an array, got %r" % (where, _short(actual))]
        if len(actual) != len(expected):
            errors.append("%s: expected %d elements, got %d: %r" % (where, len(expected), len(actual),
                                                                     _short(actual)))
        for i, (a, e) in enumerate(zip(actual, expected)):
            errors.extend(match_errors(a, e, "%s[%d]" % (where, i)))
        return errors
    if isinstance(expected, bool) or expected is None:
        if actual is not expected:
            return ["%s: expected %r, got %r" % (where, expected, _short(actual))]
        return []
    if _is_number(expected):
        # JSON does not tell 3 from 3.0 reliably across writers; the value must be equal and not a bool.
        if not _is_number(actual) or actual != expected:
            return ["%s: expected %r, got %r" % (where, expected, _short(actual))]
        return []
    if isinstance(expected, str):
        if actual != expected:
            return ["%s: expected %r, got %r" % (where, expected, _short(actual))]
        return []
    raise TypeError("unsupported expected value at %s: %r" % (where, expected))


def _short(value):
    text = repr(value)
    return text if len(text) < 400 else text[:400] + "..."


# --------------------------------------------------------------------------------------------------------------
# Conversions shared by the expected values
# --------------------------------------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

FLOATING = {"float16", "bfloat16", "float32", "float64"}


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def json_int(v):
    """docs: integers that do not fit 64 bits are strings of decimal digits."""
    return v if INT64_MIN <= v <= INT64_MAX else str(v)


def json_float(v):
    """docs: NaN and infinities are null in values copied from files."""
    return None if (math.isnan(v) or math.isinf(v)) else v


def key_text(k):
    """docs: non-string dict keys are written as their JSON text, e.g. "0"."""
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    if isinstance(k, int):
        return str(k)
    if isinstance(k, float):
        return json.dumps(k)
    raise TypeError("no JSON text for key %r" % (k,))


def plain_to_json(v):
    """Python data (as a real object, not a pickle reference) -> the JSON value the docs prescribe."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return json_int(v)
    if isinstance(v, float):
        return json_float(v)
    if isinstance(v, (list, tuple)):
        return [plain_to_json(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return [plain_to_json(x) for x in v]
    if isinstance(v, dict):
        return {key_text(k): plain_to_json(x) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray)):
        return {"type": "bytes", "length": len(v)}
    if isinstance(v, torch.Tensor):
        return {"type": "tensor", "dtype": dtype_name(v.dtype), "shape": list(v.shape),
                "nbytes": v.numel() * v.element_size()}
    if isinstance(v, torch.device):
        return {"type": "device", "device": str(v)}
    if isinstance(v, np.ndarray):
        return {"type": "ndarray", "dtype": ANY, "shape": list(v.shape)}
    raise TypeError("plain_to_json: %r" % (type(v),))


def storage_id(t):
    """Identity of a tensor's storage (data_ptr is 0 for every empty storage, so use the StorageImpl)."""
    return t.storage()._storage._cdata


def storage_nbytes(t):
    return t.storage().nbytes()


def view_key(t):
    return (storage_id(t), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def nonfinite_counts(t):
    if dtype_name(t.dtype) not in FLOATING:
        return None
    return {"nan": int(torch.isnan(t).sum().item()), "inf": int(torch.isinf(t).sum().item())}


def contiguous_stride(shape):
    stride, acc = [], 1
    for n in reversed(list(shape)):
        stride.append(acc)
        acc *= max(n, 1)
    return list(reversed(stride))


# --------------------------------------------------------------------------------------------------------------
# Expected reports
# --------------------------------------------------------------------------------------------------------------


def file_header(path, fmt, kind):
    return {"path": path, "file": os.path.basename(path), "size_bytes": os.path.getsize(path),
            "format": fmt, "kind": kind}


def expected_weights_torch(path, state):
    """`state`: the dict passed to torch.save (values are tensors), in file order."""
    exp = file_header(path, "torch_zip", "weights")
    keys = {}  # storage id -> torch.save key ("0", "1", ... in order of first appearance while pickling)
    storage_bytes = 0
    seen_views = {}
    tensors, verify, dtypes = [], {}, collections.OrderedDict()
    num_parameters = 0
    for name, t in state.items():
        sid = storage_id(t)
        if sid not in keys:
            keys[sid] = str(len(keys))
            storage_bytes += storage_nbytes(t)
        numel, nbytes = t.numel(), t.numel() * t.element_size()
        entry = {"name": name, "dtype": dtype_name(t.dtype), "shape": list(t.shape), "nbytes": nbytes,
                 "storage": keys[sid], "storage_offset": t.storage_offset(), "stride": list(t.stride())}
        vk = view_key(t)
        if vk in seen_views:
            entry["tied_to"] = seen_views[vk]
        else:
            entry["tied_to"] = Absent(or_value=None)
            seen_views[vk] = name
            num_parameters += numel
            d = dtypes.setdefault(entry["dtype"], {"count": 0, "numel": 0, "nbytes": 0})
            d["count"] += 1
            d["numel"] += numel
            d["nbytes"] += nbytes
        counts = nonfinite_counts(t)
        if counts is not None:
            verify[name] = counts
        tensors.append(entry)
    exp.update({"tensors": tensors, "num_tensors": len(tensors), "num_parameters": num_parameters,
                "storage_bytes": storage_bytes, "dtypes": dict(dtypes), "metadata": {}})
    exp["_verify_tensors"] = verify
    return exp


# --------------------------------------------------------------------------------------------------------------
# safetensors (formats.md section 4), pure Python
# --------------------------------------------------------------------------------------------------------------

ST_DTYPE = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL", torch.complex64: "C64"}
ST_TO_TORCH_NAME = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                    "C64": "complex64", "U16": "uint16", "U32": "uint32", "U64": "uint64",
                    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn"}
ST_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
           "C64": 8, "U16": 2, "U32": 4, "U64": 8, "F8_E5M2": 1, "F8_E4M3": 1}


def tensor_le_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    a = t.numpy()
    if a.dtype.byteorder == ">":
        a = a.byteswap().newbyteorder()
    return a.tobytes()


def write_safetensors(path, named_tensors, metadata=None):
    """Writes like the reference implementation: tensors sorted by dtype size (largest first) then name,
    contiguous offsets from 0, header JSON padded with spaces to a multiple of 8. Returns the tensors in file
    order as (name, tensor, begin, end)."""
    items = sorted(named_tensors, key=lambda nt: (-nt[1].element_size(), nt[0]))
    header = collections.OrderedDict()
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs, placed, offset = [], [], 0
    for name, t in items:
        b = tensor_le_bytes(t)
        assert len(b) == t.numel() * t.element_size()
        header[name] = {"dtype": ST_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        placed.append((name, t, offset, offset + len(b)))
        offset += len(b)
        blobs.append(b)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    return placed


def expected_weights_safetensors(path, placed, metadata):
    exp = file_header(path, "safetensors", "weights")
    tensors, verify, dtypes = [], {}, collections.OrderedDict()
    num_parameters = 0
    for name, t, begin, end in placed:
        nbytes = t.numel() * t.element_size()
        assert end - begin == nbytes
        entry = {"name": name, "dtype": dtype_name(t.dtype), "shape": list(t.shape), "nbytes": nbytes,
                 "storage": None,
                 # docs do not say what storage_offset means for safetensors; it must be there.
                 "storage_offset": ANY,
                 "stride": contiguous_stride(t.shape), "tied_to": Absent(or_value=None)}
        num_parameters += t.numel()
        d = dtypes.setdefault(entry["dtype"], {"count": 0, "numel": 0, "nbytes": 0})
        d["count"] += 1
        d["numel"] += t.numel()
        d["nbytes"] += nbytes
        counts = nonfinite_counts(t)
        if counts is not None:
            verify[name] = counts
        tensors.append(entry)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
    exp.update({"tensors": tensors, "num_tensors": len(tensors), "num_parameters": num_parameters,
                "storage_bytes": os.path.getsize(path) - 8 - n, "dtypes": dict(dtypes),
                "metadata": dict(metadata or {})})
    exp["_verify_tensors"] = verify
    return exp


def read_safetensors_header(path):
    """Header of a safetensors file, keys in file order (json keeps order)."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    return n, header, data[8 + n:]


def expected_weights_from_safetensors_file(path):
    """Expected report for any safetensors file, computed from its bytes with numpy/torch (for the real HF
    fixtures, which were not written by us)."""
    n, header, buf = read_safetensors_header(path)
    metadata = header.get("__metadata__", {})
    placed = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dt = ST_TO_TORCH_NAME[info["dtype"]]
        raw = bytearray(buf[begin:end])
        shape = info["shape"]
        if dt == "bfloat16":
            # clone: the tensor must not keep viewing `raw`, which is freed when the loop moves on
            t = torch.frombuffer(raw, dtype=torch.int16).clone().view(torch.bfloat16) if raw else \
                torch.empty(0, dtype=torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(bytes(raw), dtype=np.dtype(dt).newbyteorder("<")).copy())
        t = t.reshape(shape)
        placed.append((name, t, begin, end))
    return expected_weights_safetensors(path, placed, metadata)


# --------------------------------------------------------------------------------------------------------------
# A restricted reference unpickler: reads data.pkl without importing or calling anything it does not know.
# It is the Python side's independent reading of the files (used for cross-checks and for HF's files whose
# classes are not installed here).
# --------------------------------------------------------------------------------------------------------------

STORAGE_DTYPE = {"DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
                 "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
                 "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
                 "ComplexDoubleStorage": "complex128", "ComplexFloatStorage": "complex64"}
ELEMENT_SIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
                "int8": 1, "uint8": 1, "bool": 1, "complex128": 16, "complex64": 8}


class StorageRef:
    def __init__(self, dtype, key, location, numel):
        self.dtype, self.key, self.location, self.numel = dtype, key, location, numel


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, tuple(size), tuple(stride)
        self.dtype = storage.dtype
        self.numel = 1
        for n in self.shape:
            self.numel *= n
        self.nbytes = self.numel * ELEMENT_SIZE[self.dtype]


class DeviceRef:
    def __init__(self, *args):
        self.text = args[0] if len(args) == 1 else "%s:%s" % args


class NdarrayRef:
    def __init__(self, *args):
        self.shape, self.dtype = (), None

    def __setstate__(self, state):
        self.shape = tuple(state[1])
        self.dtype = state[2]


class DtypeRef:
    def __init__(self, *args):
        self.name = args[0] if args else None

    def __setstate__(self, state):
        pass


class OpaqueBase:
    """Stub for every global we do not know: calling it or NEWOBJ makes an opaque object."""
    _qual = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._args = list(args)
        self._state = None
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self._state = state

    def __call__(self, *args):
        return _stub("<call>")(*args)


_STUBS = {}


def _stub(qual):
    if qual not in _STUBS:
        _STUBS[qual] = type(qual.rsplit(".", 1)[-1], (OpaqueBase,), {"_qual": qual})
    return _STUBS[qual]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


def _codecs_encode(s, encoding="latin1"):
    return s.encode(encoding)


class RefUnpickler(pickle.Unpickler):
    def __init__(self, data):
        super().__init__(io.BytesIO(data))

    def find_class(self, module, name):
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qual = module + "." + name
        if qual == "collections.OrderedDict":
            return collections.OrderedDict
        if qual == "torch._utils._rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if qual in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPE:
            return STORAGE_DTYPE[name]
        if qual == "torch.device":
            return DeviceRef
        if qual == "_codecs.encode":
            return _codecs_encode
        if qual in ("builtins.set", "builtins.frozenset", "builtins.bytes", "builtins.bytearray"):
            return {"set": set, "frozenset": frozenset, "bytes": bytes, "bytearray": bytearray}[name]
        if qual == "numpy.core.multiarray._reconstruct":
            return lambda cls, shape, dtype: NdarrayRef()
        if qual == "numpy.dtype":
            return DtypeRef
        return _stub(qual)

    def persistent_load(self, pid):
        kind, storage_type, key, location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError("persistent id of kind %r, not 'storage'" % (kind,))
        if not isinstance(storage_type, str):
            qual = getattr(storage_type, "_qual", repr(storage_type))
            raise pickle.UnpicklingError("storage type %s is not a torch storage class" % qual)
        return StorageRef(storage_type, key, location, numel)


def zip_prefix(path):
    with zipfile.ZipFile(path) as z:
        return z.namelist()[0].split("/")[0]


def ref_load(path):
    """Loads a torch zip's data.pkl with the reference unpickler. Returns (value, {record key: size})."""
    with zipfile.ZipFile(path) as z:
        prefix = z.namelist()[0].split("/")[0]
        value = RefUnpickler(z.read(prefix + "/data.pkl")).load()
        records = {i.filename[len(prefix) + 6:]: i.file_size for i in z.infolist()
                   if i.filename.startswith(prefix + "/data/")}
    return value, records


def ref_to_expected(v):
    """A reference-unpickled value -> the expected JSON value (with matchers where the docs leave the rendering
    open)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return json_int(v)
    if isinstance(v, float):
        return json_float(v)
    if isinstance(v, (list, tuple, set, frozenset)):
        return [ref_to_expected(x) for x in v]
    if isinstance(v, dict):
        return {key_text(k): ref_to_expected(x) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray)):
        return {"type": "bytes", "length": len(v)}
    if isinstance(v, TensorRef):
        return {"type": "tensor", "dtype": v.dtype, "shape": list(v.shape), "nbytes": v.nbytes}
    if isinstance(v, DeviceRef):
        return {"type": "device", "device": v.text}
    if isinstance(v, NdarrayRef):
        return {"type": "ndarray", "dtype": ANY, "shape": list(v.shape)}
    if isinstance(v, type) and issubclass(v, OpaqueBase):
        return {"type": "global", "name": v._qual}
    if isinstance(v, type):  # a known class used as a value (never called)
        return {"type": "global", "name": v.__module__ + "." + v.__qualname__}
    if isinstance(v, OpaqueBase):
        if v._qual == "builtins.getattr" and len(v._args) == 2 and isinstance(v._args[1], str) and \
                isinstance(v._args[0], type) and issubclass(v._args[0], OpaqueBase):
            # An enum member as CPython 3.11 pickles it. The docs do not fix its rendering (an opaque getattr
            # call or something nicer); it must at least name the class and the member.
            return Contains([v._args[0]._qual.rsplit(".", 1)[-1], v._args[1]])
        return {"type": "object", "class": v._qual, "args": [ref_to_expected(a) for a in v._args],
                "state": ref_to_expected(v._state)}
    raise TypeError("ref_to_expected: %r" % (type(v),))


# --------------------------------------------------------------------------------------------------------------
# Helper module (dataclass + enums) importable by pickle
# --------------------------------------------------------------------------------------------------------------

HELPER_MODULE = "ckpt_fixture_helpers"
HELPER_SOURCE = textwrap.dedent('''
    import dataclasses
    import enum
    from typing import List, Optional


    class ExplicitEnum(str, enum.Enum):
        """Like transformers.utils.ExplicitEnum."""


    class IntervalStrategy(ExplicitEnum):
        NO = "no"
        STEPS = "steps"
        EPOCH = "epoch"


    class SchedulerType(ExplicitEnum):
        LINEAR = "linear"
        COSINE = "cosine"


    class Precision(enum.Enum):
        FP32 = 1
        BF16 = 2


    @dataclasses.dataclass
    class FakeTrainingArguments:
        output_dir: str
        learning_rate: float = 5e-05
        weight_decay: float = 0.0
        adam_epsilon: float = 1e-08
        num_train_epochs: float = 3.0
        max_steps: int = -1
        seed: int = 42
        per_device_train_batch_size: int = 8
        evaluation_strategy: IntervalStrategy = IntervalStrategy.NO
        lr_scheduler_type: SchedulerType = SchedulerType.LINEAR
        precision: Precision = Precision.FP32
        bf16: bool = False
        data_seed: Optional[int] = None
        report_to: List[str] = dataclasses.field(default_factory=list)
        fsdp_config: dict = dataclasses.field(default_factory=dict)
        label_names: Optional[tuple] = None
        huge_number: int = 0
        neg_huge_number: int = 0
        not_a_number: float = 0.0
        infinity: float = 0.0
        blob: bytes = b""


    class Thing:
        def __init__(self, x):
            self.x = x
''')


def helper_module(tmpdir=None):
    """Imports the helper module from a private temporary directory (never inside a fixture directory, where
    it would become part of a checkpoint). `tmpdir` is accepted for symmetry and ignored."""
    if HELPER_MODULE in sys.modules:
        return sys.modules[HELPER_MODULE]
    import atexit
    moddir = tempfile.mkdtemp(prefix="ckpt-pymod-")
    atexit.register(shutil.rmtree, moddir, True)
    with open(os.path.join(moddir, HELPER_MODULE + ".py"), "w") as f:
        f.write(HELPER_SOURCE)
    sys.path.insert(0, moddir)
    return importlib.import_module(HELPER_MODULE)


# --------------------------------------------------------------------------------------------------------------
# Weights fixtures
# --------------------------------------------------------------------------------------------------------------


def dtypes_state_dict():
    g = torch.Generator().manual_seed(7)
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    shared = torch.randn(3, 2, generator=g)
    sd = collections.OrderedDict()
    sd["f32"] = torch.randn(3, 4, generator=g)
    sd["f16"] = torch.randn(5, generator=g).half()
    sd["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["f64"] = torch.randn(2, 2, generator=g).double()
    sd["i64"] = torch.tensor([INT64_MIN, -1, 0, 1, 2 ** 62, INT64_MAX], dtype=torch.int64)
    sd["i32"] = torch.tensor([-(2 ** 31), 5, 2 ** 31 - 1], dtype=torch.int32)
    sd["i16"] = torch.tensor([[-32768, 32767]], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 0, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["flags"] = torch.tensor([True, False, True, True])
    sd["scalar_f32"] = torch.tensor(3.5)
    sd["scalar_i64"] = torch.tensor(-7)
    sd["scalar_bool"] = torch.tensor(False)
    sd["empty_f32"] = torch.empty(0)
    sd["empty_f16_0x4"] = torch.empty(0, 4, dtype=torch.float16)
    # several views of one storage
    sd["grid"] = base
    sd["grid_t"] = base.t()
    sd["grid_block"] = base[1:3, 2:5]
    sd["grid_row2"] = base[2]
    sd["grid_col1"] = base[:, 1]
    sd["grid_every5"] = base.view(-1)[::5]
    sd["grid_again"] = base.view(4, 6)  # a new Python tensor, the very same view as "grid": tied
    # tied weights: the same tensor under two names
    sd["shared_a"] = shared
    sd["shared_b"] = shared
    return sd


def make_dtypes_bin(d):
    sd = dtypes_state_dict()
    path = os.path.join(d, "dtypes.bin")
    torch.save(sd, path)
    return path, expected_weights_torch(path, sd)


def make_dtypes_safetensors(d):
    sd = dtypes_state_dict()
    # safetensors cannot share storage: every tensor gets its own contiguous bytes; tied duplicates dropped as
    # transformers does.
    named, seen = [], set()
    for name, t in sd.items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        named.append((name, t.contiguous().clone()))
    path = os.path.join(d, "dtypes.safetensors")
    meta = {"format": "pt"}
    placed = write_safetensors(path, named, meta)
    return path, expected_weights_safetensors(path, placed, meta)


def _set_bits(t, index, bits):
    """Sets element `index` of a 1-d float tensor to a raw bit pattern (NaN payloads etc.)."""
    int_dtype = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
                 torch.float64: torch.int64}[t.dtype]
    width = t.element_size() * 8
    if bits >= 2 ** (width - 1):
        bits -= 2 ** width
    t.view(int_dtype)[index] = bits


def nonfinite_state_dict():
    nan, inf = float("nan"), float("inf")
    sd = collections.OrderedDict()
    f32 = torch.tensor([1.0, nan, inf, -inf, nan, 0.0, -0.0, 1e-45, 2.0, 3.0], dtype=torch.float32)
    _set_bits(f32, 8, 0x7F800001)  # signalling NaN
    _set_bits(f32, 9, 0xFFC00000)  # negative quiet NaN
    sd["f32"] = f32
    f16 = torch.tensor([nan, inf, -inf, 65504.0, 6e-8, 1.0, 1.0], dtype=torch.float16)
    _set_bits(f16, 5, 0x7C01)  # signalling NaN
    _set_bits(f16, 6, 0xFE00)  # negative NaN
    sd["f16"] = f16
    bf16 = torch.tensor([nan, inf, 1.0, -inf, 1.0, 1.0, 3.0e38], dtype=torch.bfloat16)
    _set_bits(bf16, 4, 0x7F81)  # signalling NaN
    _set_bits(bf16, 5, 0xFF80)  # -inf
    sd["bf16"] = bf16
    sd["f64"] = torch.tensor([nan, 1.0, inf, 1.7976931348623157e308, 5e-324], dtype=torch.float64)
    # a view that sees none of its storage's NaNs: counts are per tensor (view), not per storage
    big = torch.full((4, 4), nan)
    big[1:3, 1:3] = 1.0
    sd["big"] = big
    sd["inner"] = big[1:3, 1:3]
    sd["edge_col"] = big[:, 0]
    sd["clean"] = torch.ones(3)
    sd["ints"] = torch.tensor([1, 2, 3])
    return sd


def make_nonfinite_bin(d):
    sd = nonfinite_state_dict()
    path = os.path.join(d, "nonfinite.bin")
    torch.save(sd, path)
    return path, expected_weights_torch(path, sd)


def make_nonfinite_safetensors(d):
    sd = nonfinite_state_dict()
    named = [(n, t.contiguous().clone()) for n, t in sd.items()]
    path = os.path.join(d, "nonfinite.safetensors")
    meta = {"format": "pt"}
    placed = write_safetensors(path, named, meta)
    return path, expected_weights_safetensors(path, placed, meta)


def make_complex_bin(d):
    sd = collections.OrderedDict()
    sd["c64"] = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    sd["c128"] = torch.tensor([[0.5j]], dtype=torch.complex128)
    sd["real"] = torch.ones(2)
    path = os.path.join(d, "complex.bin")
    torch.save(sd, path)
    return path, expected_weights_torch(path, sd)


class TinyLM(torch.nn.Module):
    """A small MLP language model whose output layer is tied to its embedding, plus a persistent int64
    buffer (state dict has buffers the optimizer does not know)."""

    def __init__(self, vocab=16, dim=8, hidden=12):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.ln = torch.nn.LayerNorm(hidden)
        self.fc2 = torch.nn.Linear(hidden, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("position_ids", torch.arange(6).unsqueeze(0))

    def forward(self, ids):
        h = self.emb(ids)
        h = torch.nn.functional.gelu(self.ln(self.fc1(h)))
        return self.head(self.fc2(h))


def make_model(seed=0, hidden=12):
    torch.manual_seed(seed)
    return TinyLM(hidden=hidden)


def save_model_bin(model, path):
    sd = model.state_dict()
    assert hasattr(sd, "_metadata")
    torch.save(sd, path)
    return path, expected_weights_torch(path, sd)


def model_safetensors_tensors(model):
    """Like transformers' save_pretrained(safe_serialization=True): shared tensors dropped after the first."""
    named, seen = [], set()
    for name, t in model.state_dict().items():
        key = view_key(t)
        if key in seen:
            continue
        seen.add(key)
        named.append((name, t.contiguous().clone()))
    return named


def save_model_safetensors(model, path):
    meta = {"format": "pt"}
    placed = write_safetensors(path, model_safetensors_tensors(model), meta)
    return path, expected_weights_safetensors(path, placed, meta)


def make_params_bin(d):
    """Parameters (torch._utils._rebuild_parameter) rather than plain tensors."""
    model = make_model(seed=3)
    params = collections.OrderedDict(model.named_parameters())
    path = os.path.join(d, "params.bin")
    torch.save(params, path)
    return path, expected_weights_torch(path, params)


def make_sharded(d):
    """Two safetensors shards plus model.safetensors.index.json."""
    model = make_model(seed=4)
    named = model_safetensors_tensors(model)
    half = len(named) // 2
    shards = [named[:half], named[half:]]
    weight_map, total = {}, 0
    results = []
    for i, part in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        p = os.path.join(d, fname)
        meta = {"format": "pt"}
        placed = write_safetensors(p, part, meta)
        results.append((p, expected_weights_safetensors(p, placed, meta)))
        for name, t in part:
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    path = os.path.join(d, "model.safetensors.index.json")
    with open(path, "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    exp = file_header(path, "json", "weights_index")
    exp.update({"total_size": total, "num_tensors": len(weight_map),
                "shards": dict(collections.Counter(weight_map.values()))})
    return path, exp, results


# --------------------------------------------------------------------------------------------------------------
# Training state fixtures
# --------------------------------------------------------------------------------------------------------------


def linear_schedule(warmup, total):
    # A lambda (not a partial): LambdaLR.state_dict() stores None for it.
    return lambda step: (step / max(1, warmup)) if step < warmup else \
        max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model, lr=1e-2, weight_decay=0.01):
    decay = [model.emb.weight, model.fc1.weight, model.fc2.weight]
    no_decay = [model.fc1.bias, model.ln.weight, model.ln.bias, model.fc2.bias]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999),
                             eps=1e-8)


def train_steps(model, opt, sched, steps, data_gen):
    for _ in range(steps):
        ids = torch.randint(0, 16, (4, 6), generator=data_gen)
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss)


def expected_optimizer(path, sd):
    exp = file_header(path, "torch_zip", "optimizer")
    state = sd["state"]
    keys = set()
    state_bytes = 0
    for s in state.values():
        keys.update(s.keys())
        for v in s.values():
            if isinstance(v, torch.Tensor):
                state_bytes += v.numel() * v.element_size()
    first = next(iter(state.values()), None)
    step = None
    if first is not None and "step" in first:
        step = float(first["step"])
    exp.update({"param_groups": plain_to_json(sd["param_groups"]), "num_param_states": len(state),
                "state_keys": sorted(keys), "step": step, "state_bytes": state_bytes})
    return exp


def save_optimizer(opt, path):
    sd = opt.state_dict()
    torch.save(sd, path)
    return path, expected_optimizer(path, sd)


def expected_scheduler(path, sd):
    exp = file_header(path, "torch_zip", "scheduler")
    exp.update({"last_epoch": sd["last_epoch"], "last_lr": plain_to_json(sd["_last_lr"]),
                "state": plain_to_json(sd)})
    return exp


def save_scheduler(sched, path):
    sd = sched.state_dict()
    assert sd["lr_lambdas"] == [None] * len(sd["lr_lambdas"])
    torch.save(sd, path)
    return path, expected_scheduler(path, sd)


def expected_scaler(path, sd):
    exp = file_header(path, "torch_zip", "scaler")
    if not sd:
        exp["enabled"] = False
    else:
        exp["enabled"] = True
        for k in ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"):
            exp[k] = sd[k]
    return exp


def make_scaler(d, enabled, name="scaler.pt", scale=65536.0, tracker=0):
    if enabled:
        sd = {"scale": scale, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": tracker}
    else:
        sd = torch.cuda.amp.GradScaler(enabled=False).state_dict()
        assert sd == {}
    path = os.path.join(d, name)
    torch.save(sd, path)
    return path, expected_scaler(path, sd)


def expected_rng(path, st):
    exp = file_header(path, "torch_zip", "rng_state")
    py, npst = st["python"], st["numpy"]
    exp.update({
        "generators": list(st.keys()),
        "python": {"version": py[0], "position": py[1][-1], "gauss": json_float(py[2])
                   if isinstance(py[2], float) else py[2]},
        "numpy": {"algorithm": npst[0], "position": npst[2], "has_gauss": npst[3],
                  "cached_gaussian": json_float(npst[4])},
        "cpu": {"nbytes": st["cpu"].numel() * st["cpu"].element_size()},
    })
    if "cuda" in st:
        cuda = st["cuda"]
        sizes = [t.numel() * t.element_size() for t in cuda]
        # docs: `cuda: {count, nbytes}`; whether nbytes is the total or one generator's is not said.
        exp["cuda"] = {"count": len(cuda), "nbytes": OneOf(sum(sizes), sizes[0])}
    else:
        exp["cuda"] = Absent()
    return exp


def make_rng_state(d, seed=1234, draws=5, gauss=False, name="rng_state.pth", fake_cuda=False):
    random.seed(seed)
    for _ in range(draws):
        random.random()
    if gauss:
        random.gauss(0.0, 1.0)  # leaves gauss_next cached
    np.random.seed(seed)
    np.random.randn(3)  # odd number of normals: has_gauss = 1 with a cached value
    np.random.rand(draws)
    torch.manual_seed(seed)
    torch.rand(draws)
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
    if fake_cuda:
        st["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]
    path = os.path.join(d, name)
    torch.save(st, path)
    return path, expected_rng(path, st)


def _fields_expected(obj_dict):
    """Expected `fields` of training_args: plain values exactly, enum members named, devices as documented."""
    import enum
    out = {}
    for k, v in obj_dict.items():
        if isinstance(v, enum.Enum):
            out[k] = Contains([type(v).__name__], any_of=[v.name, json.dumps(v.value)])
        else:
            out[k] = plain_to_json(v)
    return out


def make_training_args(d, output_dir="run", **overrides):
    mod = helper_module(d)
    args = mod.FakeTrainingArguments(
        output_dir=output_dir, learning_rate=1e-2, weight_decay=0.01, num_train_epochs=10.0, max_steps=10,
        seed=1234, per_device_train_batch_size=4, evaluation_strategy=mod.IntervalStrategy.STEPS,
        lr_scheduler_type=mod.SchedulerType.LINEAR, precision=mod.Precision.BF16, bf16=True, data_seed=None,
        report_to=["none"], fsdp_config={"min_num_params": 0, "xla": False}, label_names=("labels",),
        huge_number=2 ** 70, neg_huge_number=-(2 ** 64), not_a_number=float("nan"), infinity=float("-inf"),
        blob=b"\x00\x01\x02", **overrides)
    # Not a dataclass field: an attribute in __dict__, as HF's cached device is.
    setattr(args, "__cached__setup_devices", torch.device("cpu"))
    path = os.path.join(d, "training_args.bin")
    torch.save(args, path)
    exp = file_header(path, "torch_zip", "training_args")
    exp.update({"class": HELPER_MODULE + ".FakeTrainingArguments", "fields": _fields_expected(vars(args))})
    return path, exp


def make_misc_pickle(d):
    """A torch.save file that is none of the known kinds: `pickle` kind, value tree as data."""
    mod = helper_module(d)
    value = collections.OrderedDict()
    value["epoch"] = 3
    value["note"] = "h\u00e9llo \u2603"
    value["big"] = 2 ** 64
    value["neg_big"] = -(2 ** 63) - 1
    value["int64_max"] = INT64_MAX
    value["int64_min"] = INT64_MIN
    value["ratio"] = 0.1
    value["tiny"] = 5e-324
    value["nan"] = float("nan")
    value["inf"] = float("inf")
    value["bytes"] = b"\x00\x01\xff"
    value["empty_bytes"] = b""
    value["tuple"] = (1, 2.5, None, True)
    value["set"] = {3, 1, 2}
    value["nested"] = {1: [True, False], "x": {"y": []}, None: 0}
    value["tensor"] = torch.zeros(2, 3, dtype=torch.float16)
    value["device"] = torch.device("cpu")
    value["ndarray"] = np.arange(6, dtype=np.int32).reshape(2, 3)
    value["a_class"] = collections.OrderedDict
    value["thing"] = mod.Thing(x=[1, "two"])
    path = os.path.join(d, "misc.pt")
    torch.save(value, path)
    exp = file_header(path, "torch_zip", "pickle")
    expected_value = {}
    for k, v in value.items():
        if k == "a_class":
            expected_value[k] = {"type": "global", "name": "collections.OrderedDict"}
        elif k == "thing":
            expected_value[k] = {"type": "object", "class": HELPER_MODULE + ".Thing", "args": [],
                                 "state": {"x": [1, "two"]}}
        elif k == "set":
            expected_value[k] = [plain_to_json(x) for x in v]  # iteration order = pickled order
        else:
            expected_value[k] = plain_to_json(v)
    exp["value"] = expected_value
    return path, exp


def make_legacy(d):
    """Pre-1.6 (non-zip) torch.save format: must at least be recognised and named."""
    path = os.path.join(d, "legacy.bin")
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    return path, None


# --------------------------------------------------------------------------------------------------------------
# JSON fixtures
# --------------------------------------------------------------------------------------------------------------


def expected_trainer_state(path, ts):
    exp = file_header(path, "json", "trainer_state")
    logs = ts.get("log_history", [])
    train = [e for e in logs if "loss" in e]
    evals = [e for e in logs if any(k.startswith("eval_") for k in e)]
    exp.update({
        "global_step": ts.get("global_step"), "epoch": plain_to_json(ts.get("epoch")),
        "max_steps": ts.get("max_steps"), "best_metric": plain_to_json(ts.get("best_metric")),
        "best_model_checkpoint": ts.get("best_model_checkpoint"), "num_log_entries": len(logs),
        "last_train_log": plain_to_json(train[-1]) if train else None,
        "last_eval_log": plain_to_json(evals[-1]) if evals else None,
    })
    return exp


def trainer_state_dict(global_step, max_steps, logs, best_metric=None, best_ckpt=None, epoch=None):
    return {
        "best_metric": best_metric, "best_model_checkpoint": best_ckpt,
        "epoch": float(epoch if epoch is not None else global_step / 4.0), "eval_steps": 2,
        "global_step": global_step, "is_hyper_param_search": False, "is_local_process_zero": True,
        "is_world_process_zero": True, "log_history": logs, "logging_steps": 1, "max_steps": max_steps,
        "num_input_tokens_seen": 0, "num_train_epochs": 3, "save_steps": 2, "total_flos": 1234.0,
        "train_batch_size": 4, "trial_name": None, "trial_params": None,
    }


def write_trainer_state(d, ts, name="trainer_state.json"):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(json.dumps(ts, indent=2, sort_keys=True) + "\n")  # may contain bare NaN, as HF writes
    return path, expected_trainer_state(path, ts)


def make_trainer_state(d):
    logs = [
        {"epoch": 0.25, "grad_norm": 1.0672526359558105, "learning_rate": 0.00875, "loss": 4.1183, "step": 1},
        {"epoch": 0.5, "grad_norm": float("nan"), "learning_rate": 0.0075, "loss": 3.8568, "step": 2},
        {"epoch": 0.5, "eval_loss": 4.115476131439209, "eval_accuracy": 0.125, "eval_runtime": 0.0107,
         "eval_samples_per_second": 2985.602, "eval_steps_per_second": 373.2, "step": 2},
        {"epoch": 0.75, "grad_norm": float("inf"), "learning_rate": 0.00625, "loss": 3.5926, "step": 3},
        {"epoch": 1.0, "step": 3, "total_flos": 391249920.0, "train_loss": 3.3201012134552004,
         "train_runtime": 0.3228, "train_samples_per_second": 495.708, "train_steps_per_second": 123.927},
    ]
    ts = trainer_state_dict(3, 3, logs, best_metric=4.115476131439209, best_ckpt="run/checkpoint-2",
                            epoch=1.0)
    return write_trainer_state(d, ts)


def expected_config(path, cfg):
    exp = file_header(path, "json", "config")
    exp.update({"model_type": cfg.get("model_type"), "architectures": cfg.get("architectures"),
                "torch_dtype": cfg.get("torch_dtype"), "config": plain_to_json(cfg)})
    return exp


def make_config(d, with_type=True):
    cfg = collections.OrderedDict()
    cfg["_name_or_path"] = "tiny"
    if with_type:
        cfg["architectures"] = ["TinyLMForCausalLM"]
        cfg["model_type"] = "tinylm"
        cfg["torch_dtype"] = "float32"
    cfg["hidden_size"] = 8
    cfg["intermediate_size"] = 12
    cfg["vocab_size"] = 16
    cfg["layer_norm_eps"] = 1e-05
    cfg["tie_word_embeddings"] = True
    cfg["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    cfg["transformers_version"] = "4.40.2"
    path = os.path.join(d, "config.json")
    with open(path, "w") as f:
        f.write(json.dumps(cfg, indent=2) + "\n")
    return path, expected_config(path, cfg)


def write_other(d, name="notes.txt", text="not a checkpoint file\n"):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path, {"path": path, "file": name, "size_bytes": os.path.getsize(path), "kind": "other"}


# --------------------------------------------------------------------------------------------------------------
# Directories: checkpoints and runs
# --------------------------------------------------------------------------------------------------------------


def expected_checkpoint(path, file_expectations, complete=True, step=None):
    name = os.path.basename(os.path.normpath(path))
    files = [file_expectations[k] for k in sorted(file_expectations)]
    exp = {"path": path, "kind": "checkpoint", "name": name,
           "step": step if step is not None else int(name.split("-")[-1]), "complete": complete,
           "problems": [] if complete is True else ANY, "files": files}
    return exp


def _dir_listing(path):
    names = [n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))]
    return len(names), sum(os.path.getsize(os.path.join(path, n)) for n in names)


def make_run(root, save_steps=(2, 4, 10), max_steps=10):
    """Trains TinyLM with AdamW + LambdaLR and writes HF-style checkpoint-N directories.

    checkpoint-2 holds pytorch_model.bin (tied weights + buffer, OrderedDict with _metadata), the others
    model.safetensors; the last one also holds scaler.pt and a file ckpt cannot classify. Step numbers are
    chosen so that name order (10 < 2 < 4) differs from step order.
    Returns (run_path, expected_run, {checkpoint name: (path, expected_checkpoint)})."""
    os.makedirs(root, exist_ok=True)
    model = make_model(seed=0)
    opt = make_optimizer(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(2, max_steps))
    data_gen = torch.Generator().manual_seed(99)
    logs = []
    checkpoints = {}
    done = 0
    for step in save_steps:
        while done < step:
            loss = train_steps(model, opt, sched, 1, data_gen)
            done += 1
            logs.append({"epoch": done / 4.0, "grad_norm": 1.0 + done / 8.0,
                         "learning_rate": sched.get_last_lr()[0], "loss": round(loss, 4), "step": done})
            if done % 2 == 0:
                logs.append({"epoch": done / 4.0, "eval_loss": 4.0 - done / 16.0, "eval_runtime": 0.0107,
                             "eval_samples_per_second": 2985.602, "eval_steps_per_second": 373.2,
                             "step": done})
        name = "checkpoint-%d" % step
        cdir = os.path.join(root, name)
        os.makedirs(cdir)
        files = {}
        if step == save_steps[0]:
            p, e = save_model_bin(model, os.path.join(cdir, "pytorch_model.bin"))
        else:
            p, e = save_model_safetensors(model, os.path.join(cdir, "model.safetensors"))
        files[os.path.basename(p)] = e
        p, e = save_optimizer(opt, os.path.join(cdir, "optimizer.pt"))
        e["param_shape_check"] = {"status": "ok", "method": OneOf("order", "multiset"),
                                  "checked": e["num_param_states"], "mismatches": []}
        files["optimizer.pt"] = e
        p, e = save_scheduler(sched, os.path.join(cdir, "scheduler.pt"))
        files["scheduler.pt"] = e
        p, e = make_rng_state(cdir, seed=1000 + step, draws=step)
        files["rng_state.pth"] = e
        p, e = make_training_args(cdir, output_dir=os.path.basename(root))
        files["training_args.bin"] = e
        ts = trainer_state_dict(step, max_steps, copy.deepcopy(logs), best_metric=None, best_ckpt=None,
                                epoch=step / 4.0)
        p, e = write_trainer_state(cdir, ts)
        files["trainer_state.json"] = e
        p, e = make_config(cdir)
        files["config.json"] = e
        if step == save_steps[-1]:
            p, e = make_scaler(cdir, enabled=True, scale=32768.0, tracker=17)
            files["scaler.pt"] = e
            p, e = write_other(cdir)
            files["notes.txt"] = e
        checkpoints[name] = (cdir, expected_checkpoint(cdir, files))
    run_ckpts = []
    for step in sorted(save_steps):
        name = "checkpoint-%d" % step
        cdir = checkpoints[name][0]
        num_files, size = _dir_listing(cdir)
        run_ckpts.append({"name": name, "path": cdir, "step": step, "complete": True, "num_files": num_files,
                          "size_bytes": size, "global_step": step})
    exp_run = {"path": root, "kind": "run", "checkpoints": run_ckpts}
    return root, exp_run, checkpoints


def make_incomplete_checkpoint(root, step=7):
    """A checkpoint-N directory as a killed save leaves it: config and weights, no optimizer/scheduler/
    trainer_state."""
    cdir = os.path.join(root, "checkpoint-%d" % step)
    os.makedirs(cdir)
    files = {}
    p, e = make_config(cdir)
    files["config.json"] = e
    p, e = save_model_safetensors(make_model(seed=5), os.path.join(cdir, "model.safetensors"))
    files["model.safetensors"] = e
    return cdir, expected_checkpoint(cdir, files, complete=False)


def make_mismatched_checkpoint(root, step=5):
    """Weights of one model beside the optimizer of a model with a different hidden size."""
    cdir = os.path.join(root, "checkpoint-%d" % step)
    os.makedirs(cdir)
    model_a = make_model(seed=6, hidden=12)
    model_b = make_model(seed=6, hidden=10)
    opt = make_optimizer(model_b)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(2, 10))
    train_steps(model_b, opt, sched, 2, torch.Generator().manual_seed(5))
    files = {}
    p, e = save_model_safetensors(model_a, os.path.join(cdir, "model.safetensors"))
    files["model.safetensors"] = e
    p, e = save_optimizer(opt, os.path.join(cdir, "optimizer.pt"))
    e["param_shape_check"] = {"status": "mismatch", "method": OneOf("order", "multiset"), "checked": ANY,
                              "mismatches": ANY}
    files["optimizer.pt"] = e
    p, e = save_scheduler(sched, os.path.join(cdir, "scheduler.pt"))
    files["scheduler.pt"] = e
    p, e = make_rng_state(cdir, seed=5)
    files["rng_state.pth"] = e
    p, e = write_trainer_state(cdir, trainer_state_dict(step, 10, []))
    files["trainer_state.json"] = e
    p, e = make_training_args(cdir)
    files["training_args.bin"] = e
    p, e = make_config(cdir)
    files["config.json"] = e
    return cdir, expected_checkpoint(cdir, files, complete=ANY)


# --------------------------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------------------------


def build_all(root):
    """Generates every fixture under `root`. Returns {name: (path, expected)}; directory fixtures are under
    'run', 'checkpoint-N', 'incomplete', 'mismatch'."""
    fx = collections.OrderedDict()
    single = os.path.join(root, "single")
    os.makedirs(single, exist_ok=True)

    def sub(name):
        p = os.path.join(single, name)
        os.makedirs(p, exist_ok=True)
        return p

    fx["dtypes.bin"] = make_dtypes_bin(sub("dtypes_bin"))
    fx["dtypes.safetensors"] = make_dtypes_safetensors(sub("dtypes_st"))
    fx["nonfinite.bin"] = make_nonfinite_bin(sub("nonfinite_bin"))
    fx["nonfinite.safetensors"] = make_nonfinite_safetensors(sub("nonfinite_st"))
    fx["complex.bin"] = make_complex_bin(sub("complex"))
    fx["params.bin"] = make_params_bin(sub("params"))
    mdir = sub("model")
    model = make_model(seed=0)
    fx["pytorch_model.bin"] = save_model_bin(model, os.path.join(mdir, "pytorch_model.bin"))
    fx["model.safetensors"] = save_model_safetensors(model, os.path.join(mdir, "model.safetensors"))
    idx_path, idx_exp, shard_results = make_sharded(sub("sharded"))
    fx["model.safetensors.index.json"] = (idx_path, idx_exp)
    for p, e in shard_results:
        fx["shard:" + os.path.basename(p)] = (p, e)

    odir = sub("optim")
    opt = make_optimizer(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(2, 10))
    train_steps(model, opt, sched, 3, torch.Generator().manual_seed(1))
    p, e = save_optimizer(opt, os.path.join(odir, "optimizer.pt"))
    e["param_shape_check"] = Absent(or_value={"status": "unchecked", "method": ANY, "checked": ANY,
                                              "mismatches": ANY})
    fx["optimizer.pt"] = (p, e)
    fx["scheduler.pt"] = save_scheduler(sched, os.path.join(odir, "scheduler.pt"))
    fx["scaler_disabled"] = make_scaler(sub("scaler_disabled"), enabled=False)
    fx["scaler_enabled"] = make_scaler(sub("scaler_enabled"), enabled=True)
    fx["rng_state.pth"] = make_rng_state(sub("rng"), seed=1234, draws=5, gauss=True)
    fx["rng_state_1.pth"] = make_rng_state(sub("rng_rank1"), seed=4321, draws=2, name="rng_state_1.pth",
                                           fake_cuda=True)
    fx["training_args.bin"] = make_training_args(sub("targs"))
    fx["misc.pt"] = make_misc_pickle(sub("misc"))
    fx["trainer_state.json"] = make_trainer_state(sub("tstate"))
    fx["config.json"] = make_config(sub("config"))
    fx["config_untyped.json"] = make_config(sub("config_untyped"), with_type=False)
    fx["legacy.bin"] = make_legacy(sub("legacy"))

    run_path, run_exp, ckpts = make_run(os.path.join(root, "run"))
    fx["run"] = (run_path, run_exp)
    for name, pe in ckpts.items():
        fx[name] = pe
    fx["incomplete"] = make_incomplete_checkpoint(os.path.join(root, "incomplete_run"))
    fx["mismatch"] = make_mismatched_checkpoint(os.path.join(root, "mismatch_run"))
    return fx


# --------------------------------------------------------------------------------------------------------------
# Self-check: cross-check the expected values against the written bytes (no ckpt needed)
# --------------------------------------------------------------------------------------------------------------


def _crosscheck_torch_weights(path, exp):
    value, records = ref_load(path)
    assert isinstance(value, dict), type(value)
    names = list(value.keys())
    assert names == [t["name"] for t in exp["tensors"]], (names, path)
    storages = {}
    for t in exp["tensors"]:
        r = value[t["name"]]
        assert isinstance(r, TensorRef)
        assert r.storage.key == t["storage"], (path, t["name"], r.storage.key, t["storage"])
        assert r.offset == t["storage_offset"] and list(r.shape) == t["shape"] and list(r.stride) == t["stride"]
        assert r.dtype == t["dtype"] and r.nbytes == t["nbytes"]
        storages[r.storage.key] = r.storage.numel * ELEMENT_SIZE[r.dtype]
        assert records[r.storage.key] == storages[r.storage.key], (path, r.storage.key)
    assert sum(storages.values()) == exp["storage_bytes"], path
    # what torch itself loads
    loaded = torch.load(path)
    for t in exp["tensors"]:
        lt = loaded[t["name"]]
        assert list(lt.shape) == t["shape"] and dtype_name(lt.dtype) == t["dtype"]
        if t["name"] in exp["_verify_tensors"]:
            assert nonfinite_counts(lt) == exp["_verify_tensors"][t["name"]], (path, t["name"])


def _crosscheck_safetensors(path, exp):
    n, header, buf = read_safetensors_header(path)
    assert n % 8 == 0
    assert os.path.getsize(path) == 8 + n + len(buf)
    names = [k for k in header if k != "__metadata__"]
    assert names == [t["name"] for t in exp["tensors"]]
    offset = 0
    for name in names:
        b, e = header[name]["data_offsets"]
        assert b == offset
        offset = e
    assert offset == len(buf) == exp["storage_bytes"]
    again = expected_weights_from_safetensors_file(path)
    assert [t["name"] for t in again["tensors"]] == names
    assert again["_verify_tensors"] == exp["_verify_tensors"], (again["_verify_tensors"], exp["_verify_tensors"])
    assert again["dtypes"] == exp["dtypes"] and again["num_parameters"] == exp["num_parameters"]


def selfcheck(fx):
    for name, (path, exp) in fx.items():
        if exp is None:
            continue
        kind = exp.get("kind")
        if kind == "weights" and exp["format"] == "torch_zip":
            _crosscheck_torch_weights(path, exp)
        elif kind == "weights":
            _crosscheck_safetensors(path, exp)
        elif kind in ("checkpoint",):
            for f in exp["files"]:
                if f.get("kind") == "weights" and f["format"] == "torch_zip":
                    _crosscheck_torch_weights(f["path"], f)
                elif f.get("kind") == "weights":
                    _crosscheck_safetensors(f["path"], f)
    # the reference unpickler agrees with torch on the training state files
    opt_path, opt_exp = fx["optimizer.pt"]
    value, _ = ref_load(opt_path)
    assert ref_to_expected(value["param_groups"]) == opt_exp["param_groups"]
    sch_path, sch_exp = fx["scheduler.pt"]
    value, _ = ref_load(sch_path)
    assert ref_to_expected(value) == sch_exp["state"]
    rng_path, rng_exp = fx["rng_state.pth"]
    value, _ = ref_load(rng_path)
    assert value["python"][1][-1] == rng_exp["python"]["position"]
    assert value["numpy"][3] == rng_exp["numpy"]["has_gauss"] == 1
    assert value["cpu"].nbytes == rng_exp["cpu"]["nbytes"] == 5056
    assert rng_exp["python"]["gauss"] is not None
    ta_path, ta_exp = fx["training_args.bin"]
    value, _ = ref_load(ta_path)
    assert value._qual == ta_exp["class"]
    ref_fields = ref_to_expected(value._state)
    for k, v in ta_exp["fields"].items():
        if isinstance(v, Contains):
            assert isinstance(ref_fields[k], Contains), k
        else:
            assert ref_fields[k] == v, (k, ref_fields[k], v)
    misc_path, misc_exp = fx["misc.pt"]
    value, _ = ref_load(misc_path)
    got = ref_to_expected(value)
    for k, v in misc_exp["value"].items():
        if k in ("ndarray",):
            assert got[k]["shape"] == v["shape"]
        else:
            assert got[k] == v, (k, got[k], v)
    # JSON files parse back to what was written
    for key in ("trainer_state.json", "config.json"):
        p, e = fx[key]
        with open(p) as f:
            json.load(f)
    return True


def describe(fx):
    lines = []
    for name, (path, exp) in fx.items():
        kind = exp.get("kind") if exp else "(legacy)"
        lines.append("%-32s %-14s %s" % (name, kind, path))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Hand-built pickles inside an authentic torch zip container
# --------------------------------------------------------------------------------------------------------------


class Op:
    """Pickle opcodes as bytes, for hand-built (hostile) pickles."""
    PROTO2 = b"\x80\x02"
    PROTO4 = b"\x80\x04"
    STOP = b"."
    MARK = b"("
    POP = b"0"
    EMPTY_DICT = b"}"
    EMPTY_LIST = b"]"
    EMPTY_TUPLE = b")"
    APPEND = b"a"
    APPENDS = b"e"
    SETITEM = b"s"
    SETITEMS = b"u"
    TUPLE = b"t"
    TUPLE1 = b"\x85"
    TUPLE2 = b"\x86"
    TUPLE3 = b"\x87"
    REDUCE = b"R"
    BUILD = b"b"
    NEWOBJ = b"\x81"
    NEWFALSE = b"\x89"
    NONE = b"N"
    BINPERSID = b"Q"
    STACK_GLOBAL = b"\x93"

    @staticmethod
    def glob(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    @staticmethod
    def str(s):
        b = s.encode("utf-8")
        return b"X" + struct.pack("<I", len(b)) + b

    @staticmethod
    def int(v):
        if 0 <= v < 256:
            return b"K" + bytes([v])
        if -(2 ** 31) <= v < 2 ** 31:
            return b"J" + struct.pack("<i", v)
        n = (v.bit_length() + 8) // 8
        return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)

    @staticmethod
    def put(i):
        return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)

    @staticmethod
    def get(i):
        return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)

    @staticmethod
    def tuple_of(*parts):
        return Op.MARK + b"".join(parts) + Op.TUPLE


def tensor_pickle(storage_class="FloatStorage", key="0", numel=4, offset=0, size=(4,), stride=(1,),
                  name="w"):
    """`{name: _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}` with arbitrary (possibly
    hostile) numbers, as torch 1.13 writes it."""
    pid = Op.tuple_of(Op.str("storage"), Op.glob("torch", storage_class), Op.str(key), Op.str("cpu"),
                      Op.int(numel))
    args = Op.tuple_of(pid + Op.BINPERSID, Op.int(offset), Op.tuple_of(*[Op.int(x) for x in size]),
                       Op.tuple_of(*[Op.int(x) for x in stride]), Op.NEWFALSE,
                       Op.glob("collections", "OrderedDict") + Op.EMPTY_TUPLE + Op.REDUCE)
    return (Op.PROTO2 + Op.EMPTY_DICT + Op.str(name) + Op.glob("torch._utils", "_rebuild_tensor_v2") + args +
            Op.REDUCE + Op.SETITEM + Op.STOP)


def write_torch_zip(path, pickle_bytes, records=None):
    """Writes `pickle_bytes` as data.pkl (plus data/<key> records) with torch's own zip writer, so the container
    is exactly what torch.save produces (prefix folder from the file name, 64-byte alignment, version record)."""
    writer = torch._C.PyTorchFileWriter(path)
    writer.write_record("data.pkl", pickle_bytes, len(pickle_bytes))
    for key, data in (records or {}).items():
        writer.write_record("data/" + key, data, len(data))
    writer.write_end_of_file()
    del writer
    return path


if __name__ == "__main__":
    keep = "--keep" in sys.argv
    tmp = tempfile.mkdtemp(prefix="ckpt-fixtures-")
    try:
        fixtures = build_all(tmp)
        selfcheck(fixtures)
        print(describe(fixtures))
        print("self-check passed (%d fixtures in %s)" % (len(fixtures), tmp))
    finally:
        if not keep:
            shutil.rmtree(tmp)
