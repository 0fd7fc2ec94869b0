"""Benchmark for `ckpt list` and `ckpt rotate` on a run directory with 1,000 checkpoints.

Each checkpoint holds a small model.safetensors, optimizer.pt-sized filler, config.json and a trainer_state.json
with 20 log entries. Measures, in one run:
  - `ckpt list RUN` and `ckpt list --json RUN` as whole processes (median of --repeat),
  - `ckpt rotate --keep 100 RUN` (deleting 900 checkpoints) against `rm -rf` of the same 900 directories on an
    identical copy: rotation should be bound by the file system.
Run: /usr/bin/python3 bench/list_bench.py [--ckpt build/ckpt]
"""
import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import tempfile
import time


def safetensors_bytes():
    header = json.dumps({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [16, 16], "data_offsets": [0, 1024]}})
    header += " " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header.encode() + bytes(1024)


def make_run(root, count):
    weights = safetensors_bytes()
    for i in range(1, count + 1):
        step = i * 100
        d = os.path.join(root, f"checkpoint-{step}")
        os.makedirs(d)
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(weights)
        with open(os.path.join(d, "optimizer.pt"), "wb") as f:
            f.write(bytes(2048))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"model_type": "mlp"}, f)
        log = [{"epoch": step / 1000, "loss": 1.0 / (j + 1), "step": step - 95 + j * 5} for j in range(19)]
        log.append({"epoch": step / 1000, "eval_loss": 1.0 / i, "step": step})
        state = {"global_step": step, "epoch": step / 1000, "log_history": log,
                 "best_model_checkpoint": f"run/checkpoint-{step}", "best_metric": 1.0 / i}
        with open(os.path.join(d, "trainer_state.json"), "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)


def timed(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(os.path.dirname(__file__), "..", "build", "ckpt"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ckpt-list-bench-") as tmp:
        run = os.path.join(tmp, "run")
        make_run(run, 1000)
        subprocess.run([args.ckpt, "list", run], check=True, stdout=subprocess.DEVNULL)  # warm the caches
        list_time = statistics.median(timed([args.ckpt, "list", run]) for _ in range(args.repeat))
        json_time = statistics.median(timed([args.ckpt, "list", "--json", run]) for _ in range(args.repeat))

        copy = os.path.join(tmp, "copy")
        shutil.copytree(run, copy)
        rotate_time = timed([args.ckpt, "rotate", "-q", "--keep", "100", run])
        victims = [os.path.join(copy, f"checkpoint-{i * 100}") for i in range(1, 901)]
        rm_time = timed(["rm", "-rf", *victims])
        left = len([n for n in os.listdir(run) if n.startswith("checkpoint-")])

    print(f"ckpt list, 1000 checkpoints: {list_time * 1000:.1f} ms (median of {args.repeat}; target < 200 ms)")
    print(f"ckpt list --json, 1000 checkpoints: {json_time * 1000:.1f} ms")
    print(f"ckpt rotate --keep 100 (900 deleted, {left} left): {rotate_time * 1000:.1f} ms; "
          f"rm -rf of the same 900: {rm_time * 1000:.1f} ms; ratio {rotate_time / rm_time:.2f}x")


if __name__ == "__main__":
    main()
