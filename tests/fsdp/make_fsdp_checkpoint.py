#!/usr/bin/python3
"""Writes a Hugging Face Trainer + FSDP run directory as accelerate and torch.distributed.checkpoint would, without
either (torch 1.13 here has no DCP writer).

    make_fsdp_checkpoint.py RUN_DIR [--world-size N] [--dtype {fp32,bf16}] [--state-dict {sharded,full}]
                            [--checkpoints 5,10] [--newer-metadata] [--reference OUT.pt] [--damage KIND]

RUN_DIR gets one `checkpoint-<step>/` per step. SHARDED_STATE_DICT (the default): `pytorch_model_fsdp_0/` and
`optimizer_0/`, each a DCP directory (`.metadata` and `__<rank>_0.distcp` per rank); FULL_STATE_DICT:
`pytorch_model_fsdp.bin` and `optimizer.bin`. Both with `trainer_state.json`, `rng_state_<rank>.pth` (`rng_state.pth`
for one rank), `scheduler.pt`, `training_args.bin`, `config.json`. The layout follows docs/fsdp-format.md:
parameters cut along dimension 0 as FSDP does (ceil(rows / world) rows per rank, the last rank's shard shorter,
ranks past the end holding an empty chunk whose offset is the row count, written once), each chunk a torch.save
archive of its own contiguous tensor appended to the rank's file, `.metadata` a plain pickle of the metadata
dataclasses. Stand-ins with torch 2.x's module and class names are registered in sys.modules, so the pickle's
GLOBAL opcodes name the real classes; loading it needs this module imported (or torch 2.x).

--newer-metadata adds the fields newer torch writes (Metadata.storage_meta, Metadata.version).

--reference OUT.pt saves the full model state dict (names without accelerate's "model." prefix), the tensors the
model held before they were cut, after checking that reassembling the newest checkpoint's chunks from its files
gives them back bit for bit.

--damage damages the newest (sharded) checkpoint's model directory: range-past-end (the last chunk's _StorageInfo
length reaches past its file's end), missing-file (the last rank's .distcp gone), path-escape (a relative_path
"../__0_0.distcp"), chunks-gap (a tensor's first chunk and its storage item dropped, so the chunks no longer cover
it).

Needs only torch (1.13 here): run it with /usr/bin/python3.
"""

import argparse
import dataclasses
import enum
import io
import os
import pickle
import sys
import uuid

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from manage import runs  # noqa: E402  (trainer_state, write_json)
from stand_ins import stand_in  # noqa: E402

DAMAGES = ("range-past-end", "missing-file", "path-escape", "chunks-gap")
METADATA_MODULE = "torch.distributed.checkpoint.metadata"
FILESYSTEM_MODULE = "torch.distributed.checkpoint.filesystem"

# ----------------------------------------------------------------------------------------------------------------
# Stand-ins for torch 2.x's DCP classes (torch/distributed/checkpoint/metadata.py, filesystem.py)
# ----------------------------------------------------------------------------------------------------------------


@stand_in(METADATA_MODULE)
@dataclasses.dataclass
class ChunkStorageMetadata:
    offsets: torch.Size
    sizes: torch.Size


@stand_in(METADATA_MODULE)
class _MEM_FORMAT_ENCODING(enum.Enum):
    TORCH_CONTIGUOUS_FORMAT = 0
    TORCH_CHANNELS_LAST = 1
    TORCH_PRESERVE_FORMAT = 2


@stand_in(METADATA_MODULE)
@dataclasses.dataclass
class TensorProperties:
    dtype: torch.dtype
    layout: torch.layout = torch.strided
    requires_grad: bool = False
    pin_memory: bool = False

    def __getstate__(self):
        # As torch's: a tuple, the memory format as its enum (torch.memory_format does not pickle).
        return (self.dtype, self.layout, self.requires_grad, _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT,
                self.pin_memory)

    def __setstate__(self, state):
        self.dtype, self.layout, self.requires_grad, _, self.pin_memory = state


@stand_in(METADATA_MODULE)
@dataclasses.dataclass
class TensorStorageMetadata:
    properties: TensorProperties
    size: torch.Size
    chunks: list


@stand_in(METADATA_MODULE)
@dataclasses.dataclass
class BytesStorageMetadata:
    pass


@stand_in(METADATA_MODULE)
@dataclasses.dataclass
class StorageMeta:
    checkpoint_id: object = None
    save_id: object = None
    load_id: object = None


@stand_in(METADATA_MODULE)
@dataclasses.dataclass
class Metadata:
    state_dict_metadata: dict
    planner_data: object = None
    storage_data: object = None


