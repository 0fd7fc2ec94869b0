"""End-to-end tests of ckpt on Hugging Face Trainer + DeepSpeed ZeRO checkpoints (issue 17): the layout and
completeness `list` reports, rotate / archive / best / latest treating them as any checkpoint, and
`convert --consolidate` (the fp32 master weights, bit for bit as DeepSpeed's get_fp32_state_dict_from_zero_checkpoint
returns them, and with --include-state an optimizer.pt that torch's AdamW loads and steps on as the run would),
and hostile checkpoints refused with exit status 3 naming the file.

Fixtures are written by make_zero_checkpoint.py (imported: it writes each run in a few milliseconds), once per
class; its --reference (the consolidation from the files, which it checks against the model's own fp32 weights) is
what ckpt's output is compared with.

Run:  cd tests/deepspeed && CKPT_BIN=build/ckpt /usr/bin/python3 -m unittest -v test_zero
"""

import collections
import json
import os
import subprocess
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import make_zero_checkpoint as gen  # noqa: E402
from harness import ckpt, ckpt_ok, ckpt_untrusted  # noqa: E402
from manage import runs  # noqa: E402

TMP = None
STEP = 5  # the step of a fixture's one checkpoint


def setUpModule():
    global TMP
    harness.require_binary()
    TMP = tempfile.mkdtemp(prefix="ckpt-zero-test-")


def tearDownModule():
    harness.remove_temp_dir(TMP)


class Fixture:
    """One generated run: its Options, the Training at its newest step, the run directory, the newest checkpoint and
    the reference state dict file (None for a damaged one)."""

    def __init__(self, opts, training, run_dir, checkpoint, reference):
        self.opts = opts
        self.training = training
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.reference_path = reference

    def reference(self):
        return torch.load(self.reference_path)

    def layout(self):
        return "deepspeed zero-%d x%d" % (self.opts.stage, self.opts.world_size)

    def optim_file(self, rank):
        return gen.optim_file_name(self.opts, rank)

    def tag_dir(self):
        return os.path.join(self.checkpoint, "global_step%d" % self.training.step)

    def describe(self):
        o = self.opts
        return "stage %d x%d %s (%s)" % (o.stage, o.world_size, o.dtype, os.path.basename(self.run_dir))


_names = collections.Counter()


def build(name, damage=None, **fields):
    """Writes a run under TMP (a unique directory per call) and returns its Fixture."""
    _names[name] += 1
    unique = "%s-%d" % (name, _names[name])
    fields.setdefault("checkpoints", [STEP])
    opts = gen.Options(**fields)
    run_dir = os.path.join(TMP, unique)
    reference = None if damage else os.path.join(TMP, unique + ".ref.pt")
    training, checkpoint = gen.build(run_dir, opts, damage, reference)
    return Fixture(opts, training, run_dir, checkpoint, reference)


def copy_checkpoint(fixture, where):
    """A writable copy of the fixture's newest checkpoint at TMP/<where>/<its name> (the name keeps its step)."""
    dest = os.path.join(TMP, where, os.path.basename(fixture.checkpoint))
    harness.copy_tree_writable(fixture.checkpoint, dest)
    return dest


def copy_run(fixture, where):
    dest = os.path.join(TMP, where)
    harness.copy_tree_writable(fixture.run_dir, dest)
    return dest


def aliases_of(state_dict):
    """{later name: first name} for the entries that are the same tensor object (torch.load keeps ties)."""
    first, out = {}, {}
    for name, tensor in state_dict.items():
        if id(tensor) in first:
            out[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return out


def same_bits(a, b):
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and torch.equal(gen.raw_bytes(a), gen.raw_bytes(b))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def saved_param_groups(fixture):
    """The torch optimizer's param_groups as DeepSpeed saved them in rank 0's optimizer states."""
    zero = torch.load(os.path.join(fixture.tag_dir(), fixture.optim_file(0)), map_location="cpu")
    zero = zero["optimizer_state_dict"]
    base = zero["base_optimizer_state"] if fixture.opts.stage < 3 else zero["optimizer_state_dict"]
    return base["param_groups"]


class ZeroCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self._testMethodName + "-", dir=TMP)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def list_json(self, run_dir):
        r = ckpt_ok(self, "list", run_dir, "--json")
        rows = r.json()
        self.assertIsInstance(rows, list, r.describe())
        return {row["name"]: row for row in rows}, r

    def consolidate(self, checkpoint, out, *options):
        r = ckpt("convert", checkpoint, "--consolidate", "-o", out, *options, timeout=120)
        self.assertEqual(r.returncode, 0, "consolidating failed\n" + r.describe())
        self.assertEqual(harness.leftover_temporaries(os.path.dirname(os.path.abspath(out))), [], r.describe())
        if os.path.isdir(out):
            self.assertEqual(harness.leftover_temporaries(out), [], r.describe())
        return r

    def assertRefused(self, r, code, file_name):
        """Exit status `code`, one `ckpt: error:` line naming `file_name`."""
        self.assertFalse(r.timed_out, r.describe())
        self.assertEqual(r.returncode, code, r.describe())
        self.assertIsNone(r.error_line_problem(file_name), r.describe())

    def assertJsonRefused(self, r, code, file_name):
        """Exit status `code` and exactly one {"error": {kind, path, where, message}} object on stdout, its path or
        message naming `file_name`."""
        self.assertFalse(r.timed_out, r.describe())
        self.assertEqual(r.returncode, code, r.describe())
        doc = r.json()
        self.assertEqual(list(doc), ["error"], r.describe())
        error = doc["error"]
        self.assertEqual(set(error), {"kind", "path", "where", "message"}, r.describe())
        self.assertIn(file_name, "%s %s" % (error["path"], error["message"]), r.describe())

    def assertMatchesReference(self, out, reference, to="safetensors", dtype=None, what=""):
        """OUT's weights file holds exactly `reference` (cast to `dtype` when given): the same names in the same
        order, every tensor bit for bit; tied names an alias (safetensors: ckpt_aliases metadata; pytorch: one
        storage)."""
        want = collections.OrderedDict(reference)
        if dtype is not None:
            casts = {}
            for name, tensor in reference.items():
                casts.setdefault(id(tensor), tensor.to(dtype))
                want[name] = casts[id(tensor)]
        aliases = aliases_of(reference)
        if to == "safetensors":
            path = os.path.join(out, "model.safetensors")
            self.assertEqual(harness.validate_safetensors(path), [], what)
            meta, tensors = harness.read_safetensors(path)
            self.assertEqual(meta.get("format"), "pt", what)
            self.assertEqual(json.loads(meta.get("ckpt_order", "null")), list(want), what + ": ckpt_order")
            self.assertEqual(json.loads(meta.get("ckpt_aliases", "{}")), aliases, what + ": ckpt_aliases")
            self.assertEqual(sorted(tensors), sorted(n for n in want if n not in aliases), what)
        else:
            tensors = torch.load(os.path.join(out, "pytorch_model.bin"))
            self.assertEqual(list(tensors), list(want), what + ": names or their order")
            for alias, target in aliases.items():
                self.assertEqual(tensors[alias].data_ptr(), tensors[target].data_ptr(),
                                 "%s: %s does not share %s's storage" % (what, alias, target))
        for name, tensor in tensors.items():
            self.assertTrue(same_bits(tensor, want[name]), "%s: %s is %s %s, expected %s %s%s" % (
                what, name, tensor.dtype, tuple(tensor.shape), want[name].dtype, tuple(want[name].shape),
                "" if tensor.dtype != want[name].dtype or tensor.shape != want[name].shape else " (values differ)"))


