"""Tests of `ckpt rotate`: parity with Hugging Face's save_total_limit rotation, the safety rules, locking,
concurrency and kill safety.

Run:  cd tests/manage && /usr/bin/python3 -m unittest -v test_rotate
The binary is $CKPT_BIN (default: build/ckpt in the repository).
"""

import fcntl
import json
import os
import random
import re
import shlex
import shutil
import signal
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

# Steps chosen so that lexicographic order differs from numeric order.
STEPS = [5, 20, 100, 250, 1000, 1500, 12000]
LIMITS = [1, 2, 3, 4, 5]
ORDERS = [
    "step",           # --sort step; mtimes set so that they disagree with the steps (must be ignored)
    "mtime",          # --sort mtime; mtimes 10 s apart in an order that disagrees with the steps
    "mtime_agree",    # --sort mtime; mtimes increasing with the step
    "mtime_close",    # --sort mtime; mtimes disagreeing with steps but all within 0.6 s: falls back to steps
    "mtime_edge",     # --sort mtime; spread exactly 1.0 s (no fallback: HF's rule is "< 1 s")
]


def _case_mtimes(order, steps, rng, base):
    n = len(steps)
    perm = list(range(n))
    if order != "mtime_agree":
        rng.shuffle(perm)
    if order in ("step", "mtime"):
        return {s: base + 10.0 * perm[i] for i, s in enumerate(steps)}
    if order == "mtime_agree":
        return {s: base + 10.0 * i for i, s in enumerate(steps)}
    if order == "mtime_close":
        return {s: base + 0.1 * perm[i] for i, s in enumerate(steps)}
    if order == "mtime_edge":
        if n == 1:
            return {steps[0]: base}
        # perm[i] == 0 gets base, n-1 gets base + 1.0; the others spread in between (none equal).
        return {s: base + (1.0 if perm[i] == n - 1 else perm[i] / (n - 1) * 0.999) for i, s in enumerate(steps)}
    raise ValueError(order)


def parity_cases():
    """(n, best_kind, best_pos, order) for every number of checkpoints 1-7, every best position and kind."""
    for n in range(1, 8):
        for order in ORDERS:
            yield n, None, None, order
            for pos in range(n):
                for kind in ("abs", "stale", "rel"):
                    yield n, kind, pos, order


class Tmp(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="ckpt-rotate-test-")
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def rotate_json(self, run_dir, *args):
        r = ckpt_ok(self, "rotate", run_dir, *args, "--json")
        data = r.json()
        self.assertIsInstance(data, dict, r.describe())
        self.assertIn("decisions", data, r.describe())
        return data, r

    def decisions(self, data):
        return {d["name"]: d for d in data["decisions"]}

    def deleted_names(self, data):
        return {d["name"] for d in data["decisions"] if d["action"] == "delete"}


# ----------------------------------------------------------------------------------------------------------------
# Parity with Hugging Face
# ----------------------------------------------------------------------------------------------------------------