@stand_in(METADATA_MODULE)
@dataclasses.dataclass(frozen=True)
class MetadataIndex:
    fqn: str
    offset: object = None
    index: object = dataclasses.field(hash=False, compare=False, default=None)

    def __init__(self, fqn, offset=None, index=None):
        # As torch's: `offset` set only when given, so a blob's index pickles without it.
        object.__setattr__(self, "fqn", fqn)
        object.__setattr__(self, "index", index)
        if offset is not None:
            object.__setattr__(self, "offset", torch.Size(offset))


@stand_in(FILESYSTEM_MODULE)
@dataclasses.dataclass
class _StorageInfo:
    relative_path: str
    offset: int
    length: int


@stand_in("transformers.training_args")
class TrainingArguments:
    def __init__(self, **fields):
        self.__dict__.update(fields)


# ----------------------------------------------------------------------------------------------------------------
# The model, its optimizer state, and FSDP's dimension-0 sharding
# ----------------------------------------------------------------------------------------------------------------

# (name, shape): uneven rows for every world size > 1, a one-element parameter, one with fewer rows than ranks.
PARAMETERS = (("embed.weight", (10, 6)), ("fc1.weight", (7, 6)), ("fc1.bias", (7,)), ("norm.weight", (6,)),
              ("scale", (1,)), ("tiny.weight", (2, 3)), ("head.weight", (5, 6)))


def model_state(step, dtype):
    gen = torch.Generator().manual_seed(1000 + step)
    return {name: torch.randn(shape, generator=gen).to(dtype) for name, shape in PARAMETERS}


def optimizer_state(step, model):
    """FSDP's optim_state_dict as accelerate saves it: state keyed by parameter name, fp32 moments, a scalar step."""
    gen = torch.Generator().manual_seed(2000 + step)
    state = {name: {"step": torch.tensor(float(step)),
                    "exp_avg": torch.randn(t.shape, generator=gen),
                    "exp_avg_sq": torch.rand(t.shape, generator=gen)} for name, t in model.items()}
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
               "foreach": None, "maximize": False, "capturable": False, "differentiable": False, "fused": None,
               "params": list(model)}]
    return {"state": state, "param_groups": groups}