# ----------------------------------------------------------------------------------------------------------------
# list: the layout and completeness
# ----------------------------------------------------------------------------------------------------------------


class Layout(ZeroCase):
    @classmethod
    def setUpClass(cls):
        cls.complete = {(stage, world): build("layout", stage=stage, world_size=world, dtype=dtype)
                        for stage, world, dtype in ((1, 1, "fp16"), (1, 4, "bf16"), (2, 2, "bf16"), (2, 3, "fp16"),
                                                    (3, 1, "bf16"), (3, 4, "fp16"), (3, 2, "bf16"))}
        cls.gathered = build("gathered", stage=3, world_size=2, dtype="fp16", gather_16bit=True)
        cls.base = {stage: build("base", stage=stage, world_size=3, dtype="fp16") for stage in (2, 3)}

    def test_layout_field_and_complete_for_every_stage_and_world_size(self):
        for fixture in list(self.complete.values()) + [self.gathered]:
            with self.subTest(fixture.describe()):
                rows, r = self.list_json(fixture.run_dir)
                row = rows["checkpoint-%d" % STEP]
                self.assertEqual(row["layout"], fixture.layout(), r.describe())
                self.assertTrue(row["complete"], r.describe())
                self.assertEqual(row["problems"], [], r.describe())
                self.assertTrue(row["is_latest"], r.describe())

    def test_complete_whether_or_not_the_trainer_gathered_16bit_weights(self):
        for fixture in self.complete.values():
            if fixture.opts.stage == 3:
                continue
            with self.subTest(fixture.describe()):
                checkpoint = copy_checkpoint(fixture, "no-gathered-%d-%d" % (fixture.opts.stage, fixture.opts.world_size))
                os.remove(os.path.join(checkpoint, "model.safetensors"))
                rows, r = self.list_json(os.path.dirname(checkpoint))
                self.assertTrue(rows[os.path.basename(checkpoint)]["complete"], r.describe())
                self.assertEqual(rows[os.path.basename(checkpoint)]["layout"], fixture.layout(), r.describe())

    def test_no_trainer_state_is_incomplete(self):
        checkpoint = copy_checkpoint(self.base[3], "no-state")
        os.remove(os.path.join(checkpoint, "trainer_state.json"))
        rows, r = self.list_json(os.path.dirname(checkpoint))
        row = rows[os.path.basename(checkpoint)]
        self.assertFalse(row["complete"], r.describe())
        self.assertIn("trainer_state.json", " ".join(row["problems"]), r.describe())

    def test_every_damage_is_incomplete_naming_the_file(self):
        for stage, fixture in self.base.items():
            for kind in gen.DAMAGES:
                with self.subTest(stage=stage, damage=kind):
                    checkpoint = copy_checkpoint(fixture, "damaged-%s-%d" % (kind, stage))
                    gen.damage(checkpoint, fixture.opts, kind)
                    rows, r = self.list_json(os.path.dirname(checkpoint))
                    row = rows[os.path.basename(checkpoint)]
                    self.assertFalse(row["complete"], r.describe())
                    # What the damage leaves may not tell the stage and world size (no tag directory to read).
                    self.assertIn(row["layout"], ("deepspeed", fixture.layout()), r.describe())
                    self.assertIn(damaged_file(fixture, kind), " ".join(row["problems"]), r.describe())

    def test_text_shows_a_layout_column_only_when_an_entry_has_a_layout(self):
        fixture = self.complete[3, 4]
        r = ckpt_ok(self, "list", fixture.run_dir)
        lines = r.stdout.splitlines()
        self.assertIn("layout", lines[0].split(), r.describe())
        row = next(line for line in lines if line.startswith("checkpoint-%d" % STEP))
        self.assertIn("deepspeed zero-3 x4", row, r.describe())

        plain = self.path("plain")
        runs.make_run(plain, [10, 20])
        r = ckpt_ok(self, "list", plain)
        self.assertNotIn("layout", r.stdout.splitlines()[0].split(), r.describe())
        rows, r = self.list_json(plain)
        self.assertEqual([row["layout"] for row in rows.values()], [None, None], r.describe())

    def test_a_run_mixing_both_kinds(self):
        run = copy_run(self.complete[2, 2], "mixed")  # checkpoint-5
        runs.make_checkpoint(run, 10)
        rows, r = self.list_json(run)
        self.assertEqual(rows["checkpoint-5"]["layout"], "deepspeed zero-2 x2", r.describe())
        self.assertIsNone(rows["checkpoint-10"]["layout"], r.describe())
        self.assertTrue(rows["checkpoint-5"]["complete"] and rows["checkpoint-10"]["complete"], r.describe())
        r = ckpt_ok(self, "list", run)
        self.assertIn("layout", r.stdout.splitlines()[0].split(), r.describe())


