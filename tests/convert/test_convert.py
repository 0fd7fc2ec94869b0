"""`ckpt convert` against Python (Debian's torch 1.13.1, numpy 1.24): every file ckpt writes is read back by torch
or by a safetensors reader/validator written from the format's rules.

Run:
    cd tests/convert && /usr/bin/python3 -m unittest -v test_convert
The binary is $CKPT_BIN (default: build/ckpt in the repository); the real Trainer output is read from
tests/data/hf-trainer-4.40.2 (copied before use). Set CKPT_TEST_KEEP=1 to keep the
temporary directory.
"""

import collections
import copy
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import convert_helpers as H  # noqa: E402
import harness  # noqa: E402
from harness import run_on_terminal, terminal_screen  # noqa: E402

TMP = None


def setUpModule():
    global TMP
    harness.require_binary()
    TMP = tempfile.mkdtemp(prefix="ckpt-convert-test-")


def tearDownModule():
    harness.remove_temp_dir(TMP)


class Opaque:
    """A custom class: its pickled instance is an opaque object ckpt must refuse as weights."""

    def __init__(self):
        self.weight = torch.ones(2)


# --------------------------------------------------------------------------------------------------------------
# Fixture generators (all at test time, with torch)
# --------------------------------------------------------------------------------------------------------------


class TiedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.norm = nn.BatchNorm1d(16)  # version 2 in _metadata, an int64 0-d num_batches_tracked
        self.proj = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 40, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: one tensor under two names


def rich_state_dict():
    """A module state dict (OrderedDict with _metadata, tied weights) plus every dtype and view kind."""
    torch.manual_seed(1234)
    sd = TiedNet().state_dict()
    sd["zeta.f16"] = torch.randn(5, 3).to(torch.float16)
    sd["alpha.bf16"] = torch.randn(7).to(torch.bfloat16)
    sd["mid.f64"] = torch.randn(2, 2, dtype=torch.float64)
    sd["mid.i64"] = torch.arange(-5, 6, dtype=torch.int64) * (2 ** 40)
    sd["b.i32"] = torch.tensor([-(2 ** 31), -1, 0, 1, 2 ** 31 - 1], dtype=torch.int32)
    sd["c.i8"] = torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8)
    sd["a.u8"] = torch.tensor([0, 1, 128, 255], dtype=torch.uint8)
    sd["mask.bool"] = torch.tensor([[True, False, True], [False, False, True]])
    sd["scalar.f32"] = torch.tensor(3.25)
    sd["scalar.i64"] = torch.tensor(-42, dtype=torch.int64)
    sd["empty.f32"] = torch.empty(0)
    sd["empty2d.f16"] = torch.empty(3, 0, dtype=torch.float16)
    sd["empty.i64"] = torch.empty(0, 4, dtype=torch.int64)
    base = torch.randn(6, 4)
    sd["view.base"] = base
    sd["view.transposed"] = base.t()  # non-contiguous, shares base's storage
    sliced_base = torch.randn(10, 3)
    sd["slice.base"] = sliced_base
    sd["slice.part"] = sliced_base[2:5]  # offset view into the same storage
    sd["col.stride"] = torch.randn(4, 5)[:, 1]  # strided 1-d view of a private storage
    return sd


class ShardNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.embed = nn.Embedding(100, 96)
        self.layers = nn.ModuleList(nn.Linear(96, 96) for _ in range(22))
        self.norm = nn.LayerNorm(96)
        self.head = nn.Linear(96, 100, bias=False)
        self.head.weight = self.embed.weight
        self.layers[5].half()


def shard_state_dict():
    """About 0.86 MB of weights in 71 tensors, one float16 layer, a tied head."""
    torch.manual_seed(99)
    return ShardNet().state_dict()


def unique_storage_bytes(sd):
    """Bytes of the distinct views in a state dict (tied duplicates counted once), as a sharded index counts them."""
    seen = set()
    total = 0
    for t in sd.values():
        key = (t.storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def f32_from_bits(bits):
    return torch.tensor([b - (1 << 32) if b >= (1 << 31) else b for b in bits], dtype=torch.int32).view(torch.float32)


def cast_source_tensor(include_nan=True):
    """float32 values that exercise rounding to float16 and bfloat16."""
    g = torch.Generator().manual_seed(7)
    parts = [
        torch.randn(4000, generator=g),
        torch.randn(2000, generator=g) * 1e4,
        torch.randn(2000, generator=g) * 1e-5,
        torch.rand(2000, generator=g) * 7e4,
        (torch.rand(1000, generator=g) - 0.5) * 1e-7,
        torch.randn(500, generator=g) * 1e38,
        torch.randn(500, generator=g) * 1e-39,
    ]
    special = [float("inf"), float("-inf"), 0.0, -0.0, 1e5, -1e5, 7e4, -7e4, 65504.0, 65519.0, 65520.0, 65536.0,
               1e-6, -1e-6, 6e-8, 3e-8, -3e-8, 2.9e-8, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 2 ** -14, 2 ** -15,
               6.1e-5, 1.0, -1.0, 1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 2049.0, 2051.0, -2049.0, 1.0 + 2 ** -8,
               1.0 + 3 * 2 ** -8, 257.0, 259.0, -257.0, 1e-40, -1e-40, 1e-45, 3.4028234663852886e38,
               -3.4028234663852886e38, 3.3961e38, 1.1754943508222875e-38]
    if include_nan:
        special += [float("nan")]
    parts.append(torch.tensor(special, dtype=torch.float32))
    # Exact ties for bfloat16 (lower 16 bits 0x8000) and float16 (lower 13 bits 0x1000), both parities.
    ties = []
    for hi in (0x3F80, 0x3F81, 0x4000, 0x4001, 0xBF80, 0xBF81, 0x0000, 0x0001, 0x7F7F, 0x7F7E, 0x0080, 0x8081):
        ties.append((hi << 16) | 0x8000)
        ties.append((hi << 16) | 0x7FFF)
        ties.append((hi << 16) | 0x8001)
    for mant in (0x000000, 0x002000, 0x004000, 0x7FE000, 0x7FC000):
        for exp in (127, 112, 113, 100, 103, 142, 143, 126):
            for sign in (0, 1):
                ties.append((sign << 31) | (exp << 23) | mant | 0x1000)
                ties.append((sign << 31) | (exp << 23) | mant | 0x0FFF)
    parts.append(f32_from_bits(ties))
    return torch.cat(parts)


def nan_variants():
    """NaNs with other signs and payloads (quiet and signalling)."""
    return f32_from_bits([0x7FC00000, 0xFFC00000, 0x7FC00001, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF,
                          0x7FA00000, 0x7F802000, 0x7F801000])


def load_json(path):
    with open(path) as f:
        return json.load(f)


def bits16(t):
    return t.contiguous().view(torch.int16)


def describe_bit_mismatch(src, got, want, limit=12):
    g = bits16(got).reshape(-1)
    w = bits16(want).reshape(-1)
    bad = (g != w).nonzero().reshape(-1).tolist()
    s = src.reshape(-1)
    rows = []
    for i in bad[:limit]:
        sb = struct.unpack("<I", struct.pack("<f", float(s[i])))[0] if s.dtype == torch.float32 else None
        rows.append("  [%d] src=%r%s ckpt=0x%04x torch=0x%04x" % (
            i, float(s[i]), " (0x%08x)" % (int(s[i:i + 1].view(torch.int32)) & 0xFFFFFFFF) if sb is not None else "",
            g[i].item() & 0xFFFF, w[i].item() & 0xFFFF))
    return "%d of %d elements differ:\n%s" % (len(bad), g.numel(), "\n".join(rows))


# --------------------------------------------------------------------------------------------------------------
# Base case
# --------------------------------------------------------------------------------------------------------------


class ConvertCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix=self._testMethodName + "-", dir=TMP)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def ckpt(self, args, expect=0, cwd=None):
        r = harness.ckpt(*args, cwd=cwd, timeout=120)
        if expect is not None:
            self.assertEqual(r.returncode, expect, "unexpected exit code\n" + r.describe())
        if r.returncode != 0 and expect is not None:
            self.assertOneErrorLine(r)
        return r

    def convert(self, src, dst, *options, expect=0):
        r = self.ckpt(["convert", src, "-o", dst] + list(options), expect=expect)
        parent = os.path.dirname(os.path.abspath(dst))
        self.assertEqual(harness.leftover_temporaries(parent), [],
                         "temporary files left beside the destination\n" + r.describe())
        if os.path.isdir(dst):
            self.assertEqual(harness.leftover_temporaries(dst), [], "temporary files left in the destination\n" + r.describe())
        return r

    def assertOneErrorLine(self, r):
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        self.assertTrue(lines, "no error message on stderr\n" + r.describe())
        self.assertTrue(lines[0].startswith("ckpt: error: "), "stderr does not start with 'ckpt: error: '\n" + r.describe())
        self.assertEqual(len([l for l in lines if l.startswith("ckpt: error:")]), 1, r.describe())

    def assertValidSafetensors(self, path):
        problems = harness.validate_safetensors(path)
        self.assertEqual(problems, [], "%s is not valid safetensors" % path)

    def assertNoDiff(self, a, b, what):
        diffs = H.deep_diff(a, b)
        self.assertEqual(diffs, [], "%s differs:\n%s" % (what, "\n".join(diffs[:30])))

    def assertSameTensors(self, got, want, what, check_order=True):
        if check_order:
            self.assertEqual(list(got.keys()), list(want.keys()), what + ": keys or their order differ")
        else:
            self.assertEqual(sorted(got.keys()), sorted(want.keys()), what + ": keys differ")
        for k in want:
            a, b = got[k], want[k]
            self.assertEqual(a.dtype, b.dtype, "%s: %s dtype" % (what, k))
            self.assertEqual(tuple(a.shape), tuple(b.shape), "%s: %s shape" % (what, k))
            self.assertTrue(torch.equal(a, b), "%s: %s values differ" % (what, k))

    def save(self, obj, name):
        p = self.path(name)
        torch.save(obj, p)
        return p


