"""Fault injection: one file operation of `ckpt convert`, `ckpt save`/`resume` or `ckpt rotate` fails (EIO, or a
legal short write) through an LD_PRELOAD shim (fault_shim.cpp). After a failure: exit 1, one `ckpt: error:` line
naming the file and the cause, no partial destination, nothing older touched, no temporary left. After a short
write: the same bytes as without it.
"""

import errno
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import harness  # noqa: E402
from harness import sha256_file as sha, tree_snapshot as tree  # noqa: E402
from manage import runs  # noqa: E402

SHIM = os.environ.get("CKPT_FAULT_SHIM") or os.path.join(harness.REPO, "build", "tests", "libckpt_fault_shim.so")
EIO = str(errno.EIO)


def run(args, fault=None, match=None, command=None):
    env = harness.environment()
    if command:
        env["CKPT_FAULT_RUN"] = command
    if fault:
        env["LD_PRELOAD"] = SHIM
        env["CKPT_FAULT"] = fault
        env["CKPT_FAULT_MATCH"] = match or ""
        # The shim is not instrumented; under ASan it comes first in the library list by design.
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    return harness.ckpt(*args, env=env, timeout=300)


def hidden(path):
    return sorted(n for n in os.listdir(path) if n.startswith(".") and not n.endswith(".lock"))


class FaultTest(harness.TempDirTest):
    TEMP_PREFIX = "ckpt-fault-"

    def setUp(self):
        super().setUp()
        self.assertTrue(os.path.exists(SHIM), SHIM)


class Convert(FaultTest):
    def setUp(self):
        super().setUp()
        self.src = self.path("pytorch_model.bin")
        torch.manual_seed(0)
        torch.save({"w%d" % i: torch.randn(300, 1000) for i in range(8)}, self.src)  # 9.6 MB: several direct writes

    def test_each_failing_operation(self):
        reference = self.path("reference.safetensors")
        self.assertEqual(run(["convert", self.src, "--to", "safetensors", "-o", reference]).returncode, 0)
        # Outputs are written with direct I/O: pwrite, then fsync, then rename.
        for fault, action in (("pwrite:1:" + EIO, "write"), ("pwrite:2:" + EIO, "write"), ("fsync:1:" + EIO, "fsync"),
                              ("rename:1:" + EIO, "rename")):
            for target, name in (("safetensors", "out.safetensors"), ("pytorch", "out.bin")):
                dst = self.path(name)
                r = run(["convert", self.src, "--to", target, "-o", dst], fault, match=self.tmp)
                self.assertEqual(r.returncode, 1, (fault, target, r.stderr))
                self.assertRegex(r.stderr, r"^ckpt: error: [^\n]*%s[^\n]*: Input/output error\n$" % action, (fault, target))
                self.assertIn(dst, r.stderr)
                self.assertFalse(os.path.exists(dst), (fault, target))
                self.assertEqual(hidden(self.tmp), [], (fault, target))
        # A short write is legal: the output is the same.
        for fault in ("pwrite:1:short", "pwrite:3:short"):
            dst = self.path("short.safetensors")
            r = run(["convert", self.src, "--to", "safetensors", "-o", dst, "--force"], fault, match=self.tmp)
            self.assertEqual(r.returncode, 0, (fault, r.stderr))
            self.assertEqual(sha(dst), sha(reference), fault)