def damaged_file(fixture, kind):
    """The name of the file that gen.damage's `kind` spoils: what a message about it must name."""
    if kind == "missing-rank":
        return fixture.optim_file(fixture.opts.world_size - 1)
    if kind in ("truncated-shard", "sizes-mismatch"):
        return fixture.optim_file(0)
    return "latest"


# ----------------------------------------------------------------------------------------------------------------
# rotate, archives, best, latest
# ----------------------------------------------------------------------------------------------------------------


class Management(ZeroCase):
    """A stage-3 run of checkpoints 2, 4, 6 (no weights file anywhere: only DeepSpeed's shards) and a stage-1 one."""

    @classmethod
    def setUpClass(cls):
        cls.zero3 = build("manage3", stage=3, world_size=2, dtype="bf16", checkpoints=[2, 4, 6])
        cls.zero1 = build("manage1", stage=1, world_size=4, dtype="fp16", checkpoints=[2, 4, 6])

    def names(self, run):
        return sorted(n for n in os.listdir(run) if not n.startswith(".ckpt"))

    def test_rotate_counts_them_and_deletes_whole_directories(self):
        for fixture in (self.zero3, self.zero1):
            with self.subTest(fixture.describe()):
                run = copy_run(fixture, "rotate-%d" % fixture.opts.stage)
                kept = {n: harness.tree_snapshot(os.path.join(run, n)) for n in ("checkpoint-4", "checkpoint-6")}
                r = ckpt_ok(self, "rotate", run, "--keep", "2", "--json")
                self.assertEqual(self.names(run), ["checkpoint-4", "checkpoint-6"], r.describe())
                self.assertEqual([d["name"] for d in r.json()["decisions"] if d["action"] == "delete"],
                                 ["checkpoint-2"], r.describe())
                for name, snapshot in kept.items():
                    self.assertEqual(harness.tree_snapshot(os.path.join(run, name)), snapshot, name)
                self.assertEqual(runs.trash_entries(run), [])

    def test_rotate_archive_then_restore_byte_identical(self):
        run = copy_run(self.zero3, "rotate-archive")
        before = {n: harness.tree_snapshot(os.path.join(run, n)) for n in ("checkpoint-2", "checkpoint-4")}
        ckpt_ok(self, "rotate", run, "--keep", "1", "--archive", "-q")
        self.assertEqual(self.names(run), ["archive", "checkpoint-6"])
        self.assertEqual(sorted(os.listdir(os.path.join(run, "archive"))), ["checkpoint-2.ckpt", "checkpoint-4.ckpt"])
        for name, snapshot in before.items():
            restored = self.path("restored-" + name)
            ckpt_ok(self, "convert", os.path.join(run, "archive", name + ".ckpt"), "--to", "dir", "-o", restored, "-q")
            self.assertEqual(harness.tree_snapshot(restored), snapshot, name)
        rows, r = self.list_json(run)
        self.assertEqual(rows["checkpoint-6"]["layout"], self.zero3.layout(), r.describe())
        self.assertEqual([rows[n]["kind"] for n in ("archive/checkpoint-2.ckpt", "archive/checkpoint-4.ckpt")],
                         ["archive"] * 2, r.describe())

    def test_convert_to_archive_and_back(self):
        for fixture in (self.zero3, self.zero1):
            with self.subTest(fixture.describe()):
                archive = self.path("zero%d.ckpt" % fixture.opts.stage)
                restored = self.path("zero%d-restored" % fixture.opts.stage)
                ckpt_ok(self, "convert", fixture.checkpoint, "--to", "archive", "-o", archive, "-q")
                ckpt_ok(self, "convert", archive, "--to", "dir", "-o", restored, "-q")
                self.assertEqual(harness.tree_snapshot(restored), harness.tree_snapshot(fixture.checkpoint))

    def test_best_and_rotate_keeping_it(self):
        run = copy_run(self.zero3, "best")
        evals = {2: {"eval_loss": 3.0}, 4: {"eval_loss": 2.0}, 6: {"eval_loss": 2.5}}
        for step in (2, 4, 6):
            runs.write_json(os.path.join(run, "checkpoint-%d" % step, "trainer_state.json"), runs.trainer_state(
                step, evals=evals, best_model_checkpoint=os.path.join(run, "checkpoint-%d" % min(step, 4)),
                best_metric=evals[min(step, 4)]["eval_loss"]))
        for args in ((), ("--metric", "eval_loss")):
            r = ckpt_ok(self, "best", run, *args)
            self.assertEqual(r.stdout, os.path.join(run, "checkpoint-4") + "\n", r.describe())
        ckpt_ok(self, "rotate", run, "--keep", "1", "-q")
        self.assertEqual(self.names(run), ["checkpoint-4", "checkpoint-6"])

    def test_resume_says_to_consolidate(self):
        # ckpt's trainer resumes one process's checkpoints: the newest DeepSpeed one is refused (exit 3), the message
        # giving the command that writes one, and nothing is written.
        run = copy_run(self.zero3, "resume")
        before = harness.tree_snapshot(run, ignore=(".ckpt.lock", ".ckpt.train.lock"))
        r = harness.ckpt("resume", run)
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn(os.path.join(run, "checkpoint-6") + ": deepspeed zero-3 x2 checkpoint", r.stderr)
        self.assertIn("--consolidate --include-state -o DIR", r.stderr)
        self.assertEqual(harness.tree_snapshot(run, ignore=(".ckpt.lock", ".ckpt.train.lock")), before)

    def test_latest_and_rotate_pass_over_a_damaged_newest(self):
        for kind in gen.DAMAGES:
            with self.subTest(damage=kind):
                run = copy_run(self.zero3, "damaged-newest-" + kind)
                gen.damage(os.path.join(run, "checkpoint-6"), self.zero3.opts, kind)
                r = ckpt_ok(self, "latest", run)
                self.assertEqual(r.stdout, os.path.join(run, "checkpoint-4") + "\n", r.describe())
                damaged = harness.tree_snapshot(os.path.join(run, "checkpoint-6"))
                r = ckpt_ok(self, "rotate", run, "--keep", "1", "--stale-after", "0s", "-q")
                self.assertEqual(self.names(run), ["checkpoint-4", "checkpoint-6"], r.describe())
                self.assertEqual(harness.tree_snapshot(os.path.join(run, "checkpoint-6")), damaged)


