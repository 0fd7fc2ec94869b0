"""Builders for synthetic Hugging Face Trainer run directories, fast and without torch.

A run directory holds `checkpoint-<N>/` directories as the Trainer writes them. Everything here is written by
hand from the formats' rules:

* `model.safetensors`: u64 little-endian header length, a JSON header (padded with spaces to a multiple of 8
  bytes), then the tensor bytes in the order of their data_offsets.
* `model.safetensors.index.json` + `model-0000K-of-0000M.safetensors` for sharded weights.
* `trainer_state.json`: Hugging Face's TrainerState, indent 2, sorted keys, with log_history holding training
  entries (loss) and evaluation entries (eval_loss, eval_accuracy, ...).

Also: mtime helpers (`set_mtime`, which touches a directory and the files in it), staging / custom / trash
directories, and waiting for a process to block on the run lock. Running ckpt, tree snapshots and the fixture
run's copy are tests/harness.py's.

Only `write_pytorch_bin` and `hf_rng_state` need torch (imported lazily); nothing else does.
"""

import json
import os
import struct

import harness

# ----------------------------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------------------------


def tiny_tensors(seed=0, n=2):
    """A small deterministic state dict: name -> (dtype, shape, raw bytes)."""
    tensors = {}
    for i in range(n):
        shape = [2, 3] if i % 2 == 0 else [4]
        count = 1
        for d in shape:
            count *= d
        values = [float(seed * 100 + i * 10 + k) / 8.0 for k in range(count)]
        tensors["layer%d.weight" % i] = ("F32", shape, struct.pack("<%df" % count, *values))
    return tensors


def safetensors_bytes(tensors, metadata=None):
    """Serialises {name: (dtype, shape, bytes)} as a safetensors file."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    blobs = []
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        count = 1
        for d in shape:
            count *= d
        assert len(data) == count * harness.DTYPE_SIZES[dtype], name
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def write_safetensors(path, tensors=None, metadata=None, truncate_by=0):
    """Writes a valid safetensors file (or one `truncate_by` bytes short of valid)."""
    data = safetensors_bytes(tensors if tensors is not None else tiny_tensors(), metadata or {"format": "pt"})
    if truncate_by:
        data = data[: max(0, len(data) - truncate_by)]
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def write_sharded_safetensors(directory, shards=2, seed=0, missing=()):
    """model-0000K-of-0000M.safetensors shards plus model.safetensors.index.json; `missing`: 1-based shard
    numbers not written (the index still names them)."""
    weight_map = {}
    total = 0
    for k in range(1, shards + 1):
        name = "model-%05d-of-%05d.safetensors" % (k, shards)
        tensors = {("shard%d." % k) + t: v for t, v in tiny_tensors(seed + k).items()}
        for t in tensors:
            weight_map[t] = name
        if k not in missing:
            total += write_safetensors(os.path.join(directory, name), tensors)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    write_json(os.path.join(directory, "model.safetensors.index.json"), index)


def write_pytorch_bin(path, seed=0):
    """pytorch_model.bin via torch.save (needs /usr/bin/python3's torch; imported lazily)."""
    import torch  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    torch.save({"layer0.weight": torch.randn(2, 3, generator=g), "layer1.weight": torch.randn(4, generator=g)}, path)


# ----------------------------------------------------------------------------------------------------------------
# trainer_state.json
# ----------------------------------------------------------------------------------------------------------------


def hf_rng_state(seed):
    """What HF's _save_rng_state saves in rng_state[_<rank>].pth: python, numpy and cpu generator states, and one
    CUDA state per visible device (one here), each seeded from `seed`."""
    import random
    import numpy as np
    import torch
    python = random.Random(seed)
    numpy_state = np.random.RandomState(seed)
    torch_generator = torch.Generator().manual_seed(seed)
    cuda = torch.Generator().manual_seed(seed + 1).get_state()[:16].clone()
    return {"python": python.getstate(), "numpy": numpy_state.get_state(), "cpu": torch_generator.get_state(),
            "cuda": [cuda]}


def write_json(path, obj, indent=2, sort_keys=True):
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=sort_keys)
        f.write("\n")