# --------------------------------------------------------------------------------------------------------------
# 1-2. Weights round trip and the safetensors written
# --------------------------------------------------------------------------------------------------------------


class WeightsRoundTrip(ConvertCase):
    def setUp(self):
        super().setUp()
        self.sd = rich_state_dict()
        self.src = self.save(self.sd, "pytorch_model.bin")
        self.st = self.path("model.safetensors")
        self.back = self.path("back.bin")
        self.convert(self.src, self.st, "--to", "safetensors")
        self.convert(self.st, self.back, "--to", "pytorch")

    def load_back(self):
        return torch.load(self.back, weights_only=True)

    def test_back_loads_with_weights_only(self):
        sd2 = self.load_back()
        self.assertIsInstance(sd2, collections.OrderedDict)

    def test_same_keys_in_same_order(self):
        self.assertEqual(list(self.load_back().keys()), list(self.sd.keys()))

    def test_every_tensor_equal_with_dtype(self):
        sd2 = self.load_back()
        for k, want in self.sd.items():
            with self.subTest(tensor=k):
                got = sd2[k]
                self.assertEqual(got.dtype, want.dtype)
                self.assertEqual(tuple(got.shape), tuple(want.shape))
                self.assertTrue(torch.equal(got, want), "values differ")
                self.assertFalse(got.requires_grad)

    def test_tied_weights_share_one_storage(self):
        self.assertEqual(self.sd["embed.weight"].data_ptr(), self.sd["lm_head.weight"].data_ptr())  # the fixture
        sd2 = self.load_back()
        self.assertEqual(sd2["embed.weight"].data_ptr(), sd2["lm_head.weight"].data_ptr(),
                         "tied weights came back as two tensors")
        self.assertEqual(sd2["embed.weight"].storage().data_ptr(), sd2["lm_head.weight"].storage().data_ptr())
        # Untied tensors stay independent.
        self.assertNotEqual(sd2["proj.weight"].storage().data_ptr(), sd2["embed.weight"].storage().data_ptr())

    def test_state_dict_metadata_restored(self):
        sd2 = self.load_back()
        self.assertTrue(hasattr(sd2, "_metadata"), "the state dict's _metadata was lost")
        self.assertEqual(sd2._metadata, self.sd._metadata)
        self.assertEqual(list(sd2._metadata.keys()), list(self.sd._metadata.keys()))
        # A fresh module accepts the restored state dict strictly.
        m = TiedNet()
        sd_module = collections.OrderedDict((k, v) for k, v in sd2.items() if k in m.state_dict())
        sd_module._metadata = sd2._metadata
        m.load_state_dict(sd_module, strict=True)

    def test_views_come_back_as_values(self):
        sd2 = self.load_back()
        t = sd2["view.transposed"]
        self.assertTrue(torch.equal(t, self.sd["view.transposed"]))
        self.assertTrue(t.is_contiguous(), "the transposed view should come back contiguous")
        self.assertTrue(torch.equal(sd2["slice.part"], self.sd["slice.part"]))
        self.assertTrue(torch.equal(sd2["col.stride"], self.sd["col.stride"]))
        self.assertEqual(sd2["scalar.f32"].dim(), 0)
        self.assertEqual(sd2["empty2d.f16"].shape, (3, 0))

    def test_safetensors_content(self):
        meta, tensors = harness.read_safetensors(self.st)
        self.assertEqual(meta.get("format"), "pt")
        self.assertNotIn("lm_head.weight", tensors, "tied alias should be dropped from the safetensors file")
        aliases = json.loads(meta.get("ckpt_aliases", "{}"))
        self.assertEqual(aliases, {"lm_head.weight": "embed.weight"})
        self.assertEqual(json.loads(meta["ckpt_order"]), list(self.sd.keys()))
        attrs = meta.get("ckpt_attributes")
        self.assertIsNotNone(attrs, "no ckpt_attributes for the state dict's _metadata")
        json.loads(attrs)
        for k, want in self.sd.items():
            if k == "lm_head.weight":
                continue
            with self.subTest(tensor=k):
                got = tensors[k]
                self.assertEqual(got.dtype, want.dtype)
                self.assertEqual(tuple(got.shape), tuple(want.shape))
                self.assertTrue(torch.equal(got, want))

    def test_safetensors_valid(self):
        self.assertValidSafetensors(self.st)

    def test_safetensors_without_metadata_from_python(self):
        """A safetensors file ckpt did not write (no ckpt_* metadata) converts to pytorch by its own order."""
        p = self.path("plain.safetensors")
        write_plain_safetensors(p, collections.OrderedDict(
            [("b", torch.randn(3)), ("a", torch.arange(4, dtype=torch.int64)), ("c", torch.randn(2, 2).half())]))
        out = self.path("plain.bin")
        self.convert(p, out, "--to", "pytorch")
        sd = torch.load(out, weights_only=True)
        _, want = harness.read_safetensors(p)
        self.assertSameTensors(sd, want, "plain safetensors -> pytorch", check_order=False)


def write_plain_safetensors(path, tensors):
    """Writes safetensors the way the reference library does (dtype size desc, then name), metadata format pt."""
    names = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64", torch.bfloat16: "BF16"}
    items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header = collections.OrderedDict([("__metadata__", {"format": "pt"})])
    blobs = []
    off = 0
    for name, t in items:
        b = H.tensor_bytes(t)
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


