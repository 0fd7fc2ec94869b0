"""Tests of `ckpt list` and `ckpt best` on synthetic runs and on the real Trainer run
tests/data/hf-trainer-4.40.2/run_safetensors (copied before anything writes).

Run:  cd tests/manage && /usr/bin/python3 -m unittest -v test_list_best
The binary is $CKPT_BIN (default: build/ckpt in the repository).
"""

import fcntl
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import harness  # noqa: E402
import hf_reference  # noqa: E402
import runs  # noqa: E402
from harness import ckpt, ckpt_ok  # noqa: E402
from runs import wait_until_blocked_in_flock  # noqa: E402

LIST_FIELDS = {"name", "path", "kind", "step", "epoch", "complete", "named", "is_best", "is_latest", "size_bytes", "mtime",
               "metric", "metrics", "problems"}
HOUR = 3600.0


def tree_size(path):
    total = 0
    for root, dirs, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


class Tmp(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="ckpt-list-best-test-")
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def list_json(self, run_dir, *args):
        r = ckpt_ok(self, "list", run_dir, "--json", *args)
        rows = r.json()
        self.assertIsInstance(rows, list, r.describe())
        return rows, r

    def rows_by_name(self, rows):
        return {row["name"]: row for row in rows}

    def best_path(self, run_dir, *args):
        r = ckpt_ok(self, "best", run_dir, *args)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 1, "best must print the path alone\n" + r.describe())
        return lines[0], r

    def assertBestIs(self, run_dir, name, *args):
        out, r = self.best_path(run_dir, *args)
        self.assertEqual(os.path.normpath(out), os.path.normpath(os.path.join(run_dir, name)), r.describe())


# ----------------------------------------------------------------------------------------------------------------
# list on synthetic runs
# ----------------------------------------------------------------------------------------------------------------


class ListSyntheticTest(Tmp):
    def test_empty_run_dir(self):
        d = os.path.join(self.tmp, "empty")
        os.makedirs(d)
        rows, r = self.list_json(d)
        self.assertEqual(rows, [], r.describe())
        self.assertEqual(r.returncode, 0)

    def test_a_path_that_is_no_run_directory_is_named_for_what_it_is(self):
        # A slip in a cron line (a checkpoint, a file, the parent of the runs) must fail, not rotate nothing forever.
        run = os.path.join(self.tmp, "runs", "exp1")
        runs.make_run(run, [10, 20])
        os.makedirs(os.path.join(self.tmp, "runs", "notes"))
        cases = [(os.path.join(run, "checkpoint-10"), "is a checkpoint; its run directory is " + run),
                 (os.path.join(run, "checkpoint-10", "trainer_state.json"), "is a file, not a run directory"),
                 (os.path.join(self.tmp, "runs"), "holds no checkpoints (checkpoint-N directories or archives); "
                                                  "run directories below it: " + run)]
        for path, what in cases:
            for args in (["list", path], ["best", path], ["rotate", path, "--keep", "1"], ["list", "--json", path],
                         ["latest", path]):
                with self.subTest(args=args):
                    r = ckpt(*args)
                    self.assertEqual(r.returncode, 1, r.describe())
                    self.assertEqual(r.stderr, "ckpt: error: %s: %s\n" % (path, what), r.describe())
                    if "--json" in args:  # the error's object, nothing else
                        self.assertEqual(r.json()["error"]["kind"], "not_found", r.describe())
                    else:
                        self.assertEqual(r.stdout, "", r.describe())
        self.assertEqual(runs.entries(run), ["checkpoint-10", "checkpoint-20"])
        # A run directory that exists and holds nothing yet (TensorBoard's runs/ before the first save) is fine.
        fresh = os.path.join(self.tmp, "fresh")
        os.makedirs(os.path.join(fresh, "runs"))
        for args in (["list", fresh], ["rotate", fresh, "--keep", "1"]):
            r = ckpt_ok(self, *args)
            self.assertEqual(r.stderr, "ckpt: note: %s holds no checkpoints yet\n" % fresh, r.describe())

    def test_missing_run_dir(self):
        r = ckpt("list", os.path.join(self.tmp, "nope"), "--json")
        self.assertNotEqual(r.returncode, 0, r.describe())
        self.assertIn("ckpt: error:", r.stderr)

    def build(self):
        d = os.path.join(self.tmp, "run")
        evals = {5: {"eval_loss": 2.5, "eval_accuracy": 0.5},
                 20: {"eval_loss": 1.25, "eval_accuracy": 0.75},
                 100: {"eval_loss": 1.5, "eval_accuracy": 0.875}}
        base = float(int(time.time())) - 1000
        mtimes = {5: base + 1, 20: base + 2, 100: base + 3}
        runs.make_run(d, [5, 20, 100], best_step=20, evals=evals, mtimes=mtimes, extra_files=2)
        runs.make_checkpoint(d, 1000, broken="truncated")
        runs.make_dir_entry(d, "tmp-checkpoint-2000")
        runs.make_dir_entry(d, "milestone")
        runs.make_dir_entry(d, ".ckpt-trash-checkpoint-1-1")
        return d, evals, mtimes

    def test_fields_order_and_values(self):
        d, evals, mtimes = self.build()
        rows, r = self.list_json(d)
        for row in rows:
            self.assertTrue(LIST_FIELDS <= set(row), "missing %s in %r" % (LIST_FIELDS - set(row), row))
        ckpts = [row for row in rows if row["kind"] == "checkpoint"]
        # Numeric order: checkpoint-100 after checkpoint-20, checkpoint-1000 last.
        self.assertEqual([row["name"] for row in ckpts], ["checkpoint-5", "checkpoint-20", "checkpoint-100",
                                                          "checkpoint-1000"], r.describe())
        by = self.rows_by_name(rows)
        for s in (5, 20, 100):
            row = by["checkpoint-%d" % s]
            with self.subTest(step=s):
                self.assertEqual(row["step"], s)
                self.assertIsInstance(row["step"], int)
                self.assertEqual(os.path.normpath(row["path"]), os.path.join(d, "checkpoint-%d" % s))
                self.assertTrue(row["complete"])
                self.assertEqual(row["problems"], [])
                self.assertAlmostEqual(row["epoch"], s / 10.0)
                self.assertEqual(row["size_bytes"], tree_size(os.path.join(d, "checkpoint-%d" % s)))
                self.assertAlmostEqual(row["mtime"], mtimes[s], places=3)
                self.assertEqual(row["metric"], evals[s]["eval_loss"])
                self.assertEqual(row["metrics"].get("eval_loss"), evals[s]["eval_loss"])
                self.assertEqual(row["metrics"].get("eval_accuracy"), evals[s]["eval_accuracy"])
                self.assertEqual(row["is_best"], s == 20)
                self.assertEqual(row["is_latest"], s == 100)
        broken = by["checkpoint-1000"]
        self.assertFalse(broken["complete"])
        self.assertFalse(broken["is_latest"], "an incomplete checkpoint is never the latest")
        self.assertFalse(broken["is_best"])
        self.assertTrue(broken["problems"] and all(isinstance(p, str) and p for p in broken["problems"]), broken)
        self.assertIn("model.safetensors", " ".join(broken["problems"]))
        self.assertEqual(broken["size_bytes"], tree_size(os.path.join(d, "checkpoint-1000")))
        self.assertEqual(by["tmp-checkpoint-2000"]["kind"], "staging", r.describe())
        self.assertIsNone(by["tmp-checkpoint-2000"]["step"])
        self.assertEqual(by["milestone"]["kind"], "custom", r.describe())
        self.assertEqual(sum(1 for row in rows if row["is_best"]), 1)
        self.assertEqual(sum(1 for row in rows if row["is_latest"]), 1)
        for row in rows:
            if row["name"].startswith(".ckpt-trash-"):
                self.assertEqual(row["kind"], "trash", r.describe())

    def test_text_table_for_a_person(self):
        # Epochs rounded for reading (JSON keeps them exact), archives among checkpoints by step, why a checkpoint is
        # not complete, what a staging directory is writing, and a total line.
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20, 30], state_for=lambda s: dict(runs.trainer_state(s), epoch=s / 3.0))
        ckpt_ok(self, "rotate", d, "--keep", "2", "--archive", "-q")
        runs.make_checkpoint(d, 40, broken="no_state")
        runs.make_dir_entry(d, "tmp-checkpoint-50")
        r = ckpt_ok(self, "list", d)
        lines = r.stdout.splitlines()
        names = [line.split()[0] for line in lines[1:-1]]
        self.assertEqual(names, ["archive/checkpoint-10.ckpt", "checkpoint-20", "checkpoint-30", "checkpoint-40",
                                 "tmp-checkpoint-50"], r.describe())
        row = {line.split()[0]: line for line in lines[1:-1]}
        self.assertIn(" 6.67 ", row["checkpoint-20"], r.describe())
        self.assertRegex(row["checkpoint-40"], r" NO .*no trainer_state.json$", r.describe())
        self.assertIn("(writing step 50)", row["tmp-checkpoint-50"], r.describe())
        self.assertRegex(lines[-1], r"^total: 3 checkpoints \(2 complete\), 1 archive, [0-9.]+ [KM]?i?B$", r.describe())
        rows, r = self.list_json(d)
        self.assertEqual(self.rows_by_name(rows)["checkpoint-20"]["epoch"], 20 / 3.0, r.describe())

    def test_list_metric_option_recomputes_best(self):
        d, evals, _ = self.build()
        rows, r = self.list_json(d, "--metric", "accuracy")
        by = self.rows_by_name(rows)
        self.assertTrue(by["checkpoint-100"]["is_best"], r.describe())  # max accuracy, default mode for non-loss
        self.assertEqual(by["checkpoint-100"]["metric"], 0.875, r.describe())
        rows, r = self.list_json(d, "--metric", "eval_accuracy", "--mode", "min")
        self.assertTrue(self.rows_by_name(rows)["checkpoint-5"]["is_best"], r.describe())
        rows, r = self.list_json(d, "--metric", "loss")
        self.assertTrue(self.rows_by_name(rows)["checkpoint-20"]["is_best"], r.describe())

    def test_every_kind_of_damage_is_incomplete_with_problems(self):
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10])
        expect_word = {"no_weights": "weights", "truncated": "model.safetensors", "no_state": "trainer_state",
                       "bad_state": "trainer_state", "missing_shard": "model-00002-of-00002.safetensors"}
        for k, kind in enumerate(runs.BROKEN_KINDS):
            runs.make_checkpoint(d, 20 + k, broken=kind)
        rows, r = self.list_json(d)
        by = self.rows_by_name(rows)
        self.assertTrue(by["checkpoint-10"]["complete"])
        self.assertTrue(by["checkpoint-10"]["is_latest"])
        for k, kind in enumerate(runs.BROKEN_KINDS):
            row = by["checkpoint-%d" % (20 + k)]
            with self.subTest(kind=kind):
                self.assertFalse(row["complete"], row)
                self.assertFalse(row["is_latest"], row)
                self.assertTrue(row["problems"], row)
                self.assertIn(expect_word[kind], " ".join(row["problems"]), row)

    def test_sharded_and_pickle_weights_are_complete(self):
        d = os.path.join(self.tmp, "run")
        os.makedirs(d)
        runs.make_checkpoint(d, 10, weights="sharded")
        runs.make_checkpoint(d, 20, weights="bin")
        rows, r = self.list_json(d)
        by = self.rows_by_name(rows)
        self.assertTrue(by["checkpoint-10"]["complete"], r.describe())
        self.assertTrue(by["checkpoint-20"]["complete"], r.describe())

    def test_metric_is_newest_eval_at_or_before_own_step(self):
        d = os.path.join(self.tmp, "run")
        os.makedirs(d)
        # checkpoint-30's own log: evals at 10 and 20, a duplicate at 20 (newest wins) and one at 40 (after it).
        state30 = runs.trainer_state(30, evals={10: {"eval_loss": 3.0}, 20: {"eval_loss": 2.0}}, extra_log=[
            {"epoch": 2.0, "eval_loss": 1.75, "step": 20},
            {"epoch": 4.0, "eval_loss": 0.5, "step": 40}])
        # checkpoint-40's own log says something else about step 20: each checkpoint's own history counts.
        state40 = runs.trainer_state(40, evals={20: {"eval_loss": 9.0}, 40: {"eval_loss": 1.8}})
        state50 = runs.trainer_state(50, evals={})  # no eval logged at all
        runs.make_checkpoint(d, 30, state=state30)
        runs.make_checkpoint(d, 40, state=state40)
        runs.make_checkpoint(d, 50, state=state50)
        rows, r = self.list_json(d)
        by = self.rows_by_name(rows)
        self.assertEqual(by["checkpoint-30"]["metric"], 1.75, r.describe())
        self.assertEqual(by["checkpoint-40"]["metric"], 1.8, r.describe())
        self.assertIsNone(by["checkpoint-50"]["metric"], r.describe())
        self.assertBestIs(d, "checkpoint-30", "--metric", "loss")

    def test_many_keys_take_linear_time(self):
        # 200k evaluation metrics in one log entry and 200k keys in another object: a linear key search per
        # insertion (ordered_json's) takes minutes here; linear work well under a second. The deadline is generous
        # for sanitizer builds on a loaded machine.
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10])
        path = os.path.join(d, "checkpoint-10", "trainer_state.json")
        with open(path) as f:
            state = json.load(f)
        state["log_history"].append({"step": 10, **{"eval_m%d" % i: 0.5 for i in range(200000)}})
        state["big"] = {"k%d" % i: i for i in range(200000)}
        with open(path, "w") as f:
            json.dump(state, f)
        for args in (["list", d, "--json"], ["best", d, "--metric", "m7"], ["rotate", d, "--keep", "1", "--dry-run"],
                     ["inspect", "--json", d]):
            r = ckpt(*args, timeout=60)
            self.assertEqual(r.returncode, 0, r.describe())
        rows, r = self.list_json(d)
        self.assertEqual(len(rows[0]["metrics"]), 200000 + 1, r.describe())

    def test_sort_mtime(self):
        d = os.path.join(self.tmp, "run")
        base = float(int(time.time())) - 1000
        runs.make_run(d, [5, 20, 100], mtimes={5: base + 20, 20: base, 100: base + 10})
        rows, r = self.list_json(d, "--sort", "mtime")
        self.assertEqual([row["name"] for row in rows], ["checkpoint-20", "checkpoint-100", "checkpoint-5"],
                         r.describe())
        # Within one second: step order.
        d2 = os.path.join(self.tmp, "run2")
        runs.make_run(d2, [5, 20, 100], mtimes={5: base + 0.5, 20: base, 100: base + 0.25})
        rows, r = self.list_json(d2, "--sort", "mtime")
        self.assertEqual([row["name"] for row in rows], ["checkpoint-5", "checkpoint-20", "checkpoint-100"],
                         r.describe())

    def test_a_directory_holding_trainer_state_json_is_a_named_checkpoint(self):
        # What ckpt tag and save --save-name make, and what a Trainer's checkpoint copied under another name is: listed
        # as named with the step and completeness of a checkpoint, never best, newest or rotated.
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20], evals={10: {"eval_loss": 2.0}, 20: {"eval_loss": 1.0}})
        runs.make_checkpoint(d, 30, name="milestone", state=runs.trainer_state(30, evals={30: {"eval_loss": 0.5}}))
        runs.make_checkpoint(d, 40, name="broken-copy", broken="truncated")
        runs.make_dir_entry(d, "plain")
        rows, r = self.list_json(d)
        self.assertEqual([row["name"] for row in rows], ["checkpoint-10", "checkpoint-20", "broken-copy", "milestone", "plain"])
        by = self.rows_by_name(rows)
        self.assertEqual({n: row["named"] for n, row in by.items()},
                         {"checkpoint-10": False, "checkpoint-20": False, "broken-copy": True, "milestone": True, "plain": False})
        milestone = by["milestone"]
        self.assertEqual((milestone["kind"], milestone["step"], milestone["global_step"], milestone["complete"], milestone["metric"],
                          milestone["is_best"], milestone["is_latest"]), ("custom", 30, 30, True, 0.5, False, False), r.describe())
        self.assertTrue(by["checkpoint-20"]["is_latest"])
        self.assertFalse(by["broken-copy"]["complete"])
        self.assertIn("model.safetensors", " ".join(by["broken-copy"]["problems"]))
        self.assertEqual((by["plain"]["step"], by["plain"]["complete"]), (None, False))
        lines = ckpt_ok(self, "list", d).stdout.splitlines()
        row = {line.split()[0]: line for line in lines[1:-1]}
        self.assertRegex(row["milestone"], r"^milestone +30 .* named +yes ")
        self.assertRegex(row["broken-copy"], r"^broken-copy +40 .* named +NO ")
        self.assertRegex(row["plain"], r"^plain +- .* custom ")
        self.assertRegex(lines[-1], r"^total: 2 checkpoints \(2 complete\), 0 archives, 2 named, ")
        decisions = {x["name"]: x for x in ckpt_ok(self, "rotate", d, "--keep", "1", "--json").json()["decisions"]}
        self.assertEqual(decisions["milestone"]["reason"], "named checkpoint, never rotated")
        self.assertEqual(decisions["plain"]["reason"], "custom directory, never rotated")
        self.assertEqual(runs.entries(d), ["broken-copy", "checkpoint-20", "milestone", "plain"])

    def test_symlinks_are_not_listed_as_checkpoints(self):
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20])
        outside = os.path.join(self.tmp, "outside")
        os.makedirs(outside)
        runs.make_checkpoint(outside, 99)
        os.symlink(os.path.join(outside, "checkpoint-99"), os.path.join(d, "checkpoint-99"))
        rows, r = self.list_json(d)
        self.assertNotIn("checkpoint-99", [row["name"] for row in rows if row["kind"] == "checkpoint"], r.describe())


