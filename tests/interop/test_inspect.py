"""`ckpt inspect` against what Python (Debian's torch 1.13.1) says about the same files.

Run from the repository root:
    /usr/bin/python3 -m unittest discover -s tests/interop -p 'test_*.py' -v
    /usr/bin/python3 tests/interop/test_inspect.py -v
The binary is $CKPT_BIN (default build/ckpt); the real Trainer output is tests/data/hf-trainer-4.40.2.
"""

import copy
import json
import os
import pickle
import shutil
import subprocess
import struct
import sys
import tempfile
import unittest
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import torch  # noqa: E402

import fixtures as F  # noqa: E402
import harness  # noqa: E402

TMP = None
FX = None


def setUpModule():
    global TMP, FX
    harness.require_binary()
    TMP = tempfile.mkdtemp(prefix="ckpt-interop-")
    FX = F.build_all(os.path.join(TMP, "fx"))


def tearDownModule():
    harness.remove_temp_dir(TMP)


class InspectCase(unittest.TestCase):
    maxDiff = None

    def run_ok(self, args, expect_exit=0):
        r = harness.ckpt_untrusted(*args, cwd=TMP)
        self.assertFalse(r.timed_out, "timed out\n" + r.describe())
        self.assertGreaterEqual(r.returncode, 0, "killed by a signal\n" + r.describe())
        if expect_exit is not None:
            self.assertEqual(r.returncode, expect_exit, r.describe())
        return r

    def inspect_json(self, path, verify=False, expect_exit=0):
        args = ["inspect", path, "--json"] + (["--verify"] if verify else [])
        r = self.run_ok(args, expect_exit)
        try:
            doc = json.loads(r.stdout)
        except ValueError as e:
            self.fail("stdout is not one JSON document (%s)\n%s" % (e, r.describe()))
        return doc, r

    def assertMatches(self, actual, expected, result, where="$"):
        errors = F.match_errors(actual, expected, where)
        if errors:
            self.fail("%d difference(s) from what Python says:\n  %s\n%s" % (
                len(errors), "\n  ".join(errors[:40]), result.command()))


def with_verify(exp, ok=True, top=True):
    """The expected report of `--verify`: a verify block in each file report, NaN/Inf counts on floating tensors,
    and a top-level ok on the document."""
    exp = copy.deepcopy(exp)
    if exp.get("kind") == "checkpoint":
        # files of a known kind get a verify block; unclassified ones ("other") and those whose kind the docs
        # leave open (generation_config.json) are not checked for it
        exp["files"] = [with_verify(f, ok=ok, top=False) if isinstance(f.get("kind"), str) and
                        f["kind"] != "other" else f for f in exp["files"]]
    else:
        counts = exp.get("_verify_tensors", {})
        for t in exp.get("tensors", []):
            if t["dtype"] in F.FLOATING:
                t["nan"] = counts[t["name"]]["nan"]
                t["inf"] = counts[t["name"]]["inf"]
            else:
                t["nan"] = F.Absent(or_value=0)
                t["inf"] = F.Absent(or_value=0)
        exp["verify"] = {"ok": ok, "checks": F.ANY, "errors": [] if ok is True else F.ANY}
    if top:
        exp["ok"] = ok
    return exp


SINGLE_FILES = ["dtypes.bin", "dtypes.safetensors", "nonfinite.bin", "nonfinite.safetensors", "complex.bin",
                "params.bin", "pytorch_model.bin", "model.safetensors", "model.safetensors.index.json",
                "shard:model-00001-of-00002.safetensors", "shard:model-00002-of-00002.safetensors",
                "optimizer.pt", "scheduler.pt", "scaler_disabled", "scaler_enabled", "rng_state.pth",
                "rng_state_1.pth", "training_args.bin", "misc.pt", "trainer_state.json", "config.json",
                "config_untyped.json"]
NONFINITE = {"nonfinite.bin", "nonfinite.safetensors"}


def _method_name(key):
    return "".join(c if c.isalnum() else "_" for c in key)


class SingleFileTests(InspectCase):
    """`ckpt inspect FILE --json` (and `--verify`) on every generated file."""

    def check_json(self, key):
        path, exp = FX[key]
        doc, r = self.inspect_json(path)
        self.assertMatches(doc, exp, r)
        if exp.get("kind") == "weights":
            # file order, exactly
            self.assertEqual([t.get("name") for t in doc["tensors"]], [t["name"] for t in exp["tensors"]],
                             r.command())

    def check_verify(self, key):
        path, exp = FX[key]
        if key in NONFINITE:
            # docs do not say whether a NaN fails --verify; the counts are what matters, and exit status and
            # `ok` must agree.
            doc, r = self.inspect_json(path, verify=True, expect_exit=None)
            self.assertIn(r.returncode, (0, 1), r.describe())
            self.assertMatches(doc, with_verify(exp, ok=F.ANY), r)
            self.assertIs(doc.get("ok"), r.returncode == 0, "top-level ok disagrees with the exit status\n" +
                          r.describe())
            self.assertIs(doc["verify"].get("ok"), doc.get("ok"), r.describe())
        else:
            doc, r = self.inspect_json(path, verify=True)
            self.assertMatches(doc, with_verify(exp), r)
            self.assertIsInstance(doc["verify"]["checks"], list)
            self.assertTrue(doc["verify"]["checks"], "verify ran no checks\n" + r.command())

    def check_text(self, key):
        path, exp = FX[key]
        r = self.run_ok(["inspect", path])
        self.assertTrue(r.stdout.strip(), "no text output\n" + r.describe())
        if exp.get("kind") == "weights":
            missing = [t["name"] for t in exp["tensors"] if t["name"] not in r.stdout]
            self.assertEqual(missing, [], "text output does not mention these tensors\n" + r.describe())