class RotateParityTest(Tmp):
    """Every combination of limit, count, best position/kind and ordering; all checkpoints complete."""

    def build(self, where, n, best_kind, best_pos, order, seed):
        parent = os.path.join(self.tmp, where)
        os.makedirs(parent)
        run_dir = os.path.join(parent, "run")
        steps = STEPS[:n]
        rng = random.Random(seed)
        mtimes = _case_mtimes(order, steps, rng, base=float(int(time.time())) - 3000)
        best_step = None if best_kind is None else steps[best_pos]
        if best_kind is None:
            best_path = None
        elif best_kind == "abs":
            best_path = os.path.join(run_dir, "checkpoint-%d" % best_step)
        elif best_kind == "stale":
            best_path = "/old/place/run/checkpoint-%d" % best_step
        else:
            best_path = "run/checkpoint-%d" % best_step  # relative to the directory the trainer ran in
        # No eval_loss anywhere: with no best_model_checkpoint, nothing may be protected as "best".
        runs.make_run(run_dir, steps, best_path=best_path, mtimes=mtimes)
        # Where Hugging Face would have seen the best: the path it wrote, at the run's own place.
        hf_best = None if best_step is None else os.path.join(run_dir, "checkpoint-%d" % best_step)
        return run_dir, steps, best_step, hf_best

    def expected(self, run_dir, steps, limit, hf_best, order):
        use_mtime = order != "step"
        hf = hf_reference.names_to_delete(run_dir, limit, hf_best, use_mtime=use_mtime)
        newest = "checkpoint-%d" % steps[-1]
        return hf, hf - {newest}, newest in hf

    def check_plan(self, data, run_dir, steps, best_step, limit, hf, expected, newest_diverges, order):
        """Returns a list of mismatch descriptions (empty when ckpt agrees)."""
        problems = []
        names = {"checkpoint-%d" % s for s in steps}
        got = self.deleted_names(data)
        dec = self.decisions(data)
        if set(dec) != names:
            problems.append("decisions cover %s, expected exactly %s" % (sorted(dec), sorted(names)))
        if got != expected:
            problems.append("deletes %s, Hugging Face deletes %s (expected %s)" % (
                sorted(got), sorted(hf), sorted(expected)))
        newest = "checkpoint-%d" % steps[-1]
        if data.get("newest") != newest:
            problems.append("newest is %r, expected %r" % (data.get("newest"), newest))
        want_best = None if best_step is None else "checkpoint-%d" % best_step
        if data.get("best") != want_best:
            problems.append("best is %r, expected %r" % (data.get("best"), want_best))
        if newest_diverges:
            # The allowed divergence: Hugging Face's mtime order deletes the highest step; ckpt keeps it.
            if order == "step":
                problems.append("reference deletes the highest step under step order (test bug)")
            d = dec.get(newest, {})
            if d.get("action") != "keep" or "newest" not in d.get("reason", ""):
                problems.append("HF deletes %s (mtime order); ckpt must keep it as the newest, got %r" % (newest, d))
        return problems

    def test_dry_run_parity_with_hugging_face(self):
        mismatches = []
        diverged = 0
        count = 0
        coverage = {order: 0 for order in ORDERS}  # cases where the order changes HF's choice vs step order
        for i, (n, best_kind, best_pos, order) in enumerate(parity_cases()):
            run_dir, steps, best_step, hf_best = self.build("dry-%d" % i, n, best_kind, best_pos, order, seed=i)
            before = harness.tree_snapshot(run_dir)
            for limit in LIMITS:
                args = ["--keep", limit, "--dry-run"] + (["--sort", "mtime"] if order != "step" else [])
                r = ckpt("rotate", run_dir, *args, "--json")
                label = "n=%d best=%s@%s order=%s keep=%d: ckpt rotate %s %s --json" % (
                    n, best_kind, best_pos, order, limit, run_dir, " ".join(map(str, args)))
                if r.returncode != 0:
                    mismatches.append(label + ": exit %d, stderr %s" % (r.returncode, r.stderr.strip()))
                    continue
                hf, expected, newest_diverges = self.expected(run_dir, steps, limit, hf_best, order)
                by_step = hf_reference.names_to_delete(run_dir, limit, hf_best, use_mtime=False)
                coverage[order] += hf != by_step
                diverged += newest_diverges
                count += 1
                for p in self.check_plan(r.json(), run_dir, steps, best_step, limit, hf, expected, newest_diverges,
                                         order):
                    mismatches.append(label + ": " + p)
            after = harness.tree_snapshot(run_dir)
            if before != after:
                mismatches.append("n=%d best=%s@%s order=%s: --dry-run changed the run directory" % (
                    n, best_kind, best_pos, order))
            shutil.rmtree(os.path.dirname(run_dir))
        # The table must actually exercise the allowed divergence (mtime order putting the highest step first).
        self.assertGreater(diverged, 0, "no case where Hugging Face's mtime order deletes the highest step")
        # The table must exercise real mtime orders, and the < 1 s fallback must make mtime_close act like steps.
        self.assertGreater(coverage["mtime"], 100, coverage)
        self.assertGreater(coverage["mtime_edge"], 50, coverage)
        self.assertEqual(coverage["mtime_close"], 0, coverage)
        self.assertEqual(coverage["mtime_agree"], 0, coverage)
        self.assertEqual(coverage["step"], 0, coverage)
        self.assertGreater(count, 1500)
        if mismatches:
            self.fail("%d of %d dry-run cases disagree with Hugging Face:\n%s" % (
                len(mismatches), count, "\n".join(mismatches[:40])))

    def test_real_rotation_deletes_exactly_the_plan(self):
        mismatches = []
        count = 0
        for i, (n, best_kind, best_pos, order) in enumerate(parity_cases()):
            # Real rotations (bounded run time): no best and the absolute best at every position under step and
            # mtime order; the stale and relative kinds at the first position under step order.
            if order not in ("step", "mtime"):
                continue
            if best_kind in ("stale", "rel") and (best_pos != 0 or order != "step"):
                continue
            for limit in LIMITS:
                where = "real-%d-%d" % (i, limit)
                run_dir, steps, best_step, hf_best = self.build(where, n, best_kind, best_pos, order, seed=i)
                hf, expected, _ = self.expected(run_dir, steps, limit, hf_best, order)
                args = ["--keep", limit] + (["--sort", "mtime"] if order != "step" else [])
                r = ckpt("rotate", run_dir, *args, "--json")
                label = "n=%d best=%s@%s order=%s keep=%d: ckpt rotate %s %s --json" % (
                    n, best_kind, best_pos, order, limit, run_dir, " ".join(map(str, args)))
                count += 1
                if r.returncode != 0:
                    mismatches.append(label + ": exit %d, stderr %s" % (r.returncode, r.stderr.strip()))
                    continue
                remaining = set(runs.entries(run_dir))
                want = {"checkpoint-%d" % s for s in steps} - expected
                if remaining != want:
                    mismatches.append(label + ": left %s, expected %s" % (sorted(remaining), sorted(want)))
                data = r.json()
                if data.get("removed") != len(expected):
                    mismatches.append(label + ": removed=%r, expected %d" % (data.get("removed"), len(expected)))
                if runs.trash_entries(run_dir):
                    mismatches.append(label + ": trash left: %s" % runs.trash_entries(run_dir))
                shutil.rmtree(os.path.dirname(run_dir))
        self.assertGreater(count, 400)
        if mismatches:
            self.fail("%d of %d real rotations wrong:\n%s" % (len(mismatches), count, "\n".join(mismatches[:40])))

    def test_stale_best_path_is_protected_where_hugging_face_loses_it(self):
        # HF compares full path strings: a run moved from /old/place keeps nothing of its best. ckpt matches
        # the last path component and keeps it.
        run_dir = os.path.join(self.tmp, "run")
        steps = [10, 20, 30, 40, 50]
        runs.make_run(run_dir, steps, best_path="/old/place/run/checkpoint-20")
        raw_hf = hf_reference.names_to_delete(run_dir, 2, "/old/place/run/checkpoint-20")
        self.assertIn("checkpoint-20", raw_hf)  # the known Hugging Face hole (#48315)
        data, r = self.rotate_json(run_dir, "--keep", "2")
        self.assertEqual(data["best"], "checkpoint-20", r.describe())
        self.assertEqual(set(runs.entries(run_dir)), {"checkpoint-20", "checkpoint-50"})

    def test_best_path_with_trailing_slash(self):
        # Hugging Face normalises with str(Path(best_model_checkpoint)), which drops a trailing slash, and so
        # protects checkpoint-20 here; its last path component is checkpoint-20.
        run_dir = os.path.join(self.tmp, "run")
        steps = [10, 20, 30, 40, 50]
        runs.make_run(run_dir, steps, best_path=os.path.join(run_dir, "checkpoint-20") + "/")
        hf = hf_reference.names_to_delete(run_dir, 2, os.path.join(run_dir, "checkpoint-20") + "/")
        self.assertEqual(hf, {"checkpoint-10", "checkpoint-30", "checkpoint-40"})
        data, r = self.rotate_json(run_dir, "--keep", "2", "--dry-run")
        self.assertEqual(data["best"], "checkpoint-20", r.describe())
        self.assertEqual(self.deleted_names(data), hf, r.describe())

    def test_mtime_ties_break_like_hugging_face(self):
        # Hugging Face sorts (mtime, path) tuples: equal mtimes (file systems with whole-second times) are
        # ordered by the path string, so checkpoint-100 comes before checkpoint-20.
        run_dir = os.path.join(self.tmp, "run")
        base = float(int(time.time())) - 3000
        steps = [5, 20, 100, 250]
        runs.make_run(run_dir, steps, mtimes={5: base, 20: base + 5, 100: base + 5, 250: base + 10})
        order = [os.path.basename(p) for p in hf_reference.sorted_checkpoints(run_dir, use_mtime=True)]
        self.assertEqual(order, ["checkpoint-5", "checkpoint-100", "checkpoint-20", "checkpoint-250"])
        hf = hf_reference.names_to_delete(run_dir, 2, use_mtime=True)
        data, r = self.rotate_json(run_dir, "--keep", "2", "--sort", "mtime", "--dry-run")
        self.assertEqual(self.deleted_names(data), hf, r.describe())

    def test_best_read_from_the_newest_checkpoint_only(self):
        # Older checkpoints name other bests; only the highest step's trainer_state.json counts, even when
        # mtime order puts another checkpoint last.
        run_dir = os.path.join(self.tmp, "run")
        steps = [10, 20, 30, 40]
        base = time.time() - 3000
        mt = {10: base + 30, 20: base + 20, 30: base + 40, 40: base + 0}
        runs.make_run(run_dir, steps, best_step=10, mtimes=mt)
        data, r = self.rotate_json(run_dir, "--keep", "1", "--sort", "mtime", "--dry-run")
        self.assertEqual(data["best"], "checkpoint-10", r.describe())
        self.assertEqual(data["newest"], "checkpoint-40", r.describe())
        hf = hf_reference.names_to_delete(run_dir, 1, os.path.join(run_dir, "checkpoint-10"), use_mtime=True)
        self.assertEqual(self.deleted_names(data), hf - {"checkpoint-40"}, r.describe())

    def test_no_best_model_checkpoint_but_eval_loss_logged(self):
        # ckpt recomputes the best from eval_loss when trainer_state.json names none; HF protects nothing.
        run_dir = os.path.join(self.tmp, "run")
        steps = [10, 20, 30, 40, 50]
        evals = {10: {"eval_loss": 3.0}, 20: {"eval_loss": 1.0}, 30: {"eval_loss": 2.0}, 40: {"eval_loss": 2.5},
                 50: {"eval_loss": 2.7}}
        runs.make_run(run_dir, steps, evals=evals)
        data, r = self.rotate_json(run_dir, "--keep", "2", "--dry-run")
        self.assertEqual(data["best"], "checkpoint-20", r.describe())
        hf = hf_reference.names_to_delete(run_dir, 2, os.path.join(run_dir, "checkpoint-20"))
        self.assertEqual(self.deleted_names(data), hf, r.describe())

    def test_metric_option_overrides_trainer_state(self):
        run_dir = os.path.join(self.tmp, "run")
        steps = [10, 20, 30, 40, 50]
        evals = {s: {"eval_loss": 5.0 - s / 10.0, "eval_accuracy": {10: 0.5, 20: 0.9, 30: 0.7, 40: 0.8, 50: 0.6}[s]}
                 for s in steps}
        runs.make_run(run_dir, steps, best_step=50, evals=evals)
        data, r = self.rotate_json(run_dir, "--keep", "1", "--metric", "accuracy", "--dry-run")
        self.assertEqual(data["best"], "checkpoint-20", r.describe())
        hf = hf_reference.names_to_delete(run_dir, 1, os.path.join(run_dir, "checkpoint-20"))
        self.assertEqual(self.deleted_names(data), hf, r.describe())
        data, r = self.rotate_json(run_dir, "--keep", "1", "--metric", "loss", "--mode", "max", "--dry-run")
        self.assertEqual(data["best"], "checkpoint-10", r.describe())