# ----------------------------------------------------------------------------------------------------------------
# best on synthetic runs
# ----------------------------------------------------------------------------------------------------------------


class BestSyntheticTest(Tmp):
    def run_dir(self, steps, evals=None, best_path=None, best_step=None, name="run"):
        d = os.path.join(self.tmp, name)
        runs.make_run(d, steps, evals=evals, best_path=best_path, best_step=best_step)
        return d

    def test_prints_path_alone_and_json(self):
        d = self.run_dir([10, 20, 30], best_step=20)
        self.assertBestIs(d, "checkpoint-20")
        r = ckpt_ok(self, "best", d, "--json")
        data = r.json()
        self.assertEqual(data["name"], "checkpoint-20", r.describe())
        self.assertEqual(data["step"], 20, r.describe())
        self.assertEqual(os.path.normpath(data["path"]), os.path.join(d, "checkpoint-20"))

    def test_json_paths_that_are_not_utf8_come_back_byte_for_byte(self):
        # A byte that is not UTF-8 is written as Python's os.fsdecode writes it (a lone surrogate escape), so
        # os.fsencode gives the path back; U+FFFD would lose it.
        d = os.path.join(os.fsencode(self.tmp), b"run-caf\xe9")
        runs.make_run(os.fsdecode(d), [10, 20], best_step=20)
        os.makedirs(os.path.join(d, b"custom-\xff"))
        for args in (["list", d, "--json"], ["best", d, "--json"]):
            p = subprocess.run([harness.CKPT_BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertNotIn("\ufffd".encode(), p.stdout)
            data = json.loads(p.stdout)
            rows = data if isinstance(data, list) else [data]
            for row in rows:
                self.assertTrue(os.path.isdir(os.fsencode(row["path"])), row["path"])
            if args[0] == "list":
                self.assertIn("custom-\udcff", [row["name"] for row in rows])

    def test_best_model_checkpoint_matched_by_last_component(self):
        for kind, path in (("stale", "/old/place/run/checkpoint-20"), ("relative", "run/checkpoint-20"),
                           ("dot", "./run/./checkpoint-20"), ("bare", "checkpoint-20")):
            with self.subTest(kind=kind):
                d = self.run_dir([10, 20, 30], best_path=path, name="run-" + kind.replace(" ", "-"))
                self.assertBestIs(d, "checkpoint-20")

    def test_best_model_checkpoint_with_trailing_slash(self):
        # Python's Path (which Hugging Face applies: str(Path(best_model_checkpoint))) drops a trailing slash, so
        # the last path component of "output/run/checkpoint-20/" is checkpoint-20.
        d = self.run_dir([10, 20, 30], best_path="output/run/checkpoint-20/")
        self.assertBestIs(d, "checkpoint-20")

    def test_best_model_checkpoint_naming_an_incomplete_checkpoint_falls_back_to_eval_loss(self):
        evals = {10: {"eval_loss": 2.0}, 20: {"eval_loss": 1.0}, 30: {"eval_loss": 1.5}, 40: {"eval_loss": 0.1}}
        d = self.run_dir([10, 20, 30], evals=evals, best_step=40)
        runs.make_checkpoint(d, 40, broken="truncated")
        self.assertBestIs(d, "checkpoint-20")

    def test_metric_recompute_and_modes(self):
        evals = {10: {"eval_loss": 2.0, "eval_accuracy": 0.6, "eval_bleu": 10.0},
                 20: {"eval_loss": 1.0, "eval_accuracy": 0.9, "eval_bleu": 30.0},
                 30: {"eval_loss": 1.5, "eval_accuracy": 0.7, "eval_bleu": 20.0}}
        d = self.run_dir([10, 20, 30], evals=evals, best_step=30)  # trainer_state says 30; metrics say otherwise
        self.assertBestIs(d, "checkpoint-30")
        self.assertBestIs(d, "checkpoint-20", "--metric", "loss")
        self.assertBestIs(d, "checkpoint-20", "--metric", "eval_loss")
        self.assertBestIs(d, "checkpoint-10", "--metric", "loss", "--mode", "max")
        self.assertBestIs(d, "checkpoint-20", "--metric", "accuracy")          # not 'loss': max
        self.assertBestIs(d, "checkpoint-10", "--metric", "accuracy", "--mode", "min")
        self.assertBestIs(d, "checkpoint-20", "--metric", "bleu")
        r = ckpt_ok(self, "best", d, "--metric", "loss", "--json")
        data = r.json()
        self.assertEqual(data["metric"], "eval_loss", r.describe())
        self.assertEqual(data["value"], 1.0, r.describe())

    def test_the_metric_is_named(self):
        # trainer_state.json records best_metric but not which metric it is: best names the evaluation metric that has
        # that value at the best checkpoint, in --json and on stderr (stdout stays the path alone, for scripts).
        evals = {10: {"eval_loss": 2.0, "eval_accuracy": 0.6}, 20: {"eval_loss": 1.0, "eval_accuracy": 0.9},
                 30: {"eval_loss": 1.5, "eval_accuracy": 0.7}}
        d = os.path.join(self.tmp, "run")

        def state_for(best_metric):
            return lambda s: runs.trainer_state(s, evals=evals, best_metric=best_metric,
                                                best_model_checkpoint=os.path.join(d, "checkpoint-%d" % min(s, 20)))
        runs.make_run(d, [10, 20, 30], state_for=state_for(0.9))
        out, r = self.best_path(d)
        self.assertEqual(out, os.path.join(d, "checkpoint-20"), r.describe())
        self.assertEqual(r.stderr, "ckpt: best: checkpoint-20 (eval_accuracy 0.9)\n", r.describe())
        r = ckpt_ok(self, "best", d, "--json")
        self.assertEqual((r.json()["metric"], r.json()["value"], r.json()["source"]), ("eval_accuracy", 0.9, "trainer_state"),
                         r.describe())
        self.assertEqual(r.stderr, "", r.describe())
        # list shows that metric's column, as for --metric accuracy
        rows, r = self.list_json(d)
        self.assertEqual([row["metric"] for row in rows], [0.6, 0.9, 0.7], r.describe())
        self.assertIn(" eval_accuracy ", ckpt_ok(self, "list", d).stdout.splitlines()[0])
        # recomputed: the metric asked for
        out, r = self.best_path(d, "--metric", "loss")
        self.assertEqual(r.stderr, "ckpt: best: checkpoint-20 (eval_loss 1)\n", r.describe())
        # A value no metric (or two metrics) had at the best checkpoint names none: trainer_state.json's field instead.
        for name, best_metric, at_20 in (("run-none", 0.95, {"eval_loss": 1.0, "eval_accuracy": 0.9}),
                                         ("run-two", 0.9, {"eval_loss": 1.0, "eval_accuracy": 0.9, "eval_f1": 0.9})):
            with self.subTest(name):
                evals[20] = at_20
                d = os.path.join(self.tmp, name)
                runs.make_run(d, [10, 20, 30], state_for=state_for(best_metric))
                out, r = self.best_path(d)
                self.assertEqual(r.stderr, "ckpt: best: checkpoint-20 (best_metric %g)\n" % best_metric, r.describe())
                self.assertIsNone(ckpt_ok(self, "best", d, "--json").json()["metric"])

    def test_ties_keep_the_earlier_step(self):
        evals = {10: {"eval_loss": 2.0, "eval_accuracy": 0.5}, 20: {"eval_loss": 1.0, "eval_accuracy": 0.8},
                 30: {"eval_loss": 1.0, "eval_accuracy": 0.8}, 40: {"eval_loss": 1.0, "eval_accuracy": 0.8}}
        d = self.run_dir([10, 20, 30, 40], evals=evals)
        self.assertBestIs(d, "checkpoint-20", "--metric", "loss")
        self.assertBestIs(d, "checkpoint-20", "--metric", "accuracy")
        self.assertBestIs(d, "checkpoint-20")  # no best_model_checkpoint: recomputed with eval_loss
        evals = {10: {"eval_loss": 2.0}, 20: {"eval_loss": 3.0}, 30: {"eval_loss": 3.0}}
        d = self.run_dir([10, 20, 30], evals=evals, name="run2")
        self.assertBestIs(d, "checkpoint-20", "--metric", "loss", "--mode", "max")

    def test_recompute_ignores_incomplete_checkpoints(self):
        evals = {10: {"eval_loss": 2.0}, 20: {"eval_loss": 1.0}, 30: {"eval_loss": 0.5}}
        d = self.run_dir([10, 20], evals=evals)
        runs.make_checkpoint(d, 30, state=runs.trainer_state(30, evals=evals), broken="truncated")
        self.assertBestIs(d, "checkpoint-20", "--metric", "loss")

    def test_bare_nan_and_infinity_in_trainer_state(self):
        # trainer_state.json may hold bare NaN / Infinity (Python's json module writes them).
        evals = {10: {"eval_loss": float("nan")}, 20: {"eval_loss": 2.0}, 30: {"eval_loss": float("inf")},
                 40: {"eval_loss": 1.5}}
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20, 30, 40], evals=evals)
        with open(os.path.join(d, "checkpoint-40", "trainer_state.json")) as f:
            self.assertIn("NaN", f.read())
        rows, r = self.list_json(d)
        by = self.rows_by_name(rows)
        for name in ("checkpoint-10", "checkpoint-20", "checkpoint-30", "checkpoint-40"):
            self.assertTrue(by[name]["complete"], r.describe())
        self.assertBestIs(d, "checkpoint-40", "--metric", "loss")
        self.assertBestIs(d, "checkpoint-30", "--metric", "loss", "--mode", "max")
        self.assertBestIs(d, "checkpoint-40")

    def test_no_metric_anywhere_is_an_error(self):
        d = self.run_dir([10, 20])
        r = ckpt("best", d)
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertIn("ckpt: error:", r.stderr, r.describe())
        self.assertEqual(r.stdout, "", r.describe())
        r = ckpt("best", d, "--metric", "accuracy")
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertIn("ckpt: error:", r.stderr, r.describe())
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty)
        r = ckpt("best", empty)
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertIn("ckpt: error:", r.stderr, r.describe())
        self.assertEqual(sorted(os.listdir(d)), ["checkpoint-10", "checkpoint-20"])

    def test_link_created_relative_and_replaced(self):
        evals = {10: {"eval_loss": 2.0}, 20: {"eval_loss": 1.0}, 30: {"eval_loss": 1.5}}
        d = self.run_dir([10, 20, 30], evals=evals)
        link = os.path.join(d, "best")
        self.best_path(d, "--link", "best")
        self.assertTrue(os.path.islink(link))
        self.assertEqual(os.readlink(link), "checkpoint-20")
        self.assertEqual(os.path.realpath(link), os.path.realpath(os.path.join(d, "checkpoint-20")))
        self.best_path(d, "--link", "best", "--metric", "loss", "--mode", "max")
        self.assertEqual(os.readlink(link), "checkpoint-10")
        # An existing link pointing elsewhere is replaced; nothing else in the directory changes.
        os.remove(link)
        os.symlink("/nonexistent/target", link)
        self.best_path(d, "--link", "best")
        self.assertEqual(os.readlink(link), "checkpoint-20")
        self.assertEqual(sorted(os.listdir(d)), ["best", "checkpoint-10", "checkpoint-20", "checkpoint-30"])
        # The link is not listed as a checkpoint and list still works.
        rows, r = self.list_json(d)
        self.assertEqual([row["name"] for row in rows if row["kind"] == "checkpoint"],
                         ["checkpoint-10", "checkpoint-20", "checkpoint-30"], r.describe())

    def test_link_never_replaces_a_directory(self):
        d = self.run_dir([10, 20], evals={10: {"eval_loss": 1.0}, 20: {"eval_loss": 2.0}})
        runs.make_dir_entry(d, "best", files=2)
        before = harness.tree_snapshot(os.path.join(d, "best"))
        r = ckpt("best", d, "--link", "best")
        self.assertNotEqual(r.returncode, 0, "replaced or ignored a real directory named best\n" + r.describe())
        self.assertIn("ckpt: error:", r.stderr, r.describe())
        self.assertFalse(os.path.islink(os.path.join(d, "best")))
        self.assertEqual(harness.tree_snapshot(os.path.join(d, "best")), before)
        self.assertEqual(sorted(os.listdir(d)), ["best", "checkpoint-10", "checkpoint-20"], "temporary link left")

    def test_link_replaces_only_a_symlink(self):
        d = self.run_dir([10, 20], evals={10: {"eval_loss": 1.0}, 20: {"eval_loss": 2.0}})
        for name in ("config.json", "pytorch_model.bin", "fifo", "device"):
            with self.subTest(name=name):
                path = os.path.join(d, name)
                if name == "fifo":
                    os.mkfifo(path)
                elif name == "device":
                    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
                else:
                    with open(path, "w") as f:
                        f.write("user data")
                r = ckpt("best", d, "--link", name)
                self.assertEqual(r.returncode, 2, r.describe())
                self.assertIn("not a symlink", r.stderr, r.describe())
                self.assertFalse(os.path.islink(path))
                if name not in ("fifo", "device"):
                    with open(path) as f:
                        self.assertEqual(f.read(), "user data")
        self.assertEqual(harness.leftover_temporaries(d), [], "temporary link left")

    def test_export_into_a_checkpoint_is_refused(self):
        d = self.run_dir([10, 20], evals={10: {"eval_loss": 2.0}, 20: {"eval_loss": 1.0}})
        other = os.path.join(self.tmp, "other-run")
        runs.make_run(other, [5])
        like_a_checkpoint = os.path.join(self.tmp, "saved")  # a checkpoint by its content, whatever its name
        runs.make_checkpoint(self.tmp, 7, name="saved")
        os.symlink(os.path.join(d, "checkpoint-10"), os.path.join(self.tmp, "link-to-10"))
        before = harness.tree_snapshot(self.tmp)
        for dest in (os.path.join(d, "checkpoint-10"), os.path.join(d, "checkpoint-20"), os.path.join(d, "checkpoint-10/"),
                     os.path.join(d, "checkpoint-10", "sub"), os.path.join(d, "checkpoint-30"),
                     os.path.join(other, "checkpoint-5"), os.path.join(other, "checkpoint-5", "a", "b"),
                     like_a_checkpoint, os.path.join(like_a_checkpoint, "export"),
                     os.path.join(self.tmp, "link-to-10"), os.path.join(self.tmp, "link-to-10", "x")):
            with self.subTest(dest=dest):
                r = ckpt("best", d, "--export", dest)
                self.assertEqual(r.returncode, 2, r.describe())
                self.assertIn("checkpoint", r.stderr, r.describe())
                self.assertEqual(harness.tree_snapshot(self.tmp), before)
        # The run directory itself (where Hugging Face's save_model writes) and a directory beside the run's
        # checkpoints stay valid destinations.
        self.best_path(d, "--export", d)
        self.best_path(d, "--export", os.path.join(d, "exported"))

    def test_link_name_must_be_plain(self):
        d = self.run_dir([10, 20], best_step=10)
        for bad in ("a/b", "..", ".", "checkpoint-5", "../escape"):
            with self.subTest(name=bad):
                r = ckpt("best", d, "--link", bad)
                self.assertEqual(r.returncode, 2, r.describe())
                self.assertIn("ckpt: error:", r.stderr)
        self.assertFalse(os.path.lexists(os.path.join(self.tmp, "escape")))
        self.assertEqual(sorted(os.listdir(d)), ["checkpoint-10", "checkpoint-20"])

    def test_export_sharded(self):
        d = os.path.join(self.tmp, "run")
        os.makedirs(d)
        runs.make_checkpoint(d, 10, weights="sharded", state=runs.trainer_state(
            10, evals={10: {"eval_loss": 1.0}}))
        out = os.path.join(self.tmp, "export")
        self.best_path(d, "--export", out)
        src = os.path.join(d, "checkpoint-10")
        for name in ("model.safetensors.index.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "config.json"):
            with open(os.path.join(src, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)
        self.assertNotIn("trainer_state.json", os.listdir(out))

    def test_export_destinations(self):
        d = os.path.join(self.tmp, "run")
        os.makedirs(d)
        runs.make_checkpoint(d, 10, weights="sharded", state=runs.trainer_state(10, evals={10: {"eval_loss": 1.0}}))
        exported = sorted(["model.safetensors.index.json", "model-00001-of-00002.safetensors",
                           "model-00002-of-00002.safetensors", "config.json"])

        def visible(path):
            return sorted(n for n in os.listdir(path) if not n.startswith("."))

        # Missing parents are created.
        nested = os.path.join(self.tmp, "exports", "run1", "best")
        self.best_path(d, "--export", nested)
        self.assertEqual(visible(nested), exported)
        # A repository clone (hidden entries of its own) is written into, never replaced.
        clone = os.path.join(self.tmp, "clone")
        os.makedirs(os.path.join(clone, ".git"))
        self.best_path(d, "--export", clone)
        self.best_path(d, "--export", clone)
        self.assertTrue(os.path.isdir(os.path.join(clone, ".git")))
        self.assertEqual(sorted(os.listdir(clone)), sorted(exported + [".git"]))  # no temporaries left
        # A symlink (with a trailing slash too) to an earlier export stays a symlink; its target gets the files.
        link = os.path.join(self.tmp, "served")
        os.symlink(nested, link)
        for dest in (link, link + "/"):
            self.best_path(d, "--export", dest)
            self.assertTrue(os.path.islink(link), dest)
        self.assertEqual(sorted(os.listdir(nested)), exported)
        # A file is refused, with or without a trailing slash, and left alone.
        plain = os.path.join(self.tmp, "plain")
        with open(plain, "w") as f:
            f.write("keep")
        for dest in (plain, plain + "/"):
            r = ckpt("best", d, "--export", dest)
            self.assertEqual(r.returncode, 2, r.describe())
            with open(plain) as f:
                self.assertEqual(f.read(), "keep", dest)
        # Exporting into the run directory twice leaves no link temporaries.
        self.best_path(d, "--export", d)
        self.best_path(d, "--export", d)
        self.assertEqual(harness.leftover_temporaries(d), [])


# ----------------------------------------------------------------------------------------------------------------
# latest
# ----------------------------------------------------------------------------------------------------------------


def flip_zip_member_byte(path, suffix):
    """Flips the first data byte of the stored zip member whose name ends with `suffix` (its CRC-32 no longer
    matches; the headers every other reader looks at stay intact)."""
    import zipfile  # noqa: PLC0415

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + name_length + extra_length
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x01]))