def _add_single_file_tests():
    for key in SINGLE_FILES:
        name = _method_name(key)
        setattr(SingleFileTests, "test_json_" + name, lambda self, k=key: self.check_json(k))
        setattr(SingleFileTests, "test_verify_" + name, lambda self, k=key: self.check_verify(k))
        setattr(SingleFileTests, "test_text_" + name, lambda self, k=key: self.check_text(k))


_add_single_file_tests()


class SingleFileExtraTests(InspectCase):

    def test_expected_values_agree_with_an_independent_reading(self):
        """The expected values (from torch's in-memory objects) agree with the bytes written: storage keys and
        record sizes read back from the zip by a restricted unpickler, safetensors offsets, torch.load's NaN
        counts. Needs no ckpt."""
        self.assertTrue(F.selfcheck(FX))

    def test_legacy_format_is_recognised(self):
        path, _ = FX["legacy.bin"]
        r = harness.ckpt_untrusted("inspect", path, "--json", cwd=TMP)
        self.assertFalse(r.timed_out, r.describe())
        self.assertIn(r.returncode, (0, 3), r.describe())
        if r.returncode == 3:
            problem = r.error_line_problem(path)
            self.assertIsNone(problem, problem and problem + "\n" + r.describe())

    def test_missing_file(self):
        path = os.path.join(TMP, "no-such-file.bin")
        r = harness.ckpt_untrusted("inspect", path, "--json", cwd=TMP)
        self.assertEqual(r.returncode, 1, r.describe())
        problem = r.error_line_problem(path)
        self.assertIsNone(problem, problem and problem + "\n" + r.describe())

    def test_usage_errors(self):
        for args in (["inspect"], ["inspect", FX["dtypes.bin"][0], "--no-such-option"]):
            with self.subTest(args=args):
                r = harness.ckpt_untrusted(*args, cwd=TMP)
                self.assertEqual(r.returncode, 2, r.describe())

    def test_path_is_reported_as_given(self):
        # a relative path, run from the fixture's directory
        path, exp = FX["dtypes.bin"]
        r = harness.ckpt_untrusted("inspect", os.path.basename(path), "--json", cwd=os.path.dirname(path))
        self.assertEqual(r.returncode, 0, r.describe())
        doc = json.loads(r.stdout)
        self.assertEqual(doc.get("path"), os.path.basename(path), r.command())
        self.assertEqual(doc.get("num_parameters"), exp["num_parameters"], r.command())


class PlainTrainingArgsTests(InspectCase):
    """training_args.bin as `ckpt save` writes it: a plain dict of TrainingArguments' keys (Python loads it without
    any class). It is training_args like the Trainer's object, shown as a table, not one line of a whole dict."""

    ARGS = {"output_dir": "/tmp/run", "max_steps": 40, "num_train_epochs": 3.0, "learning_rate": 0.001,
            "adam_epsilon": 1e-08, "eval_steps": None, "save_total_limit": None, "metric_for_best_model": "eval_loss",
            "load_best_model_at_end": False, "max_shard_size": "5GB", "seed": 42, "input_noise": 0.1}

    def setUp(self):
        d = tempfile.mkdtemp(prefix="targs-dict-", dir=TMP)
        self.path = os.path.join(d, "training_args.bin")
        torch.save(self.ARGS, self.path)

    def test_json(self):
        doc, r = self.inspect_json(self.path)
        exp = F.file_header(self.path, "torch_zip", "training_args")
        exp.update({"class": None, "fields": F.plain_to_json(self.ARGS)})
        self.assertMatches(doc, exp, r)

    def test_text_is_a_table(self):
        r = self.run_ok(["inspect", self.path])
        lines = r.stdout.splitlines()
        self.assertLess(max(len(line) for line in lines[1:]), 60, r.describe())
        for key, shown in (("learning_rate", "0.001"), ("eval_steps", "-"), ("output_dir", "/tmp/run"),
                           ("load_best_model_at_end", "false")):
            self.assertTrue(any(line.split() == [key, shown] for line in lines), key + "\n" + r.describe())


class ManyKeysTests(InspectCase):
    """Dicts with many keys convert in linear time: a JSON object built key by key searches its keys each time,
    which took about 28 s for 200k keys (7 s for 100k). The deadline is generous for a linear conversion (0.2 s
    here) and far below the quadratic one."""
    DEADLINE_S = 10

    def test_a_dict_of_200k_keys(self):
        value = {"k%d" % i: i for i in range(200000)}
        path = os.path.join(TMP, "many_keys.pt")
        torch.save(value, path)
        r = harness.ckpt_untrusted("inspect", path, "--json", timeout=self.DEADLINE_S, cwd=TMP)
        self.assertFalse(r.timed_out, "not done within %d s: quadratic in the number of keys?" % self.DEADLINE_S)
        self.assertEqual(r.returncode, 0, r.describe())
        shown = json.loads(r.stdout)["value"]
        self.assertEqual(list(shown.items()), list(value.items()))

    def test_a_repeated_key_keeps_its_first_place_and_takes_the_last_value(self):
        O = F.Op
        pkl = (O.PROTO2 + O.EMPTY_DICT + O.MARK + O.str("a") + O.int(1) + O.str("b") + O.int(2) + O.str("a") + O.int(3) +
               O.SETITEMS + O.STOP)
        expected = pickle.loads(pkl)
        path = F.write_torch_zip(os.path.join(TMP, "repeated_key.pt"), pkl)
        doc, r = self.inspect_json(path)
        self.assertEqual(list(doc["value"].items()), list(expected.items()), r.command())


