"""Benchmark for inputs with many keys in one object: time should grow linearly with the number of keys.

Inputs, generated in one run (--keys, default 100,000):
  - a torch.save'd pickle dict {"k0": 0, "k1": 1, ...}: `ckpt inspect --json FILE` against Python's
    `torch.load(FILE)` of the same file,
  - a run directory with one checkpoint whose trainer_state.json holds one log entry with that many metrics:
    `ckpt list RUN`, `ckpt rotate --dry-run --keep 1 RUN` and `ckpt inspect RUN` against Python's `json.load`
    of that trainer_state.json.
ckpt is timed as whole processes, Python in-process (no interpreter start-up); median of --repeat each. The ratio
is ckpt's time over Python's: below 1, ckpt is faster.
Run: /usr/bin/python3 bench/many_keys.py [--ckpt build/ckpt] [--keys 100000] [--repeat 3]
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import tempfile
import time

import torch


def make_pickle(path, keys):
    torch.save({"k%d" % i: i for i in range(keys)}, path)


def make_run(root, keys):
    """RUN/checkpoint-100 with a tiny model and a trainer_state.json whose last log entry has `keys` metrics."""
    checkpoint = os.path.join(root, "checkpoint-100")
    os.makedirs(checkpoint)
    header = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    header += " " * (-len(header) % 8)
    with open(os.path.join(checkpoint, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode() + bytes(16))
    with open(os.path.join(checkpoint, "config.json"), "w") as f:
        json.dump({"model_type": "mlp"}, f)
    metrics = {"eval_metric_%d" % i: 1.0 / (i + 1) for i in range(keys)}
    metrics.update({"eval_loss": 0.5, "epoch": 1.0, "step": 100})
    state = {"global_step": 100, "epoch": 1.0, "best_metric": 0.5, "best_model_checkpoint": checkpoint,
             "log_history": [{"loss": 0.7, "epoch": 1.0, "step": 100}, metrics]}
    path = os.path.join(checkpoint, "trainer_state.json")
    with open(path, "w") as f:
        json.dump(state, f, indent=2, sort_keys=True)
    return path


def process_seconds(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def call_seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(fn, repeat):
    return statistics.median(fn() for _ in range(repeat))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(os.path.dirname(__file__), "..", "build", "ckpt"))
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ckpt-many-keys-bench-") as tmp:
        pickle_path = os.path.join(tmp, "many_keys.pt")
        make_pickle(pickle_path, args.keys)
        python = median(lambda: call_seconds(lambda: torch.load(pickle_path)), args.repeat)
        ours = median(lambda: process_seconds([args.ckpt, "inspect", "--json", pickle_path]), args.repeat)
        rows.append(("ckpt inspect --json (pickle dict)", ours, "torch.load", python))

        run = os.path.join(tmp, "run")
        state_path = make_run(run, args.keys)

        def load_state():
            with open(state_path) as f:
                json.load(f)

        python = median(lambda: call_seconds(load_state), args.repeat)
        for label, cmd in (("ckpt list (trainer_state.json)", [args.ckpt, "list", run]),
                           ("ckpt rotate --dry-run --keep 1", [args.ckpt, "rotate", "--dry-run", "--keep", "1", run]),
                           ("ckpt inspect RUN", [args.ckpt, "inspect", run])):
            rows.append((label, median(lambda: process_seconds(cmd), args.repeat), "json.load", python))

    print(f"{args.keys:,} keys in one object; median of {args.repeat}")
    for label, ours, reference, theirs in rows:
        print(f"{label}: {ours * 1000:.1f} ms; Python {reference}: {theirs * 1000:.1f} ms; ratio {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