def flip_archive_frame_byte(path, file_name):
    """Flips the first byte of the first frame of `file_name` inside an archive; the manifest stays readable."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    manifest_offset = int.from_bytes(data[-32:-24], "little")
    manifest = json.loads(bytes(data[manifest_offset:-32]))
    entry = next(f for f in manifest["files"] if f["name"] == file_name)
    frame = entry["segments"][0]["frames"][0]
    data[frame[1]] ^= 0x80
    with open(path, "wb") as f:
        f.write(data)


class LatestTest(Tmp):
    def latest(self, *args, **kw):
        r = ckpt_ok(self, "latest", *args, **kw)
        self.assertEqual(len(r.stdout.splitlines()), 1, "latest must print the path alone\n" + r.describe())
        return r.stdout.rstrip("\n"), r

    def archive(self, run_dir, step):
        """Archives checkpoint-<step> into run_dir/archive/ (as rotate --archive does) and returns the archive."""
        out = os.path.join(run_dir, "archive", "checkpoint-%d.ckpt" % step)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        ckpt_ok(self, "convert", os.path.join(run_dir, "checkpoint-%d" % step), "--to", "archive", "-o", out, "-q")
        return out

    def test_the_newest_complete_checkpoint_never_a_half_written_or_staging_one(self):
        # What transformers' get_last_checkpoint gets wrong after a kill: the highest checkpoint-N that is there.
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [5, 20, 100])
        runs.make_checkpoint(d, 200, broken="no_state")
        runs.make_checkpoint(d, 300, broken="truncated")
        runs.make_dir_entry(d, "tmp-checkpoint-400")
        runs.make_dir_entry(d, ".ckpt-staging-checkpoint-500-1-abc")
        runs.make_dir_entry(d, "milestone")
        path, r = self.latest(d)
        self.assertEqual(path, os.path.join(d, "checkpoint-100"), r.describe())
        self.assertEqual(r.stderr, "", r.describe())
        # The path as the user would pass it: the run directory as given, joined with the name.
        self.assertEqual(self.latest(d + "/")[0], d + "/checkpoint-100")
        self.assertEqual(self.latest("run", cwd=self.tmp)[0], "run/checkpoint-100")
        doc = ckpt_ok(self, "latest", "--json", d).json()
        self.assertEqual(doc, {"name": "checkpoint-100", "path": os.path.join(d, "checkpoint-100"), "step": 100,
                               "kind": "checkpoint", "skipped": []})

    def test_none_complete_is_exit_one_with_a_one_line_reason(self):
        d = os.path.join(self.tmp, "run")
        runs.make_checkpoint(d, 10, broken="no_state")
        runs.make_dir_entry(d, "tmp-checkpoint-20")
        for args in (["latest", d], ["latest", "--json", d], ["latest", "--verify", d], ["latest", "--archives", d]):
            with self.subTest(args=args):
                r = ckpt(*args)
                self.assertEqual(r.returncode, 1, r.describe())
                if "--json" in args:  # the error object, and only it
                    self.assertEqual(json.loads(r.stdout)["error"]["kind"], "not_found", r.describe())
                else:
                    self.assertEqual(r.stdout, "", r.describe())
                self.assertEqual(r.stderr, "ckpt: error: %s: no complete checkpoint\n" % d, r.describe())
        # A run directory that holds nothing yet: the note, then the reason.
        fresh = os.path.join(self.tmp, "fresh")
        os.makedirs(fresh)
        r = ckpt("latest", fresh)
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertEqual(r.stderr, "ckpt: note: %s holds no checkpoints yet\nckpt: error: %s: no complete checkpoint\n"
                         % (fresh, fresh), r.describe())

    def test_archives_only_with_archives_and_restored_on_request(self):
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20, 30])
        archived = self.archive(d, 30)
        original = harness.tree_snapshot(os.path.join(d, "checkpoint-30"))
        shutil.rmtree(os.path.join(d, "checkpoint-30"))
        runs.make_checkpoint(d, 40, broken="truncated")  # half-written when the job was killed
        self.archive(d, 20)  # a live checkpoint of the same step is preferred to its archive
        self.assertEqual(self.latest(d)[0], os.path.join(d, "checkpoint-20"))
        path, r = self.latest(d, "--archives")
        self.assertEqual(path, archived, r.describe())
        doc = ckpt_ok(self, "latest", "--archives", "--json", d).json()
        self.assertEqual(doc, {"name": "archive/checkpoint-30.ckpt", "path": archived, "step": 30, "kind": "archive",
                               "skipped": []})
        restored = os.path.join(self.tmp, "scratch", "resume-30")
        os.makedirs(os.path.dirname(restored))
        path, r = self.latest(d, "--archives", "--restore-to", restored)
        self.assertEqual(path, restored, r.describe())
        self.assertEqual(r.stderr, "ckpt: latest: restored archive/checkpoint-30.ckpt into %s\n" % restored, r.describe())
        self.assertEqual(harness.tree_snapshot(restored), original)
        # A restore never writes over anything.
        r = ckpt("latest", d, "--archives", "--restore-to", restored)
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertEqual(r.stderr, "ckpt: error: %s: --restore-to: already exists; restore into a new directory\n"
                         % restored, r.describe())
        shutil.rmtree(restored)
        doc = ckpt_ok(self, "latest", "--archives", "--restore-to", restored, "--json", d).json()
        self.assertEqual(doc["restored_to"], restored)
        self.assertEqual((doc["kind"], doc["path"]), ("archive", archived))
        # Nothing to restore when the newest is live: its path, and no directory made.
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.rename(archived, archived + ".moved")
        path, r = self.latest(d, "--archives", "--restore-to", elsewhere)
        self.assertEqual(path, os.path.join(d, "checkpoint-20"), r.describe())
        self.assertFalse(os.path.exists(elsewhere))
        self.assertNotIn("restored_to", ckpt_ok(self, "latest", "--archives", "--restore-to", elsewhere, "--json", d).json())
        # --restore-to restores an archive, which only --archives lets latest pick.
        r = ckpt("latest", d, "--restore-to", elsewhere)
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertIn("--restore-to requires --archives", r.stderr, r.describe())

    def test_archives_are_named_when_they_are_all_there_is(self):
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10])
        self.archive(d, 10)
        shutil.rmtree(os.path.join(d, "checkpoint-10"))
        r = ckpt("latest", d)
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertEqual(r.stderr, "ckpt: error: %s: no complete checkpoint (1 archived: --archives considers them)\n" % d,
                         r.describe())

    def test_verify_falls_back_past_corrupt_weights_saying_so(self):
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20])
        bad = runs.make_checkpoint(d, 30, weights="bin")
        flip_zip_member_byte(os.path.join(bad, "pytorch_model.bin"), "/data/0")
        # Without --verify only headers are read: the corrupt one is complete and newest.
        self.assertEqual(self.latest(d)[0], bad)
        path, r = self.latest(d, "--verify")
        self.assertEqual(path, os.path.join(d, "checkpoint-20"), r.describe())
        lines = r.stderr.splitlines()
        self.assertEqual(len(lines), 2, r.describe())
        self.assertRegex(lines[0], r"^ckpt: latest: skipped checkpoint-30: verification failed: .*CRC-32", r.describe())
        self.assertEqual(lines[1], "ckpt: latest: checkpoint-20 is the newest that verifies", r.describe())
        r = ckpt_ok(self, "latest", "--verify", "--json", d)
        self.assertEqual(r.stderr, "", r.describe())
        doc = r.json()
        self.assertEqual((doc["name"], doc["step"], doc["kind"]), ("checkpoint-20", 20, "checkpoint"))
        self.assertEqual([(s["name"], s["path"], s["step"], s["kind"]) for s in doc["skipped"]],
                         [("checkpoint-30", bad, 30, "checkpoint")])
        self.assertTrue(any("CRC-32" in e for e in doc["skipped"][0]["errors"]), doc)
        # Nothing verifies: exit 3 (a failed --verify), one line, nothing on stdout but --json's error object.
        shutil.rmtree(os.path.join(d, "checkpoint-10"))
        shutil.rmtree(os.path.join(d, "checkpoint-20"))
        for args in (["latest", "--verify", d], ["latest", "--verify", "--json", d]):
            with self.subTest(args=args):
                r = ckpt(*args)
                self.assertEqual(r.returncode, 3, r.describe())
                if "--json" in args:
                    self.assertEqual(json.loads(r.stdout)["error"]["kind"], "corrupt", r.describe())
                else:
                    self.assertEqual(r.stdout, "", r.describe())
                self.assertEqual(r.stderr.splitlines()[-1],
                                 "ckpt: error: %s: no complete checkpoint verifies (1 failed --verify)" % d, r.describe())

    def test_verify_checks_an_archive_before_picking_it(self):
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20])
        archived = self.archive(d, 20)
        shutil.rmtree(os.path.join(d, "checkpoint-20"))
        flip_archive_frame_byte(archived, "model.safetensors")
        self.assertEqual(self.latest(d, "--archives")[0], archived)
        restored = os.path.join(self.tmp, "restored")
        path, r = self.latest(d, "--archives", "--verify", "--restore-to", restored)
        self.assertEqual(path, os.path.join(d, "checkpoint-10"), r.describe())
        self.assertRegex(r.stderr, r"^ckpt: latest: skipped archive/checkpoint-20.ckpt: verification failed: .*checksum mismatch")
        self.assertFalse(os.path.exists(restored))


def inodes(path):
    """{relative path: (st_dev, st_ino)} of every regular file below `path`."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), path)] = (st.st_dev, st.st_ino)
    return out