class SafetensorsValidity(ConvertCase):
    """Every kind of safetensors file ckpt writes passes the validator."""

    def test_validator_catches_bad_files(self):
        p = self.path("bad.safetensors")
        write_plain_safetensors(p, collections.OrderedDict([("x", torch.randn(3)), ("y", torch.randn(2))]))
        self.assertEqual(harness.validate_safetensors(p), [])
        with open(p, "rb") as f:
            data = f.read()
        with open(p, "wb") as f:
            f.write(data + b"\0")
        self.assertTrue(harness.validate_safetensors(p), "validator missed a trailing byte")

        def write(header, blob):
            text = json.dumps(header, separators=(",", ":")).encode()
            with open(p, "wb") as f:
                f.write(struct.pack("<Q", len(text)) + text + blob)

        meta = {"format": "pt"}
        unpadded = {"__metadata__": meta, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
        text = json.dumps(unpadded, separators=(",", ":")).encode()
        if len(text) % 8 == 0:
            unpadded["__metadata__"] = {"format": "pt", "xx": "y"}  # 9 more bytes
        write(unpadded, b"\0" * 4)
        self.assertTrue(harness.validate_safetensors(p), "validator missed an unpadded header")
        misordered = {"__metadata__": meta, "h": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                      "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
        text = json.dumps(misordered, separators=(",", ":")).encode()
        with open(p, "wb") as f:
            pad = b" " * ((8 - (len(text) + 8) % 8) % 8)
            f.write(struct.pack("<Q", len(text) + len(pad)) + text + pad + b"\0" * 8)
        problems = harness.validate_safetensors(p)
        self.assertTrue(problems and "order" in problems[0], "validator missed F16 data before F32: %r" % problems)

    def test_weights_file_valid(self):
        src = self.save(rich_state_dict(), "w.bin")
        out = self.path("w.safetensors")
        self.convert(src, out, "--to", "safetensors")
        self.assertValidSafetensors(out)

    def test_cast_file_valid(self):
        src = self.save(rich_state_dict(), "w.bin")
        for dt in ("bf16", "fp16"):
            out = self.path("w-%s.safetensors" % dt)
            self.convert(src, out, "--to", "safetensors", "--dtype", dt)
            self.assertValidSafetensors(out)

    def test_state_files_valid(self):
        model, opt, sched = train_small(steps=3)
        for name, obj in (("optimizer.pt", opt.state_dict()), ("scheduler.pt", sched.state_dict()),
                          ("scaler.pt", {}), ("rng_state.pth", rng_state())):
            p = self.save(obj, name)
            out = self.path(name + ".safetensors")
            self.convert(p, out, "--to", "safetensors")
            self.assertValidSafetensors(out)

    def test_empty_state_dict_valid(self):
        src = self.save(collections.OrderedDict(), "empty.bin")
        out = self.path("empty.safetensors")
        self.convert(src, out, "--to", "safetensors")
        self.assertValidSafetensors(out)
        back = self.path("empty-back.bin")
        self.convert(out, back, "--to", "pytorch")
        self.assertEqual(len(torch.load(back, weights_only=True)), 0)


# --------------------------------------------------------------------------------------------------------------
# 3. Sharding
# --------------------------------------------------------------------------------------------------------------


class Sharding(ConvertCase):
    LIMIT = "100KB"
    LIMIT_BYTES = 100000

    def setUp(self):
        super().setUp()
        self.sd = shard_state_dict()
        self.src = self.save(self.sd, "pytorch_model.bin")
        self.total = unique_storage_bytes(self.sd)

    def check_index(self, out_dir, index_name, shard_prefix, shard_ext):
        index_path = os.path.join(out_dir, index_name)
        self.assertTrue(os.path.isfile(index_path), "no %s in %s: %s" % (index_name, out_dir, os.listdir(out_dir)))
        with open(index_path) as f:
            text = f.read()
        index = json.loads(text)
        self.assertEqual(text.rstrip("\n"), json.dumps(index, indent=2, sort_keys=True),
                         "index json not written with indent 2 and sorted keys")
        self.assertEqual(set(index), {"metadata", "weight_map"})
        self.assertEqual(index["metadata"].get("total_size"), self.total, "metadata.total_size")
        wm = index["weight_map"]
        self.assertEqual(set(wm), set(self.sd), "weight_map does not name every tensor")
        shards = sorted(set(wm.values()))
        n = len(shards)
        self.assertGreater(n, 2, "expected several shards at %s" % self.LIMIT)
        self.assertEqual(shards, ["%s-%05d-of-%05d.%s" % (shard_prefix, i, n, shard_ext) for i in range(1, n + 1)])
        on_disk = sorted(os.listdir(out_dir))
        self.assertEqual(on_disk, sorted(shards + [index_name]), "files in the shard directory")
        self.assertEqual(wm["head.weight"], wm["embed.weight"], "a tied tensor must travel with its target")
        return index, shards

    def check_shard_sizes(self, shard_tensors):
        for shard, names in shard_tensors.items():
            size = sum(self.sd[k].numel() * self.sd[k].element_size() for k in names if k != "head.weight")
            if len([k for k in names if k != "head.weight"]) > 1:
                self.assertLessEqual(size, self.LIMIT_BYTES, "%s holds %d bytes in several tensors" % (shard, size))

    def test_safetensors_shards_and_merge_back(self):
        out = self.path("sharded")
        self.convert(self.src, out, "--to", "safetensors", "--max-shard-size", self.LIMIT)
        index, shards = self.check_index(out, "model.safetensors.index.json", "model", "safetensors")
        wm = index["weight_map"]
        stored_bytes = 0
        per_shard = {}
        for shard in shards:
            p = os.path.join(out, shard)
            self.assertValidSafetensors(p)
            meta, tensors = harness.read_safetensors(p)
            aliases = json.loads(meta.get("ckpt_aliases", "{}"))
            names = set(tensors) | set(aliases)
            self.assertEqual(names, {k for k, v in wm.items() if v == shard}, "tensors in %s vs weight_map" % shard)
            per_shard[shard] = names
            for k, t in tensors.items():
                self.assertTrue(torch.equal(t, self.sd[k]) and t.dtype == self.sd[k].dtype, "%s in %s" % (k, shard))
                stored_bytes += t.numel() * t.element_size()
        self.assertEqual(stored_bytes, self.total, "total_size vs bytes stored in the shards")
        self.check_shard_sizes(per_shard)

        merged = self.path("merged.bin")
        self.convert(os.path.join(out, "model.safetensors.index.json"), merged, "--to", "pytorch")
        sd2 = torch.load(merged, weights_only=True)
        self.assertSameTensors(sd2, self.sd, "merged from safetensors shards", check_order=False)
        self.assertEqual(sd2["head.weight"].data_ptr(), sd2["embed.weight"].data_ptr(), "tie lost by merging")

        merged_st = self.path("merged.safetensors")
        self.convert(os.path.join(out, "model.safetensors.index.json"), merged_st, "--to", "safetensors")
        self.assertValidSafetensors(merged_st)
        meta, tensors = harness.read_safetensors(merged_st)
        self.assertEqual(len(tensors), len(self.sd) - 1)
        for k, t in tensors.items():
            self.assertTrue(torch.equal(t, self.sd[k]), k)

    def test_merged_order_is_the_original(self):
        """Merging shards gives the state dict's original key order back: the shards in their numeric order, each
        in its recorded ckpt_order (an expectation beyond Hugging Face, which does not keep the order). A tied
        alias travels in the shard of the tensor it is tied to, so it comes back right after that shard's keys."""
        out = self.path("sharded")
        self.convert(self.src, out, "--to", "safetensors", "--max-shard-size", self.LIMIT)
        merged = self.path("merged.bin")
        self.convert(os.path.join(out, "model.safetensors.index.json"), merged, "--to", "pytorch")
        untied = lambda keys: [k for k in keys if k != "head.weight"]
        got = list(torch.load(merged, weights_only=True).keys())
        self.assertEqual(untied(got), untied(self.sd.keys()))
        self.assertEqual(set(got), set(self.sd.keys()))

    def test_pytorch_shards_and_merge_back(self):
        out = self.path("sharded-pt")
        self.convert(self.src, out, "--to", "pytorch", "--max-shard-size", self.LIMIT)
        index, shards = self.check_index(out, "pytorch_model.bin.index.json", "pytorch_model", "bin")
        wm = index["weight_map"]
        union = {}
        per_shard = {}
        for shard in shards:
            part = torch.load(os.path.join(out, shard), weights_only=True)
            self.assertEqual(set(part), {k for k, v in wm.items() if v == shard}, "tensors in %s vs weight_map" % shard)
            per_shard[shard] = set(part)
            for k, t in part.items():
                self.assertNotIn(k, union)
                union[k] = t
            if "head.weight" in part:
                self.assertEqual(part["head.weight"].data_ptr(), part["embed.weight"].data_ptr(), "tie lost in shard")
        self.assertSameTensors(union, self.sd, "union of pytorch shards", check_order=False)
        self.check_shard_sizes(per_shard)

        merged = self.path("merged.bin")
        self.convert(os.path.join(out, "pytorch_model.bin.index.json"), merged, "--to", "pytorch")
        sd2 = torch.load(merged, weights_only=True)
        self.assertSameTensors(sd2, self.sd, "merged from pytorch shards", check_order=False)
        self.assertEqual(sd2["head.weight"].data_ptr(), sd2["embed.weight"].data_ptr())

        merged_st = self.path("merged.safetensors")
        self.convert(os.path.join(out, "pytorch_model.bin.index.json"), merged_st, "--to", "safetensors")
        self.assertValidSafetensors(merged_st)
        back = self.path("merged-back.bin")
        self.convert(merged_st, back, "--to", "pytorch")
        self.assertSameTensors(torch.load(back, weights_only=True), self.sd, "pytorch shards -> st -> bin",
                               check_order=False)

    def test_merge_where_a_later_shard_holds_fewer_tensors(self):
        """Minimal case: shard 1 holds ten tensors, shard 2 one; merging must read both."""
        sd = collections.OrderedDict(("t%d" % i, torch.randn(10)) for i in range(10))
        sd["z"] = torch.randn(200)
        src = self.save(sd, "small.bin")
        out = self.path("two")
        self.convert(src, out, "--to", "safetensors", "--max-shard-size", "400B")
        self.assertEqual(sorted(os.listdir(out)), ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                                   "model.safetensors.index.json"])
        merged = self.path("two.bin")
        self.convert(os.path.join(out, "model.safetensors.index.json"), merged, "--to", "pytorch")
        self.assertSameTensors(torch.load(merged, weights_only=True), sd, "merged two shards")

    def test_large_limit_gives_one_file(self):
        out = self.path("one")
        self.convert(self.src, out, "--to", "safetensors", "--max-shard-size", "5GB")
        self.assertEqual(os.listdir(out), ["model.safetensors"], "one shard: no index, the single weights name")
        self.assertValidSafetensors(os.path.join(out, "model.safetensors"))

    def test_size_units(self):
        """100KiB = 102400 bytes: still a limit the shards respect."""
        out = self.path("kib")
        self.convert(self.src, out, "--to", "safetensors", "--max-shard-size", "100KiB")
        index = load_json(os.path.join(out, "model.safetensors.index.json"))
        for shard in set(index["weight_map"].values()):
            _, tensors = harness.read_safetensors(os.path.join(out, shard))
            size = sum(t.numel() * t.element_size() for t in tensors.values())
            if len(tensors) > 1:
                self.assertLessEqual(size, 102400)


# --------------------------------------------------------------------------------------------------------------
# 4-5. Optimizer, scheduler, scaler, RNG
# --------------------------------------------------------------------------------------------------------------


def lr_lambda(step):
    return 1.0 / (1.0 + 0.5 * step)


def make_training(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, betas=(0.85, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    return opt, sched


def train_step(model, opt, sched, step):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 6, generator=g)
    y = torch.randn(16, 3, generator=g)
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    sched.step()


def train_small(steps=4):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
    opt, sched = make_training(model)
    for s in range(steps):
        train_step(model, opt, sched, s)
    return model, opt, sched


def rng_state():
    random.seed(11)
    random.random()
    np.random.seed(12)
    np.random.randn(3)  # leaves a cached gaussian (has_gauss 1)
    torch.manual_seed(13)
    torch.rand(3)
    return {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}


class StateRoundTrip(ConvertCase):
    def test_inspect_reads_the_pickle_free_form_as_the_original(self):
        """`ckpt inspect` of optimizer/rng files in safetensors form reports what inspect of the originals does."""
        _, opt, _ = train_small()
        for obj, name in ((opt.state_dict(), "optimizer.pt"), (rng_state(), "rng_state.pth")):
            src = self.save(obj, name)
            st = self.path(name + ".safetensors")
            self.convert(src, st, "--to", "safetensors")
            original = json.loads(self.ckpt(["inspect", "--json", src]).stdout)
            converted = json.loads(self.ckpt(["inspect", "--json", st]).stdout)
            self.assertEqual(converted["kind"], original["kind"])
            self.assertEqual(converted["converted_from"], name)
            for key in ("path", "file", "size_bytes", "format", "converted_from"):
                original.pop(key, None)
                converted.pop(key, None)
            self.assertEqual(converted, original)

    def round_trip(self, obj, name):
        src = self.save(obj, name)
        st = self.path(name + ".safetensors")
        back = self.path("back-" + name)
        self.convert(src, st, "--to", "safetensors")
        self.assertValidSafetensors(st)
        self.convert(st, back, "--to", "pytorch")
        return st, back

    def test_optimizer_continues_identically(self):
        model, opt, sched = train_small()
        model_copy = copy.deepcopy(model)
        st, back = self.round_trip(opt.state_dict(), "optimizer.pt")
        _, sched_back = self.round_trip(sched.state_dict(), "scheduler.pt")

        meta, tensors = harness.read_safetensors(st)
        json.loads(meta["ckpt_structure"])
        self.assertEqual(meta.get("ckpt_source_name"), "optimizer.pt")
        for name in ("state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step", "state.3.exp_avg"):
            self.assertIn(name, tensors)
        self.assertTrue(torch.equal(tensors["state.0.exp_avg"], opt.state_dict()["state"][0]["exp_avg"]))

        # torch 1.13's weights_only loader rejects every pickled Python float (BINFLOAT, "Unsupported operand 71"),
        # so state files (torch's own included) are loaded with the full unpickler.
        restored = torch.load(back)
        self.assertNoDiff(restored, opt.state_dict(), "optimizer state after round trip")
        restored_sched = torch.load(sched_back)
        self.assertNoDiff(restored_sched, sched.state_dict(), "scheduler state after round trip")

        opt2, sched2 = make_training(model_copy)
        opt2.load_state_dict(restored)
        sched2.load_state_dict(restored_sched)
        for s in range(4, 7):
            train_step(model, opt, sched, s)
            train_step(model_copy, opt2, sched2, s)
        for (n, p), (_, q) in zip(model.named_parameters(), model_copy.named_parameters()):
            self.assertTrue(torch.equal(p, q), "parameter %s differs after three more steps" % n)
        self.assertNoDiff(opt2.state_dict(), opt.state_dict(), "optimizer state after three more steps")
        self.assertEqual(sched2.get_last_lr(), sched.get_last_lr())

    def test_scheduler_round_trip(self):
        _, _, sched = train_small(steps=5)
        _, back = self.round_trip(sched.state_dict(), "scheduler.pt")
        restored = torch.load(back)
        self.assertNoDiff(restored, sched.state_dict(), "LambdaLR state")
        model2 = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))
        _, sched2 = make_training(model2)
        sched2.load_state_dict(restored)
        self.assertEqual(sched2.last_epoch, sched.last_epoch)

    def test_scaler_disabled_round_trip(self):
        self.assertEqual(torch.cuda.amp.GradScaler(enabled=False).state_dict(), {})
        _, back = self.round_trip({}, "scaler.pt")
        restored = torch.load(back, weights_only=True)
        self.assertNoDiff(restored, {}, "disabled GradScaler state")

    def test_scaler_enabled_round_trip(self):
        state = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                 "_growth_tracker": 0}
        _, back = self.round_trip(state, "scaler.pt")
        restored = torch.load(back)
        self.assertNoDiff(restored, state, "enabled GradScaler state")
        state2 = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                  "_growth_tracker": 17}
        _, back2 = self.round_trip(state2, "scaler2.pt")
        self.assertNoDiff(torch.load(back2), state2, "GradScaler state after a backoff")

    def test_rng_round_trip(self):
        state = rng_state()
        st, back = self.round_trip(state, "rng_state.pth")
        _, tensors = harness.read_safetensors(st)
        self.assertIn("cpu", tensors)
        restored = torch.load(back)
        self.assertNoDiff(restored, state, "rng state after round trip")

        def draws(s):
            random.setstate(s["python"])
            np.random.set_state(s["numpy"])
            torch.set_rng_state(s["cpu"])
            return ([random.random() for _ in range(5)], np.random.randn(5).tolist(), np.random.rand(3).tolist(),
                    torch.rand(5).tolist(), torch.randn(3).tolist())

        self.assertEqual(draws(restored), draws(state), "draws after restoring the converted RNG state")