def trainer_state(global_step, *, evals=None, train_every=None, best_model_checkpoint=None, best_metric=None,
                  steps_per_epoch=10, extra_log=None):
    """A TrainerState dict.

    evals: {step: {"eval_loss": x, "eval_accuracy": y, ...}} (only entries at steps <= global_step are logged
    unless `extra_log` adds more); train_every: log a training loss every this many steps (default: at every eval
    step and at global_step); extra_log: raw log_history entries appended at the end."""
    evals = evals or {}
    log = []
    train_steps = set()
    if train_every:
        train_steps.update(range(train_every, global_step + 1, train_every))
    else:
        train_steps.update(s for s in evals if s <= global_step)
        if global_step > 0:
            train_steps.add(global_step)
    eval_steps = {s for s in evals if s <= global_step}
    for step in sorted(train_steps | eval_steps):
        epoch = round(step / steps_per_epoch, 4)
        if step in train_steps:
            log.append({"epoch": epoch, "grad_norm": 1.0, "learning_rate": 1e-3, "loss": round(5.0 - step / 1000.0, 4),
                        "step": step})
        if step in eval_steps:
            entry = {"epoch": epoch, "eval_runtime": 0.01, "eval_samples_per_second": 100.0,
                     "eval_steps_per_second": 10.0, "step": step}
            entry.update(evals[step])
            log.append(entry)
    if extra_log:
        log.extend(extra_log)
    return {
        "best_metric": best_metric,
        "best_model_checkpoint": best_model_checkpoint,
        "epoch": round(global_step / steps_per_epoch, 4),
        "eval_steps": 10,
        "global_step": global_step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": log,
        "logging_steps": 5,
        "max_steps": 1000,
        "num_input_tokens_seen": 0,
        "num_train_epochs": 100,
        "save_steps": 10,
        "total_flos": 1000.0,
        "train_batch_size": 4,
        "trial_name": None,
        "trial_params": None,
    }


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and other run-directory entries
# ----------------------------------------------------------------------------------------------------------------

BROKEN_KINDS = ("no_weights", "truncated", "no_state", "bad_state", "missing_shard")


def make_checkpoint(run_dir, step, *, state=None, weights="safetensors", broken=None, extra_files=0,
                    extra_size=64, config=True, mtime=None, name=None, seed=None):
    """Writes run_dir/checkpoint-<step> and returns its path.

    state: a trainer_state dict (default: trainer_state(step)); weights: "safetensors", "sharded", "bin" (torch)
    or None; broken: one of BROKEN_KINDS (no_weights, truncated: model.safetensors cut short, no_state: no
    trainer_state.json, bad_state: trainer_state.json not JSON, missing_shard: sharded set lacking shard 2);
    extra_files: that many optimizer-like filler files of extra_size bytes; mtime: set on the directory and every
    file in it (see set_mtime)."""
    if broken is not None and broken not in BROKEN_KINDS:
        raise ValueError(broken)
    path = os.path.join(run_dir, name or "checkpoint-%d" % step)
    os.makedirs(path)
    seed = step if seed is None else seed
    if broken == "missing_shard":
        write_sharded_safetensors(path, shards=2, seed=seed, missing=(2,))
    elif broken == "no_weights" or weights is None:
        pass
    elif weights == "safetensors":
        write_safetensors(os.path.join(path, "model.safetensors"), tiny_tensors(seed),
                          truncate_by=5 if broken == "truncated" else 0)
    elif weights == "sharded":
        write_sharded_safetensors(path, shards=2, seed=seed)
    elif weights == "bin":
        write_pytorch_bin(os.path.join(path, "pytorch_model.bin"), seed=seed)
    else:
        raise ValueError(weights)
    if config:
        write_json(os.path.join(path, "config.json"), {"model_type": "tiny", "hidden_size": 3, "step": step})
    if broken == "bad_state":
        with open(os.path.join(path, "trainer_state.json"), "w") as f:
            f.write('{"global_step": %d, "log_history": [' % step)
    elif broken != "no_state":
        write_json(os.path.join(path, "trainer_state.json"), state if state is not None else trainer_state(step))
    for k in range(extra_files):
        with open(os.path.join(path, "filler-%d.pt" % k), "wb") as f:
            f.write(bytes([k % 251]) * extra_size)
    if mtime is not None:
        set_mtime(path, mtime)
    return path