class TagTest(Tmp):
    """ckpt tag: named checkpoints (hard-linked copies listed as named, never rotated), and tag --delete."""

    def build(self):
        d = os.path.join(self.tmp, "run")
        evals = {10: {"eval_loss": 2.0}, 20: {"eval_loss": 1.0}, 30: {"eval_loss": 1.5}}
        runs.make_run(d, [10, 20, 30], best_step=20, evals=evals, extra_files=2)
        return d

    def tag(self, *args):
        r = ckpt_ok(self, "tag", *args)
        self.assertEqual(r.stderr, "", r.describe())
        return r

    def assertRefused(self, r, code, message, kind):
        """Exit `code`, the one error line `message` (a regex), and with --json only the error object of `kind`."""
        self.assertEqual(r.returncode, code, r.describe())
        if "--json" in r.args:
            self.assertEqual(json.loads(r.stdout)["error"]["kind"], kind, r.describe())
        else:
            self.assertEqual(r.stdout, "", r.describe())
        self.assertEqual(len(r.stderr.splitlines()), 1, r.describe())
        self.assertRegex(r.stderr, "^ckpt: error: " + message, r.describe())

    def test_a_tag_is_a_hard_linked_complete_copy_listed_as_named(self):
        d = self.build()
        source = os.path.join(d, "checkpoint-20")
        os.makedirs(os.path.join(source, "extra", "deeper"))
        with open(os.path.join(source, "extra", "deeper", "notes.txt"), "w") as f:
            f.write("sub directories are linked too\n")
        r = self.tag(d, "checkpoint-20", "milestone")
        named = os.path.join(d, "milestone")
        self.assertEqual(r.stdout, "tagged checkpoint-20 as %s (6 files, 6 hard-linked)\n" % named, r.describe())
        self.assertEqual(harness.tree_snapshot(named), harness.tree_snapshot(source))
        self.assertEqual(inodes(named), inodes(source))
        self.assertEqual([n for n in os.listdir(d) if n.startswith(".") and n != ".ckpt.lock"], [])  # no staging left
        rows, r = self.list_json(d)
        by = self.rows_by_name(rows)
        row = by["milestone"]
        self.assertEqual((row["kind"], row["named"], row["step"], row["complete"], row["is_best"], row["is_latest"]),
                         ("custom", True, 20, True, False, False), r.describe())
        self.assertEqual(row["metric"], 1.0, r.describe())  # its own trainer_state.json's evaluation at its step
        self.assertEqual(row["size_bytes"], tree_size(named))
        self.assertEqual([n for n, row in by.items() if row["named"]], ["milestone"])
        self.assertEqual([row["name"] for row in rows][-1], "milestone", "named checkpoints after the checkpoints")
        self.assertTrue(by["checkpoint-20"]["is_best"] and by["checkpoint-30"]["is_latest"], r.describe())
        text = ckpt_ok(self, "list", d).stdout.splitlines()
        line = next(l for l in text if l.startswith("milestone "))
        self.assertRegex(line, r"^milestone +20 .* named +yes ", text)
        self.assertRegex(text[-1], r"^total: 3 checkpoints \(3 complete\), 0 archives, 1 named, ")
        doc = self.tag("--json", d, "checkpoint-10", "first").json()
        self.assertEqual(doc, {"name": "first", "path": os.path.join(d, "first"), "source": "checkpoint-10",
                               "source_path": os.path.join(d, "checkpoint-10"), "source_kind": "checkpoint", "step": 10,
                               "files": 5, "hard_linked": 5})

    def test_best_latest_and_rotate_never_take_a_named_checkpoint(self):
        d = self.build()
        self.tag(d, "checkpoint-30", "newest-copy")
        shutil.rmtree(os.path.join(d, "checkpoint-30"))
        self.assertEqual(ckpt_ok(self, "latest", d).stdout, os.path.join(d, "checkpoint-20") + "\n")
        self.assertEqual(ckpt_ok(self, "best", d, "--metric", "eval_loss", "--mode", "max").stdout,
                         os.path.join(d, "checkpoint-10") + "\n")  # newest-copy's 1.5 is higher, but it is a copy
        decisions = {x["name"]: x for x in ckpt_ok(self, "rotate", d, "--keep", "1", "--json").json()["decisions"]}
        self.assertEqual((decisions["newest-copy"]["action"], decisions["newest-copy"]["reason"]),
                         ("keep", "named checkpoint, never rotated"))
        self.assertTrue(os.path.isdir(os.path.join(d, "newest-copy")))

    def test_rotating_the_source_away_leaves_the_tag_complete_and_identical(self):
        d = self.build()
        self.tag(d, "checkpoint-10", "first")
        before = harness.tree_snapshot(os.path.join(d, "checkpoint-10"))
        ckpt_ok(self, "rotate", d, "--keep", "1", "-q")
        self.assertEqual(runs.entries(d), ["checkpoint-20", "checkpoint-30", "first"])
        self.assertEqual(harness.tree_snapshot(os.path.join(d, "first")), before)
        row = self.rows_by_name(self.list_json(d)[0])["first"]
        self.assertTrue(row["complete"] and row["named"], row)

    def test_hostile_names_are_refused_and_nothing_is_made(self):
        d = self.build()
        os.makedirs(os.path.join(d, "plain"))
        with open(os.path.join(d, "notes"), "w") as f:
            f.write("a file")
        os.symlink("checkpoint-10", os.path.join(d, "link"))
        os.symlink("nowhere", os.path.join(d, "dangling"))
        self.tag(d, "checkpoint-10", "kept")
        before = harness.tree_snapshot(d)
        not_one = "'%s' is not one name: a named checkpoint is an entry of the run directory, without '/'"
        cases = [("../x", not_one % r"\.\./x"), ("a/b", not_one % "a/b"), ("/tmp/x", not_one % "/tmp/x"),
                 ("", "a checkpoint name must not be empty"),
                 (".hidden", "'.hidden' begins with '.'"), (".", "'.' begins with '.'"), ("..", r"'\.\.' begins with '\.'"),
                 ("x" * 201, r"'x{201}' is longer than 200 bytes \(the file system's 255 less room for its staging name\)$"),
                 ("checkpoint-5", "'checkpoint-5' begins with checkpoint-: such names are rotation's"),
                 ("checkpoint-best", "'checkpoint-best' begins with checkpoint-"),
                 ("tmp-checkpoint-5", "'tmp-checkpoint-5' begins with tmp-checkpoint-, the Trainer's staging name"),
                 ("archive", "'archive' is the run directory's archive directory"),
                 ("final.ckpt", r"'final\.ckpt' ends in \.ckpt, an archive's name"),
                 ("config.json", r"'config\.json' is a file the Trainer writes in the run directory"),
                 ("runs", "'runs' is a file the Trainer writes"),
                 ("notes", "%s/notes: already exists \\(a regular file\\)$" % d),
                 ("plain", "%s/plain: already exists \\(a directory\\)$" % d),
                 ("link", "%s/link: already exists \\(a symlink\\)$" % d),
                 ("dangling", "%s/dangling: already exists \\(a symlink\\)$" % d),
                 ("kept", "%s/kept: already exists \\(a named checkpoint: `ckpt tag --delete %s kept` deletes it\\)$" % (d, d))]
        for name, message in cases:
            for json_flag in ([], ["--json"]):
                with self.subTest(name=name[:20], json=bool(json_flag)):
                    self.assertRefused(ckpt("tag", *json_flag, d, "checkpoint-20", name), 2, message, "invalid_argument")
        self.assertEqual(harness.tree_snapshot(d), before)
        self.assertEqual(len(harness.tree_snapshot(d, ignore=())), len(before) + 1)  # the lock file, nothing else
        # The longest NAME, and deleted again: its staging and trash names fit too.
        self.tag(d, "checkpoint-20", "n" * 200)
        self.tag("--delete", d, "n" * 200)

    def test_the_checkpoint_is_a_complete_one_as_list_names_it(self):
        d = self.build()
        runs.make_checkpoint(d, 40, broken="truncated")
        runs.make_checkpoint(d, 50)
        os.symlink("../checkpoint-10/model.safetensors", os.path.join(d, "checkpoint-50", "weights-link"))
        runs.make_dir_entry(d, "tmp-checkpoint-60")
        self.tag(d, "checkpoint-10", "first")
        before = harness.tree_snapshot(d)
        cases = [("checkpoint-40", 3, "%s/checkpoint-40: not a complete checkpoint: .*model.safetensors" % d, "corrupt"),
                 ("checkpoint-50", 3, "%s/checkpoint-50/weights-link: not a regular file \\(a symlink\\); only regular files "
                                      "are read, symlinks are not followed" % d, "unsupported"),
                 ("checkpoint-99", 1, "%s: no checkpoint or archive named 'checkpoint-99' \\(the names ckpt list shows: "
                                      "checkpoint-N, archive/checkpoint-N.ckpt\\)$" % d, "not_found"),
                 ("best", 1, "%s: no checkpoint or archive named 'best'" % d, "not_found"),
                 ("latest", 1, "%s: no checkpoint or archive named 'latest'" % d, "not_found"),
                 (os.path.join(d, "checkpoint-10"), 1, "%s: no checkpoint or archive named" % d, "not_found"),
                 ("first", 2, "%s/first: is a named checkpoint, not a checkpoint-N or an archive of one" % d, "invalid_argument"),
                 ("tmp-checkpoint-60", 2, "%s/tmp-checkpoint-60: is a staging directory, not a checkpoint-N" % d, "invalid_argument")]
        for source, code, message, kind in cases:
            for json_flag in ([], ["--json"]):
                with self.subTest(source=source, json=bool(json_flag)):
                    self.assertRefused(ckpt("tag", *json_flag, d, source, "copy"), code, message, kind)
        self.assertEqual(harness.tree_snapshot(d), before)

    def test_an_archive_is_restored_into_the_tag(self):
        d = self.build()
        archived = os.path.join(d, "archive", "checkpoint-20.ckpt")
        os.makedirs(os.path.dirname(archived))
        ckpt_ok(self, "convert", os.path.join(d, "checkpoint-20"), "--to", "archive", "-o", archived, "-q")
        original = harness.tree_snapshot(os.path.join(d, "checkpoint-20"))
        shutil.rmtree(os.path.join(d, "checkpoint-20"))
        r = self.tag(d, "archive/checkpoint-20.ckpt", "best-20")
        self.assertEqual(r.stdout, "tagged archive/checkpoint-20.ckpt as %s (5 files restored)\n" % os.path.join(d, "best-20"))
        self.assertEqual(harness.tree_snapshot(os.path.join(d, "best-20")), original)
        row = self.rows_by_name(self.list_json(d)[0])["best-20"]
        self.assertEqual((row["named"], row["complete"], row["step"]), (True, True, 20))
        # An archive in the run directory itself, as list names it; its manifest names the checkpoint it holds.
        os.rename(archived, os.path.join(d, "checkpoint-20.ckpt"))
        doc = self.tag("--json", d, "checkpoint-20.ckpt", "again").json()
        self.assertEqual((doc["source_kind"], doc["step"], doc["files"], doc["hard_linked"]), ("archive", 20, 5, 0))
        # A damaged archive: its sha256 fails, nothing appears.
        flip_archive_frame_byte(os.path.join(d, "checkpoint-20.ckpt"), "model.safetensors")
        r = ckpt("tag", d, "checkpoint-20.ckpt", "damaged")
        self.assertRefused(r, 3, ".*checksum mismatch", "corrupt")
        self.assertFalse(os.path.exists(os.path.join(d, "damaged")))
        self.assertEqual([n for n in os.listdir(d) if n.startswith(".") and n != ".ckpt.lock"], [])

    def test_tag_and_delete_wait_for_the_run_directorys_lock(self):
        # rotate deletes under the lock: a tag links its source, and a delete renames, only while holding it.
        d = self.build()
        self.tag(d, "checkpoint-20", "old")
        fd = os.open(os.path.join(d, ".ckpt.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            procs = [subprocess.Popen([harness.CKPT_BIN, "tag", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                     for args in ([d, "checkpoint-10", "new"], ["--delete", d, "old"])]
            for p in procs:
                wait_until_blocked_in_flock(p)
            self.assertFalse(os.path.exists(os.path.join(d, "new")))
            self.assertTrue(os.path.exists(os.path.join(d, "old")))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        for p in procs:
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
        self.assertEqual(runs.entries(d), ["checkpoint-10", "checkpoint-20", "checkpoint-30", "new"])

    def test_delete_removes_only_a_named_checkpoint(self):
        d = self.build()
        self.tag(d, "checkpoint-20", "keep")
        self.tag(d, "checkpoint-30", "gone")
        os.symlink("keep", os.path.join(d, "link-to-keep"))
        os.makedirs(os.path.join(d, "outside"))
        shutil.copytree(os.path.join(d, "keep"), os.path.join(self.tmp, "other-run-named"))
        runs.make_dir_entry(d, "plain")
        with open(os.path.join(d, "notes"), "w") as f:
            f.write("a file")
        r = self.tag("--delete", d, "gone")
        self.assertEqual(r.stdout, "deleted %s\n" % os.path.join(d, "gone"))
        self.assertFalse(os.path.exists(os.path.join(d, "gone")))
        self.assertEqual(runs.trash_entries(d), [])
        self.assertTrue(os.path.isdir(os.path.join(d, "checkpoint-30")), "its source stays")
        before = harness.tree_snapshot(self.tmp)
        cases = [("link-to-keep", 2, "%s/link-to-keep: is a symlink, not a named checkpoint" % d, "invalid_argument"),
                 ("notes", 2, "%s/notes: is a regular file, not a named checkpoint" % d, "invalid_argument"),
                 ("plain", 2, "%s/plain: holds no trainer_state.json: not a named checkpoint" % d, "invalid_argument"),
                 ("checkpoint-10", 2, "%s/checkpoint-10: is a checkpoint of the run, not a named one \\(rotate deletes those\\)$" % d,
                  "invalid_argument"),
                 ("gone", 1, "%s/gone: no such named checkpoint$" % d, "not_found"),
                 ("../other-run-named", 2, "'../other-run-named' is not one name", "invalid_argument"),
                 (".ckpt.lock", 2, "'.ckpt.lock' begins with '.'", "invalid_argument")]
        for name, code, message, kind in cases:
            for json_flag in ([], ["--json"]):
                with self.subTest(name=name, json=bool(json_flag)):
                    self.assertRefused(ckpt("tag", "--delete", *json_flag, d, name), code, message, kind)
        self.assertEqual(harness.tree_snapshot(self.tmp), before)
        doc = self.tag("--delete", "--json", d, "keep").json()
        self.assertEqual(doc, {"name": "keep", "path": os.path.join(d, "keep"), "step": 20, "size_bytes": doc["size_bytes"]})
        self.assertGreater(doc["size_bytes"], 0)
        self.assertFalse(os.path.exists(os.path.join(d, "keep")))
        self.assertTrue(os.path.islink(os.path.join(d, "link-to-keep")))

    def test_usage(self):
        d = self.build()
        for args, message in ((["tag", d], "tag takes RUN_DIR, CHECKPOINT and NAME"),
                              (["tag", d, "checkpoint-10"], "tag takes RUN_DIR, CHECKPOINT and NAME"),
                              (["tag", "--delete", d], "--delete takes RUN_DIR and the NAME to delete"),
                              (["tag", "--delete", d, "checkpoint-10", "x"], "--delete takes RUN_DIR and the NAME to delete")):
            with self.subTest(args=args):
                self.assertRefused(ckpt(*args), 2, message, "usage")
        self.assertRefused(ckpt("tag", os.path.join(self.tmp, "nope"), "checkpoint-10", "x"), 1,
                           "%s: no such directory" % os.path.join(self.tmp, "nope"), "not_found")


# ----------------------------------------------------------------------------------------------------------------
# Several runs at once: list and latest over RUN_DIR... and --recursive ROOT
# ----------------------------------------------------------------------------------------------------------------


def listed_bytes(run_dir):
    """The bytes list counts for a run: every file below its entries (checkpoints, staging and custom directories,
    archives in it and in archive/), symlinks and hidden entries aside, measured on disk."""
    total = 0
    for entry in os.scandir(run_dir):
        if entry.name.startswith(".") or entry.is_symlink():
            continue
        if entry.is_dir() and entry.name == "archive":
            total += sum(os.path.getsize(a.path) for a in os.scandir(entry.path)
                         if a.name.endswith(".ckpt") and not a.name.startswith(".") and a.is_file(follow_symlinks=False))
        elif entry.is_dir():
            total += tree_size(entry.path)
        elif entry.name.endswith(".ckpt"):
            total += entry.stat().st_size
    return total


def as_nobody():
    """preexec_fn that drops root (tests run as root here, whom no permission stops) to nobody; None otherwise."""
    if os.geteuid() != 0:
        return None

    def drop():
        os.setgid(65534)
        os.setuid(65534)
    return drop


class SeveralRunsListTest(Tmp):
    def build(self):
        """runs/a (three checkpoints, one archived, a custom directory), runs/b (two, one incomplete), runs/c (none
        yet)."""
        a = os.path.join(self.tmp, "runs", "a")
        b = os.path.join(self.tmp, "runs", "b")
        c = os.path.join(self.tmp, "runs", "c")
        runs.make_run(a, [10, 20, 30], extra_files=2)
        out = os.path.join(a, "archive", "checkpoint-5.ckpt")
        os.makedirs(os.path.dirname(out))
        ckpt_ok(self, "convert", os.path.join(a, "checkpoint-10"), "--to", "archive", "-o", out, "-q")
        runs.make_dir_entry(a, "milestone", files=3)
        runs.make_run(b, [100, 200])
        runs.make_checkpoint(b, 300, broken="no_state")
        os.makedirs(c)
        return a, b, c

    def test_text_is_each_run_under_its_path_then_the_totals(self):
        a, b, c = self.build()
        r = ckpt_ok(self, "list", a, b, c)
        alone = {d: ckpt_ok(self, "list", d).stdout for d in (a, b, c)}
        # Each run's section is its single-run listing (table and total line) under a line naming it; a run with
        # nothing in it says so in one line; a blank line between runs.
        self.assertEqual(r.stdout.split("\n\n")[:3], [a + ":\n" + alone[a].rstrip("\n"), b + ":\n" + alone[b].rstrip("\n"),
                                                      alone[c].rstrip("\n")], r.describe())
        self.assertEqual(alone[c], "%s: no checkpoints\n" % c)
        self.assertEqual(r.stderr, "ckpt: note: %s holds no checkpoints yet\n" % c, r.describe())
        total = sum(listed_bytes(d) for d in (a, b, c))
        self.assertEqual(r.stdout.split("\n\n")[3], "overall: 3 runs, 6 checkpoints (5 complete), 1 archive, %s\n" % runs.human_bytes(total),
                         r.describe())

    def test_json_is_one_document_with_totals_of_the_real_sizes(self):
        a, b, c = self.build()
        first = next(row["name"] for row in ckpt_ok(self, "list", "--json", a).json() if row["kind"] == "checkpoint")
        ckpt_ok(self, "tag", a, first, "kept")  # a named checkpoint: counted apart, its (linked) bytes too
        r = ckpt_ok(self, "list", "--json", a, b, c)
        doc = r.json()
        self.assertEqual(list(doc), ["runs", "totals"], r.describe())
        self.assertEqual([run["run_dir"] for run in doc["runs"]], [a, b, c])
        for run in doc["runs"]:
            self.assertEqual(list(run), ["run_dir", "checkpoints", "totals"], r.describe())
            alone = ckpt_ok(self, "list", "--json", run["run_dir"]).json()
            self.assertEqual([row["name"] for row in run["checkpoints"]], [row["name"] for row in alone])
            self.assertEqual(run["checkpoints"], alone, run["run_dir"])
        by_run = {run["run_dir"]: run["totals"] for run in doc["runs"]}
        self.assertEqual(by_run[a], {"checkpoints": 3, "complete": 3, "archives": 1, "named": 1, "size_bytes": listed_bytes(a)})
        self.assertEqual(by_run[b], {"checkpoints": 3, "complete": 2, "archives": 0, "named": 0, "size_bytes": listed_bytes(b)})
        self.assertEqual(by_run[c], {"checkpoints": 0, "complete": 0, "archives": 0, "named": 0, "size_bytes": 0})
        self.assertEqual(doc["totals"], {"runs": 3, "failed": 0, "checkpoints": 6, "complete": 5, "archives": 1,
                                         "named": 1, "size_bytes": listed_bytes(a) + listed_bytes(b)})
        # The sizes are those of the files, not of a guess: a megabyte more in one checkpoint is a megabyte more.
        with open(os.path.join(b, "checkpoint-100", "optimizer.pt"), "wb") as f:
            f.write(b"\0" * (1 << 20))
        doc2 = ckpt_ok(self, "list", "--json", a, b, c).json()
        self.assertEqual(doc2["totals"]["size_bytes"], doc["totals"]["size_bytes"] + (1 << 20))

    def test_recursive_finds_nested_runs_by_path_and_never_follows_a_symlink(self):
        root = os.path.join(self.tmp, "runs")
        runs.make_run(os.path.join(root, "b"), [10])
        runs.make_run(os.path.join(root, "a"), [10, 20])
        runs.make_run(os.path.join(root, "a", "sweep-1"), [5])  # a run nested in a run
        runs.make_run(os.path.join(root, "team", "exp"), [7])
        os.makedirs(os.path.join(root, "notes", "drafts"))
        runs.make_run(os.path.join(root, ".old"), [1])  # hidden: skipped
        runs.make_dir_entry(os.path.join(root, "a"), ".ckpt-staging-checkpoint-30-1-x")
        outside = os.path.join(self.tmp, "elsewhere", "run")
        runs.make_run(outside, [99])
        os.symlink(outside, os.path.join(root, "link"))  # never followed
        doc = ckpt_ok(self, "list", "--json", "--recursive", root).json()
        expected = [os.path.join(root, p) for p in ("a", "a/sweep-1", "b", "team/exp")]
        self.assertEqual([run["run_dir"] for run in doc["runs"]], expected)
        self.assertEqual(doc["totals"]["runs"], 4)
        r = ckpt_ok(self, "list", "--recursive", root)
        headers = [line for line in r.stdout.splitlines() if line.endswith(":")]
        self.assertEqual(headers, [p + ":" for p in expected], r.describe())
        # ROOT itself counts when it is a run; a RUN_DIR also found below a ROOT (the same directory, by any name)
        # is listed once, under the name it was given first.
        self.assertEqual([run["run_dir"] for run in ckpt_ok(self, "list", "--json", "--recursive", os.path.join(root, "a")).json()["runs"]],
                         expected[:2])
        os.symlink(os.path.join(root, "b"), os.path.join(self.tmp, "b-link"))
        doc = ckpt_ok(self, "list", "--json", os.path.join(self.tmp, "b-link"), "--recursive", root, "--recursive", root + "/team").json()
        self.assertEqual([run["run_dir"] for run in doc["runs"]], [os.path.join(self.tmp, "b-link")] + expected[:2] + expected[3:])
        # Several roots, each searched; one that holds no run directory is an error (a slip in a cron line must not
        # list nothing forever), and the others are still listed.
        r = ckpt("list", "--json", "--recursive", os.path.join(root, "notes"), "--recursive", os.path.join(root, "team"))
        self.assertEqual(r.returncode, 1, r.describe())
        doc = r.json()
        self.assertEqual(doc["runs"][0], {"run_dir": os.path.join(root, "notes"), "error": {
            "kind": "not_found", "path": os.path.join(root, "notes"), "where": "--recursive",
            "message": "%s: --recursive: holds no run directories (directories holding checkpoint-N directories or archives)"
                       % os.path.join(root, "notes")}})
        self.assertEqual(doc["runs"][1]["run_dir"], os.path.join(root, "team", "exp"))
        self.assertEqual(doc["totals"]["failed"], 1)

    def test_a_failing_run_is_reported_and_the_others_listed(self):
        os.chmod(self.tmp, 0o755)  # nobody must reach the runs below it
        root = os.path.join(self.tmp, "runs")
        a = os.path.join(root, "a")
        runs.make_run(a, [10])
        locked_away = os.path.join(root, "private")
        runs.make_run(os.path.join(locked_away, "x"), [10])
        os.chmod(locked_away, 0)
        missing = os.path.join(self.tmp, "missing")
        try:
            for json_flag in ([], ["--json"]):
                with self.subTest(json=json_flag):
                    p = subprocess.run([harness.CKPT_BIN, "list", *json_flag, missing, "--recursive", root], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, timeout=60, preexec_fn=as_nobody())
                    self.assertEqual(p.returncode, 1, p.stderr)
                    self.assertEqual(p.stderr, "ckpt: error: %s: no such directory\n"
                                               "ckpt: error: %s: cannot list directory: Permission denied\n" % (missing, locked_away))
                    if json_flag:
                        doc = json.loads(p.stdout)
                        self.assertEqual([(run["run_dir"], run.get("error", {}).get("kind")) for run in doc["runs"]],
                                         [(missing, "not_found"), (a, None), (locked_away, "io")])
                        self.assertEqual((doc["totals"]["runs"], doc["totals"]["failed"], doc["totals"]["checkpoints"]), (1, 2, 1))
                    else:
                        self.assertTrue(p.stdout.startswith(a + ":\n"), p.stdout)
                        self.assertRegex(p.stdout, r"\n\noverall: 1 run, 1 checkpoint \(1 complete\), 0 archives, [0-9.]+ [KM]?i?B; 2 runs failed\n$")
        finally:
            os.chmod(locked_away, 0o755)

    def test_one_run_dir_keeps_the_single_run_output(self):
        # Job scripts parse it: one RUN_DIR and no --recursive is the output as it always was, not a document of one.
        a, _, _ = self.build()
        self.assertIsInstance(ckpt_ok(self, "list", "--json", a).json(), list)
        self.assertFalse(ckpt_ok(self, "list", a).stdout.startswith(a + ":"))
        # --recursive is several runs even when it finds one: the shape follows the command line, not the tree.
        doc = ckpt_ok(self, "list", "--json", "--recursive", a).json()
        self.assertEqual([run["run_dir"] for run in doc["runs"]], [a])

    def test_a_run_dir_or_root_is_required(self):
        r = ckpt("list")
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertEqual(r.stderr, "ckpt: error: RUN_DIR is required, or --recursive ROOT (see ckpt help list)\n")


class SeveralRunsLatestTest(Tmp):
    def test_a_line_per_run_and_a_run_without_one_on_stderr(self):
        a = os.path.join(self.tmp, "runs", "a")
        b = os.path.join(self.tmp, "runs", "b")
        c = os.path.join(self.tmp, "runs", "c")
        runs.make_run(a, [10, 20])
        runs.make_checkpoint(a, 30, broken="truncated")
        runs.make_checkpoint(b, 10, broken="no_state")
        runs.make_run(c, [5])
        r = ckpt("latest", a, b, c)
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertEqual(r.stdout, "%s\t%s\n%s\t%s\n" % (a, os.path.join(a, "checkpoint-20"), c, os.path.join(c, "checkpoint-5")))
        self.assertEqual(r.stderr, "ckpt: error: %s: no complete checkpoint\n" % b)
        r = ckpt("latest", "--json", "--recursive", os.path.join(self.tmp, "runs"))
        self.assertEqual(r.returncode, 1, r.describe())
        doc = r.json()
        self.assertEqual(list(doc), ["runs"])
        self.assertEqual(doc["runs"], [
            {"run_dir": a, "name": "checkpoint-20", "path": os.path.join(a, "checkpoint-20"), "step": 20, "kind": "checkpoint", "skipped": []},
            {"run_dir": b, "error": {"kind": "not_found", "path": b, "where": None, "message": "%s: no complete checkpoint" % b}},
            {"run_dir": c, "name": "checkpoint-5", "path": os.path.join(c, "checkpoint-5"), "step": 5, "kind": "checkpoint", "skipped": []}])
        self.assertEqual(r.stderr, "ckpt: error: %s: no complete checkpoint\n" % b)

    def test_verify_names_the_run_and_restore_to_takes_one_run(self):
        a = os.path.join(self.tmp, "a")
        b = os.path.join(self.tmp, "b")
        runs.make_run(a, [10])
        bad = runs.make_checkpoint(a, 20, weights="bin")
        flip_zip_member_byte(os.path.join(bad, "pytorch_model.bin"), "/data/0")
        runs.make_run(b, [10])
        r = ckpt_ok(self, "latest", "--verify", a, b)
        self.assertEqual(r.stdout, "%s\t%s\n%s\t%s\n" % (a, os.path.join(a, "checkpoint-10"), b, os.path.join(b, "checkpoint-10")))
        lines = r.stderr.splitlines()
        self.assertRegex(lines[0], r"^ckpt: latest: skipped %s: verification failed: .*CRC-32" % bad, r.describe())
        self.assertEqual(lines[1:], ["ckpt: latest: %s is the newest that verifies" % os.path.join(a, "checkpoint-10")])
        # A run where none verifies is corrupt input (exit 3), and the other runs are still answered.
        shutil.rmtree(os.path.join(a, "checkpoint-10"))
        r = ckpt("latest", "--verify", a, b)
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertEqual(r.stdout, "%s\t%s\n" % (b, os.path.join(b, "checkpoint-10")))
        self.assertEqual(r.stderr.splitlines()[-1], "ckpt: error: %s: no complete checkpoint verifies (1 failed --verify)" % a)
        r = ckpt("latest", "--archives", "--restore-to", os.path.join(self.tmp, "scratch"), a, b)
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertEqual(r.stderr, "ckpt: error: --restore-to restores one run's archive: give one RUN_DIR, not several\n")


# ----------------------------------------------------------------------------------------------------------------
# Odd files where checkpoint files belong
# ----------------------------------------------------------------------------------------------------------------


class OddFilesTest(Tmp):
    """A FIFO (which blocks whoever opens it for reading until a writer comes) where a checkpoint file belongs:
    every command finishes (ckpt()'s 60 s timeout is the deadline) and reports it; nothing is deleted."""

    FIFO_AT = ("pytorch_model.bin", "trainer_state.json", "model.safetensors", "model.safetensors.index.json",
               "optimizer.pt")

    def run_with_fifo(self, name):
        d = os.path.join(self.tmp, name.replace(".", "_"))
        evals = {10: {"eval_loss": 2.0}, 20: {"eval_loss": 1.0}}
        odd = runs.make_checkpoint(d, 10, weights="sharded" if name.endswith(".index.json") else
                                   None if name == "pytorch_model.bin" else "safetensors",
                                   state=runs.trainer_state(10, evals=evals))
        runs.make_checkpoint(d, 20, state=runs.trainer_state(20, evals=evals))
        target = os.path.join(odd, name)
        if os.path.exists(target):
            os.remove(target)
        os.mkfifo(target)
        return d, odd

    def test_fifo_in_a_checkpoint_blocks_nothing(self):
        for name in self.FIFO_AT:
            with self.subTest(fifo=name):
                d, odd = self.run_with_fifo(name)
                rows, r = self.list_json(d)
                row = self.rows_by_name(rows)["checkpoint-10"]
                self.assertFalse(row["complete"], r.describe())
                self.assertTrue(any(name in p and "not a regular file" in p for p in row["problems"]), r.describe())
                self.assertBestIs(d, "checkpoint-20")
                ckpt_ok(self, "rotate", d, "--keep", "1")
                self.assertTrue(os.path.isdir(odd), "a checkpoint ckpt cannot read was deleted")
                for args in (["inspect", odd], ["inspect", odd, "--verify"], ["inspect", d, "--verify"],
                             ["inspect", os.path.join(odd, name)]):
                    r = ckpt(*args)
                    self.assertEqual(r.returncode, 3, r.describe())
                    self.assertIn("not a regular file", r.stdout + r.stderr, r.describe())
                out = os.path.join(self.tmp, "converted")
                r = ckpt("convert", odd, "--to", "safetensors", "-o", out)
                self.assertEqual(r.returncode, 3, r.describe())
                self.assertIn(name, r.stderr, r.describe())
                self.assertFalse(os.path.exists(out))
                self.assertTrue(stat.S_ISFIFO(os.lstat(os.path.join(odd, name)).st_mode))


    def test_fifo_in_the_checkpoint_to_resume(self):
        trained = os.path.join(self.tmp, "trained")
        ckpt_ok(self, "save", "--output-dir", trained, "-q", "--max-steps", "20", "--save-steps", "10", timeout=300)
        for name in ("model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"):
            with self.subTest(fifo=name):
                d = os.path.join(self.tmp, "resume-" + name)
                shutil.copytree(trained, d)
                os.remove(os.path.join(d, "checkpoint-20", name))
                os.mkfifo(os.path.join(d, "checkpoint-20", name))
                r = ckpt("resume", d, "--from", "checkpoint-20", "--max-steps", "30", "-q")
                self.assertEqual(r.returncode, 3, r.describe())
                self.assertIn("not a regular file", r.stderr, r.describe())
                self.assertTrue(stat.S_ISFIFO(os.lstat(os.path.join(d, "checkpoint-20", name)).st_mode))

    def test_weight_map_shard_names_that_are_no_file_are_corrupt(self):
        for bad in (".", "..", ""):
            with self.subTest(shard=bad):
                d = os.path.join(self.tmp, "run-%d" % len(bad))
                odd = runs.make_checkpoint(d, 10, weights="sharded")
                index = os.path.join(odd, "model.safetensors.index.json")
                with open(index) as f:
                    doc = json.load(f)
                doc["weight_map"][next(iter(doc["weight_map"]))] = bad
                runs.write_json(index, doc)
                rows, r = self.list_json(d)
                self.assertFalse(self.rows_by_name(rows)["checkpoint-10"]["complete"], r.describe())
                for args in (["inspect", odd, "--verify"], ["convert", odd, "--to", "safetensors", "-o", os.path.join(d, "out")],
                             ["convert", index, "--to", "safetensors", "-o", os.path.join(d, "out.safetensors")]):
                    r = ckpt(*args)
                    self.assertEqual(r.returncode, 3, r.describe())
                    self.assertIn("weight_map", r.stdout + r.stderr, r.describe())
                self.assertEqual(sorted(os.listdir(d)), ["checkpoint-10"])

    def test_the_lock_file_is_never_followed(self):
        # The trainer's .ckpt.train.lock is the same code: tests/unit/test_checkpoint_lock.cpp.
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20])
        outside = os.path.join(self.tmp, "outside")
        os.symlink(outside, os.path.join(d, ".ckpt.lock"))
        r = ckpt("rotate", d, "--keep", "1")
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("symlink", r.stderr, r.describe())
        self.assertFalse(os.path.lexists(outside), "the lock's symlink was followed")
        self.assertEqual(sorted(os.listdir(d)), [".ckpt.lock", "checkpoint-10", "checkpoint-20"])
        os.remove(os.path.join(d, ".ckpt.lock"))
        os.mkfifo(os.path.join(d, ".ckpt.lock"))
        r = ckpt("rotate", d, "--keep", "1")
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("not a regular file", r.stderr, r.describe())
        self.assertEqual(sorted(os.listdir(d)), [".ckpt.lock", "checkpoint-10", "checkpoint-20"])

    def test_symlinks_in_a_directory_to_convert_are_refused_as_by_archive(self):
        d = os.path.join(self.tmp, "run")
        odd = runs.make_checkpoint(d, 10)
        secret = os.path.join(self.tmp, "secret.txt")
        with open(secret, "w") as f:
            f.write("outside the checkpoint")
        os.symlink(secret, os.path.join(odd, "notes.txt"))
        for to, out in (("safetensors", "out"), ("pytorch", "out"), ("archive", "out.ckpt")):
            with self.subTest(to=to):
                r = ckpt("convert", odd, "--to", to, "-o", os.path.join(self.tmp, out))
                self.assertEqual(r.returncode, 3, r.describe())
                self.assertIn("notes.txt", r.stderr, r.describe())
                self.assertIn("not a regular file", r.stderr, r.describe())
                self.assertFalse(os.path.exists(os.path.join(self.tmp, out)))