# ----------------------------------------------------------------------------------------------------------------
# convert --consolidate: the weights
# ----------------------------------------------------------------------------------------------------------------


# Stages x world sizes x dtypes, sampled: every corner of the cube (stage 1 or 3, world 1 or 4, fp16 or bf16) and
# stage 2 and worlds 2 and 3 in between.
MATRIX = [(1, 1, "fp16"), (1, 1, "bf16"), (1, 4, "fp16"), (1, 4, "bf16"), (3, 1, "fp16"), (3, 1, "bf16"),
          (3, 4, "fp16"), (3, 4, "bf16"), (2, 2, "bf16"), (2, 3, "fp16"), (1, 3, "bf16"), (3, 2, "fp16")]

VARIANTS = [
    ("untied", dict(stage=2, world_size=3, dtype="bf16", tied=False)),
    ("no frozen", dict(stage=3, world_size=2, dtype="fp16", frozen=False)),
    ("no frozen, stage 2", dict(stage=2, world_size=4, dtype="bf16", frozen=False)),
    ("one param group", dict(stage=1, world_size=2, dtype="fp16", param_groups=1)),
    ("three param groups, stage 3", dict(stage=3, world_size=3, dtype="bf16", param_groups=3)),
    # logit_scale alone in a group of one element: with 4 ranks, ranks 1-3 hold nothing but padding.
    ("three param groups, whole partitions of padding", dict(stage=2, world_size=4, dtype="fp16", param_groups=3)),
    ("three param groups, whole partitions of padding, stage 1", dict(stage=1, world_size=3, dtype="bf16",
                                                                      param_groups=3)),
    # Sub-groups smaller than most parameters: each parameter's partitions in sub-groups of their own.
    ("small sub-groups", dict(stage=3, world_size=4, dtype="bf16", sub_group_size=10)),
    ("sub-groups of several parameters", dict(stage=3, world_size=3, dtype="fp16", sub_group_size=40,
                                              param_groups=3)),
    ("enum by value", dict(stage=2, world_size=2, dtype="fp16", enum_by_value=True)),
    ("enum by value, stage 3", dict(stage=3, world_size=3, dtype="bf16", enum_by_value=True, gather_16bit=True)),
    ("tiny widths", dict(stage=2, world_size=4, dtype="bf16", width=1, layers=1, vocab=3)),
    ("odd widths", dict(stage=3, world_size=3, dtype="fp16", width=33, layers=3, vocab=101)),
]


