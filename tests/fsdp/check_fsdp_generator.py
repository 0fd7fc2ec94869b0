#!/usr/bin/python3
"""Checks make_fsdp_checkpoint.py against docs/fsdp-format.md: for world sizes 1-4 and 8 x fp32/bf16 (and the
newer metadata fields, the FULL_STATE_DICT variant, several checkpoints), the files accelerate and the Trainer
would write are there and nothing else; `.metadata` is a plain pickle whose classes are torch 2.x's DCP classes
(never this generator); every storage item lies inside its `__<rank>_0.distcp` file and is a torch.save archive of
one tensor with the chunk's dtype and sizes; chunks follow FSDP's dimension-0 split; the reference equals the
model reassembled from the files; each damaged variant is damaged as it says.

    /usr/bin/python3 tests/fsdp/check_fsdp_generator.py      (a few seconds; exits non-zero on the first failure)

In ctest as fsdp_check_fsdp_generator.
"""

import io
import os
import pickle
import shutil
import sys
import tempfile
import unittest
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fsdp_checkpoint as gen  # noqa: E402

ALLOWED_CLASSES = {(gen.METADATA_MODULE, name) for name in (
    "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
    "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")} | {(gen.FILESYSTEM_MODULE, "_StorageInfo"),
                                                               ("torch", "Size"), ("torch", "float32"), ("torch", "bfloat16"),
                                                               # torch.layout's registered reducer
                                                               ("torch.serialization", "_get_layout"),
                                                               # an Enum member pickled by name (Python decides)
                                                               ("builtins", "getattr")}


class RecordingUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.classes = set()

    def find_class(self, module, name):
        self.classes.add((module, name))
        return super().find_class(module, name)


def metadata_classes(directory):
    with open(os.path.join(directory, ".metadata"), "rb") as f:
        unpickler = RecordingUnpickler(f)
        unpickler.load()
    return unpickler.classes


class GeneratorTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fsdp-gen-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def generate(self, name, *args):
        run = os.path.join(self.tmp, name)
        reference = os.path.join(self.tmp, name + "-ref.pt")
        gen.main([run, "--reference", reference, *args])
        return run, torch.load(reference)

    def check_dcp_directory(self, directory, world_size):
        self.assertEqual(sorted(os.listdir(directory)),
                         sorted([".metadata"] + ["__%d_0.distcp" % r for r in range(world_size)]))
        with open(os.path.join(directory, ".metadata"), "rb") as f:
            self.assertEqual(f.read(1), b"\x80")  # a plain pickle, not a zip
        self.assertLessEqual(metadata_classes(directory), ALLOWED_CLASSES)
        metadata = gen.read_metadata(directory)
        by_index = {(k.fqn, tuple(k.offset) if k.offset is not None else None): v
                    for k, v in metadata.storage_data.items()}
        self.assertEqual(len(by_index), len(metadata.storage_data))
        for fqn, md in metadata.state_dict_metadata.items():
            if isinstance(md, gen.BytesStorageMetadata):
                info = by_index[(fqn, None)]
                continue
            rows = md.size[0] if len(md.size) else None
            expected_chunks = []
            for rank in range(world_size if rows is not None else 1):
                if rows is None:
                    expected_chunks.append(((), ()))
                    continue
                start, count = gen.shard_rows(rows, rank, world_size)
                chunk = ((start,) + (0,) * (len(md.size) - 1), (count,) + tuple(md.size[1:]))
                if chunk not in expected_chunks:
                    expected_chunks.append(chunk)
            self.assertEqual([(tuple(c.offsets), tuple(c.sizes)) for c in md.chunks], expected_chunks, fqn)
            for chunk in md.chunks:
                info = by_index[(fqn, tuple(chunk.offsets))]
                path = os.path.join(directory, info.relative_path)
                self.assertLessEqual(info.offset + info.length, os.path.getsize(path))
                with open(path, "rb") as f:
                    f.seek(info.offset)
                    item = f.read(info.length)
                self.assertTrue(zipfile.is_zipfile(io.BytesIO(item)))
                tensor = torch.load(io.BytesIO(item))
                self.assertEqual(tensor.dtype, md.properties.dtype)
                self.assertEqual(tuple(tensor.shape), tuple(chunk.sizes))
                self.assertTrue(tensor.is_contiguous())
        return metadata

    def check_checkpoint_files(self, checkpoint, world_size, model_files):
        rng = ["rng_state.pth"] if world_size == 1 else ["rng_state_%d.pth" % r for r in range(world_size)]
        self.assertEqual(sorted(os.listdir(checkpoint)),
                         sorted(model_files + rng + ["scheduler.pt", "training_args.bin", "config.json",
                                                     "trainer_state.json"]))

    def test_sharded_world_sizes_and_dtypes(self):
        for world_size in (1, 2, 3, 4, 8):
            for dtype in ("fp32", "bf16"):
                with self.subTest(world_size=world_size, dtype=dtype):
                    run, reference = self.generate("w%d-%s" % (world_size, dtype), "--world-size", str(world_size),
                                                   "--dtype", dtype)
                    checkpoint = os.path.join(run, "checkpoint-5")
                    self.check_checkpoint_files(checkpoint, world_size, ["pytorch_model_fsdp_0", "optimizer_0"])
                    model = self.check_dcp_directory(os.path.join(checkpoint, "pytorch_model_fsdp_0"), world_size)
                    self.assertEqual(list(model.state_dict_metadata), ["model." + n for n, _ in gen.PARAMETERS])
                    self.assertEqual(list(model.planner_data.values()),
                                     [("model", n) for n, _ in gen.PARAMETERS])
                    optimizer = self.check_dcp_directory(os.path.join(checkpoint, "optimizer_0"), world_size)
                    self.assertIsInstance(optimizer.state_dict_metadata["optimizer.param_groups"],
                                          gen.BytesStorageMetadata)
                    rebuilt = gen.reassemble(os.path.join(checkpoint, "pytorch_model_fsdp_0"))
                    want = {torch.float32: "fp32", torch.bfloat16: "bf16"}
                    for name, tensor in reference.items():
                        self.assertEqual(want[tensor.dtype], dtype)
                        self.assertTrue(torch.equal(rebuilt["model." + name], tensor), name)
                    self.assertFalse(hasattr(model, "version"))

    def test_newer_metadata_and_several_checkpoints(self):
        run, _ = self.generate("newer", "--world-size", "2", "--newer-metadata", "--checkpoints", "5,10")
        self.assertEqual(sorted(os.listdir(run)), ["checkpoint-10", "checkpoint-5"])
        metadata = self.check_dcp_directory(os.path.join(run, "checkpoint-10", "pytorch_model_fsdp_0"), 2)
        self.assertEqual(metadata.version, "1.0.0")
        self.assertIsInstance(metadata.storage_meta, gen.StorageMeta)

    def test_full_state_dict(self):
        run, reference = self.generate("full", "--world-size", "4", "--state-dict", "full")
        checkpoint = os.path.join(run, "checkpoint-5")
        self.check_checkpoint_files(checkpoint, 4, ["pytorch_model_fsdp.bin", "optimizer.bin"])
        model = torch.load(os.path.join(checkpoint, "pytorch_model_fsdp.bin"))
        self.assertEqual(list(model), list(reference))
        for name in model:
            self.assertTrue(torch.equal(model[name], reference[name]))
        optimizer = torch.load(os.path.join(checkpoint, "optimizer.bin"))
        self.assertEqual(set(optimizer), {"state", "param_groups"})

    def test_damaged_variants(self):
        for kind in gen.DAMAGES:
            with self.subTest(kind=kind):
                run, _ = self.generate("damaged-" + kind, "--world-size", "3", "--damage", kind)
                directory = os.path.join(run, "checkpoint-5", "pytorch_model_fsdp_0")
                if kind == "missing-file":
                    self.assertFalse(os.path.exists(os.path.join(directory, "__2_0.distcp")))
                    continue
                metadata = gen.read_metadata(directory)
                infos = list(metadata.storage_data.values())
                if kind == "range-past-end":
                    info = infos[-1]
                    self.assertGreater(info.offset + info.length,
                                       os.path.getsize(os.path.join(directory, info.relative_path)))
                elif kind == "path-escape":
                    self.assertTrue(infos[-1].relative_path.startswith("../"))
                else:
                    md = metadata.state_dict_metadata["model.embed.weight"]
                    self.assertLess(sum(c.sizes[0] for c in md.chunks), md.size[0])
                    self.assertEqual(len([k for k in metadata.storage_data if k.fqn == "model.embed.weight"]),
                                     len(md.chunks))


if __name__ == "__main__":
    unittest.main()
