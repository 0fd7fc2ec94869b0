"""Helpers for the `ckpt convert` interop tests: hostile safetensors metadata made from a valid file, and deep
comparison of the Python objects torch.load returns. Running the binary and reading and validating safetensors
files are tests/harness.py's.
"""

import collections
import json
import math
import struct

import numpy as np
import torch


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