class Archive(FaultTest):
    def setUp(self):
        super().setUp()
        self.src = self.path("checkpoint-5")
        os.makedirs(self.src)
        torch.manual_seed(0)
        # 14 MB: its archive is written in two direct writes.
        torch.save({"w%d" % i: torch.randn(300, 1000) for i in range(12)}, os.path.join(self.src, "pytorch_model.bin"))
        with open(os.path.join(self.src, "config.json"), "w") as f:
            f.write('{"model_type": "tiny"}')
        self.reference = self.path("reference.ckpt")
        self.assertEqual(run(["convert", self.src, "--to", "archive", "-o", self.reference]).returncode, 0)
        self.before = tree(self.src)

    def test_archive_each_failing_operation(self):
        dst = self.path("out.ckpt")
        for fault, action in (("pwrite:1:" + EIO, "write"), ("pwrite:2:" + EIO, "write"), ("fsync:1:" + EIO, "fsync"),
                              ("rename:1:" + EIO, "rename")):
            r = run(["convert", self.src, "--to", "archive", "-o", dst], fault, match="out.ckpt")
            self.assertEqual(r.returncode, 1, (fault, r.stderr))
            self.assertRegex(r.stderr, r"^ckpt: error: [^\n]*out\.ckpt[^\n]*%s[^\n]*: Input/output error\n$" % action, fault)
            self.assertFalse(os.path.exists(dst), fault)
            self.assertEqual(hidden(self.tmp), [], fault)
            self.assertEqual(tree(self.src), self.before, fault)
        for fault in ("pwrite:1:short", "pwrite:2:short"):
            r = run(["convert", self.src, "--to", "archive", "-o", dst, "--force"], fault, match="out.ckpt")
            self.assertEqual(r.returncode, 0, (fault, r.stderr))
            self.assertEqual(sha(dst), sha(self.reference), fault)

    def test_restore_each_failing_operation(self):
        dst = self.path("restored")
        for fault in ("pwrite:1:" + EIO, "fsync:1:" + EIO, "fsync:2:" + EIO, "rename:1:" + EIO, "rename:3:" + EIO):
            r = run(["convert", self.reference, "--to", "dir", "-o", dst], fault, match=self.tmp)
            self.assertEqual(r.returncode, 1, (fault, r.stderr))
            self.assertRegex(r.stderr, r"^ckpt: error: [^\n]*restored[^\n]*: Input/output error\n$", fault)
            self.assertFalse(os.path.exists(dst), fault)
            self.assertEqual(hidden(self.tmp), [], fault)
        r = run(["convert", self.reference, "--to", "dir", "-o", dst], "pwrite:1:short", match=self.tmp)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(tree(dst), self.before)

    def test_rotate_keeps_a_checkpoint_whose_archive_failed(self):
        run_dir = self.path("run")
        r = run(["save", "--output-dir", run_dir, "-q", "--max-steps", "30", "--save-steps", "10"])
        self.assertEqual(r.returncode, 0, r.stderr)
        before = {c: tree(os.path.join(run_dir, c)) for c in os.listdir(run_dir) if c.startswith("checkpoint-")}
        # The first archive (checkpoint-10's) fails; rotate still archives and deletes checkpoint-20, then reports.
        for fault in ("pwrite:1:" + EIO, "fsync:1:" + EIO, "rename:1:" + EIO):
            r = run(["rotate", run_dir, "--keep", "1", "--archive"], fault, match="archive")
            self.assertEqual(r.returncode, 1, (fault, r.stderr))
            self.assertRegex(r.stderr, r"^ckpt: error: .*checkpoint-10\.ckpt.*: Input/output error\n$", fault)
            after = {c: tree(os.path.join(run_dir, c)) for c in os.listdir(run_dir) if c.startswith("checkpoint-")}
            self.assertEqual(after, {c: before[c] for c in ("checkpoint-10", "checkpoint-30")}, fault)
            self.assertEqual(os.listdir(os.path.join(run_dir, "archive")), ["checkpoint-20.ckpt"], fault)
        self.assertEqual(run(["rotate", run_dir, "--keep", "1", "--archive", "-q"]).returncode, 0)
        self.assertEqual(sorted(os.listdir(os.path.join(run_dir, "archive"))), ["checkpoint-10.ckpt", "checkpoint-20.ckpt"])