# ----------------------------------------------------------------------------------------------------------------
# Safety rules
# ----------------------------------------------------------------------------------------------------------------

HOUR = 3600.0


class RotateSafetyTest(Tmp):
    def run_dir(self, steps=(10, 20, 30, 40, 50), **kw):
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, list(steps), **kw)
        return d

    def test_incomplete_young_kept_old_deleted_only_when_abandoned(self):
        # Writers put trainer_state.json last: without it an old incomplete checkpoint was abandoned mid-write and
        # goes; with it, something finished writing it, and a damaged checkpoint is kept and reported.
        for kind in runs.BROKEN_KINDS:
            with self.subTest(kind=kind):
                d = os.path.join(self.tmp, "run-" + kind)
                runs.make_run(d, [10, 20, 30])
                runs.make_checkpoint(d, 40, broken=kind)                              # young
                runs.make_checkpoint(d, 15, broken=kind, mtime=time.time() - 2 * HOUR)  # old
                data, r = self.rotate_json(d, "--keep", "5", "--dry-run")
                dec = self.decisions(data)
                abandoned = kind == "no_state"
                self.assertEqual(dec["checkpoint-40"]["action"], "keep", r.describe())
                self.assertEqual(dec["checkpoint-15"]["action"], "delete" if abandoned else "keep", r.describe())
                if not abandoned:
                    self.assertIn("never deleted", dec["checkpoint-15"]["reason"], r.describe())
                self.assertEqual(data["newest"], "checkpoint-30", r.describe())
                self.rotate_json(d, "--keep", "5")
                self.assertEqual(runs.entries(d), (["checkpoint-10"] if abandoned else ["checkpoint-10", "checkpoint-15"]) +
                                 ["checkpoint-20", "checkpoint-30", "checkpoint-40"])

    def test_reports_bytes_freed(self):
        d = self.run_dir(extra_files=2)
        def size(name):
            return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(os.path.join(d, name)) for f in files)
        expected = sum(size("checkpoint-%d" % s) for s in (10, 20, 30))
        data, r = self.rotate_json(d, "--keep", "2", "--dry-run")
        self.assertEqual(data["freed_bytes"], expected, r.describe())
        r = ckpt_ok(self, "rotate", d, "--keep", "2", "--dry-run")
        self.assertTrue(r.stdout.endswith("would free %s\n" % runs.human_bytes(expected)), r.describe())
        data, r = self.rotate_json(d, "--keep", "2")
        self.assertEqual((data["freed_bytes"], data["archived_bytes"]), (expected, 0), r.describe())

    def test_the_best_counts_toward_keep(self):
        # As the Trainer's save_total_limit, and as --help and the man page say: --keep 2 with an old best keeps
        # the best and the newest, not the best and two more.
        d = self.run_dir(best_step=10)
        data, r = self.rotate_json(d, "--keep", "2", "--dry-run")
        self.assertEqual(self.deleted_names(data), {"checkpoint-20", "checkpoint-30", "checkpoint-40"}, r.describe())
        self.assertIn("the best counting toward N", ckpt("rotate", "--help").stdout)

    def test_trainer_state_python_reads_is_read(self):
        # Python's json reads a lone surrogate escape (what json.dumps writes for a non-UTF-8 byte of output_dir), an
        # integer beyond 2**64 and 1e400 (inf): such checkpoints are complete, counted, and rotated as any other.
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20, 30, 40])
        for step in (10, 20, 30, 40):
            path = os.path.join(d, "checkpoint-%d" % step, "trainer_state.json")
            with open(path) as f:
                text = f.read()
            text = text.replace('"global_step"', '"output_dir": "runs/caf\\udce9", "flos_exact": %d, "odd": 1e400, '
                                '"global_step"' % (2 ** 70 + step), 1)
            with open(path, "w") as f:
                f.write(text)
            runs.set_mtime(os.path.dirname(path), time.time() - 2 * HOUR)
            state = json.loads(text)
            self.assertEqual(state["flos_exact"], 2 ** 70 + step)
        data, r = self.rotate_json(d, "--keep", "2", "--dry-run")
        self.assertEqual(self.deleted_names(data), {"checkpoint-10", "checkpoint-20"}, r.describe())
        self.assertEqual(data["newest"], "checkpoint-40", r.describe())
        r = ckpt_ok(self, "list", d, "--json")
        listing = r.json()
        self.assertTrue(all(c["complete"] for c in listing), r.describe())

    def test_layouts_ckpt_cannot_assess_are_kept_and_reported(self):
        # FSDP's sharded directories: never counted toward --keep, never deleted, however old, and the reason says
        # so. A DeepSpeed checkpoint (global_stepN/ and `latest`, no top-level weights) is assessed by its own files
        # (tests/deepspeed): this one's are garbage, so it is incomplete, kept as one holding trainer_state.json.
        d = os.path.join(self.tmp, "run")
        runs.make_run(d, [10, 20])
        old = time.time() - 5 * HOUR
        ds = runs.make_checkpoint(d, 30, broken="no_weights")
        os.makedirs(os.path.join(ds, "global_step30"))
        for path, content in ((os.path.join(ds, "global_step30", "mp_rank_00_model_states.pt"), b"\0" * 64),
                              (os.path.join(ds, "latest"), b"global_step30")):
            with open(path, "wb") as f:
                f.write(content)
        fsdp = runs.make_checkpoint(d, 40, broken="no_weights")
        os.makedirs(os.path.join(fsdp, "pytorch_model_fsdp_0"))
        with open(os.path.join(fsdp, "pytorch_model_fsdp_0", "__0_0.distcp"), "wb") as f:
            f.write(b"\0" * 64)
        for p in (ds, fsdp):
            runs.set_mtime(p, old)
        os.remove(os.path.join(fsdp, "trainer_state.json"))  # not even a trainer_state.json: still not ours to judge
        runs.set_mtime(fsdp, old)
        data, r = self.rotate_json(d, "--keep", "1")
        dec = self.decisions(data)
        for name in ("checkpoint-30", "checkpoint-40"):
            self.assertEqual(dec[name]["action"], "keep", r.describe())
        self.assertIn("cannot read", dec["checkpoint-40"]["reason"], r.describe())
        self.assertIn("holds trainer_state.json", dec["checkpoint-30"]["reason"], r.describe())
        self.assertEqual(data["newest"], "checkpoint-20", r.describe())
        self.assertEqual(runs.entries(d), ["checkpoint-20", "checkpoint-30", "checkpoint-40"])
        r = ckpt_ok(self, "list", d, "--json")
        listing = {c["name"]: c for c in r.json()}
        self.assertIn("global_step30", " ".join(listing["checkpoint-30"]["problems"]), r.describe())
        self.assertEqual(listing["checkpoint-30"]["layout"], "deepspeed", r.describe())
        self.assertIn("pytorch_model_fsdp_0/", " ".join(listing["checkpoint-40"]["problems"]), r.describe())

    def test_incomplete_checkpoints_do_not_count_toward_keep(self):
        d = self.run_dir(best_step=50)
        runs.make_checkpoint(d, 60, broken="truncated")
        runs.make_checkpoint(d, 70, broken="no_state")
        runs.make_checkpoint(d, 80, broken="missing_shard")
        complete = ["checkpoint-%d" % s for s in (10, 20, 30, 40, 50)]
        hf = hf_reference.names_to_delete(d, 2, os.path.join(d, "checkpoint-50"), only=complete)
        self.assertEqual(hf, {"checkpoint-10", "checkpoint-20", "checkpoint-30"})
        data, r = self.rotate_json(d, "--keep", "2", "--dry-run")
        self.assertEqual(self.deleted_names(data), hf, r.describe())
        self.assertEqual(data["newest"], "checkpoint-50", r.describe())
        self.rotate_json(d, "--keep", "2")
        self.assertEqual(runs.entries(d), ["checkpoint-40", "checkpoint-50", "checkpoint-60", "checkpoint-70",
                                           "checkpoint-80"])

    def test_newest_complete_survives_when_all_newer_are_incomplete(self):
        d = self.run_dir(steps=(10, 20), best_step=10)
        runs.make_checkpoint(d, 30, broken="no_state", mtime=time.time() - 2 * HOUR)
        self.rotate_json(d, "--keep", "1")
        # best (10) and newest complete (20) stay; the old broken 30 goes.
        self.assertEqual(runs.entries(d), ["checkpoint-10", "checkpoint-20"])

    def test_staleness_uses_newest_mtime_of_dir_and_its_files(self):
        d = self.run_dir()
        p = runs.make_checkpoint(d, 60, broken="no_weights", mtime=time.time() - 2 * HOUR)
        with open(os.path.join(p, "model.safetensors.part"), "wb") as f:  # being written right now
            f.write(b"\0" * 100)
        os.utime(p, (time.time() - 2 * HOUR, time.time() - 2 * HOUR))
        data, r = self.rotate_json(d, "--keep", "2", "--dry-run")
        self.assertEqual(self.decisions(data)["checkpoint-60"]["action"], "keep", r.describe())

    def test_stale_after(self):
        d = self.run_dir()
        t = time.time()
        runs.make_checkpoint(d, 60, broken="no_state", mtime=t - 20 * 60)  # 20 min old
        runs.make_checkpoint(d, 70, broken="no_state", mtime=t - 5 * 60)    # 5 min old
        runs.make_checkpoint(d, 80, broken="no_state", mtime=t - 2 * HOUR)  # 2 h old
        data, r = self.rotate_json(d, "--keep", "5", "--dry-run")
        dec = self.decisions(data)
        self.assertEqual([dec["checkpoint-%d" % s]["action"] for s in (60, 70, 80)], ["keep", "keep", "delete"],
                         r.describe())
        data, r = self.rotate_json(d, "--keep", "5", "--dry-run", "--stale-after", "10m")
        dec = self.decisions(data)
        self.assertEqual([dec["checkpoint-%d" % s]["action"] for s in (60, 70, 80)], ["delete", "keep", "delete"],
                         r.describe())
        data, r = self.rotate_json(d, "--keep", "5", "--dry-run", "--stale-after", "1d")
        dec = self.decisions(data)
        self.assertEqual([dec["checkpoint-%d" % s]["action"] for s in (60, 70, 80)], ["keep", "keep", "keep"],
                         r.describe())
        data, r = self.rotate_json(d, "--keep", "5", "--dry-run", "--stale-after", "90s")
        dec = self.decisions(data)
        self.assertEqual([dec["checkpoint-%d" % s]["action"] for s in (60, 70, 80)], ["delete", "delete", "delete"],
                         r.describe())
        self.rotate_json(d, "--keep", "5", "--stale-after", "10m")
        self.assertEqual(runs.entries(d), ["checkpoint-%d" % s for s in (10, 20, 30, 40, 50, 70)])
        r = ckpt("rotate", d, "--keep", "5", "--stale-after", "soon")
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertIn("ckpt: error:", r.stderr)

    def test_staging_directories_young_kept_old_deleted(self):
        d = self.run_dir()
        t = time.time()
        runs.make_dir_entry(d, "tmp-checkpoint-60")
        runs.make_dir_entry(d, "tmp-checkpoint-55", mtime=t - 2 * HOUR)
        runs.make_dir_entry(d, ".ckpt-staging-young")
        runs.make_dir_entry(d, ".ckpt-staging-old", mtime=t - 2 * HOUR)
        data, r = self.rotate_json(d, "--keep", "2", "--dry-run")
        dec = self.decisions(data)
        self.assertEqual(dec["tmp-checkpoint-60"]["action"], "keep", r.describe())
        self.assertEqual(dec["tmp-checkpoint-55"]["action"], "delete", r.describe())
        self.assertEqual(dec[".ckpt-staging-young"]["action"], "keep", r.describe())
        self.assertEqual(dec[".ckpt-staging-old"]["action"], "delete", r.describe())
        # Staging directories do not count toward --keep.
        ckpts = {n for n in self.deleted_names(data) if n.startswith("checkpoint-")}
        self.assertEqual(ckpts, {"checkpoint-10", "checkpoint-20", "checkpoint-30"}, r.describe())
        self.rotate_json(d, "--keep", "2")
        self.assertEqual(runs.entries(d), [".ckpt-staging-young", "checkpoint-40", "checkpoint-50",
                                           "tmp-checkpoint-60"])

    def test_custom_directories_never_touched(self):
        d = self.run_dir(best_step=20)
        old = time.time() - 48 * HOUR
        custom = ["milestone-1", "checkpoint-best", "checkpoint-10-copy", "exported", "runs", "checkpoint-"]
        for name in custom:
            runs.make_dir_entry(d, name, files=2, mtime=old)
        hidden = runs.make_dir_entry(d, ".cache", mtime=old)
        digests = {name: harness.tree_snapshot(os.path.join(d, name)) for name in custom + [".cache"]}
        data, r = self.rotate_json(d, "--keep", "1", "--stale-after", "1m")
        dec = self.decisions(data)
        for name in custom:
            if name in dec:
                self.assertEqual(dec[name]["action"], "keep", r.describe())
        for name in custom + [".cache"]:
            self.assertEqual(harness.tree_snapshot(os.path.join(d, name)), digests[name], name)
        self.assertTrue(os.path.isdir(hidden))
        self.assertEqual(sorted(n for n in runs.entries(d) if n.startswith("checkpoint-") and n[11:].isdigit()),
                         ["checkpoint-20", "checkpoint-50"])

    def test_keep_every(self):
        steps = list(range(10, 101, 10))
        d = self.run_dir(steps=steps, best_step=40)
        counted = ["checkpoint-%d" % s for s in steps if s % 30 != 0]
        hf = hf_reference.names_to_delete(d, 2, os.path.join(d, "checkpoint-40"), only=counted)
        # Counted: 10 20 40 50 70 80 100; the best (40) bubbles to second-to-last; two stay.
        self.assertEqual(hf, {"checkpoint-10", "checkpoint-20", "checkpoint-50", "checkpoint-70", "checkpoint-80"})
        data, r = self.rotate_json(d, "--keep", "2", "--keep-every", "30", "--dry-run")
        self.assertEqual(self.deleted_names(data), hf, r.describe())
        for s in (30, 60, 90):
            self.assertEqual(self.decisions(data)["checkpoint-%d" % s]["action"], "keep")
        self.rotate_json(d, "--keep", "2", "--keep-every", "30")
        self.assertEqual(set(runs.entries(d)), {"checkpoint-%d" % s for s in (30, 40, 60, 90, 100)})

    def test_keep_zero_and_bad_options_are_usage_errors(self):
        d = self.run_dir()
        before = harness.tree_snapshot(d)
        for args in (["--keep", "0"], ["--keep", "-1"], ["--keep", "two"], [], ["--keep", "2", "--keep-every", "0"],
                     ["--keep", "2", "--sort", "name"], ["--keep", "2", "--mode", "up"]):
            with self.subTest(args=args):
                r = ckpt("rotate", d, *args)
                self.assertEqual(r.returncode, 2, r.describe())
                self.assertIn("ckpt: error:", r.stderr, r.describe())
        self.assertEqual(harness.tree_snapshot(d), before)

    def test_missing_run_dir(self):
        r = ckpt("rotate", os.path.join(self.tmp, "nope"), "--keep", "1")
        self.assertNotEqual(r.returncode, 0, r.describe())
        self.assertIn("ckpt: error:", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "nope")))

    def test_leftover_trash_cleared_and_dry_run_changes_nothing(self):
        d = self.run_dir()
        runs.make_dir_entry(d, ".ckpt-trash-checkpoint-5-1234", files=3)
        before = harness.tree_snapshot(d)
        data, r = self.rotate_json(d, "--keep", "3", "--dry-run")
        self.assertEqual(harness.tree_snapshot(d), before, "dry run changed the run directory")
        self.rotate_json(d, "--keep", "3")
        self.assertEqual(runs.entries(d), ["checkpoint-30", "checkpoint-40", "checkpoint-50"])

    def test_nothing_outside_run_dir_touched(self):
        d = self.run_dir(best_step=20)
        outside = os.path.join(self.tmp, "outside")
        os.makedirs(outside)
        target = runs.make_checkpoint(outside, 99, mtime=time.time() - 3 * HOUR)
        data_dir = runs.make_dir_entry(outside, "data", files=3)
        old_staging = runs.make_dir_entry(outside, "old-staging", mtime=time.time() - 3 * HOUR)
        os.symlink(target, os.path.join(d, "checkpoint-99"))
        os.symlink(old_staging, os.path.join(d, "tmp-checkpoint-98"))
        os.symlink(old_staging, os.path.join(d, ".ckpt-trash-checkpoint-97-1"))
        # A symlink inside a checkpoint that is going to be deleted.
        os.symlink(data_dir, os.path.join(d, "checkpoint-10", "linked-data"))
        os.symlink(os.path.join(data_dir, "part-0.bin"), os.path.join(d, "checkpoint-30", "linked-file"))
        outside_before = harness.tree_snapshot(outside)
        data, r = self.rotate_json(d, "--keep", "1", "--stale-after", "1m")
        self.assertEqual(harness.tree_snapshot(outside), outside_before, "rotate changed files outside RUN_DIR")
        self.assertTrue(os.path.islink(os.path.join(d, "checkpoint-99")))
        self.assertEqual(os.readlink(os.path.join(d, "checkpoint-99")), target)
        self.assertTrue(os.path.islink(os.path.join(d, "tmp-checkpoint-98")))
        self.assertFalse(os.path.exists(os.path.join(d, "checkpoint-10")))
        self.assertFalse(os.path.exists(os.path.join(d, "checkpoint-30")))
        self.assertEqual(data["newest"], "checkpoint-50", r.describe())
        self.assertIn("checkpoint-20", runs.entries(d))
        self.assertIn("checkpoint-50", runs.entries(d))