class Consolidate(ZeroCase):
    @classmethod
    def setUpClass(cls):
        cls.matrix = [build("matrix", stage=s, world_size=w, dtype=d) for s, w, d in MATRIX]
        cls.variants = [(what, build("variant", **fields)) for what, fields in VARIANTS]
        cls.every = [(f.describe(), f) for f in cls.matrix] + cls.variants

    def cell(self, stage, world, dtype):
        """The matrix's fixture of that stage, world size and dtype."""
        return self.matrix[MATRIX.index((stage, world, dtype))]

    def variant(self, what):
        return dict(self.variants)[what]

    def test_safetensors_and_pytorch_equal_deepspeeds_consolidation(self):
        for what, fixture in self.every:
            for to in ("safetensors", "pytorch"):
                with self.subTest(what, to=to):
                    out = self.path("%s-%s" % (os.path.basename(fixture.run_dir), to))
                    options = () if to == "safetensors" else ("--to", "pytorch")
                    self.consolidate(fixture.checkpoint, out, *options)
                    self.assertMatchesReference(out, fixture.reference(), to, what=what)
                    weights = "model.safetensors" if to == "safetensors" else "pytorch_model.bin"
                    self.assertEqual(sorted(os.listdir(out)), sorted([weights, "config.json"]), what)
                    self.assertEqual(harness.sha256_file(os.path.join(out, "config.json")),
                                     harness.sha256_file(os.path.join(fixture.checkpoint, "config.json")))

    def test_the_same_for_every_world_size_and_stage(self):
        """One model, one training: its consolidation is the same tensors whatever the stage and world size."""
        first = None
        for fixture in self.matrix:
            if fixture.opts.dtype != "bf16":
                continue
            out = self.path("same-" + os.path.basename(fixture.run_dir))
            self.consolidate(fixture.checkpoint, out)
            _, tensors = harness.read_safetensors(os.path.join(out, "model.safetensors"))
            trainable = {n: t for n, t in tensors.items() if n in fixture.training.masters}
            if first is None:
                first = trainable
                continue
            self.assertEqual(sorted(trainable), sorted(first), fixture.describe())
            for name, tensor in trainable.items():
                self.assertTrue(same_bits(tensor, first[name]), "%s: %s" % (fixture.describe(), name))

    def test_other_files_are_copied_and_training_state_is_left(self):
        fixture = self.cell(2, 2, "bf16")  # the Trainer also wrote the 16-bit model.safetensors
        checkpoint = copy_checkpoint(fixture, "extras")
        extras = {"generation_config.json": b'{"do_sample": false}\n', "tokenizer.json": b'{"version": "1.0"}',
                  "README.md": b"# a model card\n", "special_tokens_map.json": b"{}"}
        for name, data in extras.items():
            with open(os.path.join(checkpoint, name), "wb") as f:
                f.write(data)
        os.makedirs(os.path.join(checkpoint, "runs", "events"))
        for to, weights in (("safetensors", "model.safetensors"), ("pytorch", "pytorch_model.bin")):
            with self.subTest(to=to):
                out = self.path("extras-" + to)
                self.consolidate(checkpoint, out, "--to", to)
                self.assertEqual(sorted(os.listdir(out)), sorted([weights, "config.json"] + list(extras)))
                for name, data in extras.items():
                    with open(os.path.join(out, name), "rb") as f:
                        self.assertEqual(f.read(), data, name)
                self.assertMatchesReference(out, fixture.reference(), to)

    def test_gathered_16bit_weights_in_any_form_are_left_out(self):
        """The Trainer's 16-bit weights beside DeepSpeed's files (sharded with an index, or pytorch_model.bin when
        save_safetensors is off) are neither copied nor read as the weights."""
        fixture = self.cell(2, 3, "fp16")
        for form in ("sharded", "bin"):
            with self.subTest(form=form):
                checkpoint = copy_checkpoint(fixture, "gathered-" + form)
                os.remove(os.path.join(checkpoint, "model.safetensors"))
                if form == "sharded":
                    runs.write_sharded_safetensors(checkpoint, shards=2)
                else:
                    runs.write_pytorch_bin(os.path.join(checkpoint, "pytorch_model.bin"))
                for to, weights in (("safetensors", "model.safetensors"), ("pytorch", "pytorch_model.bin")):
                    out = self.path("out-%s-%s" % (form, to))
                    self.consolidate(checkpoint, out, "--to", to)
                    self.assertEqual(sorted(os.listdir(out)), sorted(["config.json", weights]))
                    self.assertMatchesReference(out, fixture.reference(), to)

    def test_max_shard_size(self):
        for fixture in (self.cell(3, 4, "bf16"), self.variant("untied")):
            reference = fixture.reference()
            aliases = aliases_of(reference)
            unique_bytes = sum(t.numel() * t.element_size() for n, t in reference.items() if n not in aliases)
            for to, index_name, prefix, ext in (("safetensors", "model.safetensors.index.json", "model", "safetensors"),
                                                ("pytorch", "pytorch_model.bin.index.json", "pytorch_model", "bin")):
                with self.subTest(fixture.describe(), to=to):
                    out = self.path("shards-%s-%s" % (os.path.basename(fixture.run_dir), to))
                    self.consolidate(fixture.checkpoint, out, "--to", to, "--max-shard-size", "2KB")
                    index = read_json(os.path.join(out, index_name))
                    self.assertEqual(index["metadata"]["total_size"], unique_bytes)
                    weight_map = index["weight_map"]
                    self.assertEqual(set(weight_map), set(reference))
                    shards = sorted(set(weight_map.values()))
                    self.assertGreater(len(shards), 2)
                    self.assertEqual(shards, ["%s-%05d-of-%05d.%s" % (prefix, k, len(shards), ext)
                                              for k in range(1, len(shards) + 1)])
                    self.assertEqual(sorted(os.listdir(out)), sorted(shards + [index_name, "config.json"]))
                    for alias, target in aliases.items():
                        self.assertEqual(weight_map[alias], weight_map[target], "a tie travels with its target")
                    found = {}
                    for shard in shards:
                        path = os.path.join(out, shard)
                        if to == "safetensors":
                            self.assertEqual(harness.validate_safetensors(path), [], shard)
                            meta, tensors = harness.read_safetensors(path)
                            names = set(tensors) | set(json.loads(meta.get("ckpt_aliases", "{}")))
                        else:
                            tensors = torch.load(path)
                            names = set(tensors)
                        self.assertEqual(names, {n for n, s in weight_map.items() if s == shard}, shard)
                        found.update(tensors)
                    for name, tensor in found.items():
                        self.assertTrue(same_bits(tensor, reference[name]), name)
                    self.assertEqual(set(found) | set(aliases), set(reference))

    def test_dtype(self):
        for fixture in (self.cell(3, 4, "fp16"), self.cell(1, 4, "bf16"), self.variant("untied")):
            config = read_json(os.path.join(fixture.checkpoint, "config.json"))
            for flag, dtype, name in (("bf16", torch.bfloat16, "bfloat16"), ("fp16", torch.float16, "float16"),
                                      ("fp32", torch.float32, "float32")):
                for to in ("safetensors", "pytorch"):
                    with self.subTest(fixture.describe(), dtype=flag, to=to):
                        out = self.path("cast-%s-%s-%s" % (os.path.basename(fixture.run_dir), flag, to))
                        self.consolidate(fixture.checkpoint, out, "--to", to, "--dtype", flag)
                        self.assertMatchesReference(out, fixture.reference(), to, dtype=dtype, what=flag)
                        with open(os.path.join(out, "config.json")) as f:
                            self.assertEqual(f.read(), json.dumps(dict(config, torch_dtype=name), indent=2,
                                                                  sort_keys=True) + "\n")

    def test_dry_run_writes_nothing(self):
        fixture = self.cell(3, 4, "bf16")
        source = harness.tree_snapshot(fixture.checkpoint)
        for options in ((), ("--to", "pytorch", "--max-shard-size", "2KB"), ("--include-state", "--dtype", "bf16"),
                        ("--json",)):
            with self.subTest(options=options):
                out = self.path("dry")
                r = ckpt_ok(self, "convert", fixture.checkpoint, "--consolidate", "-o", out, "--dry-run", *options)
                self.assertFalse(os.path.exists(out), r.describe())
                self.assertEqual(os.listdir(self.tmp), [], r.describe())
                if "--json" in options:
                    self.assertTrue(r.json()["dry_run"], r.describe())
        self.assertEqual(harness.tree_snapshot(fixture.checkpoint), source)

    def test_an_existing_destination_is_refused_then_forced(self):
        fixture, other = self.cell(3, 1, "fp16"), self.cell(3, 1, "bf16")
        out = self.path("out")
        self.consolidate(other.checkpoint, out)
        earlier = harness.tree_snapshot(out)
        r = ckpt("convert", fixture.checkpoint, "--consolidate", "-o", out)
        self.assertRefused(r, 2, "exist")
        self.assertEqual(harness.tree_snapshot(out), earlier)
        self.consolidate(fixture.checkpoint, out, "--force")
        self.assertMatchesReference(out, fixture.reference())

    def test_json_summary(self):
        fixture = self.cell(1, 1, "fp16")
        out = self.path("out")
        r = self.consolidate(fixture.checkpoint, out, "--json")
        doc = r.json()
        self.assertIsInstance(doc, dict, r.describe())
        self.assertFalse(doc["dry_run"], r.describe())
        self.assertMatchesReference(out, fixture.reference())

    def test_without_consolidate_a_deepspeed_checkpoint_is_refused(self):
        for fixture in (self.cell(2, 2, "bf16"), self.cell(3, 4, "bf16")):
            with self.subTest(fixture.describe()):
                out = self.path("out-" + os.path.basename(fixture.run_dir))
                r = ckpt("convert", fixture.checkpoint, "--to", "safetensors", "-o", out)
                self.assertRefused(r, 2, "--consolidate")
                self.assertFalse(os.path.exists(out))

    def test_a_checkpoint_without_deepspeed_layout_or_optimizer_shards_is_a_usage_error(self):
        run = self.path("plain")
        checkpoint = runs.make_checkpoint(run, 10)
        out = self.path("out")
        r = ckpt("convert", checkpoint, "--consolidate", "-o", out)
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertIsNone(r.error_line_problem(), r.describe())
        self.assertFalse(os.path.exists(out))


