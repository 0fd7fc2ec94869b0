"""Conventions of the ckpt command line, checked through the binary: exit codes, error lines, --json purity."""
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import harness  # noqa: E402
from harness import DATA, FIXTURE_RUN, ckpt  # noqa: E402

ROOT = harness.REPO


def read(path):
    with open(path, "rb") as f:
        return f.read()


class ExitCodes(unittest.TestCase):
    def test_help_and_version_exit_zero(self):
        for args in (["--help"], ["inspect", "--help"], ["--version"]):
            r = ckpt(*args)
            self.assertEqual(r.returncode, 0, args)
            self.assertTrue(r.stdout.strip())
        self.assertRegex(ckpt("--version").stdout, r"^ckpt \d+\.\d+\.\d+")

    def test_help_lists_subcommands(self):
        self.assertIn("inspect", ckpt("--help").stdout)

    def test_usage_errors_exit_two(self):
        for args in ([], ["inspekt"], ["inspect"], ["inspect", "--no-such-flag", DATA], ["inspect", "a", "b"]):
            r = ckpt(*args)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertTrue(r.stderr.startswith("ckpt: error: "), r.stderr)
            self.assertEqual(r.stdout, "")

    def test_usage_errors_suggest_the_closest_name(self):
        r = ckpt("inspekt", DATA)
        self.assertEqual(r.returncode, 2)
        self.assertIn("did you mean 'inspect'?", r.stderr)
        r = ckpt("rotate", DATA, "--kep", "3")
        self.assertEqual(r.returncode, 2)
        self.assertIn("did you mean '--keep'?", r.stderr)

    def test_missing_path_exits_one_naming_it(self):
        r = ckpt("inspect", "/nonexistent/ckpt-test")
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.count("\n"), 1)
        self.assertTrue(r.stderr.startswith("ckpt: error: /nonexistent/ckpt-test: "), r.stderr)

    def test_corrupt_file_exits_three_with_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            src = read(os.path.join(DATA, "tiny_state_dict.pt"))
            path = os.path.join(tmp, "cut.pt")
            with open(path, "wb") as f:
                f.write(src[: len(src) // 2])
            r = ckpt("inspect", path)
            self.assertEqual(r.returncode, 3)
            self.assertEqual(r.stderr.count("\n"), 1)
            self.assertTrue(r.stderr.startswith("ckpt: error: " + path + ": byte "), r.stderr)
            self.assertEqual(r.stdout, "")

    def test_unknown_content_is_unsupported(self):
        r = ckpt("inspect", os.path.join(DATA, "make_data.py"))
        self.assertEqual(r.returncode, 3)
        self.assertIn("detected from the content", r.stderr)


class UsageErrors(unittest.TestCase):
    """A usage error is one line naming what was wrong and, when a known name is close, the likely intent."""

    def test_each_is_one_line_naming_the_mistake(self):
        tiny = os.path.join(DATA, "tiny_state_dict.pt")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out.safetensors")
            cases = (
                (["inspekt", DATA], ["'inspekt' is not a subcommand", "did you mean 'inspect'?"]),
                (["help", "rotat"], ["'rotat' is not a subcommand", "did you mean 'rotate'?"]),
                ([], ["a subcommand is required", "save, resume, list, best, latest, rotate, tag, inspect, diff, convert"]),
                (["--bogus"], ["unknown option --bogus"]),
                (["inspect", "--bogus", DATA], ["unknown option --bogus"]),
                (["inspect", DATA, "--jsn"], ["unknown option --jsn", "did you mean '--json'?"]),
                (["rotate", FIXTURE_RUN, "--kep", "3"], ["unknown option --kep", "did you mean '--keep'?"]),
                (["inspect", DATA, "extra"], ["unexpected argument 'extra'"]),
                (["inspect"], ["PATH is required"]),
                (["rotate", FIXTURE_RUN], ["--keep is required"]),
                (["rotate", "--keep", "1"], ["RUN_DIR is required, or --recursive ROOT"]),
                (["latest"], ["RUN_DIR is required, or --recursive ROOT"]),
                (["list", "--recursive"], ["--recursive needs a value"]),
                (["rotate", FIXTURE_RUN, "--keep", "0"], ["--keep: must be at least 1, not 0"]),
                (["rotate", FIXTURE_RUN, "--keep", "-3"], ["--keep: must be at least 1, not -3"]),
                (["rotate", FIXTURE_RUN, "--keep", "abc"], ["--keep: 'abc' is not a whole number"]),
                (["rotate", FIXTURE_RUN, "--keep", "1.5"], ["--keep: '1.5' is not a whole number"]),
                (["rotate", FIXTURE_RUN, "--keep", "99999999999999999999"], ["--keep: '99999999999999999999' is too large"]),
                (["rotate", FIXTURE_RUN, "--keep"], ["--keep needs a value"]),
                (["rotate", FIXTURE_RUN, "--keep", "1", "--keep", "2"], ["--keep is given more than once"]),
                (["rotate", FIXTURE_RUN, "--keep", "1", "--level", "30"], ["--level: must be between 1 and 19, not 30"]),
                (["convert", tiny, "--to", "safetensor", "-o", out],
                 ["--to: 'safetensor' is not one of safetensors, pytorch, archive, dir", "did you mean 'safetensors'?"]),
                (["convert", tiny, "--to", "safetensors", "--dtype", "bf61", "-o", out], ["--dtype: 'bf61'", "did you mean 'bf16'?"]),
                (["list", FIXTURE_RUN, "--sort", "setp"], ["--sort: 'setp'", "did you mean 'step'?"]),
                (["best", FIXTURE_RUN, "--mode", "mn"], ["--mode: 'mn'", "did you mean 'min'?"]),
                (["list", FIXTURE_RUN, "--mode", "average"], ["--mode: 'average' is not one of min, max"]),
                (["rotate", FIXTURE_RUN, "--keep", "1", "--stale-after", "5x"], ["--stale-after: '5x' is not a duration (e.g. 90s, 30m, 1h, 2d)"]),
                (["convert", tiny, "--to", "safetensors", "--max-shard-size", "5XB", "-o", out], ["--max-shard-size: '5XB' is not a size (e.g. 5GB, 500MiB)"]),
                (["best", FIXTURE_RUN, "--link", "a/b"], ["--link: 'a/b' is not a plain name"]),
                (["best", FIXTURE_RUN, "--link", "checkpoint-5"], ["--link: 'checkpoint-5' would be taken for a checkpoint"]),
                (["convert", tiny, "-o", out], ["--to is required (unless --consolidate)"]),
                (["rotate", FIXTURE_RUN, "--keep", "1", "--keep-archives", "2"], ["--keep-archives needs --archive"]),
                (["save", "--output-dir", out, "--max-steps", "abc"], ["--max-steps: 'abc' is not a whole number"]),
                (["save", "--output-dir", out, "--learning-rate", "fast"], ["--learning-rate: 'fast' is not a number"]),
                (["save", "--output-dir", out, "--nproc-per-node", "0"], ["--nproc-per-node: must be between 1 and 1024, not 0"]),
                (["diff", tiny], ["B is required"]),
                (["diff", tiny, tiny, "--tolerance", "-1"], ["--tolerance: must be a finite number >= 0, not -1"]),
                (["diff", tiny, tiny, "--rtol", "x"], ["--rtol: 'x' is not a number"]),
                (["diff", tiny, tiny, "--only"], ["--only needs a value"]),
            )
            for args, expected in cases:
                with self.subTest(args=args):
                    r = ckpt(*args)
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertEqual(r.stdout, "")
                    line = r.error_line()
                    for text in expected:
                        self.assertIn(text, line)
                    self.assertLess(len(line), 200, "a usage error says what to do in a few words")
            self.assertFalse(os.path.exists(out))

    def test_help_subcommand(self):
        self.assertEqual(ckpt("help").stdout, ckpt("--help").stdout)
        for sub in ("save", "resume", "list", "best", "latest", "rotate", "inspect", "convert"):
            r = ckpt("help", sub)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, ckpt(sub, "--help").stdout, sub)
        self.assertIn("ckpt help SUBCOMMAND", ckpt("--help").stdout)
        self.assertEqual(ckpt("inspect", "--json", "--help").stdout, ckpt("inspect", "--help").stdout)


class DecimalIntegers(unittest.TestCase):
    """Integer options mean the decimal number written: CLI11 alone reads 010 as octal 8 and refuses 08, so a
    zero-padded step count from a script would silently change."""

    def test_zero_padded_integers_are_decimal(self):
        with tempfile.TemporaryDirectory() as tmp:
            run = os.path.join(tmp, "run")
            shutil.copytree(FIXTURE_RUN, run)

            def plan(*args):
                r = ckpt("rotate", run, "--dry-run", "--json", *args)
                self.assertEqual(r.returncode, 0, r.stderr)
                return [(d["name"], d["action"]) for d in json.loads(r.stdout)["decisions"]]

            self.assertEqual(plan("--keep", "1", "--keep-every", "010"), plan("--keep", "1", "--keep-every", "10"))
            self.assertNotEqual(plan("--keep", "1", "--keep-every", "10"), plan("--keep", "1", "--keep-every", "8"))
            self.assertEqual(plan("--keep", "08"), plan("--keep", "8"))
            r = ckpt("save", "--output-dir", os.path.join(tmp, "out"), "--max-steps", "010", "--save-steps", "010", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["global_step"], 10)
            self.assertTrue(os.path.isdir(os.path.join(tmp, "out", "checkpoint-10")))


class JsonOutput(unittest.TestCase):
    def test_json_is_one_document_on_stdout_and_nothing_on_stderr(self):
        for path in (os.path.join(DATA, "tiny_state_dict.pt"), FIXTURE_RUN, os.path.join(FIXTURE_RUN, "checkpoint-10")):
            r = ckpt("inspect", "--json", path)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stderr, "")
            json.loads(r.stdout)

    def test_verify_failure_sets_ok_false_and_exit_three(self):
        with tempfile.TemporaryDirectory() as tmp:
            src = bytearray(read(os.path.join(DATA, "tiny_state_dict.pt")))
            # flip a byte inside storage record data/0 (its data starts on the 64-byte boundary after 570)
            src[640] ^= 0x01
            path = os.path.join(tmp, "flipped.pt")
            with open(path, "wb") as f:
                f.write(src)
            self.assertEqual(ckpt("inspect", path).returncode, 0)
            r = ckpt("inspect", "--verify", "--json", path)
            self.assertEqual(r.returncode, 3)
            doc = json.loads(r.stdout)
            self.assertFalse(doc["ok"])
            self.assertTrue(any("CRC-32" in e for e in doc["verify"]["errors"]))


