#!/usr/bin/python3
"""Checks make_zero_checkpoint.py: for stages 1, 2, 3 x world sizes 1-4 x fp16/bf16 (and the variants: three
param groups, small stage-3 sub-groups, untied weights, enums pickled by value, gathered 16-bit weights, several
checkpoints), the reference it writes equals the model's fp32 master weights bit for bit (frozen parameters and
buffers as DeepSpeed's get_fp32_state_dict_from_zero_checkpoint returns them); every file DeepSpeed and the
Trainer would write is there and nothing else; every pickle is a protocol-2 torch.save zip whose GLOBAL opcodes
name only torch, Python, numpy, DeepSpeed, transformers and accelerate (never this generator); the DeepSpeed files
are plain dicts with storages tagged 'cuda:<rank>' (AdamW steps and frozen fragments 'cpu') and stage 1/2 modules
are views into one flat buffer per group; partition sizes and group_paddings follow the rules of
docs/deepspeed-format.md; scheduler.pt holds the schedule; each damaged variant is damaged as it says.

    /usr/bin/python3 tests/deepspeed/check_generator.py      (a few seconds; exits non-zero on the first failure)

In ctest as deepspeed_check_generator, so the fixtures stay right before the C++ reader they are for (issue 17)
lands and its tests run the generator themselves.
"""

import os
import pickletools
import shutil
import sys
import tempfile
import time
import unittest
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_zero_checkpoint as gen  # noqa: E402

ALLOWED_GLOBAL_MODULES = ("torch", "torch._utils", "collections", "__builtin__", "_codecs", "numpy",
                          "accelerate.utils.dataclasses",
                          "numpy.core.multiarray", "deepspeed.runtime.fp16.loss_scaler",
                          "deepspeed.runtime.zero.config", "deepspeed.utils.tensor_fragment",
                          "transformers.training_args",
                          "transformers.integrations.deepspeed")


def pickle_globals(path):
    """(protocol byte, set of 'module name' GLOBAL arguments) of a torch.save zip file."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    found = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    return data[:2], found


def storage_locations(path):
    """The device strings of the storages a torch.save zip file records ('cpu', 'cuda:0'...)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    return {a for a in strings if a == "cpu" or (a.startswith("cuda:") and a[5:].isdigit())}