class DirectoryTests(InspectCase):
    """checkpoint-N directories and the run directory holding them."""

    def check_checkpoint(self, key):
        path, exp = FX[key]
        doc, r = self.inspect_json(path)
        self.assertMatches(doc, exp, r)
        self.assertEqual([f.get("file") for f in doc["files"]], sorted(os.listdir(path)), r.command())
        return doc

    def test_checkpoint_2_bin_weights(self):
        self.check_checkpoint("checkpoint-2")

    def test_checkpoint_4_safetensors(self):
        self.check_checkpoint("checkpoint-4")

    def test_checkpoint_10_with_scaler_and_other_file(self):
        self.check_checkpoint("checkpoint-10")

    def test_checkpoints_verify(self):
        for key in ("checkpoint-2", "checkpoint-4", "checkpoint-10"):
            with self.subTest(checkpoint=key):
                path, exp = FX[key]
                doc, r = self.inspect_json(path, verify=True)
                self.assertMatches(doc, with_verify(exp), r)

    def test_checkpoints_text(self):
        for key in ("checkpoint-2", "checkpoint-10"):
            with self.subTest(checkpoint=key):
                path, exp = FX[key]
                r = self.run_ok(["inspect", path])
                missing = [f["file"] for f in exp["files"] if f["file"] not in r.stdout]
                self.assertEqual(missing, [], "text output does not mention these files\n" + r.describe())

    def test_run(self):
        path, exp = FX["run"]
        doc, r = self.inspect_json(path)
        self.assertMatches(doc, exp, r)

    def test_run_verify(self):
        path, exp = FX["run"]
        doc, r = self.inspect_json(path, verify=True)
        self.assertIs(doc.get("ok"), True, r.describe())

    def test_run_text(self):
        path, exp = FX["run"]
        r = self.run_ok(["inspect", path])
        for c in exp["checkpoints"]:
            self.assertIn(c["name"], r.stdout, r.describe())

    def test_incomplete_checkpoint(self):
        path, exp = FX["incomplete"]
        doc, r = self.inspect_json(path)
        self.assertMatches(doc, exp, r)
        self.assertIsInstance(doc.get("problems"), list, r.command())
        self.assertTrue(doc["problems"], "an incomplete checkpoint must list problems\n" + r.describe())

    def test_optimizer_shapes_mismatch_weights(self):
        path, exp = FX["mismatch"]
        doc, r = self.inspect_json(path)
        self.assertMatches(doc, exp, r)
        opt = [f for f in doc["files"] if f.get("file") == "optimizer.pt"][0]
        check = opt["param_shape_check"]
        self.assertIsInstance(check.get("mismatches"), list, r.command())
        self.assertTrue(check["mismatches"], "mismatch status without mismatches\n" + r.command())


class VerifyFailureTests(InspectCase):
    """A run whose checkpoint-2/pytorch_model.bin has one flipped bit in a tensor record (the zip's CRC-32 no
    longer matches): --verify must fail on the file, the checkpoint and the run."""

    @classmethod
    def setUpClass(cls):
        src_run = FX["run"][0]
        cls.run_dir = os.path.join(TMP, "broken_run")
        shutil.copytree(src_run, cls.run_dir)
        cls.ckpt = os.path.join(cls.run_dir, "checkpoint-2")
        cls.file = os.path.join(cls.ckpt, "pytorch_model.bin")
        with open(cls.file, "rb") as f:
            data = bytearray(f.read())
        with zipfile.ZipFile(cls.file) as z:
            info = [i for i in z.infolist() if i.filename.endswith("/data/1")][0]
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        data[start] ^= 0x40
        with open(cls.file, "wb") as f:
            f.write(data)

    def check_failed(self, path, what):
        r = harness.ckpt_untrusted("inspect", path, "--json", "--verify", cwd=TMP)
        self.assertIn(r.returncode, (1, 3), "--verify of a %s with a CRC mismatch must fail\n%s" % (
            what, r.describe()))
        doc = json.loads(r.stdout)
        self.assertIs(doc.get("ok"), False, "top-level ok of a failed --verify\n" + r.describe())
        return r, doc

    def test_file(self):
        r, doc = self.check_failed(self.file, "file")
        self.assertIs(doc["verify"]["ok"], False, r.describe())
        self.assertTrue(doc["verify"]["errors"], r.describe())

    def test_checkpoint(self):
        r, doc = self.check_failed(self.ckpt, "checkpoint directory")
        bad = [f for f in doc["files"] if f.get("file") == "pytorch_model.bin"][0]
        self.assertIs(bad["verify"]["ok"], False, r.describe())

    def test_run(self):
        self.check_failed(self.run_dir, "run directory")

    def test_exit_3_comes_with_an_error_line(self):
        for path in (self.file, self.ckpt):
            with self.subTest(path=path):
                r = harness.ckpt_untrusted("inspect", path, "--json", "--verify", cwd=TMP)
                if r.returncode == 3:
                    problem = r.error_line_problem(path)
                    self.assertIsNone(problem, "exit 3 (corrupt input) without the error line: %s\n%s" % (
                        problem, r.describe()))

    def test_without_verify_the_metadata_is_still_reported(self):
        path, exp = FX["checkpoint-2"]
        exp = F.expected_checkpoint(self.ckpt, {f["file"]: dict(f, path=os.path.join(self.ckpt, f["file"]))
                                                for f in exp["files"]})
        doc, r = self.inspect_json(self.ckpt)
        self.assertMatches(doc, exp, r)