def make_run(run_dir, steps, *, best_step=None, best_path=None, evals=None, state_for=None, mtimes=None,
             extra_files=0, broken=None):
    """A run directory with checkpoint-<s> for every s in `steps`.

    best_path: best_model_checkpoint written into the trainer_state.json of the highest step (the state resume
    would read); when None and best_step is given, os.path.join(run_dir, "checkpoint-<best_step>"). Older
    checkpoints name themselves as best (so a tool reading the wrong file picks a different best).
    evals: {step: {...}} logged into every checkpoint's log_history (each up to its own step);
    state_for: optional callable(step) -> state dict overriding all of that;
    mtimes: {step: seconds since the epoch}; broken: {step: broken kind}."""
    os.makedirs(run_dir, exist_ok=True)
    steps = sorted(steps)
    if best_path is None and best_step is not None:
        best_path = os.path.join(run_dir, "checkpoint-%d" % best_step)
    paths = {}
    for s in steps:
        if state_for is not None:
            state = state_for(s)
        else:
            if s == steps[-1]:
                bmc = best_path
            else:
                bmc = os.path.join(run_dir, "checkpoint-%d" % s) if best_path is not None else None
            state = trainer_state(s, evals=evals, best_model_checkpoint=bmc,
                                  best_metric=None if bmc is None else 1.0)
        paths[s] = make_checkpoint(run_dir, s, state=state, extra_files=extra_files,
                                   broken=(broken or {}).get(s))
    if mtimes:
        for s, t in mtimes.items():
            set_mtime(paths[s], t)
    return paths


def make_dir_entry(run_dir, name, files=1, mtime=None):
    """A staging (tmp-checkpoint-*, .ckpt-staging-*), trash (.ckpt-trash-*) or custom directory with a few
    files; returns its path."""
    path = os.path.join(run_dir, name)
    os.makedirs(path)
    for k in range(files):
        with open(os.path.join(path, "part-%d.bin" % k), "wb") as f:
            f.write(b"x" * 32)
    if mtime is not None:
        set_mtime(path, mtime)
    return path


def set_mtime(path, t, recursive=True):
    """Sets atime and mtime of `path` (and everything below it, symlinks excluded) to `t` seconds since the
    epoch. Files first, the directory last (writing the files does not move it again)."""
    ns = int(round(t * 1e9))
    if os.path.isdir(path) and not os.path.islink(path):
        for entry in os.scandir(path):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if recursive:
                    set_mtime(entry.path, t, recursive)
                else:
                    os.utime(entry.path, ns=(ns, ns))
            else:
                os.utime(entry.path, ns=(ns, ns))
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def entries(run_dir):
    """Sorted names directly in run_dir, lock file excluded."""
    return sorted(n for n in os.listdir(run_dir) if n != ".ckpt.lock")


def trash_entries(run_dir):
    return sorted(n for n in os.listdir(run_dir) if n.startswith(".ckpt-trash-"))


def blocked_in_flock(pid):
    """Whether process pid waits for a flock another holder has (/proc/locks marks a waiter's line with "->")."""
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if fields[1:3] == ["->", "FLOCK"] and fields[5] == str(pid):
                return True
    return False


def wait_until_blocked_in_flock(p):
    """Waits (60 s at most) until process p waits for a lock someone holds; AssertionError if it ends first."""
    harness.wait_until(lambda: blocked_in_flock(p.pid), "wait for the held lock", interval=0.01, process=p)


def human_bytes(n):
    """A size as ckpt prints it: exact bytes below 1 KiB, else one decimal and a binary unit."""
    if n < 1024:
        return "%d B" % n
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024:
            return "%.1f %s" % (n, unit)