def documented_error_kinds():
    """The error kinds docs/inspect-json.md lists as the stable spellings of `--json` errors."""
    with open(os.path.join(ROOT, "docs", "inspect-json.md")) as f:
        section = f.read().split("## Errors", 1)[1].split("\n## ", 1)[0]
    return dict((kind, int(code)) for kind, code in re.findall(r"^- `([a-z_]+)` \(exit (\d+)\)", section, re.M))


class JsonErrors(unittest.TestCase):
    """With --json a failure also prints one object, {"error": {...}}, on stdout and nothing else there."""

    def assertJsonError(self, r, kind, path):
        kinds = documented_error_kinds()
        self.assertIn(kind, kinds)
        self.assertEqual(r.returncode, kinds[kind], r.stderr)
        doc = json.loads(r.stdout)  # one document, nothing else
        self.assertEqual(list(doc), ["error"])
        error = doc["error"]
        self.assertEqual(error["kind"], kind, r.stdout)
        self.assertEqual(error["path"], path, r.stdout)
        self.assertEqual(error["message"], r.error_line())
        self.assertIn("where", error)

    def test_failures(self):
        with tempfile.TemporaryDirectory() as tmp:
            run = harness.copy_fixture_run(tmp, "run")
            cut = os.path.join(tmp, "cut.pt")
            with open(cut, "wb") as f:
                src = read(os.path.join(DATA, "tiny_state_dict.pt"))
                f.write(src[: len(src) // 2])
            missing = os.path.join(tmp, "missing")
            existing = os.path.join(tmp, "existing.safetensors")
            open(existing, "w").close()
            for args, kind, path in (
                (["inspect", missing, "--json"], "not_found", missing),
                (["list", "--json", missing], "not_found", missing),
                (["best", missing, "--json"], "not_found", missing),
                (["rotate", missing, "--keep", "1", "--json"], "not_found", missing),
                (["inspect", "--json", cut], "corrupt", cut),
                (["inspect", "--json", os.path.join(DATA, "make_data.py")], "unsupported", os.path.join(DATA, "make_data.py")),
                (["convert", os.path.join(DATA, "tiny_state_dict.pt"), "--to", "safetensors", "-o", existing, "--json"],
                 "invalid_argument", existing),
            ):
                with self.subTest(args=args):
                    self.assertJsonError(ckpt(*args), kind, path)
            with open(os.path.join(run, ".ckpt.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.assertJsonError(ckpt("rotate", run, "--keep", "1", "--no-wait", "--json"), "locked", run)

    def test_kinds_are_listed_in_the_man_page_too(self):
        with open(os.path.join(ROOT, "man", "ckpt.1")) as f:
            diagnostics = f.read().split(".SH DIAGNOSTICS", 1)[1].split("\n.SH ", 1)[0].replace("\\-", "-")
        self.assertEqual(re.findall(r"^\.B ([a-z_]+)\n\((?:exit status )?(\d+)\)", diagnostics, re.M),
                         [(kind, str(code)) for kind, code in documented_error_kinds().items()])

    def test_usage_errors(self):
        for args in (["inspect", "--json", "--bogus", DATA], ["rotate", FIXTURE_RUN, "--keep", "0", "--json"],
                     ["convert", DATA, "--json", "--to", "safetensor", "-o", "x"], ["list", "--json"],
                     ["save", "--json", "--output-dir", "x", "--max-steps", "many"],
                     ["rotate", FIXTURE_RUN, "--keep", "1", "--stale-after", "5x", "--json"],
                     ["convert", os.path.join(DATA, "tiny_state_dict.pt"), "--to", "safetensors", "--max-shard-size", "5XB", "-o", "x", "--json"],
                     ["best", FIXTURE_RUN, "--link", "a/b", "--json"],
                     # Options that do not go together, found after parsing.
                     ["convert", os.path.join(DATA, "tiny_state_dict.pt"), "-o", "x", "--json"],
                     ["convert", FIXTURE_RUN, "--to", "archive", "--dtype", "bf16", "-o", "x", "--json"],
                     ["rotate", FIXTURE_RUN, "--keep", "1", "--keep-archives", "2", "--json"]):
            with self.subTest(args=args):
                self.assertJsonError(ckpt(*args), "usage", None)

    def test_without_json_nothing_on_stdout(self):
        for args in (["inspect", "/nonexistent/ckpt-test"], ["rotate", FIXTURE_RUN, "--keep", "0"]):
            r = ckpt(*args)
            self.assertNotEqual(r.returncode, 0)
            self.assertEqual(r.stdout, "")

    def test_only_rank_zero_of_a_group_prints_the_object(self):
        """Every worker of `save --nproc-per-node N --json` fails alike; stdout, which they share, gets one object."""
        args = ["save", "--json", "--output-dir", "x", "--max-steps", "many"]
        self.assertEqual(ckpt(*args, env=harness.environment({"RANK": "1", "WORLD_SIZE": "2"})).stdout, "")
        self.assertJsonError(ckpt(*args, env=harness.environment({"RANK": "0", "WORLD_SIZE": "2"})), "usage", None)

    def test_a_report_made_before_the_failure_is_not_printed(self):
        """A file cut short while read: the report built from the zeros is dropped; stdout holds the error alone."""
        shim = os.environ.get("CKPT_FAULT_SHIM", os.path.join(os.path.dirname(harness.CKPT_BIN), "tests", "libckpt_fault_shim.so"))
        self.assertTrue(os.path.exists(shim), shim)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.safetensors")
            shutil.copy(os.path.join(FIXTURE_RUN, "checkpoint-10", "model.safetensors"), path)
            r = ckpt("inspect", "--json", "--verify", path,
                     env=harness.environment({"LD_PRELOAD": shim, "CKPT_FAULT": "mmap:1:truncate", "CKPT_FAULT_MATCH": path,
                                              "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}))
            self.assertJsonError(r, "io", path)
            self.assertIn("shrank", r.stderr)


class FileSystemErrors(unittest.TestCase):
    """Errors name the user's path (never a temporary or a lock file) and a missing directory reads the same
    everywhere; missing parents of an output are created, as best --export does."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ckpt-cli-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def test_missing_parents_of_the_output_are_created(self):
        checkpoint = os.path.join(FIXTURE_RUN, "checkpoint-10")
        weights = os.path.join(checkpoint, "model.safetensors")
        archive = self.path("new", "archived", "checkpoint-10.ckpt")
        for args, out in (([weights, "--to", "pytorch"], self.path("new", "file", "pytorch_model.bin")),
                          ([weights, "--to", "safetensors", "--max-shard-size", "100KB"], self.path("new", "shards", "out")),
                          ([checkpoint, "--to", "pytorch"], self.path("new", "dir", "out")),
                          ([checkpoint, "--to", "archive"], archive),
                          ([archive, "--to", "dir"], self.path("new", "restored", "checkpoint-10"))):
            with self.subTest(args=args):
                r = ckpt("convert", *args, "-o", out)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertTrue(os.path.exists(out))
        r = ckpt("convert", weights, "--to", "pytorch", "--dry-run", "-o", self.path("dry", "out.bin"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(self.path("dry")), "a dry run creates nothing")

    def test_missing_directory_reads_the_same_everywhere(self):
        missing = self.path("missing")
        for args in (["list", missing], ["best", missing], ["rotate", missing, "--keep", "1"], ["resume", missing],
                     ["convert", missing, "--to", "archive", "-o", self.path("x.ckpt")]):
            with self.subTest(args=args):
                r = ckpt(*args)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertEqual(r.error_line(), missing + ": no such directory")
        for args in (["inspect", missing], ["convert", missing, "--to", "safetensors", "-o", self.path("x")],
                     ["convert", missing, "--to", "dir", "-o", self.path("x")]):
            with self.subTest(args=args):
                r = ckpt(*args)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertEqual(r.error_line(), missing + ": no such file or directory")

    def test_a_failure_inside_a_directory_being_built_names_its_destination(self):
        """Directories are built under a hidden temporary name and renamed whole: an error names the destination."""
        shim = os.environ.get("CKPT_FAULT_SHIM", os.path.join(os.path.dirname(harness.CKPT_BIN), "tests", "libckpt_fault_shim.so"))
        checkpoint = os.path.join(FIXTURE_RUN, "checkpoint-10")
        archive = self.path("checkpoint-10.ckpt")
        self.assertEqual(ckpt("convert", checkpoint, "--to", "archive", "-o", archive).returncode, 0)
        for args, out, faults in ((["convert", checkpoint, "--to", "pytorch", "-o"], self.path("out"), ("pwrite", "fsync", "rename")),
                                  (["convert", archive, "--to", "dir", "-o"], self.path("restored"), ("pwrite", "fsync", "rename")),
                                  (["best", FIXTURE_RUN, "--export"], self.path("export"), ("fsync", "rename"))):  # hard links
            for fault in (f + ":1:5" for f in faults):
                with self.subTest(args=args, fault=fault):
                    r = ckpt(*args, out, env=harness.environment({"LD_PRELOAD": shim, "CKPT_FAULT": fault, "CKPT_FAULT_MATCH": self.tmp,
                                                                  "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}))
                    self.assertEqual(r.returncode, 1, r.stderr)
                    line = r.error_line()
                    self.assertTrue(line.startswith(out + ": ") or line.startswith(out + "/"), line)
                    self.assertNotIn(".tmp-", line)
                    self.assertIn("Input/output error", line)
                    self.assertFalse(os.path.exists(out))

    def test_a_locked_run_is_named_not_its_lock_file(self):
        run = harness.copy_fixture_run(self.tmp, "run")
        with open(os.path.join(run, ".ckpt.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            r = ckpt("rotate", run, "--keep", "1", "--no-wait")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertTrue(r.error_line().startswith(run + ": "), r.stderr)
        self.assertNotIn(".ckpt.lock", r.stderr)

    def test_a_read_only_file_system_names_the_users_path(self):
        mount = self.path("mnt")
        os.makedirs(mount)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mount]).returncode != 0:
            self.fail("mounting a tmpfs needs root (the CI runs as root)")
        self.addCleanup(subprocess.run, ["umount", mount])
        run = harness.copy_fixture_run(mount, "run")
        checkpoint = os.path.join(run, "checkpoint-10")
        archive = os.path.join(mount, "checkpoint-10.ckpt")
        self.assertEqual(ckpt("convert", checkpoint, "--to", "archive", "-o", archive).returncode, 0)
        out = os.path.join(mount, "out")
        os.makedirs(out)
        subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
        for args, named in ((["rotate", run, "--keep", "1"], run),
                            (["rotate", run, "--keep", "1", "--no-wait"], run),
                            (["resume", run], run),
                            (["best", run, "--link", "best"], os.path.join(run, "best")),
                            (["best", run, "--export", os.path.join(out, "export")], os.path.join(out, "export")),
                            (["convert", checkpoint, "--to", "safetensors", "-o", os.path.join(out, "st")], os.path.join(out, "st")),
                            (["convert", os.path.join(checkpoint, "model.safetensors"), "--to", "pytorch", "-o", os.path.join(out, "w.bin")],
                             os.path.join(out, "w.bin")),
                            (["convert", checkpoint, "--to", "archive", "-o", os.path.join(out, "c.ckpt")], os.path.join(out, "c.ckpt")),
                            (["convert", archive, "--to", "dir", "-o", os.path.join(out, "restored")], os.path.join(out, "restored"))):
            with self.subTest(args=args):
                r = ckpt(*args)
                self.assertEqual(r.returncode, 1, r.stderr)
                line = r.error_line()
                self.assertTrue(line.startswith(named + ": "), line)
                self.assertIn("Read-only file system", line)
                self.assertNotIn(".tmp-", line)
                self.assertNotIn(".ckpt.lock", line)
                self.assertNotIn(".ckpt.train.lock", line)


if __name__ == "__main__":
    unittest.main()