class FileKindTests(InspectCase):
    """--verify checks each file is the kind its name says, with the structure resume needs (a `{}` weights file or an
    unrelated pickle under optimizer.pt used to pass, and resume then failed with exit 3)."""

    def replaced(self, name, obj, source="checkpoint-10"):
        """A copy of a good checkpoint (it passes --verify: DirectoryTests) with `name` replaced by `obj`."""
        d = tempfile.mkdtemp(prefix="kind-", dir=TMP)
        cdir = os.path.join(d, source)
        shutil.copytree(FX[source][0], cdir)
        path = os.path.join(cdir, name)
        if isinstance(obj, bytes):
            with open(path, "wb") as f:
                f.write(obj)
        else:
            torch.save(obj, path)
        return cdir, path

    def assertVerifyFails(self, cdir, path, name, why):
        for target in (path, cdir):
            doc, r = self.inspect_json(target, verify=True, expect_exit=3)
            self.assertIs(doc.get("ok"), False, why + "\n" + r.describe())
            self.assertIn(name, r.stderr, why + "\n" + r.describe())

    def test_each_kind(self):
        good_opt = torch.load(os.path.join(FX["checkpoint-10"][0], "optimizer.pt"))
        good_rng = torch.load(os.path.join(FX["checkpoint-10"][0], "rng_state.pth"))
        no_groups = dict(good_opt, param_groups=[])
        bad_params = copy.deepcopy(good_opt)
        bad_params["param_groups"][0]["params"] = ["w"]
        cases = [
            ("checkpoint-2", "pytorch_model.bin", {}, "weights that are {}"),
            ("checkpoint-2", "pytorch_model.bin", [torch.ones(2)], "weights that are a list"),
            ("checkpoint-2", "pytorch_model.bin", {"w": torch.ones(2), "step": 3}, "weights holding an int"),
            ("checkpoint-10", "model.safetensors", b"\x08\0\0\0\0\0\0\0{}      ", "weights without tensors"),
            ("checkpoint-10", "optimizer.pt", {"lr": 0.1}, "an unrelated dict as optimizer.pt"),
            ("checkpoint-10", "optimizer.pt", {"w": torch.ones(2)}, "weights as optimizer.pt"),
            ("checkpoint-10", "optimizer.pt", no_groups, "an optimizer without param groups"),
            ("checkpoint-10", "optimizer.pt", bad_params, "param indices that are not ints"),
            ("checkpoint-10", "scheduler.pt", {"last_epoch": 3}, "a scheduler without learning rates"),
            ("checkpoint-10", "scheduler.pt", good_opt, "an optimizer as scheduler.pt"),
            ("checkpoint-10", "scaler.pt", {"scale": 1.0}, "a scaler missing its growth fields"),
            ("checkpoint-10", "rng_state.pth", {"python": good_rng["python"]}, "an RNG state without numpy and cpu"),
            ("checkpoint-10", "rng_state.pth", dict(good_rng, numpy=(1, 2)), "numpy's state not get_state()'s"),
            ("checkpoint-10", "rng_state.pth", [good_rng], "an RNG state inside a list"),
        ]
        for source, name, obj, why in cases:
            with self.subTest(why):
                cdir, path = self.replaced(name, obj, source)
                self.assertVerifyFails(cdir, path, name, why)

    def test_pickle_free_forms_keep_their_kind(self):
        """The safetensors form of a state file is checked as the file it was converted from."""
        cdir, path = self.replaced("scheduler.pt", {"last_epoch": 3})
        st = os.path.join(cdir, "scheduler.safetensors")
        self.run_ok(["convert", path, "--to", "safetensors", "-o", st])
        os.remove(path)
        doc, r = self.inspect_json(st, verify=True, expect_exit=3)
        self.assertIn("scheduler.pt", r.stderr, r.describe())

    def test_list_counts_only_weights_as_weights(self):
        """list's completeness reads headers only: a weights file that holds no weights makes the checkpoint
        incomplete and unreadable (never deleted by rotate), the other files are --verify's business."""
        for name, obj in (("pytorch_model.bin", {}), ("pytorch_model.bin", [torch.ones(1)]),
                          ("model.safetensors", b"\x08\0\0\0\0\0\0\0{}      ")):
            with self.subTest(name=name, obj=repr(obj)[:20]):
                source = "checkpoint-2" if name.endswith(".bin") else "checkpoint-10"
                cdir, path = self.replaced(name, obj, source)
                run = os.path.dirname(cdir)
                r = self.run_ok(["list", run, "--json"])
                row = json.loads(r.stdout)[0]
                self.assertFalse(row["complete"], r.describe())
                self.assertIn(name, " ".join(row["problems"]), r.describe())
                os.utime(cdir, (1, 1))
                for f in os.listdir(cdir):
                    os.utime(os.path.join(cdir, f), (1, 1))
                r = self.run_ok(["rotate", run, "--keep", "1", "--json"])
                self.assertTrue(os.path.isdir(cdir), "rotate deleted a checkpoint it cannot judge\n" + r.describe())
        cdir, _ = self.replaced("optimizer.pt", {"lr": 0.1})
        r = self.run_ok(["list", os.path.dirname(cdir), "--json"])
        self.assertTrue(json.loads(r.stdout)[0]["complete"], r.describe())


# ----------------------------------------------------------------------------------------------------------------
# Real Hugging Face Trainer output (read-only): compare with what Python computes from the same files now.
# ----------------------------------------------------------------------------------------------------------------


def hf_path(*parts):
    return os.path.join(harness.HF_FIXTURES, *parts)


def expected_hf_file(path):
    name = os.path.basename(path)
    if name.endswith(".safetensors"):
        return F.expected_weights_from_safetensors_file(path)
    if name == "optimizer.pt":
        return F.expected_optimizer(path, torch.load(path))
    if name == "scheduler.pt":
        return F.expected_scheduler(path, torch.load(path))
    if name.startswith("rng_state"):
        return F.expected_rng(path, torch.load(path))
    if name == "trainer_state.json":
        with open(path) as f:
            return F.expected_trainer_state(path, json.load(f))
    if name == "config.json":
        with open(path) as f:
            return F.expected_config(path, json.load(f))
    if name == "training_args.bin":
        value, _ = F.ref_load(path)
        exp = F.file_header(path, "torch_zip", "training_args")
        exp.update({"class": value._qual, "fields": F.ref_to_expected(value._state)})
        return exp
    # generation_config.json and anything else: docs do not fix its kind
    return {"path": path, "file": name, "size_bytes": os.path.getsize(path), "kind": F.ANY}