# --------------------------------------------------------------------------------------------------------------
# 6. Casts
# --------------------------------------------------------------------------------------------------------------


class Casts(ConvertCase):
    counter = 0

    def cast_via(self, tensors, dtype_flag, to):
        Casts.counter += 1
        n = Casts.counter
        src = self.save(tensors, "src-%d.bin" % n)
        self.last_src = src
        if to == "safetensors":
            out = self.path("cast-%s-%d.safetensors" % (dtype_flag, n))
            self.convert(src, out, "--to", "safetensors", "--dtype", dtype_flag)
            self.assertValidSafetensors(out)
            return harness.read_safetensors(out)[1]
        out = self.path("cast-%s-%d.bin" % (dtype_flag, n))
        self.convert(src, out, "--to", "pytorch", "--dtype", dtype_flag)
        return torch.load(out, weights_only=True)

    def check_cast(self, src, target_dtype, flag, to):
        got = self.cast_via(collections.OrderedDict([("x", src), ("x2d", src[:1200].reshape(30, 40))]), flag, to)
        for name, s in (("x", src), ("x2d", src[:1200].reshape(30, 40))):
            want = s.to(target_dtype)
            self.assertEqual(got[name].dtype, target_dtype, name)
            self.assertEqual(got[name].shape, want.shape)
            self.assertTrue(torch.equal(bits16(got[name]), bits16(want)),
                            "%s -> %s (--to %s), %s" % (name, flag, to, describe_bit_mismatch(s, got[name], want)))

    def test_bf16_bit_identical_to_torch(self):
        src = cast_source_tensor(include_nan=True)
        for to in ("safetensors", "pytorch"):
            with self.subTest(to=to):
                self.check_cast(src, torch.bfloat16, "bf16", to)

    def test_fp16_bit_identical_to_torch(self):
        src = cast_source_tensor(include_nan=True)
        for to in ("safetensors", "pytorch"):
            with self.subTest(to=to):
                self.check_cast(src, torch.float16, "fp16", to)

    def test_bf16_non_nan_values(self):
        """Rounding of every non-NaN value (isolates NaN encoding from rounding)."""
        self.check_cast(cast_source_tensor(include_nan=False), torch.bfloat16, "bf16", "safetensors")

    def test_fp16_non_nan_values(self):
        self.check_cast(cast_source_tensor(include_nan=False), torch.float16, "fp16", "safetensors")

    def test_nan_variants_bit_identical(self):
        src = nan_variants()
        for target, flag in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
            with self.subTest(dtype=flag):
                got = self.cast_via({"n": src}, flag, "safetensors")["n"]
                want = src.to(target)
                self.assertTrue(torch.isnan(got.float()).all(), "NaN did not stay NaN")
                self.assertTrue(torch.equal(bits16(got), bits16(want)), describe_bit_mismatch(src, got, want))

    def test_fp16_and_bf16_to_fp32_all_bit_patterns(self):
        patterns = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
        for dtype in (torch.float16, torch.bfloat16):
            half = patterns.view(dtype)
            for to in ("safetensors", "pytorch"):
                with self.subTest(dtype=str(dtype), to=to):
                    got = self.cast_via({"h": half, "h2d": half.reshape(256, 256).t()}, "fp32", to)
                    want = half.to(torch.float32)
                    self.assertEqual(got["h"].dtype, torch.float32)
                    g, w = got["h"].view(torch.int32), want.view(torch.int32)
                    bad = (g != w).nonzero().reshape(-1).tolist()
                    examples = ["0x%04x -> ckpt 0x%08x, torch 0x%08x" % (
                        patterns[i].item() & 0xFFFF, g[i].item() & 0xFFFFFFFF, w[i].item() & 0xFFFFFFFF)
                        for i in bad[:6]]
                    self.assertEqual(len(bad), 0, "%s -> fp32 (--to %s): %d of 65536 bit patterns differ from torch: %s"
                                     % (dtype, to, len(bad), "; ".join(examples)))
                    self.assertTrue(torch.equal(got["h2d"].view(torch.int32),
                                                half.reshape(256, 256).t().to(torch.float32).contiguous().view(torch.int32)))

    def test_cast_from_safetensors_source(self):
        src = cast_source_tensor(include_nan=True)
        sd = collections.OrderedDict([("x", src), ("i", torch.arange(5))])
        bin_path = self.save(sd, "plain32.bin")
        st = self.path("plain32.safetensors")
        self.convert(bin_path, st, "--to", "safetensors")
        for flag, target in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            for to in ("safetensors", "pytorch"):
                with self.subTest(dtype=flag, to=to):
                    out = self.path("from-st-%s.%s" % (flag, "safetensors" if to == "safetensors" else "bin"))
                    self.convert(st, out, "--to", to, "--dtype", flag)
                    got = harness.read_safetensors(out)[1] if to == "safetensors" else torch.load(out, weights_only=True)
                    want = src.to(target)
                    self.assertTrue(torch.equal(bits16(got["x"]), bits16(want)), describe_bit_mismatch(src, got["x"], want))
                    self.assertTrue(torch.equal(got["i"], sd["i"]))

    def test_integers_and_bool_left_alone(self):
        sd = collections.OrderedDict([
            ("i64", torch.arange(-3, 3, dtype=torch.int64) * (2 ** 50)),
            ("i32", torch.tensor([-7, 0, 2 ** 31 - 1], dtype=torch.int32)),
            ("i8", torch.tensor([-128, 5, 127], dtype=torch.int8)),
            ("u8", torch.tensor([0, 200, 255], dtype=torch.uint8)),
            ("b", torch.tensor([True, False])),
            ("f", torch.randn(4)),
            ("s", torch.tensor(1.5)),
        ])
        for flag, target in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            for to in ("safetensors", "pytorch"):
                with self.subTest(dtype=flag, to=to):
                    got = self.cast_via(sd, flag, to)
                    for k in ("i64", "i32", "i8", "u8", "b"):
                        self.assertEqual(got[k].dtype, sd[k].dtype, k)
                        self.assertTrue(torch.equal(got[k], sd[k]), k)
                    self.assertEqual(got["f"].dtype, target)
                    self.assertTrue(torch.equal(bits16(got["f"]), bits16(sd["f"].to(target))))
                    self.assertEqual(got["s"].dtype, target)
                    self.assertEqual(got["s"].dim(), 0)
                    self.assertEqual(got["s"].item(), 1.5)

    def test_cast_keeps_ties(self):
        sd = rich_state_dict()
        got_st = self.cast_via(sd, "bf16", "safetensors")
        self.assertNotIn("lm_head.weight", got_st)
        out = self.path("cast-bf16.bin")
        self.convert(self.last_src, out, "--to", "pytorch", "--dtype", "bf16")
        got = torch.load(out, weights_only=True)
        self.assertEqual(got["lm_head.weight"].data_ptr(), got["embed.weight"].data_ptr())
        self.assertEqual(got["embed.weight"].dtype, torch.bfloat16)
        self.assertTrue(torch.equal(got["view.transposed"], sd["view.transposed"].to(torch.bfloat16)))
        self.assertTrue(torch.equal(got["slice.part"], sd["slice.part"].to(torch.bfloat16)))


