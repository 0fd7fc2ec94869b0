"""Conventions of the ckpt command line, checked through the binary: exit codes, error lines, --json purity."""
import json
import os
import subprocess
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CKPT = os.environ.get("CKPT_BIN", os.path.join(ROOT, "build", "ckpt"))
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
FIXTURE_RUN = os.path.join(DATA, "hf-trainer-4.40.2", "run_safetensors")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def ckpt(*args):
    return subprocess.run([CKPT, *args], capture_output=True, text=True, timeout=60)


def error_line(r):
    """The message of the one `ckpt: error:` line on stderr (asserting there is exactly one line)."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckpt: error: "), "not one error line: %r" % r.stderr
    return lines[0][len("ckpt: error: "):]


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
                ([], ["a subcommand is required", "save, resume, list, best, rotate, inspect, convert"]),
                (["--bogus"], ["unknown option --bogus"]),
                (["inspect", "--bogus", DATA], ["unknown option --bogus"]),
                (["inspect", DATA, "--jsn"], ["unknown option --jsn", "did you mean '--json'?"]),
                (["rotate", FIXTURE_RUN, "--kep", "3"], ["unknown option --kep", "did you mean '--keep'?"]),
                (["inspect", DATA, "extra"], ["unexpected argument 'extra'"]),
                (["inspect"], ["PATH is required"]),
                (["rotate", FIXTURE_RUN], ["--keep is required"]),
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
                (["save", "--output-dir", out, "--max-steps", "abc"], ["--max-steps: 'abc' is not a whole number"]),
                (["save", "--output-dir", out, "--learning-rate", "fast"], ["--learning-rate: 'fast' is not a number"]),
                (["save", "--output-dir", out, "--nproc-per-node", "0"], ["--nproc-per-node: must be between 1 and 1024, not 0"]),
            )
            for args, expected in cases:
                with self.subTest(args=args):
                    r = ckpt(*args)
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertEqual(r.stdout, "")
                    line = error_line(r)
                    for text in expected:
                        self.assertIn(text, line)
                    self.assertLess(len(line), 200, "a usage error says what to do in a few words")
            self.assertFalse(os.path.exists(out))

    def test_help_subcommand(self):
        self.assertEqual(ckpt("help").stdout, ckpt("--help").stdout)
        for sub in ("save", "resume", "list", "best", "rotate", "inspect", "convert"):
            r = ckpt("help", sub)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, ckpt(sub, "--help").stdout, sub)
        self.assertIn("ckpt help SUBCOMMAND", ckpt("--help").stdout)


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


if __name__ == "__main__":
    unittest.main()