def hf_checkpoints():
    run = hf_path("run_safetensors")
    names = [n for n in os.listdir(run) if n.startswith("checkpoint-")]
    return sorted(names, key=lambda n: int(n.split("-")[1]))


class RealTrainerOutputTests(InspectCase):

    def expected_checkpoint(self, cdir):
        files = {}
        for n in os.listdir(cdir):
            e = expected_hf_file(os.path.join(cdir, n))
            if n == "optimizer.pt":
                e["param_shape_check"] = {"status": "ok", "method": F.OneOf("order", "multiset"),
                                          "checked": e["num_param_states"], "mismatches": []}
            files[n] = e
        return F.expected_checkpoint(cdir, files)

    def test_checkpoints(self):
        self.assertEqual(len(hf_checkpoints()), 4)
        for name in hf_checkpoints():
            with self.subTest(checkpoint=name):
                cdir = hf_path("run_safetensors", name)
                doc, r = self.inspect_json(cdir)
                self.assertMatches(doc, self.expected_checkpoint(cdir), r)

    def test_checkpoints_verify(self):
        for name in hf_checkpoints():
            with self.subTest(checkpoint=name):
                cdir = hf_path("run_safetensors", name)
                doc, r = self.inspect_json(cdir, verify=True)
                self.assertMatches(doc, with_verify(self.expected_checkpoint(cdir)), r)

    def test_each_file_alone(self):
        for name in hf_checkpoints()[-1:] + [""]:
            d = hf_path("run_safetensors", name) if name else hf_path("run_safetensors")
            for n in sorted(os.listdir(d)):
                p = os.path.join(d, n)
                if not os.path.isfile(p) or n == "generation_config.json":
                    continue
                with self.subTest(file=p):
                    exp = expected_hf_file(p)
                    doc, r = self.inspect_json(p)
                    if n == "optimizer.pt":
                        exp["param_shape_check"] = F.ANY if "param_shape_check" in doc else F.Absent()
                    self.assertMatches(doc, exp, r)
                    doc, r = self.inspect_json(p, verify=True)
                    self.assertIs(doc.get("ok"), True, r.describe())

    def test_run(self):
        run = hf_path("run_safetensors")
        ckpts = []
        for name in hf_checkpoints():
            cdir = os.path.join(run, name)
            files = [n for n in os.listdir(cdir) if os.path.isfile(os.path.join(cdir, n))]
            with open(os.path.join(cdir, "trainer_state.json")) as f:
                gs = json.load(f)["global_step"]
            ckpts.append({"name": name, "path": cdir, "step": int(name.split("-")[1]), "complete": True,
                          "num_files": len(files),
                          "size_bytes": sum(os.path.getsize(os.path.join(cdir, n)) for n in files),
                          "global_step": gs})
        doc, r = self.inspect_json(run)
        self.assertMatches(doc, {"path": run, "kind": "run", "checkpoints": ckpts}, r)
        doc, r = self.inspect_json(run, verify=True)
        self.assertIs(doc.get("ok"), True, r.describe())

    def test_scaler_examples(self):
        d = hf_path("scaler_example")
        for n in ("scaler_disabled.pt", "scaler_enabled_initial.pt", "scaler_enabled_after_backoff.pt"):
            with self.subTest(file=n):
                p = os.path.join(d, n)
                doc, r = self.inspect_json(p)
                self.assertMatches(doc, F.expected_scaler(p, torch.load(p)), r)
        p = os.path.join(d, "scaler_object_disabled.pt")
        doc, r = self.inspect_json(p)
        objects = [o for o in _walk(doc) if isinstance(o, dict) and o.get("type") == "object" and
                   str(o.get("class", "")).endswith("GradScaler")]
        self.assertTrue(objects, "the pickled GradScaler object is not shown as an opaque object\n" +
                        r.describe())
        self.assertEqual(objects[0].get("class"), "torch.cuda.amp.grad_scaler.GradScaler", r.command())


KIND_OF_NAME = {"config.json": "config", "generation_config.json": "json", "model.safetensors": "weights",
                "pytorch_model.bin": "weights", "optimizer.pt": "optimizer", "scheduler.pt": "scheduler",
                "scaler.pt": "scaler", "rng_state.pth": "rng_state", "trainer_state.json": "trainer_state",
                "training_args.bin": "training_args", "notes.txt": "other"}


def weights_totals(path):
    """(parameters, {dtype: {count, numel, nbytes}}) of a weights file as Python reads it: a safetensors header's
    shapes, or torch.load's tensors with tied views (the very same view of one storage) counted once."""
    if path.endswith(".safetensors"):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        tensors = [(F.ST_TO_TORCH_NAME[v["dtype"]], v["shape"]) for k, v in header.items() if k != "__metadata__"]
    else:
        seen, tensors = set(), []
        for t in torch.load(path).values():
            if F.view_key(t) not in seen:
                seen.add(F.view_key(t))
                tensors.append((F.dtype_name(t.dtype), list(t.shape)))
    dtypes = {}
    for dtype, shape in tensors:
        numel = 1
        for d in shape:
            numel *= d
        total = dtypes.setdefault(dtype, {"count": 0, "numel": 0, "nbytes": 0})
        total["count"] += 1
        total["numel"] += numel
        total["nbytes"] += numel * F.ELEMENT_SIZE[dtype]
    return sum(d["numel"] for d in dtypes.values()), dtypes