def shard_rows(rows, rank, world_size):
    """(offset, rows) of `rank`'s dimension-0 shard: torch.chunk's split, an empty shard at the end past it."""
    per_rank = -(-rows // world_size) if rows else 0
    start = min(rows, rank * per_rank)
    return start, max(0, min(rows, start + per_rank) - start)


def flatten(prefix, value, out):
    """DCP's flatten_state_dict: nested dicts joined with '.', anything else (lists too) a leaf."""
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(prefix + (str(key),), item, out)
    else:
        out[".".join(prefix)] = (value, prefix)
    return out


def torch_save_bytes(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def write_dcp(directory, state_dict, world_size, newer_metadata):
    """Writes `state_dict` as torch 2.x's dcp.save with FileSystemWriter does from `world_size` ranks."""
    os.makedirs(directory)
    flat = flatten((), state_dict, {})
    files = [bytearray() for _ in range(world_size)]
    state_dict_metadata, storage_data, planner_data = {}, {}, {}
    for fqn, (value, path) in flat.items():
        planner_data[fqn] = path
        if not isinstance(value, torch.Tensor):
            state_dict_metadata[fqn] = BytesStorageMetadata()
            blob = torch_save_bytes(value)
            storage_data[MetadataIndex(fqn)] = _StorageInfo("__0_0.distcp", len(files[0]), len(blob))
            files[0] += blob
            continue
        chunks = []
        written = set()
        for rank in range(world_size):
            if value.dim() == 0:
                if rank:
                    continue  # a replicated scalar: every rank holds it, the deduplicated plan writes rank 0's
                offsets, piece = (), value
            else:
                start, rows = shard_rows(value.shape[0], rank, world_size)
                offsets = (start,) + (0,) * (value.dim() - 1)
                if offsets in written:
                    continue  # empty shards of several ranks share one index: written once
                piece = value.narrow(0, start, rows)
            written.add(offsets)
            blob = torch_save_bytes(piece.clone())
            storage_data[MetadataIndex(fqn, offsets, len(chunks))] = _StorageInfo(
                "__%d_0.distcp" % rank, len(files[rank]), len(blob))
            files[rank] += blob
            chunks.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(piece.shape)))
        state_dict_metadata[fqn] = TensorStorageMetadata(TensorProperties(value.dtype), value.shape, chunks)
    metadata = Metadata(state_dict_metadata, planner_data, storage_data)
    if newer_metadata:
        metadata.storage_meta = StorageMeta(directory, str(uuid.UUID(int=world_size)), None)
        metadata.version = "1.0.0"
    for rank, data in enumerate(files):
        with open(os.path.join(directory, "__%d_0.distcp" % rank), "wb") as f:
            f.write(data)
    with open(os.path.join(directory, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)


def read_metadata(directory):
    with open(os.path.join(directory, ".metadata"), "rb") as f:
        return pickle.load(f)


def reassemble(directory):
    """The DCP directory's tensors, each put together from its chunks' torch.save items: {fqn: tensor}."""
    metadata = read_metadata(directory)
    by_index = {(k.fqn, tuple(k.offset) if k.offset is not None else None): v for k, v in metadata.storage_data.items()}
    out = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            continue
        full = torch.empty(md.size, dtype=md.properties.dtype)
        for chunk in md.chunks:
            info = by_index[(fqn, tuple(chunk.offsets))]
            with open(os.path.join(directory, info.relative_path), "rb") as f:
                f.seek(info.offset)
                piece = torch.load(io.BytesIO(f.read(info.length)))
            target = full
            for dim, (offset, size) in enumerate(zip(chunk.offsets, chunk.sizes)):
                target = target.narrow(dim, offset, size)
            target.copy_(piece)
        out[fqn] = full
    return out


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------


def write_checkpoint(run_dir, step, opts):
    path = os.path.join(run_dir, "checkpoint-%d" % step)
    os.makedirs(path)
    model = model_state(step, opts.torch_dtype)
    optimizer = optimizer_state(step, model)
    if opts.state_dict == "sharded":
        write_dcp(os.path.join(path, "pytorch_model_fsdp_0"), {"model": model}, opts.world_size, opts.newer_metadata)
        write_dcp(os.path.join(path, "optimizer_0"), {"optimizer": optimizer}, opts.world_size, opts.newer_metadata)
    else:
        torch.save(model, os.path.join(path, "pytorch_model_fsdp.bin"))
        torch.save(optimizer, os.path.join(path, "optimizer.bin"))
    for rank in range(opts.world_size):
        name = "rng_state.pth" if opts.world_size == 1 else "rng_state_%d.pth" % rank
        torch.save(runs.hf_rng_state(rank), os.path.join(path, name))
    torch.save({"base_lrs": [1e-3], "last_epoch": step, "_step_count": step + 1, "_last_lr": [1e-3]},
               os.path.join(path, "scheduler.pt"))
    fsdp_config = {"fsdp_state_dict_type": "SHARDED_STATE_DICT" if opts.state_dict == "sharded" else "FULL_STATE_DICT"}
    torch.save(TrainingArguments(output_dir=run_dir, fsdp="full_shard", fsdp_config=fsdp_config),
               os.path.join(path, "training_args.bin"))
    runs.write_json(os.path.join(path, "config.json"), {"model_type": "tiny-fsdp", "torch_dtype": opts.dtype_name})
    runs.write_json(os.path.join(path, "trainer_state.json"), runs.trainer_state(step))
    return path, model


def damage(checkpoint, kind):
    directory = os.path.join(checkpoint, "pytorch_model_fsdp_0")
    metadata = read_metadata(directory)
    if kind == "missing-file":
        names = sorted(n for n in os.listdir(directory) if n.endswith(".distcp"))
        os.remove(os.path.join(directory, names[-1]))
        return
    if kind == "chunks-gap":
        fqn = "model.embed.weight"
        chunk = metadata.state_dict_metadata[fqn].chunks.pop(0)
        del metadata.storage_data[next(k for k in metadata.storage_data
                                       if k.fqn == fqn and tuple(k.offset) == tuple(chunk.offsets))]
    else:
        key = list(metadata.storage_data)[-1]
        info = metadata.storage_data[key]
        if kind == "range-past-end":
            info.length += os.path.getsize(os.path.join(directory, info.relative_path))
        else:
            info.relative_path = "../" + info.relative_path
    with open(os.path.join(directory, ".metadata"), "wb") as f:
        pickle.dump(metadata, f)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--state-dict", choices=("sharded", "full"), default="sharded")
    parser.add_argument("--checkpoints", default="5")
    parser.add_argument("--newer-metadata", action="store_true")
    parser.add_argument("--reference")
    parser.add_argument("--damage", choices=DAMAGES)
    opts = parser.parse_args(argv)
    opts.torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[opts.dtype]
    opts.dtype_name = {"fp32": "float32", "bf16": "bfloat16"}[opts.dtype]
    opts.steps = [int(s) for s in opts.checkpoints.split(",")]
    if opts.damage and opts.state_dict != "sharded":
        parser.error("--damage applies to a sharded checkpoint")
    return opts


def build(opts):
    os.makedirs(opts.run_dir, exist_ok=True)
    newest, model = None, None
    for step in opts.steps:
        newest, model = write_checkpoint(opts.run_dir, step, opts)
    if opts.reference:
        if opts.state_dict == "sharded":
            rebuilt = reassemble(os.path.join(newest, "pytorch_model_fsdp_0"))
            assert list(rebuilt) == ["model." + name for name in model], list(rebuilt)
            for name, tensor in model.items():
                assert torch.equal(rebuilt["model." + name], tensor), name
        torch.save(model, opts.reference)
    if opts.damage:
        damage(newest, opts.damage)


def main(argv=None):
    build(parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