def peak_rss_bytes(testcase, *args):
    """Runs ckpt ARGS under /usr/bin/time (a small parent, so the figure is ckpt's own) and returns its peak RSS."""
    report = os.path.join(testcase.tmp, "time.txt")
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", report, harness.CKPT_BIN] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    testcase.assertEqual(proc.returncode, 0, proc.stderr)
    with open(report) as f:
        return int(f.read().split()[-1]) * 1024


class Streaming(ZeroCase):
    """Peak memory does not grow with the model: consolidating 67 MB more of fp32 weights costs far less than that
    in RSS (the benchmark holds the absolute bound: 1 GB under 256 MiB)."""

    def test_peak_rss_does_not_follow_the_models_size(self):
        small = build("small", stage=3, world_size=4, dtype="bf16", width=64, layers=1, vocab=100)
        big = build("big", stage=3, world_size=4, dtype="bf16", width=1024, layers=6, vocab=4000)
        sizes, peaks = [], []
        for fixture in (small, big):
            out = self.path("out-" + os.path.basename(fixture.run_dir))
            peaks.append(peak_rss_bytes(self, "convert", fixture.checkpoint, "--consolidate", "-o", out))
            sizes.append(os.path.getsize(os.path.join(out, "model.safetensors")))
            self.assertMatchesReference(out, fixture.reference())
        self.assertGreater(sizes[1] - sizes[0], 60 * 10 ** 6)
        self.assertLess(peaks[1] - peaks[0], 0.4 * (sizes[1] - sizes[0]),
                        "peak RSS %.1f MiB for %.1f MB of weights, %.1f MiB for %.1f MB" % (
                            peaks[0] / 2 ** 20, sizes[0] / 1e6, peaks[1] / 2 ** 20, sizes[1] / 1e6))


# ----------------------------------------------------------------------------------------------------------------
# convert --consolidate --include-state: the optimizer for one machine
# ----------------------------------------------------------------------------------------------------------------


