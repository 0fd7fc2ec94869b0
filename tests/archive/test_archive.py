"""Compressed checkpoint archives: `ckpt convert --to archive|dir`, `rotate --archive`, and archives in list, best,
inspect and resume.

Every round trip is checked file by file against the original bytes, and Python's torch loads what was restored.
Corruption (truncation, bit flips in the manifest and in frames) must end in a clear error naming the file, with
exit status 3, no destination and no leftovers; never a wrong restore and never a crash. `rotate --archive` is
killed at seeded moments: every checkpoint must exist live, or as a complete archive, or both.

Run:
    cd tests/archive && /usr/bin/python3 -m unittest -v test_archive
The binary is $CKPT_BIN (default: build/ckpt in the repository).
"""

import filecmp
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import torch  # noqa: E402

import harness  # noqa: E402
from harness import ckpt, ckpt_ok, run_on_terminal, terminal_screen  # noqa: E402
from manage import runs  # noqa: E402


def same_tree(a, b):
    """[] when directories a and b hold the same relative files with the same bytes; else the differences."""
    out = []
    cmp = filecmp.dircmp(a, b)
    stack = [("", cmp)]
    while stack:
        prefix, c = stack.pop()
        out += [prefix + n + " only in original" for n in c.left_only]
        out += [prefix + n + " only in restored" for n in c.right_only]
        for n in c.common_files:
            if not filecmp.cmp(os.path.join(c.left, n), os.path.join(c.right, n), shallow=False):
                out.append(prefix + n + " differs")
        for n, sub in c.subdirs.items():
            stack.append((prefix + n + "/", sub))
    return out