# --------------------------------------------------------------------------------------------------------------
# 7. The real Trainer checkpoint
# --------------------------------------------------------------------------------------------------------------


class TrainerCheckpoint(ConvertCase):
    def setUp(self):
        super().setUp()
        fixture = os.path.join(harness.HF_FIXTURES, "run_safetensors", "checkpoint-40")
        if not os.path.isdir(fixture):
            self.skipTest("no Trainer fixture at %s" % fixture)
        self.orig = self.path("checkpoint-40")
        harness.copy_tree_writable(fixture, self.orig)
        self.pt = self.path("pt")
        self.st = self.path("st")
        self.convert(self.orig, self.pt, "--to", "pytorch", "--include-state")
        self.convert(self.pt, self.st, "--to", "safetensors", "--include-state")

    def original(self, name):
        return torch.load(os.path.join(self.orig, name))

    def test_validator_accepts_trainer_file(self):
        """The Trainer's own model.safetensors passes the validator (a check of the validator itself)."""
        self.assertValidSafetensors(os.path.join(self.orig, "model.safetensors"))

    def test_model_safetensors_byte_identical(self):
        with open(os.path.join(self.orig, "model.safetensors"), "rb") as f:
            want = f.read()
        with open(os.path.join(self.st, "model.safetensors"), "rb") as f:
            got = f.read()
        if got != want:
            (n1,) = struct.unpack("<Q", want[:8])
            (n2,) = struct.unpack("<Q", got[:8])
            self.fail("model.safetensors differs after pytorch and back: header %d vs %d bytes, %d vs %d total\n"
                      "original header starts %r\nckpt header starts     %r\nckpt metadata %r" % (
                          n1, n2, len(want), len(got), want[8:8 + 160], got[8:8 + 160],
                          harness.read_header(os.path.join(self.st, "model.safetensors")).get("__metadata__")))

    def test_intermediate_pytorch_weights(self):
        sd = torch.load(os.path.join(self.pt, "pytorch_model.bin"), weights_only=True)
        _, want = harness.read_safetensors(os.path.join(self.orig, "model.safetensors"))
        self.assertEqual(len(want), 28)
        self.assertSameTensors(sd, want, "pytorch_model.bin from the Trainer's model.safetensors")

    def test_intermediate_state_files_equal_originals(self):
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            with self.subTest(file=name):
                self.assertNoDiff(torch.load(os.path.join(self.pt, name)), self.original(name), name)

    def test_state_through_safetensors_equal_originals(self):
        for name in ("optimizer.safetensors", "scheduler.safetensors", "rng_state.safetensors"):
            p = os.path.join(self.st, name)
            self.assertTrue(os.path.isfile(p), "%s missing: %s" % (name, sorted(os.listdir(self.st))))
            self.assertValidSafetensors(p)
        self.assertFalse(os.path.exists(os.path.join(self.st, "optimizer.pt")))
        back = self.path("pt2")
        self.convert(self.st, back, "--to", "pytorch", "--include-state")
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            with self.subTest(file=name):
                p = os.path.join(back, name)
                self.assertTrue(os.path.isfile(p), "%s not restored under its name: %s" % (name, sorted(os.listdir(back))))
                self.assertNoDiff(torch.load(p), self.original(name), name + " via safetensors")
        sd = torch.load(os.path.join(back, "pytorch_model.bin"), weights_only=True)
        _, want = harness.read_safetensors(os.path.join(self.orig, "model.safetensors"))
        self.assertSameTensors(sd, want, "weights after a second round")
        # The rng state from the Trainer still drives all generators.
        rng = torch.load(os.path.join(back, "rng_state.pth"))
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["cpu"])

    def test_training_args_json(self):
        p = os.path.join(self.st, "training_args.json")
        self.assertTrue(os.path.isfile(p), "no training_args.json: %s" % sorted(os.listdir(self.st)))
        with open(p) as f:
            doc = json.load(f)
        fields = doc.get("fields", doc)
        self.assertEqual(fields.get("learning_rate"), 0.01)
        self.assertEqual(fields.get("seed"), 1234)
        self.assertEqual(fields.get("save_steps"), 10)
        self.assertIn("output_dir", fields)
        self.assertIn("TrainingArguments", json.dumps(doc.get("class", "")))

    def test_other_files_copied(self):
        for name in ("config.json", "generation_config.json", "trainer_state.json"):
            with open(os.path.join(self.orig, name), "rb") as f:
                want = f.read()
            for d in (self.pt, self.st):
                with open(os.path.join(d, name), "rb") as f:
                    self.assertEqual(f.read(), want, "%s in %s" % (name, d))
        self.assertEqual(sorted(os.listdir(self.pt)),
                         sorted(["config.json", "generation_config.json", "optimizer.pt", "pytorch_model.bin",
                                 "rng_state.pth", "scheduler.pt", "trainer_state.json", "training_args.bin"]))

    def test_source_untouched(self):
        fixture = os.path.join(harness.HF_FIXTURES, "run_safetensors", "checkpoint-40")
        self.assertEqual(harness.tree_snapshot(self.orig, ignore=()), harness.tree_snapshot(fixture, ignore=()))


# --------------------------------------------------------------------------------------------------------------
# 8. Refusals and conventions
# --------------------------------------------------------------------------------------------------------------


class OutputNames(ConvertCase):
    """A directory's outputs: a name read from an input (ckpt_source_name) is only one that input's own name allows,
    and no two inputs become one output file."""

    def setUp(self):
        super().setUp()
        self.model, _, sched = train_small()
        src = self.path("checkpoint-4")
        os.makedirs(src)
        torch.save(self.model.state_dict(), os.path.join(src, "pytorch_model.bin"))
        torch.save(sched.state_dict(), os.path.join(src, "scheduler.pt"))
        self.st = self.path("st")
        self.convert(src, self.st, "--to", "safetensors", "--include-state")
        self.out = self.path("out")

    def refused(self, expect_in_message):
        r = self.convert(self.st, self.out, "--to", "pytorch", "--include-state", expect=3)
        for text in expect_in_message:
            self.assertIn(text, r.stderr, r.describe())
        self.assertNotIn(".tmp-", r.stderr, "the message names an internal temporary\n" + r.describe())
        self.assertFalse(os.path.exists(self.out), r.describe())
        return r

    def test_source_name_cannot_replace_the_weights(self):
        """The reproduction: scheduler.safetensors naming itself pytorch_model.bin overwrote the weights (exit 0)."""
        scheduler = os.path.join(self.st, "scheduler.safetensors")
        H.rewrite_metadata(scheduler, ckpt_source_name="pytorch_model.bin")
        self.refused([scheduler, "ckpt_source_name", "pytorch_model.bin"])

    def test_source_names_outside_the_inputs_own_are_corrupt(self):
        scheduler = os.path.join(self.st, "scheduler.safetensors")
        for bad in ("", ".", "..", "optimizer.pt", "rng_state.pth", "scheduler", "scheduler.pt.tmp", "config.json"):
            with self.subTest(name=bad):
                H.rewrite_metadata(scheduler, ckpt_source_name=bad)
                self.refused([scheduler, "ckpt_source_name"])

    def test_source_name_with_the_inputs_stem_is_kept(self):
        H.rewrite_metadata(os.path.join(self.st, "scheduler.safetensors"), ckpt_source_name="scheduler.pth")
        self.convert(self.st, self.out, "--to", "pytorch", "--include-state")
        self.assertEqual(sorted(os.listdir(self.out)), ["pytorch_model.bin", "scheduler.pth"])

    def test_two_inputs_never_become_one_output(self):
        # A copied file named like a converted one, either way round.
        shutil.copyfile(os.path.join(self.path("checkpoint-4"), "scheduler.pt"), os.path.join(self.st, "scheduler.pt"))
        self.refused([os.path.join(self.st, "scheduler.safetensors"), "scheduler.pt"])
        os.remove(os.path.join(self.st, "scheduler.pt"))
        stale = os.path.join(self.st, "pytorch_model.bin")
        torch.save({"stale": torch.zeros(1)}, stale)
        self.refused([stale, "pytorch_model.bin"])
        os.remove(stale)
        # Towards safetensors: optimizer.pt converts to optimizer.safetensors, which the directory also holds.
        src = self.path("checkpoint-4")
        shutil.copyfile(os.path.join(self.st, "scheduler.safetensors"), os.path.join(src, "scheduler.safetensors"))
        r = self.convert(src, self.path("st2"), "--to", "safetensors", "--include-state", expect=3)
        self.assertIn("scheduler.safetensors", r.stderr)
        self.assertFalse(os.path.exists(self.path("st2")))
        # The refusals did not depend on where the other file came from: without them both directions convert.
        os.remove(os.path.join(src, "scheduler.safetensors"))
        self.convert(self.st, self.out, "--to", "pytorch", "--include-state")
        self.assertSameTensors(torch.load(os.path.join(self.out, "pytorch_model.bin"), weights_only=True),
                               self.model.state_dict(), "weights")