# ----------------------------------------------------------------------------------------------------------------
# The real Trainer run
# ----------------------------------------------------------------------------------------------------------------

FIXTURE_EVAL = {10: 4.1155, 20: 4.0431, 30: 4.0104, 40: 3.9991}
FIXTURE_BEST_METRIC = 3.999075174331665


class FixtureRunTest(Tmp):
    @classmethod
    def setUpClass(cls):
        cls.fixture_digest = harness.tree_snapshot(harness.FIXTURE_RUN)
        with open(os.path.join(harness.FIXTURE_RUN, "trainer_state.json")) as f:
            cls.root_state = json.load(f)
        with open(os.path.join(harness.FIXTURE_RUN, "checkpoint-40", "trainer_state.json")) as f:
            cls.state40 = json.load(f)

    @classmethod
    def tearDownClass(cls):
        assert harness.tree_snapshot(harness.FIXTURE_RUN) == cls.fixture_digest, "the read-only fixture changed"

    def copy(self, where="copy"):
        parent = os.path.join(self.tmp, where)
        os.makedirs(parent)
        return harness.copy_fixture_run(parent)

    def test_fixture_state_is_what_the_readme_says(self):
        self.assertEqual(self.state40["best_model_checkpoint"], "run_safetensors/checkpoint-40")
        self.assertEqual(self.state40["best_metric"], FIXTURE_BEST_METRIC)

    def test_list_agrees_with_trainer_state(self):
        d = self.copy()
        rows, r = self.list_json(d)
        ckpts = [row for row in rows if row["kind"] == "checkpoint"]
        self.assertEqual([row["name"] for row in ckpts], ["checkpoint-10", "checkpoint-20", "checkpoint-30",
                                                          "checkpoint-40"], r.describe())
        best_name = os.path.basename(self.state40["best_model_checkpoint"])
        for row in ckpts:
            s = row["step"]
            with self.subTest(step=s):
                with open(os.path.join(d, row["name"], "trainer_state.json")) as f:
                    state = json.load(f)
                self.assertTrue(row["complete"], row)
                self.assertEqual(row["problems"], [])
                self.assertEqual(row["step"], state["global_step"])
                self.assertEqual(row["epoch"], state["epoch"])
                self.assertEqual(round(row["metric"], 4), FIXTURE_EVAL[s], row)
                evals = [e for e in state["log_history"] if "eval_loss" in e and e["step"] <= s]
                self.assertEqual(row["metric"], evals[-1]["eval_loss"])
                self.assertEqual(row["metrics"]["eval_loss"], evals[-1]["eval_loss"])
                self.assertEqual(row["is_best"], row["name"] == best_name)
                self.assertEqual(row["is_latest"], s == 40)
                self.assertEqual(row["size_bytes"], tree_size(os.path.join(d, row["name"])))
        # The run root's files are not directories: nothing else is listed.
        self.assertEqual(len(rows), 4, r.describe())

    def test_list_on_the_read_only_fixture_itself(self):
        rows, r = self.list_json(harness.FIXTURE_RUN)
        self.assertEqual([row["name"] for row in rows], ["checkpoint-10", "checkpoint-20", "checkpoint-30",
                                                         "checkpoint-40"], r.describe())
        self.assertBestIs(harness.FIXTURE_RUN, "checkpoint-40")

    def test_best(self):
        d = self.copy()
        self.assertBestIs(d, "checkpoint-40")
        r = ckpt_ok(self, "best", d, "--json")
        data = r.json()
        self.assertEqual(data["name"], "checkpoint-40", r.describe())
        self.assertEqual(data["value"], FIXTURE_BEST_METRIC, r.describe())
        self.assertEqual(data["metric"], "eval_loss", r.describe())  # the metric that has best_metric's value at step 40
        _, r = self.best_path(d)
        self.assertEqual(r.stderr, "ckpt: best: checkpoint-40 (eval_loss %.6g)\n" % FIXTURE_BEST_METRIC, r.describe())
        self.assertBestIs(d, "checkpoint-40", "--metric", "loss")
        self.assertBestIs(d, "checkpoint-40", "--metric", "eval_loss", "--mode", "min")
        self.assertBestIs(d, "checkpoint-10", "--metric", "loss", "--mode", "max")
        r = ckpt_ok(self, "best", d, "--metric", "loss", "--json")
        self.assertEqual(r.json()["value"], FIXTURE_BEST_METRIC, r.describe())
        r = ckpt("best", d, "--metric", "accuracy")  # the run logged no accuracy
        self.assertEqual(r.returncode, 1, r.describe())
        self.assertIn("ckpt: error:", r.stderr)

    def test_rotate_agrees_with_hugging_face(self):
        for keep in (1, 2):
            for extra in ([], ["--metric", "loss", "--mode", "max"]):
                with self.subTest(keep=keep, extra=extra):
                    d = self.copy("keep%d%s" % (keep, "max" if extra else ""))
                    parent = os.path.dirname(d)
                    # The trainer ran in the parent directory: its best path is relative to it.
                    best = os.path.join(parent, self.state40["best_model_checkpoint"]) if not extra else \
                        os.path.join(d, "checkpoint-10")
                    hf = hf_reference.names_to_delete(d, keep, best)
                    r = ckpt_ok(self, "rotate", d, "--keep", keep, "--dry-run", "--json", *extra)
                    data = r.json()
                    deleted = {x["name"] for x in data["decisions"] if x["action"] == "delete"}
                    self.assertEqual(deleted, hf, r.describe())
                    ckpt_ok(self, "rotate", d, "--keep", keep, "-q", *extra)
                    left = sorted(n for n in os.listdir(d) if n.startswith("checkpoint-"))
                    self.assertEqual(set(left), {"checkpoint-%d" % s for s in (10, 20, 30, 40)} - hf)
                    self.assertEqual([n for n in os.listdir(d) if n.startswith(".ckpt-trash-")], [])
                    # The run root's final model is untouched.
                    with open(os.path.join(d, "model.safetensors"), "rb") as a, \
                            open(os.path.join(harness.FIXTURE_RUN, "model.safetensors"), "rb") as b:
                        self.assertEqual(a.read(), b.read())

    def test_reference_on_fixture_by_hand(self):
        # keep 1 -> 40 only; keep 2 -> 30, 40; best by max loss (10): keep 1 -> 10 and 40, keep 2 -> 10 and 40.
        d = harness.FIXTURE_RUN
        best40 = os.path.join(os.path.dirname(d), self.state40["best_model_checkpoint"])
        best10 = os.path.join(d, "checkpoint-10")
        c = lambda *s: {"checkpoint-%d" % x for x in s}  # noqa: E731
        self.assertEqual(hf_reference.names_to_delete(d, 1, best40), c(10, 20, 30))
        self.assertEqual(hf_reference.names_to_delete(d, 2, best40), c(10, 20))
        self.assertEqual(hf_reference.names_to_delete(d, 1, best10), c(20, 30))
        self.assertEqual(hf_reference.names_to_delete(d, 2, best10), c(20, 30))

    def test_link_and_replace(self):
        d = self.copy()
        link = os.path.join(d, "best")
        self.best_path(d, "--link", "best")
        self.assertEqual(os.readlink(link), "checkpoint-40")
        self.best_path(d, "--link", "best", "--metric", "loss", "--mode", "max")
        self.assertEqual(os.readlink(link), "checkpoint-10")
        self.best_path(d, "--link", "best")
        self.assertEqual(os.readlink(link), "checkpoint-40")
        with open(os.path.join(link, "model.safetensors"), "rb") as a, \
                open(os.path.join(harness.FIXTURE_RUN, "checkpoint-40", "model.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        leftovers = [n for n in os.listdir(d) if n not in ("best", "checkpoint-10", "checkpoint-20", "checkpoint-30",
                                                           "checkpoint-40") and n not in os.listdir(harness.FIXTURE_RUN)]
        self.assertEqual(leftovers, [], "temporary link names left behind")

    def test_export(self):
        d = self.copy()
        out = os.path.join(self.tmp, "exported")
        self.best_path(d, "--export", out)
        src = os.path.join(d, "checkpoint-40")
        for name in ("model.safetensors", "config.json", "generation_config.json"):
            with self.subTest(name=name):
                self.assertTrue(os.path.isfile(os.path.join(out, name)), sorted(os.listdir(out)))
                with open(os.path.join(src, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
                    self.assertEqual(a.read(), b.read())
        for name in ("optimizer.pt", "trainer_state.json", "rng_state.pth", "scheduler.pt"):
            self.assertNotIn(name, os.listdir(out))
        # Exporting over an existing export replaces the files in place.
        r = ckpt_ok(self, "best", d, "--export", out, "--metric", "loss", "--mode", "max", "--json")
        with open(os.path.join(d, "checkpoint-10", "model.safetensors"), "rb") as a, \
                open(os.path.join(out, "model.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read(), r.describe())
        # The checkpoint it came from is unchanged (hard links must not let the export alias a later write).
        with open(os.path.join(src, "model.safetensors"), "rb") as a, \
                open(os.path.join(harness.FIXTURE_RUN, "checkpoint-40", "model.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read())


if __name__ == "__main__":
    unittest.main()