def random_weights_checkpoint(path, step, mib=4, seed=0):
    """A checkpoint whose weights look like nn.Linear's (Kaiming uniform), about `mib` MiB, in safetensors."""
    os.makedirs(path)
    g = torch.Generator().manual_seed(seed * 1000 + step)
    n = mib * (1 << 20) // 4 // 1024
    tensors = {"layer.%d.weight" % i: (torch.rand(1024, n // 4, generator=g) - 0.5) * 0.06 for i in range(4)}
    runs.write_safetensors(os.path.join(path, "model.safetensors"),
                           {k: ("F32", list(v.shape), v.numpy().tobytes()) for k, v in tensors.items()})
    runs.write_json(os.path.join(path, "trainer_state.json"), runs.trainer_state(step))
    runs.write_json(os.path.join(path, "config.json"), {"model_type": "tiny"})
    return path


class Tmp(harness.TempDirTest):
    TEMP_PREFIX = "ckpt-archive-test-"

    def round_trip(self, directory, name):
        """Archives `directory`, restores it, checks every byte; returns (archive path, restored path, --json)."""
        archive = self.path(name + ".ckpt")
        restored = self.path(name + "-restored")
        made = ckpt_ok(self, "convert", directory, "--to", "archive", "-o", archive, "--json").json()
        ckpt_ok(self, "convert", archive, "--to", "dir", "-o", restored, "-q")
        self.assertEqual(same_tree(directory, restored), [], "restored %s differs from %s" % (restored, directory))
        self.assertEqual(harness.leftover_temporaries(self.tmp), [])
        return archive, restored, made

    def train(self, run_dir, *args):
        ckpt_ok(self, "save", "--output-dir", run_dir, "-q", *args, timeout=300)


class RoundTripTest(Tmp):
    def test_trainer_checkpoints_fp32_and_fp16(self):
        for flags, name in (((), "fp32"), (("--fp16",), "fp16")):
            run = self.path("run-" + name)
            self.train(run, "--max-steps", "20", "--save-steps", "10", *flags)
            for step in (10, 20):
                ckpt_dir = os.path.join(run, "checkpoint-%d" % step)
                _, restored, made = self.round_trip(ckpt_dir, "%s-%d" % (name, step))
                self.assertEqual(made["step"], step)
                self.assertEqual(made["checkpoint"], "checkpoint-%d" % step)
                self.assertEqual(os.path.exists(os.path.join(restored, "scaler.pt")), name == "fp16")
                for f in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
                    torch.load(os.path.join(restored, f))
                if name == "fp16":
                    self.assertIn("scale", torch.load(os.path.join(restored, "scaler.pt")))

    def test_real_trainer_run(self):
        run = harness.copy_fixture_run(self.tmp)
        for step in (10, 20, 30, 40):
            self.round_trip(os.path.join(run, "checkpoint-%d" % step), "hf-%d" % step)

    def test_bf16_and_fp16_weights_and_sharded_weights(self):
        run = harness.copy_fixture_run(self.tmp)
        source = os.path.join(run, "checkpoint-40")
        for dtype in ("bf16", "fp16"):
            cast = self.path("cast-" + dtype)
            ckpt_ok(self, "convert", source, "--to", "safetensors", "--dtype", dtype, "-o", cast, "-q")
            self.round_trip(cast, "cast-" + dtype)
        sharded = self.path("sharded")
        ckpt_ok(self, "convert", os.path.join(source, "model.safetensors"), "--to", "pytorch", "--max-shard-size", "40KB", "-o",
                sharded, "-q")
        self.assertGreater(len([n for n in os.listdir(sharded) if n.endswith(".bin")]), 1)
        _, restored, _ = self.round_trip(sharded, "sharded")
        torch.load(os.path.join(restored, sorted(n for n in os.listdir(restored) if n.endswith(".bin"))[0]))

    def test_empty_zero_dim_odd_dtypes_nested_files_and_modes(self):
        d = self.path("odd")
        os.makedirs(os.path.join(d, "sub", "deeper"))
        values = {
            "empty": torch.empty(0),
            "scalar": torch.tensor(3.5),
            "long": torch.arange(7),
            "bool": torch.tensor([True, False, True]),
            "half": torch.randn(33).half(),
            "bf16": torch.randn(17).bfloat16(),
            "double": torch.randn(9).double(),
            "complex": torch.randn(5, dtype=torch.complex64),
            "int8": torch.arange(-5, 5, dtype=torch.int8),
            "view": torch.arange(20.0)[3:11],
            "expanded": torch.zeros(1).expand(1000),  # 1000 elements over a storage of one
            "transposed": torch.arange(12.0).reshape(3, 4).t(),
        }
        torch.save(values, os.path.join(d, "values.pt"))
        open(os.path.join(d, "empty.txt"), "wb").close()
        with open(os.path.join(d, "sub", "deeper", "notes.bin"), "wb") as f:
            f.write(os.urandom(5000))
        with open(os.path.join(d, "sub", "truncated.pt"), "wb") as f:
            with open(os.path.join(d, "values.pt"), "rb") as src:
                f.write(src.read()[:-30])  # a torch zip ckpt cannot parse: archived as plain bytes
        os.chmod(os.path.join(d, "empty.txt"), 0o600)
        archive, restored, made = self.round_trip(d, "odd")
        self.assertEqual(made["files"], 4)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(restored, "empty.txt")).st_mode), 0o600)
        back = torch.load(os.path.join(restored, "values.pt"))
        for k, v in values.items():
            self.assertTrue(torch.equal(back[k], v), k)
        # The manifest names the tensors of values.pt with their dtypes and shapes.
        info = ckpt_ok(self, "inspect", archive, "--json").json()
        tensors = {t["name"]: t for t in info["tensors"]}
        self.assertEqual(tensors["values.pt:scalar"]["shape"], [])
        self.assertEqual(tensors["values.pt:empty"]["shape"], [0])
        self.assertEqual(tensors["values.pt:bf16"]["dtype"], "bfloat16")
        self.assertEqual(tensors["values.pt:complex"]["dtype"], "complex64")
        self.assertEqual(tensors["values.pt:transposed"]["shape"], [4, 3])
        self.assertNotIn("values.pt:expanded", tensors)  # its dense extent would pass its storage: not listed

    def test_tensors_of_the_manifest_match_python(self):
        run = harness.copy_fixture_run(self.tmp)
        source = os.path.join(run, "checkpoint-20")
        archive, _, _ = self.round_trip(source, "names")
        info = ckpt_ok(self, "inspect", archive, "--json").json()
        self.assertEqual(info["kind"], "archive")
        listed = {t["name"]: (t["dtype"], t["shape"]) for t in info["tensors"]}
        with open(os.path.join(source, "model.safetensors"), "rb") as f:
            data = f.read()
        from_safetensors = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
        for name, entry in from_safetensors.items():
            if name == "__metadata__":
                continue
            self.assertIn("model.safetensors:" + name, listed)
            self.assertEqual(listed["model.safetensors:" + name][1], entry["shape"])
        optimizer = torch.load(os.path.join(source, "optimizer.pt"))
        for index, state in optimizer["state"].items():
            dtype, shape = listed["optimizer.pt:state.%d.exp_avg" % index]
            self.assertEqual(shape, list(state["exp_avg"].shape))
        files = {f["name"]: f for f in info["files"]}
        self.assertEqual(set(files), set(os.listdir(source)))
        for name, f in files.items():
            with open(os.path.join(source, name), "rb") as fh:
                self.assertEqual(f["sha256"], hashlib.sha256(fh.read()).hexdigest())

    def test_compression_beats_plain_zstd_on_weights(self):
        d = random_weights_checkpoint(self.path("w", "checkpoint-1"), 1, mib=4)
        archive, _, made = self.round_trip(d, "weights")
        self.assertGreater(made["ratio"], 1.15)
        self.assertEqual(made["archive_bytes"], os.path.getsize(archive))
        plain = subprocess.run(["zstd", "-3", "-c", os.path.join(d, "model.safetensors")], stdout=subprocess.PIPE, check=True).stdout
        self.assertLess(made["archive_bytes"], len(plain) / 1.08)

    def test_destinations_and_refusals(self):
        run = harness.copy_fixture_run(self.tmp)
        source = os.path.join(run, "checkpoint-10")
        archive, restored, _ = self.round_trip(source, "c10")
        r = ckpt("convert", source, "--to", "archive", "-o", archive)
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertIn("already exists", r.stderr)
        r = ckpt("convert", archive, "--to", "dir", "-o", restored)
        self.assertEqual(r.returncode, 2, r.describe())
        os.remove(os.path.join(restored, "config.json"))
        ckpt_ok(self, "convert", archive, "--to", "dir", "-o", restored, "--force", "-q")
        self.assertEqual(same_tree(source, restored), [])
        r = ckpt("convert", source, "--to", "archive", "-o", self.path("x.ckpt"), "--dtype", "bf16")
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertIn("does not apply", r.stderr)
        r = ckpt("convert", os.path.join(source, "config.json"), "--to", "dir", "-o", self.path("nope"))
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertTrue(r.stderr.startswith("ckpt: error: "), r.stderr)
        self.assertFalse(os.path.exists(self.path("nope")))
        linked = self.path("with-link")
        shutil.copytree(source, linked)
        os.symlink("config.json", os.path.join(linked, "alias.json"))
        r = ckpt("convert", linked, "--to", "archive", "-o", self.path("link.ckpt"))
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("alias.json", r.stderr)
        self.assertFalse(os.path.exists(self.path("link.ckpt")))
        for level, threads in (("1", "1"), ("19", "2")):
            out = self.path("l%s.ckpt" % level)
            ckpt_ok(self, "convert", source, "--to", "archive", "-o", out, "--level", level, "--threads", threads, "-q")
            ckpt_ok(self, "convert", out, "--to", "dir", "-o", self.path("l" + level), "-q")
            self.assertEqual(same_tree(source, self.path("l" + level)), [])
        r = ckpt("convert", source, "--to", "archive", "-o", self.path("bad.ckpt"), "--level", "30")
        self.assertEqual(r.returncode, 2, r.describe())