def expected_summary(cdir):
    """The summary block of a checkpoint directory, from Python's reading of its files."""
    names = sorted(n for n in os.listdir(cdir) if os.path.isfile(os.path.join(cdir, n)))
    with open(os.path.join(cdir, "trainer_state.json")) as f:
        state = json.load(f)
    step = state["global_step"]
    log = state["log_history"]
    evals = [e for e in log if e["step"] <= step and any(k.startswith("eval_") for k in e)]

    def eval_metrics(entry):
        return {k: v for k, v in entry.items() if k.startswith("eval_")}
    best = None
    if state.get("best_model_checkpoint"):
        best_name = os.path.basename(state["best_model_checkpoint"].rstrip("/"))
        at_best = [e for e in evals if e["step"] <= int(best_name.split("-")[1])]
        named = [k for k, v in eval_metrics(at_best[-1]).items() if v == state["best_metric"]] if at_best else []
        best = {"checkpoint": best_name, "metric": named[0] if len(named) == 1 else None, "value": state["best_metric"]}
    weights = [n for n in names if KIND_OF_NAME.get(n) == "weights"]
    parameters, dtypes = weights_totals(os.path.join(cdir, weights[0]))
    return {"step": step, "epoch": state["epoch"], "loss": [e["loss"] for e in log if "loss" in e][-1],
            "eval_step": evals[-1]["step"] if evals else None, "metrics": eval_metrics(evals[-1]) if evals else {},
            "best": best, "size_bytes": sum(os.path.getsize(os.path.join(cdir, n)) for n in names),
            "num_files": len(names), "num_parameters": parameters, "dtypes": dtypes,
            "files": {n: KIND_OF_NAME[n] for n in names}}