class MetadataValidation(ConvertCase):
    """ckpt's own safetensors metadata is input like any other: ckpt_order, ckpt_aliases, ckpt_attributes and
    ckpt_structure must name each stored tensor (once, where names are listed) and nothing else."""

    def setUp(self):
        super().setUp()
        self.sd = rich_state_dict()
        self.st = self.path("model.safetensors")
        self.convert(self.save(self.sd, "pytorch_model.bin"), self.st, "--to", "safetensors")
        self.meta, self.tensors = harness.read_safetensors(self.st)
        self.assertIn("ckpt_order", self.meta)
        self.assertIn("ckpt_aliases", self.meta)
        self.assertIn("ckpt_attributes", self.meta)

    def assertRefused(self, path, key, why):
        """Both conversions and inspect --verify refuse the file (exit 3), naming it and the metadata key."""
        for to in ("safetensors", "pytorch"):
            out = self.path("out-%s-%s" % (to, os.path.basename(path)))
            r = self.convert(path, out, "--to", to, expect=3)
            self.assertIn(path, r.stderr, why)
            self.assertIn(key, r.stderr, why)
            self.assertFalse(os.path.exists(out), why)
        r = self.ckpt(["inspect", "--verify", path], expect=3)
        self.assertIn(key, r.stdout + r.stderr, why)

    def hostile(self, name, **metadata):
        p = self.path(name + ".safetensors")
        shutil.copyfile(self.st, p)
        H.rewrite_metadata(p, **metadata)
        return p

    def test_order(self):
        names = json.loads(self.meta["ckpt_order"])
        first = names[0]
        cases = [
            ("repeated", names + [first] * 50, "a name repeated (290 KB became 1.05 GB)"),
            ("unknown", names + ["no.such.tensor"], "a name that is no tensor"),
            ("missing", names[:-1], "a stored tensor left out"),
            ("not_a_name", names + [3], "a number among the names"),
        ]
        for name, order, why in cases:
            with self.subTest(why):
                self.assertRefused(self.hostile(name, ckpt_order=json.dumps(order)), "ckpt_order", why)
        with self.subTest("not a list"):
            self.assertRefused(self.hostile("order_object", ckpt_order=json.dumps({first: 1})), "ckpt_order", "an object")

    def test_aliases(self):
        aliases = json.loads(self.meta["ckpt_aliases"])
        self.assertEqual(aliases, {"lm_head.weight": "embed.weight"})
        stored = next(iter(self.tensors))
        cases = [
            ({"lm_head.weight": "no.such.tensor"}, "tied to no stored tensor"),
            ({"lm_head.weight": "embed.weight", stored: "embed.weight"}, "a stored tensor also an alias"),
            ({"lm_head.weight": ["embed.weight"]}, "a target that is not a name"),
            ({"lm_head.weight": "embed.weight", "extra.alias": "embed.weight"}, "an alias not in ckpt_order"),
        ]
        for n, (value, why) in enumerate(cases):
            with self.subTest(why):
                self.assertRefused(self.hostile("alias%d" % n, ckpt_aliases=json.dumps(value)), "ckpt_aliases", why)

    def test_attributes_hold_no_tensor(self):
        stored = next(iter(self.tensors))
        for n, value in enumerate(({"$tensor": stored}, {"$ndarray": stored, "descr": "|u1", "shape": [1]})):
            with self.subTest(value=value):
                p = self.hostile("attrs%d" % n, ckpt_attributes=json.dumps({"": {"version": 1}, "x": value}))
                self.assertRefused(p, "ckpt_attributes", "a tensor in the state dict's _metadata")

    def test_structure_references_every_tensor(self):
        _, opt, _ = train_small()
        src = self.save(opt.state_dict(), "optimizer.pt")
        st = self.path("optimizer.safetensors")
        self.convert(src, st, "--to", "safetensors")
        meta, tensors = harness.read_safetensors(st)
        structure = json.loads(meta["ckpt_structure"])
        del structure["state"]["$dict"][0]
        H.rewrite_metadata(st, ckpt_structure=json.dumps(structure))
        r = self.convert(st, self.path("back.pt"), "--to", "pytorch", expect=3)
        self.assertIn("state.0.exp_avg", r.stderr)
        self.assertIn("ckpt_structure", r.stderr)
        self.assertFalse(os.path.exists(self.path("back.pt")))

    def test_valid_files_still_convert(self):
        back = self.path("back.bin")
        self.convert(self.st, back, "--to", "pytorch")
        self.assertSameTensors(torch.load(back, weights_only=True), self.sd, "weights")
        self.ckpt(["inspect", "--verify", self.st])


class RawNumpyState:
    """Pickles as ndarray.__reduce__ does, with a BUILD state of our choosing (what a broken writer leaves)."""

    def __init__(self, state):
        self.state = state

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), self.state)


def storable_numpy_values():
    """numpy values ckpt must keep exactly: every memory order and byte order, scalars, dtypes."""
    return {
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "transposed": np.arange(6, dtype="<i4").reshape(2, 3).T,
        "transposed_3d": np.arange(24, dtype="f4").reshape(2, 3, 4).transpose(2, 0, 1),
        "strided": np.arange(20)[::3],
        "big_endian": np.arange(5, dtype=">f8") - 2.5,
        "big_endian_fortran": np.asfortranarray(np.arange(6, dtype=">i2").reshape(2, 3)),
        "complex": np.array([1 + 2j, -3.5j], dtype="<c16"),
        "bool_0d": np.array(True),
        "empty": np.zeros((2, 0), dtype="<u2"),
        "f16": np.array([[0.5, -1.0], [65504.0, 1e-7]], dtype="<f2").T,
        "scalar_f64": np.float64(1.5),
        "scalar_i32": np.int32(-3),
        "dtype": np.dtype(">u2"),
    }


class NumpyArrays(ConvertCase):
    """numpy arrays in state files (rng_state.pth holds one, other state may hold more): stored exactly through the pickle-free form in any
    memory and byte order, refused (exit 3) when they cannot be, and failed by inspect --verify where numpy, and so
    torch.load, would refuse them."""

    def checkpoint(self, extra):
        """A checkpoint whose rng_state.pth holds numpy's own state array and whose scheduler.pt also `extra`
        (LambdaLR.load_state_dict takes extra keys as attributes)."""
        src = self.path("checkpoint-1")
        os.makedirs(src)
        torch.save({"weight": torch.ones(2)}, os.path.join(src, "pytorch_model.bin"))
        torch.save(rng_state(), os.path.join(src, "rng_state.pth"))
        _, _, sched = train_small(steps=1)
        state = dict(sched.state_dict(), extra=extra)
        torch.save(state, os.path.join(src, "scheduler.pt"))
        return src, state

    def assertSameNumpy(self, got, want, what):
        self.assertIs(type(got), type(want), what)
        if isinstance(want, np.dtype):
            self.assertEqual(got, want, what)
            self.assertEqual(got.byteorder, want.byteorder, what)
            return
        self.assertEqual(got.dtype, want.dtype, what)
        self.assertEqual(got.dtype.byteorder, want.dtype.byteorder, what)
        self.assertEqual(np.shape(got), np.shape(want), what)
        self.assertTrue(np.array_equal(got, want), "%s: values differ\n%r\n%r" % (what, got, want))

    def test_round_trip_keeps_every_array_exactly(self):
        src, _ = self.checkpoint(storable_numpy_values())
        # What torch.load gives for the original (numpy itself drops '>' from an F-ordered array it unpickles).
        state = torch.load(os.path.join(src, "scheduler.pt"))
        st, back = self.path("st"), self.path("back")
        self.convert(src, st, "--to", "safetensors", "--include-state")
        self.convert(st, back, "--to", "pytorch", "--include-state")
        restored = torch.load(os.path.join(back, "scheduler.pt"))
        for name, want in state["extra"].items():
            with self.subTest(name):
                self.assertSameNumpy(restored["extra"][name], want, name)
        self.assertNoDiff(restored, state, "scheduler.pt")
        self.assertNoDiff(torch.load(os.path.join(back, "rng_state.pth")), torch.load(os.path.join(src, "rng_state.pth")),
                          "rng_state.pth")
        for name in ("scheduler.pt", "rng_state.pth"):
            self.ckpt(["inspect", "--verify", os.path.join(back, name)])

    def test_unstorable_arrays_refused(self):
        cases = {
            "object": np.array([1, "a", None], dtype=object),
            "structured": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
            "unicode": np.array(["ab", "c"]),
            "datetime": np.zeros(3, dtype="M8[D]"),
            "structured_dtype": np.dtype([("a", "<i4")]),
        }
        for name, value in cases.items():
            with self.subTest(name):
                self.dir = tempfile.mkdtemp(prefix=name + "-", dir=TMP)
                src, _ = self.checkpoint({name: value})
                out = self.path("st")
                r = self.convert(src, out, "--to", "safetensors", "--include-state", expect=3)
                self.assertIn(os.path.join(src, "scheduler.pt"), r.stderr)
                self.assertIn("extra." + name, r.stderr)
                self.assertFalse(os.path.exists(out))
                # torch.load takes the original: so does inspect --verify.
                self.ckpt(["inspect", "--verify", os.path.join(src, "scheduler.pt")])

    def test_verify_fails_what_numpy_refuses(self):
        cases = {
            # What convert used to write for an object array and a structured one: torch.load fails on both.
            "object_without_values": (1, (3,), np.dtype("O"), False, b""),
            "short_buffer": (1, (2,), np.dtype("<f8"), False, b"\0" * 8),
            "long_buffer_fortran": (1, (2, 2), np.dtype(">i2"), True, b"\0" * 10),
        }
        for name, state in cases.items():
            with self.subTest(name):
                p = self.save({"a": RawNumpyState(state)}, name + ".pt")
                with self.assertRaises((ValueError, TypeError), msg="torch.load takes %s" % name):
                    torch.load(p)
                r = self.ckpt(["inspect", "--verify", p], expect=3)
                self.assertIn("numpy array", r.stdout + r.stderr)