class Trainer(FaultTest):
    FLAGS = ["--max-steps", "40", "--save-steps", "20", "--hidden-size", "512"]

    def setUp(self):
        super().setUp()
        self.run_dir = self.path("run")
        r = run(["save", "--output-dir", self.run_dir, "-q", "--max-steps", "20", "--save-steps", "20", "--hidden-size", "512"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.reference = self.path("reference")
        shutil.copytree(self.run_dir, self.reference)
        self.assertEqual(run(["resume", self.reference, "-q", "--max-steps", "40"]).returncode, 0)
        self.before = tree(os.path.join(self.run_dir, "checkpoint-20"))

    def test_each_failing_operation(self):
        for fault in ("pwrite:1:" + EIO, "pwrite:3:" + EIO, "write:1:" + EIO, "fsync:1:" + EIO, "fsync:4:" + EIO, "rename:1:" + EIO):
            r = run(["resume", self.run_dir, "--max-steps", "40"], fault, match="checkpoint-40")
            self.assertEqual(r.returncode, 1, (fault, r.stderr))
            self.assertRegex(r.stderr, r"^ckpt: error: .*checkpoint-40.*: Input/output error\n$", fault)
            self.assertEqual(sorted(d for d in os.listdir(self.run_dir) if d.startswith("checkpoint-")), ["checkpoint-20"], fault)
            self.assertEqual(tree(os.path.join(self.run_dir, "checkpoint-20")), self.before, fault)
            self.assertEqual(hidden(self.run_dir), [], fault)

    def test_checkpoint_cut_while_resume_reads_it(self):
        # The shim cuts the file to 4 KiB once the trainer maps it: reported as that, not as the corruption it
        # causes. (The weights are first mapped by the binary, choosing the checkpoint, which reads only their header.)
        for i, name in enumerate(("optimizer.pt", "scheduler.pt", "rng_state.pth")):
            run_dir = self.path("cut-%d" % i)
            shutil.copytree(self.run_dir, run_dir)
            r = run(["resume", run_dir, "--max-steps", "40", "-q"], "mmap:1:truncate", match="/" + name)
            self.assertEqual(r.returncode, 1, (name, r.stderr))
            self.assertRegex(r.stderr, r"^ckpt: error: [^\n]*%s(: byte \d+)?: the file shrank while being read[^\n]*\n$" % name)
            self.assertEqual(sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint-")), ["checkpoint-20"], name)

    def test_short_writes_change_nothing(self):
        for fault in ("pwrite:1:short", "pwrite:2:short"):
            r = run(["resume", self.run_dir, "--max-steps", "40", "-q"], fault, match="checkpoint-40")
            self.assertEqual(r.returncode, 0, (fault, r.stderr))
            got, expected = tree(os.path.join(self.run_dir, "checkpoint-40")), tree(os.path.join(self.reference, "checkpoint-40"))
            for state in (got, expected):
                del state["trainer_state.json"]  # holds eval_runtime, different in every run
                del state["training_args.bin"]  # holds output_dir, another directory here
            self.assertEqual(got, expected, fault)
            shutil.rmtree(os.path.join(self.run_dir, "checkpoint-40"))


class Rotate(FaultTest):
    def test_one_checkpoint_that_cannot_be_deleted_stops_nothing_else(self):
        run_dir = self.path("run")
        r = run(["save", "--output-dir", run_dir, "-q", "--max-steps", "40", "--save-steps", "10"])
        self.assertEqual(r.returncode, 0, r.stderr)
        before = {c: tree(os.path.join(run_dir, c)) for c in os.listdir(run_dir) if c.startswith("checkpoint-")}
        # The second victim (checkpoint-20) cannot be moved to the trash (as an immutable directory could not).
        r = run(["rotate", run_dir, "--keep", "1"], "rename:2:" + EIO, match=".ckpt-trash-")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"^ckpt: error: .*checkpoint-20: cannot delete: moving it to the trash: Input/output error\n$")
        self.assertEqual(sorted(c for c in os.listdir(run_dir) if c.startswith("checkpoint-")), ["checkpoint-20", "checkpoint-40"])
        for c in ("checkpoint-20", "checkpoint-40"):
            self.assertEqual(tree(os.path.join(run_dir, c)), before[c], c)
        self.assertEqual(hidden(run_dir), [])
        self.assertEqual(run(["rotate", run_dir, "--keep", "1"]).returncode, 0)
        self.assertEqual(sorted(c for c in os.listdir(run_dir) if c.startswith("checkpoint-")), ["checkpoint-40"])


class Tag(FaultTest):
    """tag hard-links a checkpoint's files into its staging directory. Where a link cannot be made (another file
    system, one without hard links, the link count at its limit) it copies; any other failure fails the tag, which
    leaves nothing behind."""

    def test_a_link_that_cannot_be_made_is_a_copy_and_any_other_failure_an_error(self):
        run_dir = self.path("run")
        runs.make_run(run_dir, [10])
        source = os.path.join(run_dir, "checkpoint-10")
        before = tree(source)
        for error in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            name = "copy-%s" % errno.errorcode[error]
            r = run(["tag", "--json", run_dir, "checkpoint-10", name], "link:2:%d" % error)
            self.assertEqual(r.returncode, 0, r.stderr)
            doc = json.loads(r.stdout)
            self.assertEqual((doc["files"], doc["hard_linked"]), (len(before), len(before) - 1), name)
            self.assertEqual(tree(os.path.join(run_dir, name)), before, name)
            inodes = {f: os.stat(os.path.join(run_dir, name, f)).st_ino == os.stat(os.path.join(source, f)).st_ino for f in before}
            self.assertEqual(sorted(inodes.values()), [False] + [True] * (len(before) - 1), name)
        for error in (errno.EIO, errno.ENOSPC):
            r = run(["tag", run_dir, "checkpoint-10", "failed"], "link:2:%d" % error)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertRegex(r.stderr, r"^ckpt: error: %s/failed/[^/:]+: cannot create: %s\n$" % (run_dir, os.strerror(error)))
            self.assertFalse(os.path.exists(os.path.join(run_dir, "failed")))
            self.assertEqual(hidden(run_dir), [])
        self.assertEqual(tree(source), before)


class SaveNameTakenMeanwhile(FaultTest):
    """resume --save-name NAME where NAME appears while the run trains (the shim makes it when the trainer first maps
    the checkpoint's weights, after the name was checked): the run ends with its checkpoint saved, exit 1 naming why
    it is not named and how to name it."""

    def test_the_run_is_saved_and_the_failure_reported(self):
        run_dir = self.path("run")
        r = run(["save", "--output-dir", run_dir, "-q", "--max-steps", "20", "--save-steps", "20"])
        self.assertEqual(r.returncode, 0, r.stderr)
        final = os.path.join(run_dir, "final")
        for output, start, steps in (("text", 20, "30"), ("--json", 30, "40")):
            with self.subTest(output=output):
                args = ["resume", run_dir, "--max-steps", steps, "--save-steps", "20", "--save-name", "final"]
                r = run(args + (["--json"] if output == "--json" else []), "mmap:1:run", match="checkpoint-%d/model.safetensors" % start,
                        command="mkdir " + shlex.quote(final))
                self.addCleanup(shutil.rmtree, final, True)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertEqual(r.stderr, "ckpt: error: %s: --save-name: already exists (a directory); training finished and its last "
                                           "checkpoint is saved, but not named; `ckpt tag %s checkpoint-%s NAME` names it\n"
                                 % (final, run_dir, steps))
                if output == "text":
                    self.assertIn("\ntrained %s at step 30/30 " % run_dir, r.stdout)
                    self.assertNotIn("tagged", r.stdout)
                else:
                    self.assertEqual(json.loads(r.stdout)["error"]["kind"], "io")
                self.assertTrue(os.path.isdir(os.path.join(run_dir, "checkpoint-" + steps)))
                self.assertEqual(os.listdir(final), [])
                os.rmdir(final)  # for the next subtest


class InspectWhileRotating(FaultTest):
    """`inspect --verify RUN` while a rotate deletes checkpoints it has listed (the shim runs the rotate when inspect
    maps checkpoint-10's weights, so the moment is the same every time): those are reported gone, not corrupt."""

    def test_checkpoints_rotated_away_are_gone_not_corrupt(self):
        for output in ("--json", "text"):
            with self.subTest(output=output):
                run_dir = self.path("run" + output)
                runs.make_run(run_dir, [10, 20, 30])
                rotate = " ".join(shlex.quote(a) for a in (harness.CKPT_BIN, "rotate", run_dir, "--keep", "1", "-q"))
                args = ["inspect", "--verify", run_dir] + (["--json"] if output == "--json" else [])
                r = run(args, "mmap:1:run", match="checkpoint-10/", command=rotate)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertEqual(sorted(os.listdir(run_dir)), [".ckpt.lock", "checkpoint-30"], "the rotate did not run")
                if output == "--json":
                    doc = json.loads(r.stdout)
                    self.assertTrue(doc["ok"])
                    rows = {row["name"]: row for row in doc["checkpoints"]}
                    for gone in ("checkpoint-10", "checkpoint-20"):
                        self.assertEqual(rows[gone]["verify"]["errors"], [], r.stdout)
                        self.assertTrue(rows[gone]["verify"]["gone"], r.stdout)
                    self.assertEqual(rows["checkpoint-30"]["verify"], {"ok": True, "errors": []}, r.stdout)
                else:
                    self.assertRegex(r.stdout, r"verify checkpoint-10: gone")
                    self.assertRegex(r.stdout, r"verify checkpoint-20: gone")
                    self.assertRegex(r.stdout, r"verify checkpoint-30: ok")
                    self.assertIn("verify: ok", r.stdout)
                self.assertEqual(r.stderr, "")


class Export(FaultTest):
    """`best --export` killed at each of its renames: the destination is the old export or the new one, and a
    sharded index is never visible without its shards."""

    def setUp(self):
        super().setUp()
        self.run_dir = self.path("run")
        r = run(["save", "--output-dir", self.run_dir, "-q", "--max-steps", "20", "--save-steps", "10", "--eval-steps",
                 "10", "--max-shard-size", "10KB"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.trees = {c: {n: h for n, h in tree(os.path.join(self.run_dir, c)).items()
                          if n.startswith("model") or n.endswith("config.json")} for c in ("checkpoint-10", "checkpoint-20")}
        self.assertGreater(len(self.trees["checkpoint-10"]), 3, self.trees)  # an index, two shards or more, config

    def export(self, dst, mode, fault=None):
        # --mode max and min pick the two checkpoints (eval_loss differs between them).
        return run(["best", self.run_dir, "--mode", mode, "--export", dst], fault, match=os.path.basename(dst))

    @staticmethod
    def visible(path):  # a killed export's temporaries are hidden, and cleared by the next export once stale
        return {n: h for n, h in tree(path).items() if not n.startswith(".")}

    def kills(self):
        for n in range(1, len(self.trees["checkpoint-10"]) + 4):  # every file, the exchange, and one past
            yield n, "rename:%d:kill" % n

    def test_new_destination_appears_whole(self):
        dst = self.path("exported")
        for n, fault in self.kills():
            r = self.export(dst, "min", fault)
            if os.path.exists(dst):
                self.assertIn(self.visible(dst), self.trees.values(), (n, r.stderr))
                shutil.rmtree(dst)
            else:
                self.assertEqual(r.returncode, -9, (n, r.stderr))

    def test_earlier_export_is_replaced_whole(self):
        dst = self.path("exported")
        self.assertEqual(self.export(dst, "max").returncode, 0)
        first = self.visible(dst)
        for n, fault in self.kills():
            r = self.export(dst, "min", fault)
            self.assertIn(r.returncode, (0, -9), (n, r.stderr))
            self.assertIn(self.visible(dst), [first, *self.trees.values()], n)
            self.assertEqual(self.export(dst, "max").returncode, 0)

    def test_index_never_names_a_missing_shard(self):
        dst = self.path("elsewhere")
        for n, fault in self.kills():
            os.makedirs(dst)
            with open(os.path.join(dst, "notes.txt"), "w") as f:
                f.write("not an export")
            r = self.export(dst, "min", fault)
            self.assertIn(r.returncode, (0, -9), (n, r.stderr))
            index = os.path.join(dst, "model.safetensors.index.json")
            if os.path.exists(index):
                with open(index) as f:
                    shards = set(json.load(f)["weight_map"].values())
                self.assertTrue(all(os.path.exists(os.path.join(dst, s)) for s in shards), (n, os.listdir(dst)))
            shutil.rmtree(dst)


class ShrinkingInput(FaultTest):
    """An input rewritten in place while ckpt reads it (the shim cuts it to 4 KiB as soon as it is mapped): no
    crash (SIGBUS), one `ckpt: error:` naming the file, exit 1, nothing written."""

    def setUp(self):
        super().setUp()
        self.src = self.path("model.safetensors")
        torch.manual_seed(0)
        tensors = {"w%d" % i: torch.randn(256, 1024) for i in range(4)}
        r = run(["convert", self.write_bin(tensors), "--to", "safetensors", "-o", self.src])
        self.assertEqual(r.returncode, 0, r.stderr)

    def write_bin(self, tensors):
        path = self.path("pytorch_model.bin")
        torch.save(tensors, path)
        return path

    def check_reported(self, r):
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"^ckpt: error: [^\n]*\.safetensors(: byte \d+)?: the file shrank while being read[^\n]*\n$")

    def test_inspect_verify(self):
        self.check_reported(run(["inspect", "--verify", self.src], "mmap:1:truncate", match="model.safetensors"))

    def test_convert(self):
        checkpoint = self.path("checkpoint-5")
        os.makedirs(checkpoint)
        pristine = self.path("pristine")
        shutil.copy(self.src, pristine)
        for args, name in (([self.src, "--to", "pytorch"], "out.bin"), ([self.src, "--to", "safetensors", "--dtype", "bf16"], "out.safetensors"),
                           ([checkpoint, "--to", "archive"], "out.ckpt"), ([checkpoint, "--to", "pytorch"], "out")):
            for copy in (self.src, os.path.join(checkpoint, "model.safetensors")):  # each run cuts its input
                shutil.copy(pristine, copy)
            r = run(["convert", *args, "-o", self.path(name)], "mmap:1:truncate", match="model.safetensors")
            self.check_reported(r)
            self.assertFalse(os.path.exists(self.path(name)), args)
            self.assertEqual(hidden(self.tmp), [], args)


def make_checkpoint(path, megabytes):
    os.makedirs(path)
    torch.manual_seed(0)
    n = megabytes * 1000 * 1000 // (4 * 250000)
    torch.save({"w%d" % i: torch.randn(250, 1000) for i in range(n)}, os.path.join(path, "pytorch_model.bin"))
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write('{"model_type": "tiny"}')
    with open(os.path.join(path, "trainer_state.json"), "w") as f:
        f.write('{"global_step": 5, "log_history": []}')


class FullDisk(FaultTest):
    """A real full disk: a small tmpfs the test mounts (CI runs as root)."""

    def mount(self, size):
        mount = self.path("mnt")
        os.makedirs(mount)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", mount]).returncode != 0:
            self.fail("mounting a tmpfs needs root (the CI runs as root)")
        self.addCleanup(subprocess.run, ["umount", mount])
        return mount

    def test_convert_into_a_full_disk(self):
        src = self.path("checkpoint-5")
        make_checkpoint(src, 4)
        before = tree(src)
        mount = self.mount("1m")
        for args, dst in ((["--to", "safetensors"], os.path.join(mount, "out")),
                          (["--to", "pytorch"], os.path.join(mount, "out")),
                          (["--to", "archive"], os.path.join(mount, "out.ckpt"))):
            r = run(["convert", src, "-o", dst] + args)
            self.assertEqual(r.returncode, 1, (args, r.stderr))
            self.assertRegex(r.stderr, r"^ckpt: error: %s/[^\n]*No space left on device\n$" % mount, args)
            self.assertEqual(os.listdir(mount), [], args)  # no partial destination, no temporary
        r = run(["convert", os.path.join(src, "pytorch_model.bin"), "--to", "safetensors", "-o", os.path.join(mount, "w.safetensors")])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("No space left on device", r.stderr)
        self.assertEqual(os.listdir(mount), [])
        self.assertEqual(tree(src), before)

    def test_rotate_archive_into_a_full_disk(self):
        run_dir = self.path("run")
        r = run(["save", "--output-dir", run_dir, "-q", "--max-steps", "40", "--save-steps", "10", "--hidden-size", "256"])
        self.assertEqual(r.returncode, 0, r.stderr)
        before = {c: tree(os.path.join(run_dir, c)) for c in os.listdir(run_dir) if c.startswith("checkpoint-")}
        mount = self.mount("300k")  # room for one archive of the four, not two
        r = run(["rotate", run_dir, "--keep", "1", "--archive-dir", mount, "--json"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"^ckpt: error: %s/checkpoint-\d+\.ckpt[^\n]*No space left on device\n$" % mount)
        archived = sorted(f for f in os.listdir(mount))
        self.assertTrue(all(f.startswith("checkpoint-") and f.endswith(".ckpt") for f in archived), archived)  # no temporary
        for c, files in before.items():
            if c + ".ckpt" in archived:
                self.assertFalse(os.path.exists(os.path.join(run_dir, c)), c)
                restored = self.path("restored-" + c)
                self.assertEqual(run(["convert", os.path.join(mount, c + ".ckpt"), "--to", "dir", "-o", restored]).returncode, 0)
                self.assertEqual(tree(restored), files, c)
            else:
                self.assertEqual(tree(os.path.join(run_dir, c)), files, c)  # kept whole: its archive failed
        self.assertEqual(hidden(run_dir), [])


class Kills(FaultTest):
    """SIGKILL of convert at seeded random moments: the destination is complete or absent, and what the killed
    process left is cleared by the next convert to the same destination once it is stale."""

    def kill_at_random_moments(self, args, dst, trials):
        reference = self.path("reference")
        started = time.monotonic()
        self.assertEqual(run(["convert"] + args + ["-o", reference]).returncode, 0)
        duration = time.monotonic() - started
        expected = tree(reference) if os.path.isdir(reference) else sha(reference)
        rng = random.Random(11)
        outcomes = {"absent": 0, "complete": 0}
        for trial in range(trials):
            p = subprocess.Popen([harness.CKPT_BIN, "convert"] + args + ["-o", dst], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0, duration * 1.2))
            p.kill()
            p.wait()
            label = "trial %d" % trial
            if os.path.exists(dst):
                self.assertEqual(tree(dst) if os.path.isdir(dst) else sha(dst), expected, label)
                outcomes["complete"] += 1
                shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
            else:
                outcomes["absent"] += 1
            # Leftovers look stale a minute later; the next convert to the same destination clears them.
            old = time.time() - 120
            for name in hidden(self.tmp):
                self.assertTrue(name.startswith("." + os.path.basename(dst) + ".tmp-"), (label, name))
                os.utime(self.path(name), (old, old), follow_symlinks=False)
            r = run(["convert"] + args + ["-o", dst])
            self.assertEqual(r.returncode, 0, (label, r.stderr))
            self.assertEqual(hidden(self.tmp), [], label)
            shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
        self.assertGreater(outcomes["absent"], 0, outcomes)

    def test_directory_convert(self):
        src = self.path("checkpoint-5")
        make_checkpoint(src, 24)
        self.kill_at_random_moments([src, "--to", "safetensors"], self.path("out"), 20)

    def test_file_convert(self):
        src = self.path("checkpoint-5")
        make_checkpoint(src, 24)
        self.kill_at_random_moments([os.path.join(src, "pytorch_model.bin"), "--to", "safetensors"], self.path("out.safetensors"), 20)


if __name__ == "__main__":
    unittest.main()