class IncludeState(ZeroCase):
    @classmethod
    def setUpClass(cls):
        cls.fixtures = [build("state", stage=1, world_size=3, dtype="bf16", param_groups=3),
                        build("state", stage=2, world_size=4, dtype="fp16"),
                        build("state", stage=3, world_size=2, dtype="bf16", sub_group_size=40, param_groups=3),
                        build("state", stage=3, world_size=4, dtype="fp16", frozen=False)]
        cls.outs = []
        for fixture in cls.fixtures:
            out = os.path.join(TMP, os.path.basename(fixture.run_dir) + "-out")
            ckpt_ok(None, "convert", fixture.checkpoint, "--consolidate", "--include-state", "-o", out, timeout=120)
            cls.outs.append(out)

    def cases(self):
        for fixture, out in zip(self.fixtures, self.outs):
            with self.subTest(fixture.describe()):
                yield fixture, out

    def order(self, fixture):
        """The trainable parameters' names in the consolidated optimizer's index order: group by group, each in
        param_shapes order (named_parameters order, a tied parameter once)."""
        return [name for names, _, _ in fixture.training.groups for name in names]

    def test_files(self):
        for fixture, out in self.cases():
            self.assertEqual(sorted(os.listdir(out)), ["config.json", "model.safetensors", "optimizer.pt",
                                                       "scheduler.pt", "trainer_state.json", "training_args.bin"])
            for name in ("scheduler.pt", "trainer_state.json", "training_args.bin", "config.json"):
                self.assertEqual(harness.sha256_file(os.path.join(out, name)),
                                 harness.sha256_file(os.path.join(fixture.checkpoint, name)), name)
            self.assertMatchesReference(out, fixture.reference())

    def test_optimizer_state_is_the_runs(self):
        for fixture, out in self.cases():
            state = torch.load(os.path.join(out, "optimizer.pt"))
            self.assertEqual(list(state), ["state", "param_groups"])
            order = self.order(fixture)
            start = 0
            saved = saved_param_groups(fixture)
            self.assertEqual(len(state["param_groups"]), len(saved))
            for group, as_saved, (names, _, _) in zip(state["param_groups"], saved, fixture.training.groups):
                self.assertEqual(group["params"], list(range(start, start + len(names))))
                self.assertEqual({k: v for k, v in group.items() if k != "params"},
                                 {k: v for k, v in as_saved.items() if k != "params"})
                start += len(names)
            self.assertEqual(sorted(state["state"]), list(range(len(order))))
            for index, name in enumerate(order):
                truth = fixture.training.optimizer_state(name)
                got = state["state"][index]
                self.assertEqual(sorted(got), ["exp_avg", "exp_avg_sq", "step"], name)
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    self.assertTrue(same_bits(got[key], truth[key]), "%s %s" % (name, key))

    def test_adamw_loads_it_and_the_next_step_is_the_runs(self):
        for fixture, out in self.cases():
            training = fixture.training
            _, weights = harness.read_safetensors(os.path.join(out, "model.safetensors"))
            params = {n: torch.nn.Parameter(weights[n].clone()) for n in training.masters}
            optimizer = gen.trainer_optimizer(training.groups, params)
            optimizer.load_state_dict(torch.load(os.path.join(out, "optimizer.pt")))
            # The run itself, one step on: its own optimizer's state on copies of its fp32 masters.
            masters = {n: m.detach().clone() for n, m in training.masters.items()}
            original = gen.trainer_optimizer(training.groups, masters)
            original.load_state_dict(training.optimizer.state_dict())
            for name, gradient in training.next_gradients().items():
                params[name].grad = gradient.clone()
                masters[name].grad = gradient.clone()
            optimizer.step()
            original.step()
            for name in training.masters:
                self.assertTrue(same_bits(params[name].detach(), masters[name]), name)
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    self.assertTrue(same_bits(optimizer.state[params[name]][key], original.state[masters[name]][key]),
                                    "%s %s" % (name, key))

    def test_the_engines_scheduler_when_there_is_no_scheduler_pt(self):
        fixture = build("engine-scheduler", stage=2, world_size=2, dtype="bf16", engine_scheduler=True)
        self.assertFalse(os.path.exists(os.path.join(fixture.checkpoint, "scheduler.pt")))
        out = self.path("out")
        self.consolidate(fixture.checkpoint, out, "--include-state")
        self.assertEqual(torch.load(os.path.join(out, "scheduler.pt")), fixture.training.schedule.state_dict())

    def test_pytorch_target_and_dtype_keep_the_state(self):
        fixture = self.fixtures[1]
        out = self.path("out")
        self.consolidate(fixture.checkpoint, out, "--include-state", "--to", "pytorch", "--dtype", "bf16")
        self.assertIn("optimizer.pt", os.listdir(out))
        self.assertMatchesReference(out, fixture.reference(), "pytorch", dtype=torch.bfloat16)
        state = torch.load(os.path.join(out, "optimizer.pt"))
        # The optimizer's moments are state, not weights: --dtype leaves them float32.
        for index, name in enumerate(self.order(fixture)):
            self.assertTrue(same_bits(state["state"][index]["exp_avg"],
                                      fixture.training.optimizer_state(name)["exp_avg"]), name)


# ----------------------------------------------------------------------------------------------------------------
# Hostile checkpoints
# ----------------------------------------------------------------------------------------------------------------


def rewrite_optim_states(fixture, checkpoint, rank, change):
    """Loads rank `rank`'s optimizer states in `checkpoint`, applies change(dict) and saves it as DeepSpeed would."""
    path = os.path.join(checkpoint, "global_step%d" % STEP, fixture.optim_file(rank))
    saved = torch.load(path, map_location="cpu")
    change(saved["optimizer_state_dict"])
    gen.save_from_gpu(saved, path, rank)


def rewrite_model_states(fixture, checkpoint, change):
    """Loads rank 0's model states in `checkpoint`, applies change(dict) and saves it as DeepSpeed would."""
    path = os.path.join(checkpoint, "global_step%d" % STEP, gen.model_file_name(fixture.opts, 0))
    saved = torch.load(path, map_location="cpu")
    change(saved)
    gen.save_from_gpu(saved, path, 0)