class ConfigDtype(ConvertCase):
    """A checkpoint directory cast with --dtype: its config.json says the new torch_dtype, written as transformers'
    save_pretrained writes it (json.dumps(indent=2, sort_keys=True) + newline)."""

    CONFIG = {"model_type": "gpt2", "torch_dtype": "float32", "n_embd": 32, "layer_norm_epsilon": 1e-05,
              "architectures": ["GPT2LMHeadModel"], "initializer_range": 0.02, "task_specific_params": {"b": 1, "a": None},
              "transformers_version": "4.40.2", "name": "caf\u00e9"}

    def checkpoint(self, config_text):
        src = self.path("checkpoint-3")
        os.makedirs(src)
        torch.save({"w": torch.randn(3, 2), "steps": torch.tensor(3)}, os.path.join(src, "pytorch_model.bin"))
        with open(os.path.join(src, "config.json"), "w") as f:
            f.write(config_text)
        return src

    def test_cast_sets_torch_dtype(self):
        # Unsorted, compact: the output must still be exactly what Python writes.
        src = self.checkpoint(json.dumps(self.CONFIG))
        for flag, name in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")):
            for to in ("safetensors", "pytorch"):
                with self.subTest(flag=flag, to=to):
                    out = self.path("out-%s-%s" % (flag, to))
                    self.convert(src, out, "--to", to, "--dtype", flag)
                    want = dict(self.CONFIG, torch_dtype=name)
                    with open(os.path.join(out, "config.json")) as f:
                        self.assertEqual(f.read(), json.dumps(want, indent=2, sort_keys=True) + "\n")

    def test_without_cast_config_is_copied(self):
        text = json.dumps(self.CONFIG)
        src = self.checkpoint(text)
        self.convert(src, self.path("out"), "--to", "safetensors")
        with open(os.path.join(self.path("out"), "config.json")) as f:
            self.assertEqual(f.read(), text)

    def test_config_that_is_not_an_object_is_refused(self):
        src = self.checkpoint("[1, 2]")
        r = self.convert(src, self.path("out"), "--to", "safetensors", "--dtype", "bf16", expect=3)
        self.assertIn(os.path.join(src, "config.json"), r.stderr)
        self.assertFalse(os.path.exists(self.path("out")))