class CorruptionTest(Tmp):
    def setUp(self):
        super().setUp()
        self.source = harness.copy_fixture_run(self.tmp) + "/checkpoint-30"
        self.archive = self.path("good.ckpt")
        ckpt_ok(self, "convert", self.source, "--to", "archive", "-o", self.archive, "-q")
        with open(self.archive, "rb") as f:
            self.good = f.read()
        manifest_offset = int.from_bytes(self.good[-32:-24], "little")
        self.manifest_offset = manifest_offset
        self.manifest = json.loads(self.good[manifest_offset:-32])

    def restore(self, data, label):
        """Writes `data` as an archive and restores it; checks the refusal or the exact restore."""
        bad = self.path("bad.ckpt")
        with open(bad, "wb") as f:
            f.write(data)
        out = self.path("out")
        r = ckpt("convert", bad, "--to", "dir", "-o", out, timeout=60)
        self.assertGreaterEqual(r.returncode, 0, label + ": killed by a signal\n" + r.describe())
        if r.returncode == 0:
            self.assertEqual(same_tree(self.source, out), [], label + ": restored wrong bytes")
            shutil.rmtree(out)
        else:
            self.assertEqual(r.returncode, 3, label + "\n" + r.describe())
            self.assertTrue(r.stderr.startswith("ckpt: error: " + bad), label + ": " + r.stderr)
            self.assertFalse(os.path.exists(out), label + ": a destination appeared")
        self.assertEqual(harness.leftover_temporaries(self.tmp), [], label + ": leftovers")
        return r

    def test_truncation_anywhere(self):
        rng = random.Random(3)
        cuts = sorted(set([0, 1, 15, 16, 17, len(self.good) - 1, len(self.good) - 32, self.manifest_offset] +
                          [rng.randrange(len(self.good)) for _ in range(40)]))
        for cut in cuts:
            r = self.restore(self.good[:cut], "truncated at %d" % cut)
            self.assertEqual(r.returncode, 3, "truncated at %d restored" % cut)

    def test_bit_flips_in_manifest_and_trailer(self):
        rng = random.Random(4)
        positions = [rng.randrange(self.manifest_offset, len(self.good)) for _ in range(40)]
        for pos in positions:
            data = bytearray(self.good)
            data[pos] ^= 1 << rng.randrange(8)
            r = self.restore(bytes(data), "flip at %d (manifest/trailer)" % pos)
            self.assertEqual(r.returncode, 3)

    def test_bit_flips_in_frames_name_the_file_and_tensor(self):
        rng = random.Random(5)
        flips = 0
        # Every frame of model.safetensors and optimizer.pt, one flipped bit each time.
        for f in self.manifest["files"]:
            if f["name"] not in ("model.safetensors", "optimizer.pt"):
                continue
            for segment in f["segments"]:
                for codec, offset, size, crc in segment["frames"][:6]:
                    pos = offset + rng.randrange(size)
                    data = bytearray(self.good)
                    data[pos] ^= 1 << rng.randrange(8)
                    r = self.restore(bytes(data), "flip at %d in %s" % (pos, f["name"]))
                    self.assertEqual(r.returncode, 3)
                    self.assertIn(f["name"] + ": ", r.stderr)
                    self.assertRegex(r.stderr, r"(tensor \S+|bytes at offset \d+): frame at byte \d+: checksum mismatch")
                    flips += 1
        self.assertGreater(flips, 20)
        # The manifest is intact, so list and inspect still read it; --verify finds the damage.
        data = bytearray(self.good)
        frame = self.manifest["files"][4]["segments"][1]["frames"][0]
        data[frame[1]] ^= 0x80
        run = self.path("run")
        os.makedirs(os.path.join(run, "archive"))
        with open(os.path.join(run, "archive", "checkpoint-30.ckpt"), "wb") as f:
            f.write(data)
        rows = ckpt_ok(self, "list", run, "--json").json()
        self.assertEqual([(r["kind"], r["complete"], r["step"]) for r in rows], [("archive", True, 30)])
        r = ckpt("inspect", os.path.join(run, "archive", "checkpoint-30.ckpt"), "--verify")
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("checksum mismatch", r.stdout + r.stderr)

    def test_flipped_sha256_is_a_mismatch_not_a_wrong_restore(self):
        manifest = dict(self.manifest)
        manifest["files"] = [dict(f) for f in manifest["files"]]
        manifest["files"][2]["sha256"] = "0" * 64
        text = json.dumps(manifest).encode()
        body = self.good[:self.manifest_offset] + text
        trailer = (self.manifest_offset.to_bytes(8, "little") + len(text).to_bytes(8, "little") +
                   (zlib.crc32(text) & 0xffffffff).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"CKPTEND1")
        r = self.restore(body + trailer, "sha256 changed")
        self.assertEqual(r.returncode, 3)
        self.assertIn(manifest["files"][2]["name"] + ": sha256 mismatch", r.stderr)


