"""Helpers for the `ckpt convert` interop tests: running the binary, reading and validating safetensors files
with nothing but the format's rules (docs: shared/docs/formats.md section 4), and deep comparison of the Python
objects torch.load returns.

No `safetensors` package is needed (none is installed for /usr/bin/python3): the reader below is written from
the format description.
"""

import collections
import json
import math
import os
import re
import shutil
import struct
import subprocess

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CKPT_BIN = os.environ.get("CKPT_BIN") or os.path.join(REPO, "build", "ckpt")
HF_FIXTURES = os.path.join(REPO, "tests", "data", "hf-trainer-4.40.2")

TMP_PATTERN = re.compile(r"^\..*\.tmp-")

# --------------------------------------------------------------------------------------------------------------
# Running ckpt
# --------------------------------------------------------------------------------------------------------------


class Result:
    def __init__(self, args, returncode, stdout, stderr):
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def describe(self):
        return "command: %s\nexit: %s\nstdout:\n%s\nstderr:\n%s" % (
            " ".join(self.args), self.returncode, self.stdout[-3000:], self.stderr[-3000:])


def run_ckpt(args, cwd=None, timeout=120):
    cmd = [CKPT_BIN] + [str(a) for a in args]
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return Result(cmd, p.returncode, p.stdout, p.stderr)


def leftover_temporaries(directory):
    """Names in `directory` that look like ckpt's temporary files or staging directories (`.NAME.tmp-*`)."""
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if TMP_PATTERN.match(n))


def copy_tree_writable(src, dst):
    """Copies a (read-only) fixture directory tree without its permission bits, so the copy is ours to change."""
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        s = os.path.join(src, name)
        d = os.path.join(dst, name)
        if os.path.isdir(s):
            copy_tree_writable(s, d)
        else:
            shutil.copyfile(s, d)


def tree_snapshot(directory):
    """{relative path: bytes} of every file below `directory` (small test trees only)."""
    out = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = fh.read()
    return out


# --------------------------------------------------------------------------------------------------------------
# safetensors: reading and validating
# --------------------------------------------------------------------------------------------------------------

DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "F64": 8, "I64": 8, "U64": 8, "C64": 8, "F8_E5M2": 1, "F8_E4M3": 1}
TORCH_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
                "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "F64": torch.float64,
                "I64": torch.int64, "C64": torch.complex64}
MAX_HEADER = 100000000


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    dup = sorted(k for k, c in collections.Counter(keys).items() if c > 1)
    if dup:
        raise ValueError("duplicate keys %r" % dup)
    return collections.OrderedDict(pairs)


