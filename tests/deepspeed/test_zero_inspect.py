#!/usr/bin/python3
"""ckpt inspect of DeepSpeed ZeRO checkpoints (issue 17 item 3): what the report says (stage, ranks, tag, version,
step, parameter counts, groups and their hyper-parameters, per-rank sizes) checked against the files as torch loads
them, and what --verify catches (a flipped byte in a partition, NaN in the master weights)."""

import os
import shutil
import sys
import tempfile
import unittest
import zipfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import make_zero_checkpoint as gen  # noqa: E402  (also registers the classes DeepSpeed's pickles name)


def build(run_dir, *argv):
    gen.main([run_dir, *argv])
    return os.path.join(run_dir, "checkpoint-5")


def tag_files(checkpoint):
    tag_dir = os.path.join(checkpoint, "global_step5")
    return {name: os.path.join(tag_dir, name) for name in sorted(os.listdir(tag_dir))}


def load(path):
    return torch.load(path, map_location="cpu")


class InspectZero(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="ckpt-zero-inspect-")
        cls.stage2 = build(os.path.join(cls.root, "s2"), "--stage", "2", "--world-size", "3", "--dtype", "fp16")
        cls.stage3 = build(os.path.join(cls.root, "s3"), "--stage", "3", "--world-size", "4", "--dtype", "bf16",
                           "--sub-group-size", "60")
        cls.stage1 = build(os.path.join(cls.root, "s1"), "--stage", "1", "--world-size", "2", "--dtype", "bf16",
                           "--param-groups", "3")

    @classmethod
    def tearDownClass(cls):
        harness.remove_temp_dir(cls.root)

    def inspect(self, checkpoint, *args):
        return harness.ckpt_ok(self, "inspect", checkpoint, "--json", *args).json()

    def expected_counts(self, checkpoint, stage):
        """(trainable, frozen) parameter elements, from the model states as torch loads them."""
        files = tag_files(checkpoint)
        model = load(files["mp_rank_00_model_states.pt" if stage < 3 else "zero_pp_rank_0_mp_rank_00_model_states.pt"])
        trainable = sum(shape.numel() for group in model["param_shapes"] for shape in group.values())
        frozen = sum(shape.numel() for shape in (model["frozen_param_shapes"] or {}).values())
        return model, trainable, frozen

    def check_report(self, checkpoint, stage, world, dtype):
        report = self.inspect(checkpoint)
        d = report["deepspeed"]
        self.assertEqual(report["layout"], f"deepspeed zero-{stage} x{world}")
        self.assertEqual((d["stage"], d["world_size"], d["tag"], d["ds_version"], d["global_steps"], d["dtype"]),
                         (stage, world, "global_step5", "0.19.8", 5, dtype))
        self.assertTrue(report["complete"], report["problems"])
        self.assertEqual(report["world_size"], world)
        model, trainable, frozen = self.expected_counts(checkpoint, stage)
        self.assertEqual((d["trainable_parameters"], d["frozen_parameters"], d["parameters"]),
                         (trainable, frozen, trainable + frozen))
        self.assertEqual(d["buffers"], len(model["buffer_names"]))
        self.assertEqual(d["shared"], dict(model["shared_params"]))
        files = tag_files(checkpoint)
        optim = [load(p) for name, p in files.items() if name.endswith("optim_states.pt")]
        self.assertEqual(len(d["ranks"]), world)
        self.assertEqual(sum(r["partition_numel"] for r in d["ranks"]), trainable if stage < 3 else
                         sum(sum(t.numel() for t in o["optimizer_state_dict"]["fp32_flat_groups"]) for o in optim))
        for rank in d["ranks"]:
            self.assertIn(rank["optim_file"], files)
            self.assertGreater(rank["size_bytes"], 0)
        osd = optim[0]["optimizer_state_dict"]
        torch_groups = (osd["base_optimizer_state"]["param_groups"] if stage < 3
                        else osd["optimizer_state_dict"]["param_groups"])
        self.assertEqual(len(d["param_groups"]), len(torch_groups))
        for got, group in zip(d["param_groups"], torch_groups):
            expected = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
            self.assertEqual(got["hyperparameters"], expected)
        self.assertEqual(sum(g["numel"] for g in d["param_groups"]), trainable)
        kinds = report["summary"]["files"]
        self.assertEqual(kinds["latest"], "deepspeed")
        self.assertEqual(kinds["zero_to_fp32.py"], "deepspeed")
        for name in files:
            self.assertEqual(kinds["global_step5/" + name], "deepspeed")
        return report

    def test_stage2_report(self):
        self.check_report(self.stage2, 2, 3, "float16")

    def test_stage1_three_groups(self):
        report = self.check_report(self.stage1, 1, 2, "bfloat16")
        self.assertEqual(len(report["deepspeed"]["param_groups"]), 3)

    def test_stage3_report_counts_the_model_without_gathered_weights(self):
        report = self.check_report(self.stage3, 3, 4, "bfloat16")
        self.assertFalse(os.path.exists(os.path.join(self.stage3, "model.safetensors")))
        self.assertEqual(report["summary"]["num_parameters"], report["deepspeed"]["parameters"])

    def test_text_summary(self):
        out = harness.ckpt_ok(self, "inspect", self.stage3, "--summary").stdout
        self.assertIn("deepspeed zero-3 x4 checkpoint at step 5, complete", out)
        self.assertIn("ZeRO stage 3, 4 ranks, tag global_step5", out)
        self.assertIn("param groups", out)

    def test_list_of_a_run_shows_the_layout(self):
        rows = harness.ckpt_ok(self, "list", os.path.dirname(self.stage3), "--json").json()
        self.assertEqual([r["layout"] for r in rows], ["deepspeed zero-3 x4"])
        self.assertIn("deepspeed zero-3 x4", harness.ckpt_ok(self, "list", os.path.dirname(self.stage3)).stdout)

    def test_verify_ok_counts_no_nonfinite(self):
        report = self.inspect(self.stage2, "--verify")
        self.assertTrue(report["ok"])
        self.assertEqual(report["deepspeed"]["nonfinite"], {"nan": 0, "inf": 0})

    def copy(self, checkpoint, name):
        run = os.path.join(self.root, name)
        shutil.copytree(os.path.dirname(checkpoint), run)
        return os.path.join(run, os.path.basename(checkpoint))

    def test_verify_counts_nan_in_the_master_weights(self):
        checkpoint = self.copy(self.stage2, "nan")
        path = tag_files(checkpoint)["zero_pp_rank_1_mp_rank_00_optim_states.pt"]
        states = load(path)
        partition = states["optimizer_state_dict"]["single_partition_of_fp32_groups"][0]
        partition[3] = float("nan")
        partition[4] = float("inf")
        torch.save(states, path)
        report = self.inspect(checkpoint, "--verify")
        self.assertEqual(report["deepspeed"]["nonfinite"], {"nan": 1, "inf": 1})

    def test_verify_catches_a_flipped_byte_in_a_partition(self):
        checkpoint = self.copy(self.stage3, "flipped")
        path = tag_files(checkpoint)["bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt"]
        with zipfile.ZipFile(path) as z:
            member = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "r+b") as f:
            f.seek(member.header_offset + 26)
            name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
            at = member.header_offset + 30 + name_length + extra_length + member.file_size // 2
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ 0x10]))
        result = harness.ckpt("inspect", checkpoint, "--verify")
        self.assertEqual(result.returncode, 3, result.describe())
        self.assertIn("zero_pp_rank_2_mp_rank_00_optim_states.pt", result.stderr)
        self.assertIn("CRC-32", result.stderr)


if __name__ == "__main__":
    unittest.main()