class BombTest(Tmp):
    """Archives whose frames are shared between chunks: a few kilobytes that would restore a gigabyte, a few hundred
    that would keep `inspect --verify` busy for minutes. Refused (exit 3) when the manifest is read, before any
    frame is decoded."""
    CHUNK = 4 << 20

    def setUp(self):
        super().setUp()
        # A real zstd frame of one chunk of zeros, as ckpt stores it (a bytes segment).
        source = self.path("zeros")
        os.makedirs(source)
        with open(os.path.join(source, "zeros.bin"), "wb") as f:
            f.write(bytes(self.CHUNK))
        archive = self.path("zeros.ckpt")
        ckpt_ok(self, "convert", source, "--to", "archive", "-o", archive, "-q")
        with open(archive, "rb") as f:
            data = f.read()
        manifest = json.loads(data[int.from_bytes(data[-32:-24], "little"):-32])
        [frame] = manifest["files"][0]["segments"][0]["frames"]
        self.assertEqual(frame[0], 1, "zstd")
        self.frame = data[frame[1]:frame[1] + frame[2]]

    def bomb(self, chunks, sha256):
        """An archive of one file of `chunks` chunks of zeros, every chunk pointing at the same stored frame."""
        frame = [1, 16, len(self.frame), zlib.crc32(self.frame) & 0xffffffff]
        manifest = {"format": "ckpt-archive", "version": 1, "checkpoint": "checkpoint-1", "step": 1,
                    "chunk_size": self.CHUNK, "trainer_state": None, "tensors": [],
                    "files": [{"name": "zeros.bin", "size": chunks * self.CHUNK, "mode": 0o644, "sha256": sha256,
                               "segments": [{"size": chunks * self.CHUNK, "layout": "bytes", "element_size": 1,
                                             "transform": "none", "frames": [frame] * chunks}]}]}
        text = json.dumps(manifest, separators=(",", ":")).encode()
        offset = 16 + len(self.frame)
        path = self.path("bomb.ckpt")
        with open(path, "wb") as f:
            f.write(b"CKPTARC1" + (1).to_bytes(4, "little") + bytes(4) + self.frame + text)
            f.write(offset.to_bytes(8, "little") + len(text).to_bytes(8, "little") +
                    (zlib.crc32(text) & 0xffffffff).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"CKPTEND1")
        return path

    def test_a_few_kilobytes_do_not_restore_a_gigabyte(self):
        digest = hashlib.sha256()
        zeros = bytes(self.CHUNK)
        for _ in range(256):
            digest.update(zeros)
        path = self.bomb(256, digest.hexdigest())  # 1 GiB whose sha256 is right
        self.assertLess(os.path.getsize(path), 8 << 10)
        out = self.path("out")
        r = ckpt("convert", path, "--to", "dir", "-o", out, timeout=60)
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("frames are stored in order, each once", r.stderr)
        self.assertFalse(os.path.exists(out))

    def test_a_large_declared_size_is_refused_before_any_decoding(self):
        path = self.bomb(40960, "0" * 64)  # 160 GiB
        self.assertLess(os.path.getsize(path), 1 << 20)
        started = time.monotonic()
        r = ckpt("inspect", path, "--verify", timeout=60)
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("frames are stored in order, each once", r.stderr)
        self.assertLess(time.monotonic() - started, 10, "took as long as decoding")
        run = self.path("run")
        os.makedirs(run)
        shutil.copy(path, os.path.join(run, "checkpoint-1.ckpt"))
        rows = ckpt_ok(self, "list", run, "--json").json()
        self.assertEqual([(row["kind"], row["complete"]) for row in rows], [("archive", False)])