class SummaryTests(InspectCase):
    """A checkpoint directory's report starts with a summary (step, epoch, loss, metrics, best, size, parameters,
    dtypes, files and their kinds, and the verdict with --verify); --summary prints only that block; --json has it as
    "summary". Every number is checked against Python's reading of the same files."""

    def checkpoints(self):
        hf = [hf_path("run_safetensors", n) for n in hf_checkpoints()]
        return hf + [FX["checkpoint-2"][0], FX["checkpoint-10"][0]]  # pickled weights with tied views and a buffer

    def test_json(self):
        for cdir in self.checkpoints():
            with self.subTest(checkpoint=cdir):
                doc, r = self.inspect_json(cdir)
                exp = expected_summary(cdir)
                self.assertMatches(doc.get("summary"), exp, r)
                self.assertEqual(set(doc["summary"]["metrics"]), set(exp["metrics"]), r.command())
        doc, r = self.inspect_json(hf_path("run_safetensors", "checkpoint-40"))
        self.assertEqual((doc["summary"]["num_parameters"], doc["summary"]["best"]["metric"]), (28544, "eval_loss"), r.command())

    def block(self, cdir, *args, expect_exit=0):
        r = self.run_ok(["inspect", "--summary", cdir] + list(args), expect_exit)
        lines = r.stdout.splitlines()
        return {line.split()[0]: " ".join(line.split()[1:]) for line in lines[1:] if line.startswith("  ") and line[2] != " "}, r

    def test_text(self):
        cdir = hf_path("run_safetensors", "checkpoint-30")
        exp = expected_summary(cdir)
        rows, r = self.block(cdir)
        self.assertTrue(r.stdout.startswith(cdir + ": checkpoint at step 30, complete, 8 files\n"), r.describe())
        self.assertEqual(rows["step"], "30", r.describe())
        self.assertEqual(rows["epoch"], "%g" % exp["epoch"], r.describe())
        self.assertEqual(rows["loss"], "%.6g" % exp["loss"], r.describe())
        self.assertEqual(rows["evaluated"], "at step 30", r.describe())
        self.assertEqual(rows["eval_loss"], "%.6g" % exp["metrics"]["eval_loss"], r.describe())
        self.assertEqual(rows["eval_runtime"], "%.6g s" % exp["metrics"]["eval_runtime"], r.describe())  # a time, in seconds
        self.assertEqual(rows["best"], "checkpoint-30 (eval_loss %.6g)" % exp["best"]["value"], r.describe())
        self.assertRegex(rows["size"], r"^[0-9.]+ KiB in 8 files$", r.describe())
        self.assertEqual(rows["parameters"], "{:,} (float32)".format(exp["num_parameters"]), r.describe())
        self.assertEqual(rows["files"], "config.json (config, %d B)" % os.path.getsize(os.path.join(cdir, "config.json")),
                         r.describe())
        for name, kind in exp["files"].items():
            self.assertRegex(r.stdout, r"\n  (files)? +%s \(%s, " % (name.replace(".", r"\."), kind), r.describe())
        self.assertNotIn("28 tensors", r.stdout, "--summary prints only the block\n" + r.describe())
        self.assertNotIn("verify", rows, r.describe())
        # Without --summary the block comes first, then every file in detail.
        full = self.run_ok(["inspect", cdir]).stdout
        self.assertTrue(full.startswith(r.stdout + "\n"), full)
        self.assertIn("28 tensors", full)

    def test_a_file_without_its_tables(self):
        cdir = hf_path("run_safetensors", "checkpoint-40")
        r = self.run_ok(["inspect", "--summary", os.path.join(cdir, "model.safetensors")])
        self.assertEqual(r.stdout.splitlines()[1:], ["  28 tensors, 28,544 parameters, 111.5 KiB of tensor data"], r.describe())
        r = self.run_ok(["inspect", "--summary", os.path.join(cdir, "training_args.bin")])
        fields = len(F.ref_load(os.path.join(cdir, "training_args.bin"))[0]._state)
        self.assertEqual(r.stdout.splitlines()[1:], ["  class transformers.training_args.TrainingArguments",
                                                     "  %d fields" % fields], r.describe())

    def test_verify_verdict(self):
        cdir = hf_path("run_safetensors", "checkpoint-40")
        rows, r = self.block(cdir, "--verify")
        self.assertEqual(rows["verify"], "ok", r.describe())
        broken = os.path.join(tempfile.mkdtemp(dir=TMP), "checkpoint-40")
        shutil.copytree(cdir, broken)
        with open(os.path.join(broken, "trainer_state.json")) as f:
            state = json.load(f)
        state["global_step"] = 41
        with open(os.path.join(broken, "trainer_state.json"), "w") as f:
            json.dump(state, f)
        rows, r = self.block(broken, "--verify", expect_exit=3)
        self.assertEqual(rows["verify"], "FAILED: trainer_state.json: global_step 41 but the directory is checkpoint-40",
                         r.describe())

    def test_metadata_only(self):
        # 2^38 float32 parameters in a sparse 1 TiB file: reading its bytes would take minutes. Run without the
        # address-space cap of ckpt_untrusted, since the file is mapped whole.
        cdir = os.path.join(tempfile.mkdtemp(dir=TMP), "huge")
        os.makedirs(cdir)
        header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 18], "data_offsets": [0, 1 << 40]}}).encode()
        header += b" " * (-len(header) % 8)
        with open(os.path.join(cdir, "model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + (1 << 40))
        with open(os.path.join(cdir, "config.json"), "w") as f:
            json.dump({"model_type": "huge"}, f)
        r = harness.ckpt("inspect", "--json", cdir)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["summary"]["num_parameters"], 1 << 38)


class ModelDirectoryTests(InspectCase):
    """A model directory (weights and config.json, for loading rather than resuming: what best --export, convert of
    one, or save_pretrained write) is verified as one, not failed as a checkpoint without trainer_state.json."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="model-dir-", dir=TMP)

    def export(self):
        run = os.path.join(tempfile.mkdtemp(dir=self.dir), "run")
        shutil.copytree(hf_path("run_safetensors"), run)
        out = os.path.join(self.dir, "exported")
        self.run_ok(["best", run, "--export", out])
        return out

    def sharded(self):
        d = os.path.join(self.dir, "sharded")
        os.makedirs(d)
        F.make_sharded(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"model_type": "tiny", "architectures": ["TinyLM"], "torch_dtype": "float32"}, f)
        return d

    def assertModelDirectory(self, path, complete=True):
        doc, r = self.inspect_json(path, verify=True, expect_exit=0 if complete else 3)
        self.assertEqual((doc.get("layout"), doc.get("complete"), doc.get("ok")), ("model", complete, complete), r.describe())
        return doc, r

    def test_best_export_convert_and_shards_verify(self):
        exported = self.export()
        self.assertEqual(sorted(os.listdir(exported)), ["config.json", "generation_config.json", "model.safetensors"])
        converted = os.path.join(self.dir, "converted")
        self.run_ok(["convert", exported, "--to", "pytorch", "-o", converted])
        for path in (exported, converted, self.sharded()):
            with self.subTest(path=os.path.basename(path)):
                doc, r = self.assertModelDirectory(path)
                self.assertEqual(doc["problems"], [], r.describe())
                self.assertEqual(doc["step"], None, r.describe())
                text = self.run_ok(["inspect", "--verify", path])
                self.assertTrue(text.stdout.startswith(path + ": model directory, complete"), text.describe())
                self.assertTrue(text.stdout.endswith("verify: ok\n"), text.describe())
        self.assertEqual(self.inspect_json(exported)[0]["layout"], "model")

    def test_what_a_model_directory_must_hold(self):
        for name, damage, why in (("no-config", "config.json", "no config.json"),
                                  ("no-weights", "model.safetensors", "no weights"),
                                  ("no-shard", "model-00002-of-00002.safetensors", "missing weights shard model-00002")):
            with self.subTest(name):
                source = self.sharded() if name == "no-shard" else self.export()
                path = os.path.join(self.dir, name)
                os.rename(source, path)
                os.remove(os.path.join(path, damage))
                doc, r = self.assertModelDirectory(path, complete=False)
                self.assertTrue(any(why in p for p in doc["problems"]), r.describe())
                self.assertIn(damage, r.stderr, r.describe())
        with open(os.path.join(self.export(), "config.json"), "w") as f:
            f.write("[1, 2]")
        doc, r = self.assertModelDirectory(os.path.join(self.dir, "exported"), complete=False)
        self.assertIn("config.json", r.stderr, r.describe())

    def test_a_checkpoint_without_trainer_state_is_still_an_incomplete_checkpoint(self):
        # Training state beside the weights, or a checkpoint-N name, makes it a checkpoint whatever else it lacks.
        for name, remove in (("my-copy", ["trainer_state.json"]), ("checkpoint-40", ["trainer_state.json", "optimizer.pt",
                                                                                     "scheduler.pt", "rng_state.pth"])):
            with self.subTest(name):
                path = os.path.join(self.dir, name)
                shutil.copytree(hf_path("run_safetensors", "checkpoint-40"), path)
                for n in remove:
                    os.remove(os.path.join(path, n))
                doc, r = self.inspect_json(path, verify=True, expect_exit=3)
                self.assertEqual((doc.get("layout"), doc["complete"]), ("checkpoint", False), r.describe())
                self.assertIn("no trainer_state.json", doc["problems"], r.describe())
                shutil.rmtree(path)


def _walk(v):
    yield v
    if isinstance(v, dict):
        for x in v.values():
            yield from _walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x)


# ----------------------------------------------------------------------------------------------------------------
# Pickles that would run code in Python must never run in ckpt.
# ----------------------------------------------------------------------------------------------------------------


def hostile_payloads(marker):
    """(name, pickle bytes, the global that must never be called). Each one, loaded by Python's pickle,
    creates `marker`."""
    O = F.Op
    cmd = "touch " + marker

    def in_dict(payload, proto=O.PROTO2):
        return proto + O.EMPTY_DICT + O.str("x") + payload + O.SETITEM + O.STOP

    inner = O.PROTO2 + O.glob("posix", "system") + O.str(cmd) + O.TUPLE1 + O.REDUCE + O.STOP
    storage_rebuild = (O.glob("torch._utils", "_rebuild_tensor_v2") +
                       O.tuple_of(O.glob("posix", "system") + O.str(cmd) + O.TUPLE1 + O.REDUCE, O.int(0),
                                  O.tuple_of(O.int(1)), O.tuple_of(O.int(1)), O.NEWFALSE,
                                  O.glob("collections", "OrderedDict") + O.EMPTY_TUPLE + O.REDUCE) + O.REDUCE)
    persid = (O.tuple_of(O.str("storage"), O.glob("posix", "system") + O.str(cmd) + O.TUPLE1 + O.REDUCE,
                         O.str("0"), O.str("cpu"), O.int(1)) + O.BINPERSID)
    return [
        ("posix_system", in_dict(O.glob("posix", "system") + O.str(cmd) + O.TUPLE1 + O.REDUCE), "system"),
        ("os_system", in_dict(O.glob("os", "system") + O.str(cmd) + O.TUPLE1 + O.REDUCE), "system"),
        ("builtin_eval", in_dict(O.glob("__builtin__", "eval") +
                                 O.str("__import__('os').system('%s')" % cmd) + O.TUPLE1 + O.REDUCE), "eval"),
        ("builtins_exec", in_dict(O.glob("builtins", "exec") +
                                  O.str("import os\nos.system('%s')" % cmd) + O.TUPLE1 + O.REDUCE), "exec"),
        ("subprocess_list", in_dict(O.glob("subprocess", "check_call") + O.EMPTY_LIST + O.str("touch") +
                                    O.APPEND + O.str(marker) + O.APPEND + O.TUPLE1 + O.REDUCE), "check_call"),
        ("inst_opcode", in_dict(O.MARK + O.str(cmd) + b"i" + b"os\nsystem\n"), "system"),
        ("obj_opcode", in_dict(O.MARK + O.glob("os", "system") + O.str(cmd) + b"o"), "system"),
        ("stack_global", in_dict(O.str("posix") + O.str("system") + O.STACK_GLOBAL + O.str(cmd) + O.TUPLE1 +
                                 O.REDUCE, proto=O.PROTO4), "system"),
        ("getattr_import", in_dict(O.glob("__builtin__", "getattr") +
                                   O.tuple_of(O.glob("__builtin__", "__import__") + O.str("os") + O.TUPLE1 +
                                              O.REDUCE, O.str("system")) + O.REDUCE + O.str(cmd) + O.TUPLE1 +
                                   O.REDUCE), "__import__"),
        ("nested_pickle_loads", in_dict(O.glob("pickle", "loads") +
                                        O.glob("_codecs", "encode") + O.str(inner.decode("latin1")) +
                                        O.str("latin1") + O.TUPLE2 + O.REDUCE + O.TUPLE1 + O.REDUCE), "loads"),
        ("as_tensor_storage", in_dict(storage_rebuild), "system"),
        ("in_persistent_id", in_dict(persid), "system"),
    ]


class NoCodeExecutionTests(InspectCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="hostile-", dir=TMP)

    def test_payloads_are_real(self):
        """Python's torch.load does run every payload, so the test below can fail."""
        paths, markers = [], {}
        for name, _, _ in hostile_payloads("unused"):
            marker = os.path.join(self.dir, "python-ran-" + name)
            payload = dict((p[0], p[1]) for p in hostile_payloads(marker))[name]
            paths.append(F.write_torch_zip(os.path.join(self.dir, "proof_%s.pt" % name), payload,
                                           {"0": b"\0" * 4}))
            markers[name] = marker
        subprocess.run([sys.executable, "-c", "import sys, torch\nfor p in sys.argv[1:]:\n"
                        "    try: torch.load(p)\n    except Exception: pass"] + paths,
                       capture_output=True, timeout=300, cwd=self.dir)
        for name, marker in markers.items():
            with self.subTest(payload=name):
                self.assertTrue(os.path.exists(marker), "payload %s does not run in Python" % name)

    def test_never_executed(self):
        for name, _, bad_name in hostile_payloads("unused"):
            marker = os.path.join(self.dir, "ckpt-ran-" + name)
            payload = dict((p[0], p[1]) for p in hostile_payloads(marker))[name]
            path = F.write_torch_zip(os.path.join(self.dir, name + ".pt"), payload, {"0": b"\0" * 4})
            for args in (["inspect", path, "--json"], ["inspect", path, "--json", "--verify"],
                         ["inspect", path]):
                with self.subTest(payload=name, args=args[2:]):
                    r = harness.ckpt_untrusted(*args, cwd=self.dir)
                    self.assertFalse(os.path.exists(marker), "ckpt EXECUTED the pickle\n" + r.describe())
                    self.assertFalse(r.timed_out, r.describe())
                    self.assertGreaterEqual(r.returncode, 0, "killed by a signal\n" + r.describe())
                    if "--verify" in args:
                        self.assertIn(r.returncode, (0, 1, 3), r.describe())
                    else:
                        self.assertIn(r.returncode, (0, 3), r.describe())
                    if r.returncode == 3:
                        problem = r.error_line_problem(path)
                        self.assertIsNone(problem, problem and problem + "\n" + r.describe())
                    elif args[-1] == "--json":
                        doc = json.loads(r.stdout)
                        shown = [o for o in _walk(doc) if isinstance(o, dict) and o.get("type") == "object"]
                        self.assertTrue(shown, "the call is not shown as an opaque object\n" + r.describe())
                        self.assertIn(bad_name, json.dumps(doc), "the report hides what would be called\n" +
                                      r.describe())
                    self.assertFalse(os.path.exists(marker), "ckpt EXECUTED the pickle\n" + r.describe())


if __name__ == "__main__":
    unittest.main()