# The safetensors library's Dtype enum order (its derived Ord).
DTYPE_ENUM_RANK = {code: i for i, code in enumerate(
    ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"])}


def validate_safetensors(path, require_pt=True):
    """Checks a file against the format's rules. Returns a list of problems (empty: valid)."""
    problems = []
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    if size < 8:
        return ["file is %d bytes, shorter than the 8-byte header length" % size]
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        return ["header length %d exceeds 100,000,000" % n]
    if 8 + n > size:
        return ["header length %d runs past the end of a %d-byte file" % (n, size)]
    if (8 + n) % 8 != 0:
        problems.append("8 + header length (%d) is not a multiple of 8: header not padded" % (8 + n))
    raw = data[8:8 + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return problems + ["header is not UTF-8: %s" % e]
    stripped = text.rstrip(" ")
    padding = len(text) - len(stripped)
    if padding >= 8:
        problems.append("header padded with %d spaces (padding to 8 needs at most 7)" % padding)
    if stripped != stripped.strip():
        problems.append("header has leading or non-space trailing whitespace")
    if any(c in stripped[-1:] for c in "\t\r\n\x00"):
        problems.append("header padded with something other than spaces")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        return problems + ["header is not JSON: %s" % e]
    if not isinstance(header, dict):
        return problems + ["header is not a JSON object"]
    meta = header.get("__metadata__")
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            problems.append("__metadata__ is not an object of strings: %r" % (meta,))
        elif require_pt and meta.get("format") != "pt":
            problems.append("__metadata__ format is %r, not 'pt'" % meta.get("format"))
    elif require_pt:
        problems.append("no __metadata__ (Hugging Face requires format 'pt')")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            problems.append("tensor %r: entry %r does not have exactly dtype, shape, data_offsets" % (name, info))
            continue
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            problems.append("tensor %r: unknown dtype %r" % (name, dtype))
            continue
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            problems.append("tensor %r: bad shape %r" % (name, shape))
            continue
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            problems.append("tensor %r: bad data_offsets %r" % (name, offsets))
            continue
        begin, end = offsets
        if end < begin:
            problems.append("tensor %r: data_offsets %r end before they begin" % (name, offsets))
            continue
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * DTYPE_SIZES[dtype]:
            problems.append("tensor %r: %d bytes for %d elements of %s" % (name, end - begin, numel, dtype))
        entries.append((begin, end, name, dtype))
    if problems:
        return problems
    entries.sort(key=lambda e: (e[0], e[1]))
    position = 0
    for begin, end, name, _ in entries:
        if begin != position:
            problems.append("tensor %r starts at %d, expected %d (offsets not contiguous from 0)" % (name, begin, position))
        position = end
    if 8 + n + position != size:
        problems.append("8 + header (%d) + buffer (%d) = %d != file size %d" % (n, position, 8 + n + position, size))
    # The safetensors library orders the data by its Dtype enum, descending (`right.dtype().cmp(&left.dtype())`
    # in its prepare()), then by name. Zero-size tensors share an offset with the next tensor, so the order is
    # checked on (begin, rank) with ties allowed among empty tensors.
    in_file = [(e[2], e[3]) for e in sorted(entries, key=lambda e: (e[0], e[1] - e[0] > 0, e[2]))]
    expected = sorted(in_file, key=lambda t: (-DTYPE_ENUM_RANK[t[1]], t[0].encode("utf-8")))
    nonempty_in_file = [e[2] for e in entries if e[1] > e[0]]
    nonempty_expected = [t[0] for t in expected if t[0] in set(nonempty_in_file)]
    if nonempty_in_file != nonempty_expected:
        problems.append("data not ordered by dtype (the library's enum, descending) then name: file order %r, expected %r"
                        % (nonempty_in_file[:12], nonempty_expected[:12]))
    # An empty tensor carries no bytes, but its offset must still fall where the ordering would put it.
    rank = {name: i for i, (name, _) in enumerate(expected)}
    sorted_by_offset = sorted(entries, key=lambda e: (e[0], rank[e[2]]))
    if [e[2] for e in sorted_by_offset] != [t[0] for t in expected]:
        problems.append("offsets do not follow the dtype-size-then-name order: %r" % ([e[2] for e in sorted_by_offset][:12],))
    return problems


def read_safetensors(path):
    """(metadata dict, OrderedDict name -> tensor) in header order; tensors as torch tensors (copies)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = collections.OrderedDict()
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = TORCH_DTYPES[info["dtype"]]
        if end == begin:
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        raw = np.frombuffer(data, dtype=np.uint8, count=end - begin, offset=base + begin).copy()
        t = torch.from_numpy(raw)
        if dtype != torch.uint8:
            t = t.view(dtype)
        tensors[name] = t.reshape(info["shape"])
    return meta, tensors


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n).decode("utf-8"), object_pairs_hook=collections.OrderedDict)


def rewrite_metadata(path, **updates):
    """Sets `__metadata__` entries of a safetensors file in place (a hostile file made from a valid one): the header
    is written again, padded to a multiple of 8, the tensor bytes unchanged."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    header.setdefault("__metadata__", collections.OrderedDict()).update(updates)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data[8 + n:])


# --------------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------------


def tensor_bytes(t):
    """Raw bytes of a tensor's elements in row-major order (NaN-safe equality, dtype-agnostic)."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_diff(a, b, path):
    out = []
    if a.dtype != b.dtype:
        out.append("%s: dtype %s != %s" % (path, a.dtype, b.dtype))
    if tuple(a.shape) != tuple(b.shape):
        out.append("%s: shape %s != %s" % (path, tuple(a.shape), tuple(b.shape)))
    if out:
        return out
    if a.requires_grad != b.requires_grad:
        out.append("%s: requires_grad %s != %s" % (path, a.requires_grad, b.requires_grad))
    if tensor_bytes(a) != tensor_bytes(b):
        out.append("%s: values differ" % path)
    return out


def deep_diff(a, b, path="root"):
    """Differences between two unpickled values, exact types included (tuple is not list, Parameter is not Tensor,
    int is not float). Floats compare by bits, so NaN equals NaN and -0.0 differs from 0.0."""
    if type(a) is not type(b):
        return ["%s: type %s != %s (%r vs %r)" % (path, type(a).__name__, type(b).__name__, _short(a), _short(b))]
    if isinstance(a, torch.Tensor):
        return tensor_diff(a, b, path)
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return ["%s: ndarray %s%s != %s%s" % (path, a.dtype, a.shape, b.dtype, b.shape)]
        return [] if a.tobytes() == b.tobytes() else ["%s: ndarray values differ" % path]
    if isinstance(a, dict):
        out = []
        if list(a.keys()) != list(b.keys()):
            out.append("%s: keys %r != %r" % (path, list(a.keys())[:20], list(b.keys())[:20]))
        for k in a:
            if k in b:
                out += deep_diff(a[k], b[k], "%s[%r]" % (path, k))
        if hasattr(a, "__dict__") or hasattr(b, "__dict__"):
            out += deep_diff(getattr(a, "__dict__", {}), getattr(b, "__dict__", {}), path + ".__dict__")
        return out
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return ["%s: length %d != %d" % (path, len(a), len(b))]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += deep_diff(x, y, "%s[%d]" % (path, i))
        return out
    if isinstance(a, float):
        if struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b)):
            return []
        return ["%s: %r != %r" % (path, a, b)]
    if a != b:
        return ["%s: %r != %r" % (path, _short(a), _short(b))]
    return []


def _short(v):
    r = repr(v)
    return r if len(r) < 120 else r[:117] + "..."