class RotateArchiveTest(Tmp):
    def test_archiving_progress_is_replaced_by_the_report(self):
        """On a terminal, archiving a 72 MiB checkpoint shows a progress line naming it; the report replaces it."""
        for term in ("xterm", "dumb"):
            with self.subTest(term=term):
                run = self.path("run-" + term)
                for step in (10, 20):
                    random_weights_checkpoint(os.path.join(run, "checkpoint-%d" % step), step, mib=72)
                status, output = run_on_terminal([harness.CKPT_BIN, "rotate", run, "--keep", "1", "--archive"], term)
                self.assertEqual(status, 0, output)
                self.assertIn("archiving checkpoint-10: ", output)
                self.assertEqual(("\x1b" in output), term != "dumb", repr(output[:300]))
                screen = terminal_screen(output)
                self.assertEqual(screen[0].split(), ["name", "action", "reason"], "\n".join(screen))
                self.assertFalse([line for line in screen if "archiving" in line or "%" in line], "\n".join(screen))

    def test_rotate_archives_then_deletes_and_bounds_the_archives(self):
        run = harness.copy_fixture_run(self.tmp)
        originals = {s: harness.tree_snapshot(os.path.join(run, "checkpoint-%d" % s)) for s in (10, 20, 30, 40)}
        # --archive without a value: RUN_DIR/archive.
        out = ckpt_ok(self, "rotate", run, "--keep", "1", "--archive", "--json").json()
        self.assertEqual(out["archived"], 3)
        self.assertEqual(out["removed"], 3)
        archived = {d["name"]: d["archived_to"] for d in out["decisions"] if d["action"] == "delete"}
        self.assertEqual(sorted(archived), ["checkpoint-10", "checkpoint-20", "checkpoint-30"])
        self.assertEqual(sorted(os.listdir(os.path.join(run, "archive"))), ["checkpoint-10.ckpt", "checkpoint-20.ckpt", "checkpoint-30.ckpt"])
        for s in (10, 20, 30):
            restored = self.path("r%d" % s)
            ckpt_ok(self, "convert", os.path.join(run, "archive", "checkpoint-%d.ckpt" % s), "--to", "dir", "-o", restored, "-q")
            self.assertEqual(harness.tree_snapshot(restored), originals[s])
        rows = ckpt_ok(self, "list", run, "--json").json()
        by_name = {r["name"]: r for r in rows}
        self.assertEqual(by_name["archive/checkpoint-20.ckpt"]["kind"], "archive")
        self.assertEqual(by_name["archive/checkpoint-20.ckpt"]["step"], 20)
        self.assertAlmostEqual(by_name["archive/checkpoint-20.ckpt"]["ratio"],
                               by_name["archive/checkpoint-20.ckpt"]["original_bytes"] / by_name["archive/checkpoint-20.ckpt"]["size_bytes"])
        self.assertEqual(by_name["archive/checkpoint-20.ckpt"]["metrics"]["eval_loss"],
                         by_name["archive/checkpoint-20.ckpt"]["metric"])
        text = ckpt_ok(self, "list", run).stdout
        self.assertRegex(text, r"archive/checkpoint-10\.ckpt\s+10 .* archived\s+\S+ KiB \(1\.\d\dx\)")
        # A second rotate archives nothing new; --keep-archives keeps the newest.
        out = ckpt_ok(self, "rotate", run, "--keep", "1", "--archive", "--keep-archives", "2", "--json").json()
        self.assertEqual((out["archived"], out["archives_removed"]), (0, 1))
        self.assertEqual(sorted(os.listdir(os.path.join(run, "archive"))), ["checkpoint-20.ckpt", "checkpoint-30.ckpt"])
        r = ckpt("rotate", run, "--keep", "1", "--keep-archives", "2")
        self.assertEqual(r.returncode, 2, r.describe())

    def test_custom_archive_directory_and_dry_run(self):
        run = harness.copy_fixture_run(self.tmp)
        before = harness.tree_snapshot(run)
        out = ckpt_ok(self, "rotate", run, "--keep", "2", "--archive-dir", "old", "--dry-run", "--json").json()
        self.assertEqual(harness.tree_snapshot(run), before)
        self.assertEqual([d["archived_to"] for d in out["decisions"] if d["action"] == "delete"],
                         [os.path.join(run, "old", "checkpoint-10.ckpt"), os.path.join(run, "old", "checkpoint-20.ckpt")])
        elsewhere = self.path("elsewhere")
        ckpt_ok(self, "rotate", run, "--keep", "2", "--archive-dir", elsewhere, "-q")
        self.assertEqual(sorted(os.listdir(elsewhere)), ["checkpoint-10.ckpt", "checkpoint-20.ckpt"])
        self.assertFalse(os.path.exists(os.path.join(run, "checkpoint-10")))

    def test_archive_is_a_flag_and_never_takes_the_run_directory(self):
        # `rotate --keep 1 --archive RUN` once read RUN as the archive directory and then found no RUN_DIR.
        run = harness.copy_fixture_run(self.tmp)
        out = ckpt_ok(self, "rotate", "--keep", "2", "--archive", run, "--json").json()
        self.assertEqual(sorted(os.listdir(os.path.join(run, "archive"))), ["checkpoint-10.ckpt", "checkpoint-20.ckpt"])
        self.assertEqual(out["run_dir"], run)
        # The old spelling still works, with a note; giving the directory twice is refused.
        r = ckpt_ok(self, "rotate", "--keep", "1", "--archive=" + self.path("old-spelling"), run)
        self.assertIn("--archive-dir", r.stderr, r.describe())
        self.assertEqual(os.listdir(self.path("old-spelling")), ["checkpoint-30.ckpt"])
        r = ckpt("rotate", "--keep", "1", "--archive=x", "--archive-dir", "y", run)
        self.assertEqual(r.returncode, 2, r.describe())

    def test_archive_directory_through_a_symlink_is_refused(self):
        # Another run's archives, reached through a symlinked RUN/archive: rotate neither deletes nor adds any.
        other = harness.copy_fixture_run(self.path("other"))
        ckpt_ok(self, "rotate", other, "--keep", "1", "--archive", "-q")
        self.assertEqual(len(os.listdir(os.path.join(other, "archive"))), 3)
        run = harness.copy_fixture_run(self.tmp)
        os.symlink(os.path.join(other, "archive"), os.path.join(run, "archive"))
        # Another user's symlink on the way to an explicit archive directory.
        foreign = self.path("foreign")
        os.symlink(other, foreign)
        os.lchown(foreign, 65534, 65534)
        before = harness.tree_snapshot(self.tmp)
        for archive in (["--archive"], ["--archive-dir", "archive"], ["--archive-dir", os.path.join(run, "archive")],
                        ["--archive-dir", os.path.join(foreign, "archive")]):
            with self.subTest(archive=archive):
                r = ckpt("rotate", run, "--keep", "1", *archive, "--keep-archives", "1")
                self.assertEqual(r.returncode, 2, r.describe())
                self.assertIn("symlink", r.stderr, r.describe())
                self.assertEqual(harness.tree_snapshot(self.tmp), before)
        # Through one's own symlink, as asked.
        real = self.path("mine")
        os.makedirs(real)
        os.symlink(real, self.path("link"))
        ckpt_ok(self, "rotate", run, "--keep", "1", "--archive-dir", self.path("link", "archive"), "--keep-archives", "1", "-q")
        self.assertEqual(sorted(os.listdir(os.path.join(real, "archive"))), ["checkpoint-30.ckpt"])
        self.assertEqual(len(os.listdir(os.path.join(other, "archive"))), 3)

    def test_best_points_at_an_archived_checkpoint(self):
        run = harness.copy_fixture_run(self.tmp)
        os.makedirs(os.path.join(run, "archive"))
        ckpt_ok(self, "convert", os.path.join(run, "checkpoint-10"), "--to", "archive", "-o",
                os.path.join(run, "archive", "checkpoint-10.ckpt"), "-q")
        shutil.rmtree(os.path.join(run, "checkpoint-10"))
        state_path = os.path.join(run, "checkpoint-40", "trainer_state.json")
        with open(state_path) as f:
            state = json.load(f)
        state["best_model_checkpoint"] = "/elsewhere/run/checkpoint-10"
        runs.write_json(state_path, state)
        best = ckpt_ok(self, "best", run, "--json").json()
        self.assertEqual((best["name"], best["archived"], best["step"]), ("archive/checkpoint-10.ckpt", True, 10))
        self.assertEqual(best["path"], os.path.join(run, "archive", "checkpoint-10.ckpt"))
        r = ckpt("best", run, "--export", self.path("export"))
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertIn("archived", r.stderr)
        ckpt_ok(self, "best", run, "--link", "best")
        self.assertEqual(os.readlink(os.path.join(run, "best")), "archive/checkpoint-10.ckpt")
        # The best being archived, --keep 1 keeps one live checkpoint, as with no best (not two).
        out = ckpt_ok(self, "rotate", run, "--keep", "1", "--dry-run", "--json").json()
        self.assertEqual([d["name"] for d in out["decisions"] if d["kind"] == "checkpoint" and d["action"] == "keep"], ["checkpoint-40"])
        # Recomputing by a metric considers archives too: the highest eval_loss was logged at step 10.
        best = ckpt_ok(self, "best", run, "--metric", "loss", "--mode", "max", "--json").json()
        self.assertEqual(best["name"], "archive/checkpoint-10.ckpt")
        rows = ckpt_ok(self, "list", run, "--json").json()
        self.assertEqual([r["name"] for r in rows if r["is_best"]], ["archive/checkpoint-10.ckpt"])
        # Rotation never deletes the archive of the best.
        ckpt_ok(self, "convert", os.path.join(run, "checkpoint-20"), "--to", "archive", "-o",
                os.path.join(run, "archive", "checkpoint-20.ckpt"), "-q")
        ckpt_ok(self, "rotate", run, "--keep", "1", "--archive", "--keep-archives", "1", "-q")
        self.assertIn("checkpoint-10.ckpt", os.listdir(os.path.join(run, "archive")))

    def test_abandoned_temporaries_are_cleared(self):
        run = harness.copy_fixture_run(self.tmp)
        archive_dir = os.path.join(run, "archive")
        os.makedirs(archive_dir)
        p = subprocess.Popen(["true"])
        p.wait()
        dead = os.path.join(archive_dir, ".checkpoint-10.ckpt.tmp-%d-1-0" % p.pid)
        alive = os.path.join(archive_dir, ".checkpoint-20.ckpt.tmp-%d-1-0" % os.getpid())
        for path in (dead, alive):
            with open(path, "wb") as f:
                f.write(b"half")
            os.utime(path, (time.time() - 120, time.time() - 120))  # quiet for two minutes
        # Quiet for only a few seconds: it may be a writer on another host sharing the directory.
        recent = os.path.join(archive_dir, ".checkpoint-30.ckpt.tmp-%d-2-0" % p.pid)
        with open(recent, "wb") as f:
            f.write(b"half")
        out = ckpt_ok(self, "rotate", run, "--keep", "4", "--archive", "--json").json()
        self.assertEqual(out["temporaries_cleared"], 1)
        self.assertFalse(os.path.exists(dead))
        self.assertTrue(os.path.exists(alive))
        self.assertTrue(os.path.exists(recent))

    def test_an_archive_already_there_counts_only_if_it_holds_the_same_bytes(self):
        run = harness.copy_fixture_run(self.tmp)
        original = harness.tree_snapshot(os.path.join(run, "checkpoint-10"))
        # An archive of another checkpoint-10 with files of the same sizes (a restarted run, a shared directory).
        other = self.path("other", "checkpoint-10")
        shutil.copytree(os.path.join(run, "checkpoint-10"), other)
        with open(os.path.join(other, "config.json"), "r+b") as f:
            first = f.read(1)
            f.seek(0)
            f.write(b" " if first != b" " else b"\n")
        os.makedirs(os.path.join(run, "archive"))
        ckpt_ok(self, "convert", other, "--to", "archive", "-o", os.path.join(run, "archive", "checkpoint-10.ckpt"), "-q")
        out = ckpt_ok(self, "rotate", run, "--keep", "3", "--archive", "--json").json()
        self.assertEqual(out["archived"], 1)
        restored = self.path("restored")
        ckpt_ok(self, "convert", os.path.join(run, "archive", "checkpoint-10.ckpt"), "--to", "dir", "-o", restored, "-q")
        self.assertEqual(harness.tree_snapshot(restored), original)
        # The same archive again is recognised (every sha256 checked) and not written twice.
        ckpt_ok(self, "convert", restored, "--to", "archive", "-o", self.path("again.ckpt"), "-q")
        run2 = harness.copy_fixture_run(self.path("second"))
        os.makedirs(os.path.join(run2, "archive"))
        shutil.copy(self.path("again.ckpt"), os.path.join(run2, "archive", "checkpoint-10.ckpt"))
        out = ckpt_ok(self, "rotate", run2, "--keep", "3", "--archive", "--json").json()
        self.assertEqual((out["archived"], out["removed"]), (0, 1))

    def test_sigkill_at_random_moments_never_loses_a_checkpoint(self):
        """SIGKILL `rotate --keep 1 --archive` on 6 checkpoints of 8 MiB at seeded moments over its whole duration.
        After each kill every checkpoint exists live and complete, or as an archive that verifies, or both; a
        second rotate a minute later finishes the job and leaves no temporary file."""
        rng = random.Random(11)
        steps = [10, 20, 30, 40, 50, 60]

        def build(where):
            run = self.path(where)
            for s in steps:
                random_weights_checkpoint(os.path.join(run, "checkpoint-%d" % s), s, mib=8)
            return run

        ref = build("ref")
        digests = {s: harness.tree_snapshot(os.path.join(ref, "checkpoint-%d" % s)) for s in steps}
        t0 = time.monotonic()
        ckpt_ok(self, "rotate", ref, "--keep", "1", "--archive", "-q", timeout=300)
        full = time.monotonic() - t0
        shutil.rmtree(ref)
        problems = []
        outcomes = {"nothing archived": 0, "mid-way": 0, "done": 0}
        for trial in range(16):
            run = build("run-%d" % trial)
            delay = rng.uniform(0, 1.1 * full)
            p = subprocess.Popen([harness.CKPT_BIN, "rotate", run, "--keep", "1", "--archive", "-q"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait()
            label = "trial %d (SIGKILL after %.0f ms)" % (trial, delay * 1000)
            archive_dir = os.path.join(run, "archive")
            archives = [n for n in os.listdir(archive_dir) if not n.startswith(".")] if os.path.isdir(archive_dir) else []
            live = [s for s in steps if os.path.isdir(os.path.join(run, "checkpoint-%d" % s))]
            outcomes["nothing archived" if not archives else "done" if live == [60] else "mid-way"] += 1
            for s in steps:
                a = os.path.join(archive_dir, "checkpoint-%d.ckpt" % s)
                if s in live:
                    if harness.tree_snapshot(os.path.join(run, "checkpoint-%d" % s)) != digests[s]:
                        problems.append("%s: checkpoint-%d changed" % (label, s))
                elif os.path.exists(a):
                    restored = self.path("check")
                    r = ckpt("convert", a, "--to", "dir", "-o", restored)
                    if r.returncode != 0 or harness.tree_snapshot(restored) != digests[s]:
                        problems.append("%s: the archive of checkpoint-%d does not restore it: %s" % (label, s, r.describe()))
                    shutil.rmtree(restored, ignore_errors=True)
                else:
                    problems.append("%s: checkpoint-%d is neither live nor archived" % (label, s))
            # A minute later (temporaries are cleared once quiet for a minute: a writer on another host may share
            # the directory), the next rotate finishes the job.
            for n in os.listdir(archive_dir) if os.path.isdir(archive_dir) else []:
                if ".tmp-" in n:
                    os.utime(os.path.join(archive_dir, n), (time.time() - 120, time.time() - 120))
            r = ckpt("rotate", run, "--keep", "1", "--archive", "-q", timeout=300)
            if r.returncode != 0:
                problems.append(label + ": second rotate failed: " + r.describe())
            if runs.entries(run) != ["archive", "checkpoint-60"] or sorted(os.listdir(archive_dir)) != [
                    "checkpoint-%d.ckpt" % s for s in steps[:-1]]:
                problems.append("%s: after a second rotate: %s, archive/ %s" % (label, runs.entries(run), sorted(os.listdir(archive_dir))))
            shutil.rmtree(run)
        if problems:
            self.fail("\n".join(problems))
        print("\n  sigkill outcomes (rotation %.0f ms): %r" % (full * 1000, outcomes), end=" ")
        self.assertGreater(outcomes["mid-way"] + outcomes["nothing archived"], 0)


class ResumeTest(Tmp):
    def test_resume_from_an_archive_is_bit_exact(self):
        full = self.path("full")
        self.train(full, "--max-steps", "60", "--save-steps", "20")
        run = self.path("run")
        shutil.copytree(full, run)
        shutil.rmtree(os.path.join(run, "checkpoint-60"))
        shutil.rmtree(os.path.join(run, "checkpoint-40"))
        ckpt_ok(self, "rotate", run, "--keep", "1", "--archive", "--dry-run", "-q")
        os.makedirs(os.path.join(run, "archive"))
        ckpt_ok(self, "convert", os.path.join(run, "checkpoint-20"), "--to", "archive", "-o",
                os.path.join(run, "archive", "checkpoint-20.ckpt"), "-q")
        shutil.copy(os.path.join(run, "archive", "checkpoint-20.ckpt"), self.path("elsewhere.ckpt"))
        shutil.rmtree(os.path.join(run, "checkpoint-20"))
        # By name (the archive of a rotated checkpoint), then by path.
        for source, where in (("checkpoint-20", os.path.join(run, "archive", "checkpoint-20.ckpt")),
                              (self.path("elsewhere.ckpt"), self.path("elsewhere.ckpt"))):
            out = ckpt_ok(self, "resume", run, "--from", source, "--json", timeout=300).json()
            self.assertEqual(out["resumed_from"], where)
            for f in ("model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt"):
                self.assertTrue(filecmp.cmp(os.path.join(full, "checkpoint-60", f), os.path.join(run, "checkpoint-60", f), shallow=False), f)
            self.assertEqual([n for n in os.listdir(run) if n.startswith(".ckpt-staging")], [])
            shutil.rmtree(os.path.join(run, "checkpoint-40"))
            shutil.rmtree(os.path.join(run, "checkpoint-60"))
        r = ckpt("resume", run, "--from", self.path("missing.ckpt"))
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertIn("no such checkpoint directory or archive", r.stderr)
        # An archive of a checkpoint that cannot be resumed: the error names the archive; no restored copy is left.
        broken = self.path("broken", "checkpoint-20")
        shutil.copytree(os.path.join(full, "checkpoint-20"), broken)
        os.remove(os.path.join(broken, "optimizer.pt"))
        ckpt_ok(self, "convert", broken, "--to", "archive", "-o", os.path.join(run, "checkpoint-20.ckpt"), "-q")
        os.remove(os.path.join(run, "archive", "checkpoint-20.ckpt"))
        r = ckpt("resume", run, "--from", "checkpoint-20", timeout=300)
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("optimizer.pt", r.stderr)
        self.assertIn("(restored from %s)" % os.path.join(run, "checkpoint-20.ckpt"), r.stderr)
        self.assertEqual(sorted(n for n in os.listdir(run) if n.startswith(".")), [".ckpt.lock", ".ckpt.train.lock"])


if __name__ == "__main__":
    unittest.main()