def top_level_globals(path):
    """The GLOBAL opcodes met before the pickle's first container opcode: the top-level object's class, if any."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    found = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.append(arg)
        elif op.name in ("EMPTY_DICT", "EMPTY_LIST", "MARK"):
            break
    return found


def partition_sizes_add_up(tag_dir, stage, world, dtype):
    """The completeness rule of docs/deepspeed-format.md for the optimizer shards: each rank's flat fp32 groups have
    the sizes param_shapes imply. Returns the first mismatch as text, or None."""
    prefix = "bf16_" if dtype == "bf16" else ""
    model_name = "zero_pp_rank_0_mp_rank_00_model_states.pt" if stage == 3 else "mp_rank_00_model_states.pt"
    shapes = torch.load(os.path.join(tag_dir, model_name), map_location="cpu")["param_shapes"]
    for rank in range(world):
        zero = torch.load(os.path.join(tag_dir, "%szero_pp_rank_%d_mp_rank_00_optim_states.pt" % (prefix, rank)),
                          map_location="cpu")
        zero = zero["optimizer_state_dict"]
        if stage == 3:
            wanted = [sum((s.numel() + world - 1) // world for s in group.values()) for group in shapes]
            got = [t.numel() for t in zero["fp32_flat_groups"]]
        else:
            # stage_1_and_2.py: the group is aligned to 2 x world and cut in equal partitions; a rank's padding is
            # the part of its partition past the group's end (the whole partition when it starts past the end),
            # and its saved group is the partition without that padding.
            wanted, paddings = [], []
            for group in shapes:
                numel = sum(s.numel() for s in group.values())
                size = gen.ceil_to(numel, 2 * world) // world
                padding = min(size, max(0, (rank + 1) * size - numel))
                wanted.append(size - padding)
                paddings.append(padding)
            if zero["group_paddings"] != paddings:
                return "rank %d: group_paddings %s, DeepSpeed's rule gives %s" % (rank, zero["group_paddings"],
                                                                                   paddings)
            got = [t.numel() for t in zero["single_partition_of_fp32_groups"]]
        if wanted != got:
            return "rank %d: flat groups of %s elements, param_shapes need %s" % (rank, got, wanted)
    return None


def expected_files(opts, step):
    ranks = range(opts.world_size)
    prefix = "bf16_" if opts.dtype == "bf16" else ""
    tag = "global_step%d" % step
    files = {"latest", "zero_to_fp32.py", "trainer_state.json", "training_args.bin", "config.json"}
    if not opts.engine_scheduler:
        files.add("scheduler.pt")
    files |= {"rng_state.pth"} if opts.world_size == 1 else {"rng_state_%d.pth" % r for r in ranks}
    if opts.stage < 3 or opts.gather_16bit:
        files.add("model.safetensors")
    files |= {"%s/%szero_pp_rank_%d_mp_rank_00_optim_states.pt" % (tag, prefix, r) for r in ranks}
    if opts.stage == 3:
        files |= {"%s/zero_pp_rank_%d_mp_rank_00_model_states.pt" % (tag, r) for r in ranks}
    else:
        files.add("%s/mp_rank_00_model_states.pt" % tag)
    return files


def files_below(directory):
    out = set()
    for root, _, names in os.walk(directory):
        out |= {os.path.relpath(os.path.join(root, n), directory) for n in names}
    return out


class GeneratorTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="zero-gen-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def build(self, name, damage=None, **fields):
        fields.setdefault("checkpoints", [5])
        opts = gen.Options(**fields)
        run_dir = os.path.join(self.tmp, name)
        reference = None if damage else os.path.join(self.tmp, name + ".ref.pt")
        training, checkpoint = gen.build(run_dir, opts, damage, reference)
        return opts, training, checkpoint, reference

    def check_reference(self, opts, training, reference):
        ref = torch.load(reference)
        model = dict(gen.every_parameter_name(training.model))
        trainable = [n for n, p in training.model.named_parameters() if p.requires_grad]
        frozen = [n for n, p in training.model.named_parameters() if not p.requires_grad]
        for name in trainable:
            self.assertEqual(ref[name].dtype, torch.float32, name)
            self.assertTrue(torch.equal(gen.raw_bytes(ref[name]), gen.raw_bytes(training.masters[name])), name)
        for name in frozen:
            if opts.stage == 1:
                self.assertNotIn(name, ref, "stage 1 saves no frozen parameters")
            else:
                self.assertEqual(ref[name].dtype, opts.torch_dtype, name)
                self.assertTrue(torch.equal(ref[name], model[name].detach().to(opts.torch_dtype)), name)
        for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
            buffer = training.model.state_dict()[name]
            as_saved = buffer.to(opts.torch_dtype) if buffer.is_floating_point() else buffer
            self.assertEqual(ref[name].dtype, torch.float32, name)
            self.assertTrue(torch.equal(ref[name], as_saved.float()), name)
        self.assertNotIn("position_ids", ref, "a non-persistent buffer is not saved")
        if opts.tied:
            self.assertIs(ref["head.weight"], ref["embed.weight"])
        else:
            self.assertTrue(torch.equal(gen.raw_bytes(ref["head.weight"]),
                                        gen.raw_bytes(training.masters["head.weight"])))
        buffers, aliases = 3, (1 if opts.tied else 0)
        self.assertEqual(len(ref), len(trainable) + (len(frozen) if opts.stage > 1 else 0) + buffers + aliases)

    def check_files(self, opts, checkpoint, step):
        self.assertEqual(files_below(checkpoint), expected_files(opts, step))
        with open(os.path.join(checkpoint, "latest")) as f:
            self.assertEqual(f.read(), "global_step%d" % step)
        self.assertTrue(os.access(os.path.join(checkpoint, "zero_to_fp32.py"), os.X_OK))
        for name in files_below(checkpoint):
            if not name.endswith((".pt", ".pth", ".bin")):
                continue
            path = os.path.join(checkpoint, name)
            protocol, found = pickle_globals(path)
            self.assertEqual(protocol, b"\x80\x02", name)
            for arg in found:
                self.assertIn(arg.split(" ")[0], ALLOWED_GLOBAL_MODULES, "%s: GLOBAL %s" % (name, arg))
            if name.endswith("optim_states.pt"):
                scaler = "DynamicLossScaler" if opts.dtype == "fp16" else "LossScaler"
                self.assertIn("deepspeed.runtime.fp16.loss_scaler " + scaler, found, name)
                self.assertIn("deepspeed.runtime.zero.config ZeroStageEnum", found, name)
                self.assertEqual("__builtin__ getattr" in found, not opts.enum_by_value, name)
                if opts.stage < 3:
                    self.assertIn("deepspeed.utils.tensor_fragment fragment_address", found, name)
            if name.endswith(("optim_states.pt", "model_states.pt")):
                # engine._save_checkpoint, _save_zero_checkpoint and the optimizers' state_dict build plain dicts.
                self.assertNotIn("collections OrderedDict", top_level_globals(path), name)
                saved = torch.load(path, map_location="cpu")
                self.assertIs(type(saved), dict, name)
                if name.endswith("optim_states.pt"):
                    self.assertIs(type(saved["optimizer_state_dict"]), dict, name)
                    groups = saved["optimizer_state_dict"]["base_optimizer_state" if opts.stage < 3
                                                           else "optimizer_state_dict"]["param_groups"]
                    for group in groups:
                        self.assertEqual(group["initial_lr"], 1e-4 if group["weight_decay"] == 0.0 and
                                         opts.param_groups == 3 and group is groups[-1] else 1e-3, name)
                        self.assertLess(group["lr"], group["initial_lr"], "the schedule has decayed lr")
                elif opts.engine_scheduler:
                    self.assertEqual(saved["lr_scheduler"]["last_epoch"], step, name)
                else:
                    # The Trainer built the scheduler, so accelerate kept it from the engine: scheduler.pt has it.
                    self.assertIsNone(saved["lr_scheduler"], name)
        self.check_devices_and_views(opts, os.path.join(checkpoint, "global_step%d" % step))
        if not opts.engine_scheduler:
            scheduler = torch.load(os.path.join(checkpoint, "scheduler.pt"))
            self.assertEqual(scheduler["last_epoch"], step)
        tag_dir = os.path.join(checkpoint, "global_step%d" % step)
        self.assertIsNone(partition_sizes_add_up(tag_dir, opts.stage, opts.world_size, opts.dtype))

    def check_devices_and_views(self, opts, tag_dir):
        for rank in range(opts.world_size):
            optim = os.path.join(tag_dir, gen.optim_file_name(opts, rank))
            # GPU tensors are tagged with the saving rank's device; AdamW's step counters live on the CPU.
            self.assertEqual(storage_locations(optim), {"cuda:%d" % rank, "cpu"}, optim)
            if opts.stage == 3 or rank == 0:
                model = os.path.join(tag_dir, gen.model_file_name(opts, rank))
                frozen_on_cpu = {"cpu"} if opts.frozen and opts.stage > 1 else set()
                self.assertEqual(storage_locations(model), {"cuda:%d" % rank} | frozen_on_cpu, model)
        if opts.stage == 3:
            return
        saved = torch.load(os.path.join(tag_dir, "mp_rank_00_model_states.pt"), map_location="cpu")
        for shapes in saved["param_shapes"]:
            views = [saved["module"][name] for name in shapes]
            numel = sum(shape.numel() for shape in shapes.values())
            self.assertEqual(len({v.storage().data_ptr() for v in views}), 1, "one flat buffer per group")
            self.assertEqual(views[0].storage().size(), gen.ceil_to(numel, 2 * opts.world_size))
            offsets = [v.storage_offset() for v in views]
            self.assertEqual(offsets, [sum(s.numel() for s in list(shapes.values())[:i]) for i in range(len(views))])

    def test_matrix(self):
        started = time.monotonic()
        for stage in (1, 2, 3):
            for world in (1, 2, 3, 4):
                for dtype in ("fp16", "bf16"):
                    with self.subTest(stage=stage, world=world, dtype=dtype):
                        name = "s%d-w%d-%s" % (stage, world, dtype)
                        opts, training, checkpoint, reference = self.build(name, stage=stage, world_size=world,
                                                                          dtype=dtype)
                        self.check_reference(opts, training, reference)
                        self.check_files(opts, checkpoint, 5)
        print("matrix of 24 in %.1f s" % (time.monotonic() - started), file=sys.stderr)

    def test_variants(self):
        variants = [
            dict(stage=1, world_size=4, dtype="bf16", param_groups=3),
            dict(stage=2, world_size=3, dtype="fp16", param_groups=3, tied=False),
            dict(stage=2, world_size=2, dtype="bf16", param_groups=1, frozen=False),
            dict(stage=3, world_size=4, dtype="fp16", param_groups=3, sub_group_size=100),
            dict(stage=3, world_size=3, dtype="bf16", sub_group_size=40, gather_16bit=True, enum_by_value=True),
            dict(stage=2, world_size=4, dtype="fp16", width=33, layers=3, vocab=101, enum_by_value=True),
            dict(stage=3, world_size=2, dtype="bf16", engine_scheduler=True),
        ]
        for i, fields in enumerate(variants):
            with self.subTest(**fields):
                opts, training, checkpoint, reference = self.build("variant%d" % i, **fields)
                self.check_reference(opts, training, reference)
                self.check_files(opts, checkpoint, 5)

    def test_stage3_sub_groups_split_param_groups(self):
        opts, training, checkpoint, _ = self.build("sub", stage=3, world_size=2, dtype="bf16", sub_group_size=40)
        zero = torch.load(os.path.join(checkpoint, "global_step5", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"),
                          map_location="cpu")
        zero = zero["optimizer_state_dict"]
        self.assertGreater(len(zero["fp32_flat_groups"]), len(training.groups))
        owned = [g["params"] for g in zero["optimizer_state_dict"]["param_groups"]]
        self.assertEqual(sorted(i for ids in owned for i in ids), list(range(len(zero["fp32_flat_groups"]))))

    def test_next_gradients_are_the_next_steps(self):
        _, training, _, _ = self.build("next", stage=2, world_size=2, dtype="fp16")
        gradients = training.next_gradients()
        self.assertEqual(list(gradients), list(training.masters))
        training.train_to(training.step + 1)
        for name, master in training.masters.items():
            self.assertTrue(torch.equal(master.grad, gradients[name]), name)
        self.assertFalse(torch.equal(training.next_gradients()["embed.weight"], gradients["embed.weight"]))

    def test_several_checkpoints(self):
        opts, training, checkpoint, reference = self.build("run", stage=2, world_size=2, dtype="bf16",
                                                          checkpoints=[2, 4, 6])
        run_dir = os.path.dirname(checkpoint)
        self.assertEqual(sorted(os.listdir(run_dir)), ["checkpoint-2", "checkpoint-4", "checkpoint-6"])
        for step in (2, 4, 6):
            self.check_files(opts, os.path.join(run_dir, "checkpoint-%d" % step), step)
        self.check_reference(opts, training, reference)

    def test_damage(self):
        for stage in (2, 3):
            for kind in gen.DAMAGES:
                with self.subTest(stage=stage, kind=kind):
                    opts, _, checkpoint, _ = self.build("%s-%d" % (kind, stage), damage=kind, stage=stage,
                                                        world_size=3, dtype="fp16")
                    tag_dir = os.path.join(checkpoint, "global_step5")
                    shard = lambda r: os.path.join(tag_dir, gen.optim_file_name(opts, r))  # noqa: E731
                    with open(os.path.join(checkpoint, "latest")) as f:
                        latest = f.read()
                    if kind == "missing-rank":
                        self.assertFalse(os.path.exists(shard(2)))
                        self.assertTrue(os.path.exists(shard(1)))
                    elif kind == "truncated-shard":
                        with self.assertRaises(Exception):
                            torch.load(shard(0), map_location="cpu")
                    elif kind == "latest-missing-tag":
                        self.assertEqual(latest, "global_step6")
                        self.assertFalse(os.path.exists(os.path.join(checkpoint, latest)))
                        self.assertIsNone(partition_sizes_add_up(tag_dir, stage, 3, "fp16"))
                    elif kind == "latest-escape":
                        self.assertEqual(latest, "../global_step5")
                        self.assertIsNone(partition_sizes_add_up(tag_dir, stage, 3, "fp16"))
                    elif kind == "sizes-mismatch":
                        self.assertIn("rank 0", partition_sizes_add_up(tag_dir, stage, 3, "fp16"))


if __name__ == "__main__":
    unittest.main()
