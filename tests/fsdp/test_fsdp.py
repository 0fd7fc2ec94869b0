#!/usr/bin/python3
"""ckpt on Hugging Face + FSDP checkpoints (issue 17): list's layout and completeness, every damage named and exit 3,
convert --consolidate bit for bit against the generator's reference (SHARDED_STATE_DICT DCP directories of 1 to 8
ranks, fp32 and bf16, torch 2.5's newer metadata; FULL_STATE_DICT), inspect's "fsdp" report, rotate."""

import json
import os
import shutil
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from manage import runs  # noqa: E402
import make_fsdp_checkpoint as gen  # noqa: E402

DAMAGE_FILES = {"range-past-end": "__2_0.distcp", "missing-file": "__2_0.distcp", "path-escape": ".metadata",
                "chunks-gap": ".metadata"}


def raw(tensor):
    t = tensor.contiguous().view(-1)
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]).tolist()


class Fsdp(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="ckpt-fsdp-")
        cls.runs = {}
        for world, dtype, extra in ((1, "fp32", ()), (2, "bf16", ()), (3, "bf16", ("--newer-metadata",)),
                                    (4, "fp32", ()), (8, "bf16", ())):
            run = os.path.join(cls.root, "w%d%s" % (world, dtype))
            gen.main([run, "--world-size", str(world), "--dtype", dtype, "--checkpoints", "5,10",
                      "--reference", run + ".pt", *extra])
            cls.runs[(world, dtype)] = run
        cls.full = os.path.join(cls.root, "full")
        gen.main([cls.full, "--state-dict", "full", "--world-size", "2", "--reference", cls.full + ".pt"])

    @classmethod
    def tearDownClass(cls):
        harness.remove_temp_dir(cls.root)

    def same_as_reference(self, reference, got):
        ref = torch.load(reference)
        self.assertEqual(list(got), list(ref))
        for name, tensor in ref.items():
            self.assertEqual((got[name].dtype, got[name].shape), (tensor.dtype, tensor.shape), name)
            self.assertEqual(raw(got[name]), raw(tensor), name)

    def test_list_layout_and_completeness(self):
        for (world, _), run in self.runs.items():
            rows = harness.ckpt_ok(self, "list", run, "--json").json()
            self.assertEqual([(r["layout"], r["complete"]) for r in rows], [("fsdp sharded x%d" % world, True)] * 2)
        rows = harness.ckpt_ok(self, "list", self.full, "--json").json()
        self.assertEqual([(r["layout"], r["complete"]) for r in rows], [("fsdp full", True)])
        self.assertIn("fsdp sharded x8", harness.ckpt_ok(self, "list", self.runs[(8, "bf16")]).stdout)

    def test_consolidate_bit_for_bit(self):
        for (world, dtype), run in self.runs.items():
            for to in ("pytorch", "safetensors"):
                with self.subTest(world=world, dtype=dtype, to=to):
                    out = os.path.join(self.root, "out-%d-%s-%s" % (world, dtype, to))
                    harness.ckpt_ok(self, "convert", os.path.join(run, "checkpoint-10"), "--consolidate", "-o", out,
                                    "--to", to, "-q")
                    self.assertEqual(sorted(os.listdir(out)),
                                     ["config.json", "pytorch_model.bin" if to == "pytorch" else "model.safetensors"])
                    if to == "pytorch":
                        got = torch.load(os.path.join(out, "pytorch_model.bin"))
                    else:
                        meta, tensors = harness.read_safetensors(os.path.join(out, "model.safetensors"))
                        for alias, target in json.loads(meta.get("ckpt_aliases", "{}")).items():
                            tensors[alias] = tensors[target]
                        order = json.loads(meta["ckpt_order"]) if "ckpt_order" in meta else list(tensors)
                        got = {name: tensors[name] for name in order}
                    self.same_as_reference(run + ".pt", got)
        out = os.path.join(self.root, "out-full")
        harness.ckpt_ok(self, "convert", os.path.join(self.full, "checkpoint-5"), "--consolidate", "-o", out,
                        "--to", "pytorch", "-q")
        self.same_as_reference(self.full + ".pt", torch.load(os.path.join(out, "pytorch_model.bin")))

    def test_full_state_dict_beside_the_trainers_model_safetensors(self):
        # The Trainer also saves model.safetensors beside pytorch_model_fsdp.bin: superseded by the consolidated
        # weights, it is neither copied nor in the way of the output's own model.safetensors.
        checkpoint = os.path.join(self.root, "full-gathered")
        shutil.copytree(os.path.join(self.full, "checkpoint-5"), checkpoint)
        with open(os.path.join(checkpoint, "model.safetensors"), "wb") as f:
            f.write(runs.safetensors_bytes(runs.tiny_tensors()))
        out = os.path.join(self.root, "full-gathered-out")
        harness.ckpt_ok(self, "convert", checkpoint, "--consolidate", "-o", out, "-q")
        self.assertEqual(sorted(os.listdir(out)), ["config.json", "model.safetensors"])
        meta, tensors = harness.read_safetensors(os.path.join(out, "model.safetensors"))
        order = json.loads(meta["ckpt_order"]) if "ckpt_order" in meta else list(tensors)
        self.same_as_reference(self.full + ".pt", {name: tensors[name] for name in order})

    def test_without_consolidate_or_with_include_state_refused(self):
        checkpoint = os.path.join(self.runs[(2, "bf16")], "checkpoint-5")
        r = harness.ckpt("convert", checkpoint, "--to", "safetensors", "-o", os.path.join(self.root, "x1"))
        self.assertEqual(r.returncode, 2, r.describe())
        self.assertIn("--consolidate", r.stderr)
        r = harness.ckpt("convert", checkpoint, "--consolidate", "--include-state", "-o", os.path.join(self.root, "x2"))
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertFalse(os.path.exists(os.path.join(self.root, "x2")))

    def test_every_damage_is_incomplete_and_exit_3_naming_the_file(self):
        for kind, file in DAMAGE_FILES.items():
            with self.subTest(kind=kind):
                run = os.path.join(self.root, "damaged-" + kind)
                gen.main([run, "--world-size", "3", "--damage", kind])
                rows = harness.ckpt_ok(self, "list", run, "--json").json()
                self.assertFalse(rows[-1]["complete"])
                self.assertIn("pytorch_model_fsdp_0/" + file, " ".join(rows[-1]["problems"]))
                out = os.path.join(self.root, "damaged-out-" + kind)
                for extra in ((), ("--json",)):
                    r = harness.ckpt("convert", os.path.join(run, "checkpoint-5"), "--consolidate", "-o", out, *extra)
                    self.assertEqual(r.returncode, 3, r.describe())
                    text = r.stdout if extra else r.stderr
                    self.assertIn("pytorch_model_fsdp_0/" + file, text)
                    if extra:
                        self.assertEqual(json.loads(r.stdout)["error"]["kind"], "corrupt")
                    self.assertFalse(os.path.exists(out))

    def test_inspect_reports_the_shards(self):
        run = self.runs[(4, "fp32")]
        report = harness.ckpt_ok(self, "inspect", os.path.join(run, "checkpoint-10"), "--json", "--verify").json()
        f = report["fsdp"]
        reference = torch.load(run + ".pt")
        self.assertEqual(report["layout"], "fsdp sharded x4")
        self.assertEqual((f["world_size"], f["tensors"], f["parameters"], f["dtypes"]),
                         (4, len(reference), sum(t.numel() for t in reference.values()), ["float32"]))
        self.assertEqual(report["world_size"], 4)
        self.assertEqual(report["summary"]["num_parameters"], f["parameters"])
        self.assertTrue(report["ok"])
        files = {x["file"] for x in f["files"]}
        self.assertIn("pytorch_model_fsdp_0/.metadata", files)
        self.assertIn("optimizer_0/__3_0.distcp", files)

    def test_resume_says_to_consolidate_the_model(self):
        run = self.runs[(2, "bf16")]
        r = harness.ckpt("resume", run)
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIn("fsdp sharded x2 checkpoint, which ckpt's trainer cannot resume", r.stderr)
        self.assertIn("--consolidate -o DIR` writes its model", r.stderr)

    def test_rotate_deletes_whole_checkpoints(self):
        run = os.path.join(self.root, "rotate")
        gen.main([run, "--world-size", "2", "--checkpoints", "5,10,15"])
        harness.ckpt_ok(self, "rotate", run, "--keep", "1", "-q")
        self.assertEqual(sorted(n for n in os.listdir(run) if not n.startswith(".")), ["checkpoint-15"])
        self.assertEqual(harness.ckpt_ok(self, "latest", run).stdout.strip(), os.path.join(run, "checkpoint-15"))


if __name__ == "__main__":
    unittest.main()