class Hostile(ZeroCase):
    @classmethod
    def setUpClass(cls):
        cls.base = {stage: build("hostile", stage=stage, world_size=3, dtype="fp16") for stage in (1, 2, 3)}

    def refuse(self, checkpoint, file_name, *options):
        """convert --consolidate of `checkpoint` exits 3 naming `file_name`, in text and in --json, writing
        nothing; an earlier output at the destination, given --force, stays as it was."""
        out = self.path("out")
        r = ckpt_untrusted("convert", checkpoint, "--consolidate", "-o", out, *options)
        self.assertRefused(r, 3, file_name)
        self.assertFalse(os.path.exists(out), r.describe())
        self.assertEqual(harness.leftover_temporaries(self.tmp), [], r.describe())
        r = ckpt_untrusted("convert", checkpoint, "--consolidate", "-o", out, "--json", *options)
        self.assertJsonRefused(r, 3, file_name)
        self.assertFalse(os.path.exists(out), r.describe())
        earlier = self.path("earlier")
        if not os.path.exists(earlier):
            self.consolidate(self.base[2].checkpoint, earlier)
        snapshot = harness.tree_snapshot(earlier)
        r = ckpt_untrusted("convert", checkpoint, "--consolidate", "-o", earlier, "--force", "--include-state",
                           *options)
        self.assertRefused(r, 3, file_name)
        self.assertEqual(harness.tree_snapshot(earlier), snapshot, r.describe())
        self.assertEqual(harness.leftover_temporaries(self.tmp), [], r.describe())

    def test_every_damage(self):
        for stage in (2, 3):
            fixture = self.base[stage]
            for kind in gen.DAMAGES:
                with self.subTest(stage=stage, damage=kind):
                    checkpoint = copy_checkpoint(fixture, "hostile-%s-%d" % (kind, stage))
                    gen.damage(checkpoint, fixture.opts, kind)
                    self.refuse(checkpoint, damaged_file(fixture, kind))

    def test_latest_outside_the_checkpoint(self):
        fixture = self.base[3]
        for name, content in (("absolute", lambda c: os.path.join(c, "global_step%d" % STEP)),
                              ("escape", lambda c: "../" + os.path.basename(c) + "/global_step%d" % STEP),
                              ("empty", lambda c: ""), ("dot", lambda c: ".")):
            with self.subTest(latest=name):
                checkpoint = copy_checkpoint(fixture, "latest-" + name)
                with open(os.path.join(checkpoint, "latest"), "w") as f:
                    f.write(content(checkpoint))
                self.refuse(checkpoint, "latest")
                rows, r = self.list_json(os.path.dirname(checkpoint))
                self.assertFalse(rows[os.path.basename(checkpoint)]["complete"], r.describe())

    def test_partition_counts_that_cannot_be(self):
        for stage in (1, 2, 3):
            fixture = self.base[stage]
            for count in (10 ** 12, -1, 0, 2 ** 63):
                with self.subTest(stage=stage, partition_count=count):
                    checkpoint = copy_checkpoint(fixture, "count-%d-%d" % (stage, count))

                    def claim(zero):
                        if stage == 3:
                            zero["partition_count"] = count
                        else:
                            zero["partition_count"] = [count] * len(zero["partition_count"])

                    rewrite_optim_states(fixture, checkpoint, 0, claim)
                    self.refuse(checkpoint, fixture.optim_file(0))
                    r = ckpt_untrusted("list", os.path.dirname(checkpoint), "--json")
                    self.assertEqual(r.returncode, 0, r.describe())
                    self.assertFalse(r.json()[0]["complete"], r.describe())

    def test_padding_moved_off_the_groups_end(self):
        # Rank 0 claims padding in its partition (one element fewer, one more padding: the padded size the same).
        # The elements would still add up if rank 2 held one more, so the rule for where padding lies is what
        # refuses it: cutting parameters out of such partitions would give wrong weights without an error.
        fixture = self.base[2]
        checkpoint = copy_checkpoint(fixture, "padding-moved")

        def move(zero):
            zero["single_partition_of_fp32_groups"][0] = zero["single_partition_of_fp32_groups"][0][:-1].clone()
            zero["group_paddings"][0] += 1

        rewrite_optim_states(fixture, checkpoint, 0, move)
        self.refuse(checkpoint, fixture.optim_file(0))
        r = ckpt_untrusted("list", os.path.dirname(checkpoint), "--json")
        self.assertIn("group_paddings[0]", " ".join(r.json()[0]["problems"]), r.describe())

    def test_shapes_dtypes_and_stages_that_do_not_fit(self):
        """What docs/deepspeed-format.md lists a hostile file could claim: exit 3 naming the file that claims it,
        within the memory cap, nothing written."""

        def huge_dimension(saved):
            shapes = saved["param_shapes"][0]
            first = next(iter(shapes))
            shapes[first] = torch.Size([2 ** 62, 4])

        def negative_dimension(saved):
            shapes = saved["param_shapes"][0]
            shapes[next(iter(shapes))] = torch.Size([-3])

        def a_name_twice(saved):
            saved["param_shapes"][1].update(list(saved["param_shapes"][0].items())[:1])

        def frozen_and_trainable(saved):
            name, shape = next(iter(saved["param_shapes"][0].items()))
            saved["frozen_param_shapes"][name] = shape

        def half_partition(zero):
            key = "fp32_flat_groups" if "fp32_flat_groups" in zero else "single_partition_of_fp32_groups"
            zero[key][0] = zero[key][0].half()

        def another_stage(zero):
            zero["zero_stage"] = gen.ZeroStageEnum(1 if int(zero["zero_stage"]) != 1 else 2)

        cases = [("huge dimension", "model", huge_dimension), ("negative dimension", "model", negative_dimension),
                 ("a name twice", "model", a_name_twice), ("frozen and trainable", "model", frozen_and_trainable),
                 ("a half-precision partition", "optim", half_partition),
                 ("rank 1 at another stage", "optim", another_stage)]
        for stage in (2, 3):
            fixture = self.base[stage]
            for what, which, change in cases:
                with self.subTest(stage=stage, claim=what):
                    checkpoint = copy_checkpoint(fixture, "claim-%d-%s" % (stage, what.replace(" ", "-")))
                    if which == "model":
                        rewrite_model_states(fixture, checkpoint, change)
                        claimant = gen.model_file_name(fixture.opts, 0)
                    else:
                        rank = 1 if "rank 1" in what else 0
                        rewrite_optim_states(fixture, checkpoint, rank, change)
                        claimant = fixture.optim_file(rank)
                    self.refuse(checkpoint, claimant)

    def test_partitions_that_do_not_add_up_on_another_rank(self):
        fixture = self.base[1]
        checkpoint = copy_checkpoint(fixture, "longer")

        def longer(zero):
            groups = zero["single_partition_of_fp32_groups"]
            groups[-1] = torch.cat([groups[-1], torch.zeros(1)])

        rewrite_optim_states(fixture, checkpoint, 1, longer)
        self.refuse(checkpoint, fixture.optim_file(1))


if __name__ == "__main__":
    unittest.main()