# ----------------------------------------------------------------------------------------------------------------
# Locking, concurrency, kill safety
# ----------------------------------------------------------------------------------------------------------------


class RotateConcurrencyTest(Tmp):
    def build_big(self, where, n=30, extra_files=0, extra_size=64):
        d = os.path.join(self.tmp, where)
        steps = [10 * (i + 1) for i in range(n)]
        evals = {s: {"eval_loss": 1.0 + ((s * 7919) % 97) / 100.0} for s in steps}
        best = min(steps, key=lambda s: (evals[s]["eval_loss"], s))
        os.makedirs(d)
        for s in steps:
            state = runs.trainer_state(s, evals=evals, best_model_checkpoint=os.path.join(d, "checkpoint-%d" % best),
                                       best_metric=evals[best]["eval_loss"])
            runs.make_checkpoint(d, s, state=state, extra_files=extra_files, extra_size=extra_size)
        return d, steps, best

    def test_no_wait_exits_75_when_lock_held(self):
        d, steps, best = self.build_big("run", n=5)
        before = runs.entries(d)
        hf = hf_reference.names_to_delete(d, 1, os.path.join(d, "checkpoint-%d" % best))
        fd = os.open(os.path.join(d, ".ckpt.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            r = ckpt("rotate", d, "--keep", "1", "--no-wait")
            self.assertEqual(r.returncode, 75, r.describe())
            self.assertIn("ckpt: error:", r.stderr, r.describe())
            self.assertEqual(runs.entries(d), before)
            # Without --no-wait it waits for the lock, then rotates.
            p = subprocess.Popen([harness.CKPT_BIN, "rotate", d, "--keep", "1", "-q"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            wait_until_blocked_in_flock(p)
            self.assertEqual(runs.entries(d), before)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(set(runs.entries(d)), set(before) - hf)

    def test_concurrent_rotations_end_where_one_would(self):
        for trial in range(3):
            with self.subTest(trial=trial):
                ref, steps, best = self.build_big("ref-%d" % trial)
                hf = hf_reference.names_to_delete(ref, 2, os.path.join(ref, "checkpoint-%d" % best))
                ckpt_ok(self, "rotate", ref, "--keep", "2", "-q")
                want = runs.entries(ref)
                self.assertEqual(set(want), {"checkpoint-%d" % s for s in steps} - hf)  # and it is HF's result
                d, _, _ = self.build_big("run-%d" % trial)
                runs.make_dir_entry(d, ".ckpt-trash-checkpoint-1-old", files=3)
                procs = [subprocess.Popen([harness.CKPT_BIN, "rotate", d, "--keep", "2", "--json"],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
                results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
                for out, err, rc in results:
                    self.assertEqual(rc, 0, err.decode())
                self.assertEqual(runs.entries(d), want)
                self.assertEqual(runs.trash_entries(d), [])
                removed = sum(json.loads(out)["removed"] for out, _, _ in results)
                self.assertEqual(removed, len(steps) - len(want), "total removed across the four processes")

    def test_sigkill_at_random_moments(self):
        """SIGKILL `rotate --keep 1` on 40 checkpoints (7 files each) at seeded random moments.

        Twenty kills come 0-30 ms after the start (as specified); on this machine process start-up and the scan
        take about that long, so twenty more are spread over the whole measured duration of a rotation, which
        puts most of them inside the rename/remove phase. After every kill: `list` shows no incomplete
        checkpoint-N and nothing new, the best and the newest are still there, and a second rotate reaches the
        clean result with no trash left."""
        rng = random.Random(7)
        ref, steps, best = self.build_big("ref", n=40, extra_files=5, extra_size=16384)
        t0 = time.monotonic()
        ckpt_ok(self, "rotate", ref, "--keep", "1", "-q")
        full = time.monotonic() - t0
        want = runs.entries(ref)
        self.assertIn("checkpoint-%d" % best, want)
        self.assertIn("checkpoint-%d" % steps[-1], want)
        shutil.rmtree(ref)
        delays = [rng.uniform(0.0, 0.030) for _ in range(20)] + [rng.uniform(0.0, 1.2 * full) for _ in range(20)]
        outcomes = {"before": 0, "mid-way": 0, "after": 0}
        problems = []
        for trial, delay in enumerate(delays):
            d, _, _ = self.build_big("run-%d" % trial, n=40, extra_files=5, extra_size=16384)
            original = set(runs.entries(d))
            p = subprocess.Popen([harness.CKPT_BIN, "rotate", d, "--keep", "1", "-q"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait()
            label = "trial %d (SIGKILL after %.1f ms, exit %s)" % (trial, delay * 1000, p.returncode)
            after_kill = set(runs.entries(d))
            if after_kill == original:
                outcomes["before"] += 1
            elif after_kill == set(want):
                outcomes["after"] += 1
            else:
                outcomes["mid-way"] += 1
            r = ckpt("list", d, "--json")
            if r.returncode != 0:
                problems.append(label + ": list failed: " + r.describe())
                continue
            listed = r.json()
            for row in listed:
                if row.get("kind") == "checkpoint" or str(row.get("name", "")).startswith("checkpoint-"):
                    if row["name"] not in original:
                        problems.append(label + ": list shows a checkpoint that never existed: %s" % row["name"])
                    if not row.get("complete"):
                        problems.append(label + ": incomplete checkpoint after the kill: %s %s" % (
                            row["name"], row.get("problems")))
            listed_names = {row["name"] for row in listed}
            for keep in ("checkpoint-%d" % best, "checkpoint-%d" % steps[-1]):
                if keep not in listed_names:
                    problems.append(label + ": %s (best or newest) is gone" % keep)
            r = ckpt("rotate", d, "--keep", "1", "-q")
            if r.returncode != 0:
                problems.append(label + ": second rotate failed: " + r.describe())
            if runs.entries(d) != want:
                problems.append(label + ": after a second rotate %s, a clean rotation leaves %s" % (
                    runs.entries(d), want))
            shutil.rmtree(d)
        if problems:
            self.fail("\n".join(problems))
        print("\n  sigkill outcomes (rotation %.0f ms): %r" % (full * 1000, outcomes), end=" ")
        self.assertGreater(outcomes["mid-way"], 0, "no kill landed inside a rotation: %r" % outcomes)

    def test_interrupted_deletion_leftovers(self):
        # The state a kill during removal leaves: a half-removed trash directory named after a checkpoint.
        d, steps, best = self.build_big("run", n=6)
        trash = os.path.join(d, ".ckpt-trash-checkpoint-10-99999-1")
        os.rename(os.path.join(d, "checkpoint-10"), trash)
        os.remove(os.path.join(trash, "config.json"))
        r = ckpt_ok(self, "list", d, "--json")
        names = [row["name"] for row in r.json()]
        self.assertNotIn(".ckpt-trash-checkpoint-10-99999-1", names, r.describe())
        self.assertNotIn("checkpoint-10", names)
        ckpt_ok(self, "rotate", d, "--keep", "10", "-q")
        self.assertEqual(runs.trash_entries(d), [])
        self.assertEqual(set(runs.entries(d)), {"checkpoint-%d" % s for s in steps[1:]})

# ----------------------------------------------------------------------------------------------------------------
# Several runs at once: RUN_DIR... and --recursive ROOT
# ----------------------------------------------------------------------------------------------------------------


def readme_crontab_line():
    """The README's crontab line for a tree of runs: (the command's words, the root it names)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")) as f:
        m = re.search(r"^    (?:\S+ ){5}(ckpt rotate .*--recursive (\S+).*)$", f.read(), re.M)
    assert m, "the README shows no crontab line rotating a tree of runs"
    return shlex.split(m.group(1)), m.group(2)


class RotateSeveralRunsTest(Tmp):
    def build(self, where, steps=(10, 20, 30, 40, 50), best_step=20):
        d = os.path.join(self.tmp, where)
        runs.make_run(d, list(steps), best_step=best_step, extra_files=1)
        return d

    def expected_after(self, run_dir, keep, best_step=20):
        """The entries Hugging Face's rotation leaves (the best and the newest complete are kept as ckpt keeps them)."""
        best = os.path.join(run_dir, "checkpoint-%d" % best_step) if best_step else None
        return set(runs.entries(run_dir)) - hf_reference.names_to_delete(run_dir, keep, best)

    def hold_lock(self, run_dir):
        fd = os.open(os.path.join(run_dir, ".ckpt.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.addCleanup(os.close, fd)
        return fd

    def test_each_run_rotated_as_alone_then_the_totals(self):
        a, b = self.build("runs/a"), self.build("runs/b", steps=(5, 15, 25), best_step=None)
        twins = [self.build("twin/a"), self.build("twin/b", steps=(5, 15, 25), best_step=None)]  # paths of the same length
        want = {a: self.expected_after(a, 2), b: self.expected_after(b, 2, None)}
        alone = [ckpt_ok(self, "rotate", "--keep", "2", "--json", t).json() for t in twins]
        r = ckpt_ok(self, "rotate", "--keep", "2", "--json", a, b)
        doc = r.json()
        self.assertEqual(list(doc), ["runs", "totals"], r.describe())
        for run, single, twin in zip(doc["runs"], alone, twins):
            # The document of each run is its single-run document.
            self.assertEqual(list(run), list(single))
            self.assertEqual(json.loads(json.dumps(run).replace(run["run_dir"], twin)), single)
        self.assertEqual({d: set(runs.entries(d)) for d in (a, b)}, want)
        self.assertEqual(doc["totals"], {"runs": 2, "failed": 0, "removed": sum(s["removed"] for s in alone), "archived": 0, "archives_removed": 0,
                                         "freed_bytes": sum(s["freed_bytes"] for s in alone), "archived_bytes": 0})
        # Text: each run's report under its path, a blank line between, then the totals.
        a, b = self.build("runs-text/a"), self.build("runs-text/b", steps=(5, 15, 25), best_step=None)
        twins = [self.build("twin-text/a"), self.build("twin-text/b", steps=(5, 15, 25), best_step=None)]
        alone = [ckpt_ok(self, "rotate", "--keep", "1", t).stdout for t in twins]
        freed = sum(ckpt_ok(self, "rotate", "--keep", "1", "--dry-run", "--json", d).json()["freed_bytes"] for d in (a, b))
        r = ckpt_ok(self, "rotate", "--keep", "1", a, b)
        self.assertEqual(r.stdout, "%s:\n%s\n%s:\n%s\noverall: 2 runs, freed %s\n" % (a, alone[0], b, alone[1], runs.human_bytes(freed)))
        self.assertEqual(r.stderr, "")
        self.assertEqual(ckpt_ok(self, "rotate", "-q", "--keep", "1", a, b).stdout, "")

    def test_a_locked_run_is_skipped_with_75_and_the_others_rotated(self):
        a, b, c = (self.build("runs/" + n) for n in "abc")
        want = {d: self.expected_after(d, 1) for d in (a, c)}
        before = runs.entries(b)
        self.hold_lock(b)
        r = ckpt("rotate", "--no-wait", "--keep", "1", a, b, c)
        self.assertEqual(r.returncode, 75, r.describe())
        self.assertEqual(r.stderr, "ckpt: error: %s: another ckpt process holds the run directory's lock\n" % b)
        self.assertEqual({d: set(runs.entries(d)) for d in (a, c)}, want)
        self.assertEqual(runs.entries(b), before)
        self.assertEqual([s.split("\n", 1)[0] for s in r.stdout.split("\n\n")], [a + ":", c + ":", "overall: 2 runs, freed %s; 1 run failed" % (
            re.search(r"^overall: 2 runs, freed (.*); 1 run failed$", r.stdout, re.M).group(1))], r.describe())
        for d in (a, c):
            shutil.rmtree(d)
            self.build(os.path.relpath(d, self.tmp))
        r = ckpt("rotate", "--no-wait", "--keep", "1", "--json", a, b, c)
        self.assertEqual(r.returncode, 75, r.describe())
        doc = r.json()
        self.assertEqual(doc["runs"][1], {"run_dir": b, "error": {"kind": "locked", "path": b, "where": None,
                                          "message": "%s: another ckpt process holds the run directory's lock" % b}})
        self.assertEqual([run["removed"] for run in (doc["runs"][0], doc["runs"][2])], [3, 3])
        self.assertEqual((doc["totals"]["runs"], doc["totals"]["failed"], doc["totals"]["removed"]), (2, 1, 6))

    def test_the_exit_status_is_the_worst_by_severity(self):
        """interrupted > corrupt or unsupported (3) > refused (2) > other failures (1) > locked (75) > 0."""
        def setup(kind):
            d = self.build(os.path.join("case-%d" % len(os.listdir(self.tmp)), kind))
            if kind == "locked":
                self.hold_lock(d)
            elif kind == "missing":
                shutil.rmtree(d)
            elif kind == "unsupported":  # a symlink where the lock file belongs is never followed
                os.symlink(os.path.join(self.tmp, "nowhere"), os.path.join(d, ".ckpt.lock"))
            elif kind == "refused":  # an archive directory inside the run reached through a symlink
                os.makedirs(os.path.join(self.tmp, "elsewhere"), exist_ok=True)
                os.symlink(os.path.join(self.tmp, "elsewhere"), os.path.join(d, "archive"))
            return d

        cases = [(["ok", "ok"], 0), (["ok", "locked"], 75), (["locked", "missing", "ok"], 1), (["missing", "refused"], 2),
                 (["refused", "locked"], 2), (["locked", "unsupported", "refused", "missing"], 3), (["unsupported", "ok"], 3)]
        for kinds, status in cases:
            with self.subTest(kinds=kinds):
                dirs = [setup(kind) for kind in kinds]
                r = ckpt("rotate", "--no-wait", "--keep", "1", "--archive", "--json", *dirs)
                self.assertEqual(r.returncode, status, r.describe())
                doc = r.json()
                self.assertEqual([run["run_dir"] for run in doc["runs"]], dirs)
                self.assertEqual(len(r.stderr.splitlines()), len(kinds) - kinds.count("ok"), r.describe())
                for kind, d, run in zip(kinds, dirs, doc["runs"]):
                    self.assertEqual("error" in run, kind != "ok", run)
                    if kind == "ok":
                        self.assertEqual(run["archived"], 3, run)
                        self.assertEqual(set(runs.entries(d)), {"archive", "checkpoint-20", "checkpoint-50"})

    def test_ctrl_c_or_sigterm_stops_at_once(self):
        # Nothing of rotate needs finishing (every step is safe to kill): the signal ends it, no later run is begun.
        for sig in (signal.SIGINT, signal.SIGTERM):
            with self.subTest(signal=sig):
                a, b, c = (self.build("%s/%s" % (sig.name, n)) for n in "abc")
                want_a = self.expected_after(a, 1)
                before = {d: harness.tree_snapshot(d) for d in (b, c)}
                fd = self.hold_lock(b)  # rotate waits for b's lock
                p = subprocess.Popen([harness.CKPT_BIN, "rotate", "--keep", "1", a, b, c], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                wait_until_blocked_in_flock(p)
                self.assertEqual(set(runs.entries(a)), want_a)
                p.send_signal(sig)
                p.communicate(timeout=60)
                self.assertEqual(p.returncode, -sig)  # a shell reports 128 + the signal: 130 for Ctrl-C
                fcntl.flock(fd, fcntl.LOCK_UN)
                self.assertEqual({d: harness.tree_snapshot(d) for d in (b, c)}, before)

    def test_a_tree_of_fifty_runs_rotated_by_the_readme_crontab_line(self):
        command, shown_root = readme_crontab_line()
        keep = int(command[command.index("--keep") + 1])
        root = os.path.join(self.tmp, "data", "runs")
        want = {}
        for team in range(5):
            for exp in range(10):
                d = os.path.join(root, "team%d" % team, "exp%d" % exp)
                best_step = (10, 20, 30, None)[(team + exp) % 4]
                runs.make_run(d, [10, 20, 30, 40, 50], best_step=best_step)
                want[d] = self.expected_after(d, keep, best_step)
        hidden = os.path.join(root, "team0", ".ckpt-trash-sweep-1")  # hidden: not searched
        runs.make_run(hidden, [10, 20, 30, 40, 50])
        argv = [harness.CKPT_BIN if w == "ckpt" else root if w == shown_root else w for w in command]
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, "", ""), " ".join(argv))
        self.assertEqual(len(want), 50)
        self.assertEqual({d: set(runs.entries(d)) for d in want}, want)
        self.assertTrue(all(len(w) < 5 for w in want.values()))
        self.assertEqual(len(runs.entries(hidden)), 5)

    def test_recursive_never_follows_a_symlink_nor_enters_hidden_directories(self):
        root = os.path.join(self.tmp, "runs")
        a = self.build("runs/a")
        nested = self.build("runs/a/sweep-1")
        hidden = self.build("runs/.old")
        outside = self.build("outside")
        os.symlink(outside, os.path.join(root, "link"))
        untouched = {d: harness.tree_snapshot(d) for d in (hidden, outside)}
        want = {d: self.expected_after(d, 1) for d in (a, nested)}
        doc = ckpt_ok(self, "rotate", "--keep", "1", "--json", "--recursive", root).json()
        self.assertEqual([run["run_dir"] for run in doc["runs"]], [a, nested])
        self.assertEqual({d: set(runs.entries(d)) for d in (a, nested)}, want)
        self.assertEqual({d: harness.tree_snapshot(d) for d in (hidden, outside)}, untouched)

    def test_an_archive_directory_shared_by_several_runs_is_refused(self):
        a, b = self.build("runs/a"), self.build("runs/b")
        shared = os.path.join(self.tmp, "archives")
        for args in (["--archive-dir", shared], ["--archive-dir", "../archives"], ["--archive=" + shared]):
            with self.subTest(args=args):
                r = ckpt("rotate", "--keep", "1", *args, a, b)
                self.assertEqual(r.returncode, 2, r.describe())
                self.assertEqual(r.stderr, "ckpt: error: --archive-dir: with several runs, a directory inside each run "
                                           "(relative, no ..): all runs' archives in one would collide\n")
        self.assertFalse(os.path.exists(shared))
        ckpt_ok(self, "rotate", "--keep", "1", "-q", "--archive-dir", "old", a, b)
        for d in (a, b):
            self.assertEqual(sorted(os.listdir(os.path.join(d, "old"))), ["checkpoint-10.ckpt", "checkpoint-30.ckpt", "checkpoint-40.ckpt"])
        # One run may archive anywhere, as before.
        c = self.build("runs/c")
        ckpt_ok(self, "rotate", "--keep", "1", "-q", "--archive-dir", shared, c)
        self.assertEqual(len(os.listdir(shared)), 3)


if __name__ == "__main__":
    unittest.main()