class Conventions(ConvertCase):
    def setUp(self):
        super().setUp()
        self.sd = rich_state_dict()
        self.src = self.save(self.sd, "pytorch_model.bin")

    def test_existing_file_refused_then_forced(self):
        dst = self.path("out.safetensors")
        with open(dst, "wb") as f:
            f.write(b"do not touch")
        st = os.stat(dst)
        r = self.convert(self.src, dst, "--to", "safetensors", expect=2)
        self.assertIn("exist", r.stderr)
        with open(dst, "rb") as f:
            self.assertEqual(f.read(), b"do not touch")
        self.assertEqual(os.stat(dst).st_mtime_ns, st.st_mtime_ns)
        self.convert(self.src, dst, "--to", "safetensors", "--force")
        self.assertValidSafetensors(dst)

    def test_existing_directory_refused_then_forced(self):
        dst = self.path("outdir")
        os.makedirs(dst)
        with open(os.path.join(dst, "keep.txt"), "w") as f:
            f.write("x")
        self.convert(self.src, dst, "--to", "safetensors", "--max-shard-size", "1KB", expect=2)
        self.assertEqual(os.listdir(dst), ["keep.txt"])
        # --force replaces only an earlier output of ckpt: keep.txt is someone else's.
        r = self.convert(self.src, dst, "--to", "safetensors", "--max-shard-size", "1KB", "--force", expect=2)
        self.assertIn("keep.txt", r.stderr)
        self.assertEqual(os.listdir(dst), ["keep.txt"])
        os.remove(os.path.join(dst, "keep.txt"))
        self.convert(self.src, dst, "--to", "safetensors", "--max-shard-size", "1KB", "--force")
        self.assertIn("model.safetensors.index.json", os.listdir(dst))
        # An earlier output is replaced whole, whatever its shards, by another kind of output too.
        r = self.convert(self.src, dst, "--to", "pytorch", "--max-shard-size", "3KB", "--force", "--json")
        self.assertEqual(sorted(os.listdir(dst)), sorted(os.path.basename(f["destination"]) for f in json.loads(r.stdout)["files"]))
        self.assertIn("pytorch_model.bin.index.json", os.listdir(dst))

    def test_force_replaces_only_an_earlier_output(self):
        fixture = os.path.join(harness.HF_FIXTURES, "run_safetensors", "checkpoint-10")
        src = self.path("checkpoint-10")
        harness.copy_tree_writable(fixture, src)
        out = self.path("out")
        self.convert(src, out, "--to", "pytorch", "--include-state")
        self.convert(src, out, "--to", "pytorch", "--include-state", "--force")
        made = sorted(os.listdir(out))
        notes = os.path.join(out, "notes.txt")
        with open(notes, "w") as f:
            f.write("mine")
        archive = self.path("c.ckpt")
        self.convert(src, archive, "--to", "archive")
        for args in (["--to", "pytorch", "--include-state"], ["--to", "safetensors"], ["--to", "safetensors", "--dry-run"]):
            with self.subTest(args=args):
                r = self.convert(src, out, "--force", *args, expect=2)
                self.assertIn("notes.txt", r.stderr)
                self.assertEqual(sorted(os.listdir(out)), sorted(made + ["notes.txt"]))
        r = self.convert(archive, out, "--to", "dir", "--force", expect=2)
        self.assertIn("notes.txt", r.stderr)
        self.assertEqual(sorted(os.listdir(out)), sorted(made + ["notes.txt"]))
        with open(notes) as f:
            self.assertEqual(f.read(), "mine")
        os.remove(notes)
        # A symlink to an earlier output, a file, the current directory: never replaced.
        os.symlink(out, self.path("link"))
        with open(self.path("file"), "w") as f:
            f.write("mine")
        for dest, cwd in ((self.path("link"), None), (self.path("file"), None), (".", out)):
            with self.subTest(dest=dest):
                r = self.ckpt(["convert", src, "-o", dest, "--to", "safetensors", "--force"], expect=2, cwd=cwd)
        self.assertTrue(os.path.islink(self.path("link")))
        with open(self.path("file")) as f:
            self.assertEqual(f.read(), "mine")
        self.assertEqual(sorted(os.listdir(out)), made)
        # An earlier convert output is replaced by a restore, and that by a convert again.
        self.convert(archive, out, "--to", "dir", "--force")
        self.assertEqual(sorted(os.listdir(out)), sorted(os.listdir(src)))
        self.convert(src, out, "--to", "pytorch", "--include-state", "--force")
        self.assertEqual(sorted(os.listdir(out)), made)

    def test_dry_run_writes_nothing(self):
        before = sorted(os.listdir(self.dir))
        for dst, extra in ((self.path("d.safetensors"), []), (self.path("dshards"), ["--max-shard-size", "1KB"]),
                           (self.path("d.bin"), ["--dtype", "bf16"])):
            to = "pytorch" if dst.endswith(".bin") else "safetensors"
            r = self.convert(self.src, dst, "--to", to, "--dry-run", *extra)
            self.assertFalse(os.path.exists(dst), "--dry-run wrote %s\n%s" % (dst, r.describe()))
        r = self.convert(self.src, self.path("dj"), "--to", "safetensors", "--dry-run", "--json",
                         "--max-shard-size", "1KB")
        doc = json.loads(r.stdout)
        self.assertTrue(doc["dry_run"])
        self.assertTrue(doc["files"])
        self.assertEqual(sorted(os.listdir(self.dir)), before)

    def test_dry_run_directory(self):
        fixture = os.path.join(harness.HF_FIXTURES, "run_safetensors", "checkpoint-10")
        if not os.path.isdir(fixture):
            self.skipTest("no fixture")
        src = self.path("checkpoint-10")
        harness.copy_tree_writable(fixture, src)
        before = sorted(os.listdir(self.dir))
        self.convert(src, self.path("out"), "--to", "safetensors", "--include-state", "--dry-run")
        self.assertEqual(sorted(os.listdir(self.dir)), before)

    def test_json_output(self):
        dst = self.path("j.safetensors")
        r = self.convert(self.src, dst, "--to", "safetensors", "--json")
        doc = json.loads(r.stdout)
        self.assertEqual(doc["to"], "safetensors")
        self.assertFalse(doc["dry_run"])
        self.assertEqual(len(doc["files"]), 1)
        f = doc["files"][0]
        self.assertEqual(os.path.abspath(f["destination"]), os.path.abspath(dst))
        self.assertEqual(f["size_bytes"], os.path.getsize(dst))
        self.assertTrue(any("lm_head.weight" in n for n in doc["notes"]), "no note about the dropped tied alias")
        out = self.path("js")
        r = self.convert(self.src, out, "--to", "pytorch", "--json", "--max-shard-size", "2KB")
        doc = json.loads(r.stdout)
        dests = sorted(os.path.basename(f["destination"]) for f in doc["files"])
        self.assertEqual(dests, sorted(os.listdir(out)))
        for f in doc["files"]:
            self.assertEqual(f["size_bytes"], os.path.getsize(f["destination"]), f)

    def test_quiet(self):
        r = self.convert(self.src, self.path("q.safetensors"), "--to", "safetensors", "-q")
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr, "")

    def test_index_with_missing_shard(self):
        out = self.path("sharded")
        self.convert(self.src, out, "--to", "safetensors", "--max-shard-size", "1KB")
        index = load_json(os.path.join(out, "model.safetensors.index.json"))
        shards = sorted(set(index["weight_map"].values()))
        os.remove(os.path.join(out, shards[1]))
        dst = self.path("merged.bin")
        r = self.convert(os.path.join(out, "model.safetensors.index.json"), dst, "--to", "pytorch", expect=3)
        self.assertIn(shards[1], r.stderr)
        self.assertFalse(os.path.exists(dst))

    def test_opaque_object_as_weights(self):
        src = self.save(Opaque(), "weights.bin")
        dst = self.path("opaque.safetensors")
        r = self.convert(src, dst, "--to", "safetensors", expect=3)
        self.assertIn("Opaque", r.stderr, "the message should name the class")
        self.assertFalse(os.path.exists(dst))
        r = self.convert(src, self.path("opaque.bin"), "--to", "pytorch", expect=3)
        self.assertFalse(os.path.exists(self.path("opaque.bin")))

    def test_complex128_refused(self):
        sd = collections.OrderedDict([("a", torch.randn(3)), ("z", torch.randn(4, dtype=torch.complex128))])
        src = self.save(sd, "complex.bin")
        dst = self.path("complex.safetensors")
        r = self.convert(src, dst, "--to", "safetensors", expect=3)
        self.assertIn("complex", r.stderr.lower())
        self.assertFalse(os.path.exists(dst))
        dst_dir = self.path("complex-shards")
        sd2 = collections.OrderedDict([("a%d" % i, torch.randn(64)) for i in range(4)])
        sd2["z"] = torch.randn(4, dtype=torch.complex128)
        src2 = self.save(sd2, "complex2.bin")
        self.convert(src2, dst_dir, "--to", "safetensors", "--max-shard-size", "300B", expect=3)
        self.assertFalse(os.path.exists(dst_dir))

    def test_bad_max_shard_size(self):
        for i, bad in enumerate(("abc", "10XB", "0", "0KB", "-5MB", "5 GB", "", "GB", "1.2.3MB")):
            with self.subTest(size=bad):
                dst = self.path("bad-size-%d" % i)
                r = self.convert(self.src, dst, "--to", "safetensors", "--max-shard-size", bad, expect=2)
                self.assertIn("max-shard-size", r.stderr)
                self.assertFalse(os.path.exists(dst))

    def test_usage_errors(self):
        self.convert(self.src, self.path("x"), "--to", "onnx", expect=2)
        self.convert(self.src, self.path("x"), "--to", "safetensors", "--dtype", "fp8", expect=2)
        self.assertFalse(os.path.exists(self.path("x")))

    def test_missing_source(self):
        self.convert(self.path("nope.bin"), self.path("x.safetensors"), "--to", "safetensors", expect=1)

    def test_failed_directory_leaves_nothing(self):
        src = self.path("ckdir")
        os.makedirs(src)
        torch.save(self.sd, os.path.join(src, "pytorch_model.bin"))
        torch.save(Opaque(), os.path.join(src, "optimizer.pt"))
        dst = self.path("ckdir-out")
        self.convert(src, dst, "--to", "safetensors", "--include-state", expect=3)
        self.assertFalse(os.path.exists(dst))
        # Without --include-state the opaque file is only copied.
        self.convert(src, dst, "--to", "safetensors")
        self.assertEqual(sorted(os.listdir(dst)), ["model.safetensors", "optimizer.pt"])

    def test_corrupt_sources(self):
        p = self.path("trunc.bin")
        with open(self.src, "rb") as f:
            data = f.read()
        with open(p, "wb") as f:
            f.write(data[: len(data) // 2])
        self.convert(p, self.path("t.safetensors"), "--to", "safetensors", expect=3)
        p2 = self.path("noise.bin")
        with open(p2, "wb") as f:
            f.write(b"this is not a checkpoint at all" * 10)
        self.convert(p2, self.path("n.safetensors"), "--to", "safetensors", expect=3)
        self.assertFalse(os.path.exists(self.path("t.safetensors")))
        self.assertFalse(os.path.exists(self.path("n.safetensors")))



class WriteFailures(ConvertCase):
    """A write that fails part way (the file-size limit stands in for a full disk) leaves no destination and no
    temporary file, and says what failed."""

    def test_file_too_large_midway(self):
        sd = rich_state_dict()
        src = self.save(sd, "pytorch_model.bin")
        for target, limit_bytes in (("safetensors", 600), ("safetensors", 4096), ("pytorch", 1500)):
            dst = self.path("out-%s-%d" % (target, limit_bytes))
            r = harness.ckpt("convert", src, "-o", dst, "--to", target, file_size_limit=limit_bytes, timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertTrue(r.stderr.startswith("ckpt: error: " + dst), r.stderr)
            self.assertIn("File too large", r.stderr)
            self.assertFalse(os.path.exists(dst))
            self.assertEqual(harness.leftover_temporaries(self.dir), [])

    def test_directory_conversion_failing_leaves_no_directory(self):
        src_dir = self.path("checkpoint-7")
        os.mkdir(src_dir)
        torch.save(rich_state_dict(), os.path.join(src_dir, "pytorch_model.bin"))
        with open(os.path.join(src_dir, "config.json"), "w") as f:
            f.write("{}" + " " * 5000)
        dst = self.path("converted")
        r = harness.ckpt("convert", src_dir, "-o", dst, "--to", "safetensors", file_size_limit=4096, timeout=120)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertFalse(os.path.exists(dst))
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(".")], [])


# --------------------------------------------------------------------------------------------------------------
# On a terminal, and interrupted
# --------------------------------------------------------------------------------------------------------------


class ProgressAndInterruption(ConvertCase):
    """Big enough to show progress (64 MiB per file) and to be caught mid-write: a checkpoint directory with 128 MiB
    of float32 weights, stored as a transposed view (so converting gathers them element by element, the slowest
    path), and 256 MiB of AdamW state."""

    @classmethod
    def setUpClass(cls):
        cls.big = tempfile.mkdtemp(prefix="big-", dir=TMP)
        cls.checkpoint = os.path.join(cls.big, "checkpoint-1")
        os.makedirs(cls.checkpoint)
        torch.manual_seed(0)
        model = nn.Linear(4096, 8192, bias=False)
        opt = torch.optim.AdamW(model.parameters())
        model.weight.grad = torch.randn(8192, 4096)
        opt.step()
        transposed = torch.empty(4096, 8192).t()
        transposed.copy_(model.weight.detach())
        torch.save({"weight": transposed}, os.path.join(cls.checkpoint, "pytorch_model.bin"))
        torch.save(opt.state_dict(), os.path.join(cls.checkpoint, "optimizer.pt"))
        with open(os.path.join(cls.checkpoint, "config.json"), "w") as f:
            json.dump({"model_type": "big"}, f)

    def test_progress_names_each_file_and_the_final_table_replaces_it(self):
        for term in ("xterm", "dumb"):
            with self.subTest(term=term):
                dst = self.path("out-" + term)
                status, output = run_on_terminal([harness.CKPT_BIN, "convert", self.checkpoint, "--to", "safetensors",
                                                       "--include-state", "-o", dst], term)
                self.assertEqual(status, 0, output)
                for name in ("pytorch_model.bin", "optimizer.pt"):
                    self.assertIn("converting %s: " % name, output)
                self.assertEqual(("\x1b" in output), term != "dumb", repr(output[:300]))
                screen = terminal_screen(output)
                self.assertEqual(screen[0].split(), ["destination", "action", "size", "source"], "\n".join(screen))
                self.assertFalse([line for line in screen if "converting" in line or "%" in line], "\n".join(screen))

    def interrupt(self, args, where, sig):
        """Starts `ckpt convert ARGS`, sends `sig` once a temporary appears in `where`: (exit status, stderr)."""
        import subprocess
        p = subprocess.Popen([harness.CKPT_BIN, "convert"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        harness.wait_until(lambda: harness.leftover_temporaries(where), "temporary in %s" % where, interval=0.001, process=p)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        return p.returncode, err

    def assertInterrupted(self, status, err, dst):
        self.assertEqual(status, 130, err)
        self.assertTrue(err.startswith("ckpt: error: ") and "interrupted" in err and err.count("\n") == 1, err)
        self.assertEqual(harness.leftover_temporaries(os.path.dirname(dst)), [])

    def test_interrupted_file_conversion_leaves_the_destination_as_it_was(self):
        import signal
        dst = self.path("model.safetensors")
        small = self.save({"w": torch.ones(3)}, "small.bin")
        self.convert(small, dst, "--to", "safetensors")
        with open(dst, "rb") as f:
            before = f.read()
        status, err = self.interrupt([os.path.join(self.checkpoint, "pytorch_model.bin"), "--to", "safetensors",
                                      "--dtype", "bf16", "--force", "-o", dst], self.dir, signal.SIGINT)
        self.assertInterrupted(status, err, dst)
        with open(dst, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_interrupted_directory_conversion_leaves_nothing(self):
        import signal
        dst = self.path("converted")
        status, err = self.interrupt([self.checkpoint, "--to", "safetensors", "--include-state", "-o", dst], self.dir,
                                     signal.SIGTERM)
        self.assertInterrupted(status, err, dst)
        self.assertFalse(os.path.exists(dst))

    def test_interrupted_archive_and_restore_leave_nothing(self):
        import signal
        dst = self.path("checkpoint-1.ckpt")
        status, err = self.interrupt([self.checkpoint, "--to", "archive", "-o", dst], self.dir, signal.SIGINT)
        self.assertInterrupted(status, err, dst)
        self.assertFalse(os.path.exists(dst))
        self.convert(self.checkpoint, dst, "--to", "archive", "-q")
        restored = self.path("restored")
        status, err = self.interrupt([dst, "--to", "dir", "-o", restored], self.dir, signal.SIGTERM)
        self.assertInterrupted(status, err, restored)
        self.assertFalse(os.path.exists(restored))


if __name__ == "__main__":
    unittest.main()
