"""Conventions of the ckpt command line, checked through the binary: exit codes, error lines, --json purity."""
import json
import os
import subprocess
import tempfile
import unittest

CKPT = os.environ.get("CKPT_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "build", "ckpt"))
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
FIXTURE_RUN = os.path.join(DATA, "hf-trainer-4.40.2", "run_safetensors")


def read(path):
    with open(path, "rb") as f:
        return f.read()


def ckpt(*args):
    return subprocess.run([CKPT, *args], capture_output=True, text=True, timeout=60)


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
        self.assertIn("Did you mean 'inspect'?", r.stderr)
        r = ckpt("rotate", DATA, "--kep", "3")
        self.assertEqual(r.returncode, 2)
        self.assertIn("Did you mean '--keep'?", r.stderr)

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
