"""Benchmark for `ckpt convert CHECKPOINT --consolidate` on a DeepSpeed ZeRO-2, 4-rank checkpoint of about 1 GiB of fp32
master weights (issue 17), page cache warm, against a Python reconstruction like DeepSpeed's zero_to_fp32.py.

Measures in one run (median of --repeat, outputs removed between runs), each as a whole process with its peak RSS
from wait4 (the processes are started by this script before it imports torch, which it never does):
  - `ckpt convert CKPT --consolidate -o OUT` (model.safetensors, fsynced) and the same with `--to pytorch`,
  - Python: torch.load of every model-states and optimizer-states file (map_location='cpu'), torch.cat of each
    group's partitions, narrowing into the parameters, buffers, frozen parameters and tied names as zero_to_fp32
    rebuilds them (make_zero_checkpoint.consolidate), then torch.save of the state dict, fsynced; its time is taken
    inside the process, after `import torch`.

The checkpoint is written once into --dir (tests/deepspeed/make_zero_checkpoint.py: stage 2, world size 4, bf16,
width 2048, 24 layers, vocabulary 32000: 267M trainable parameters, 1.07 GB of fp32 master weights in 4 optimizer
files of 0.8 GB with their Adam moments; about 100 s and 11.5 GB of memory once) and reused by later runs.

Run: /usr/bin/python3 bench/consolidate_zero.py [--ckpt build/ckpt] [--dir /tmp/ckpt-bench-zero] [--repeat 3]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR = os.path.join(HERE, "..", "tests", "deepspeed", "make_zero_checkpoint.py")
SHAPE = ["--stage", "2", "--world-size", "4", "--dtype", "bf16", "--checkpoints", "1", "--width", "2048",
         "--layers", "24", "--vocab", "32000"]


def run(cmd):
    """(wall seconds, peak RSS bytes, stdout) of a whole process; exits on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd} failed: {err.decode()}")
    return elapsed, usage.ru_maxrss * 1024, out.decode()


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def checkpoint_in(directory):
    """The cached checkpoint, written by the generator the first time (into a temporary name, then renamed)."""
    run_dir = os.path.join(directory, "run")
    if not os.path.isdir(run_dir):
        partial = os.path.join(directory, "run.partial")
        remove(partial)
        print("writing the checkpoint once into", run_dir, "(about 100 s)", file=sys.stderr)
        subprocess.run(["/usr/bin/python3", GENERATOR, partial] + SHAPE, check=True)
        os.rename(partial, run_dir)
    return os.path.join(run_dir, "checkpoint-1")


def read_everything(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while True:
                    block = f.read(1 << 24)
                    if not block:
                        break
                    total += len(block)
    return total


def python_reference(checkpoint, out):
    """zero_to_fp32's way, timed after the imports; prints the seconds."""
    import torch

    sys.path.insert(0, os.path.dirname(GENERATOR))
    import make_zero_checkpoint as gen  # the stand-ins for DeepSpeed's pickled classes, and consolidate()

    start = time.perf_counter()
    state = gen.consolidate(checkpoint)
    with open(out, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    print(time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "..", "build", "ckpt"))
    ap.add_argument("--dir", default="/tmp/ckpt-bench-zero")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--python-reference", nargs=2, metavar=("CHECKPOINT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.python_reference:
        python_reference(*args.python_reference)
        return
    os.makedirs(args.dir, exist_ok=True)
    checkpoint = checkpoint_in(args.dir)
    size = read_everything(checkpoint)
    out = os.path.join(args.dir, "out")
    python_out = os.path.join(args.dir, "python_model.bin")

    ours, ours_rss, ours_pt, ours_pt_rss, python, python_rss = [], [], [], [], [], []
    for _ in range(args.repeat):
        remove(out)
        t, rss, _ = run([args.ckpt, "convert", "-q", checkpoint, "--consolidate", "-o", out])
        ours.append(t)
        ours_rss.append(rss)
        weights = os.path.getsize(os.path.join(out, "model.safetensors"))
        remove(out)
        t, rss, _ = run([args.ckpt, "convert", "-q", checkpoint, "--consolidate", "--to", "pytorch", "-o", out])
        ours_pt.append(t)
        ours_pt_rss.append(rss)
        remove(out)
        remove(python_out)
        _, rss, printed = run(["/usr/bin/python3", os.path.abspath(__file__), "--python-reference", checkpoint,
                               python_out])
        python.append(float(printed.split()[-1]))
        python_rss.append(rss)
        remove(python_out)

    med = statistics.median
    mib = 2 ** 20
    print(f"input: {checkpoint} ({size / 2**30:.2f} GiB in the checkpoint; stage 2, 4 ranks, bf16), "
          f"consolidated model.safetensors {weights / 2**30:.3f} GiB fp32")
    print(f"ckpt convert --consolidate (safetensors, fsynced): {med(ours) * 1000:.0f} ms, "
          f"peak RSS {max(ours_rss) / mib:.1f} MiB")
    print(f"ckpt convert --consolidate --to pytorch (fsynced): {med(ours_pt) * 1000:.0f} ms, "
          f"peak RSS {max(ours_pt_rss) / mib:.1f} MiB")
    print(f"python torch.load of every shard + torch.cat + narrow + torch.save (fsynced, import excluded): "
          f"{med(python) * 1000:.0f} ms, peak RSS {max(python_rss) / mib:.1f} MiB")
    print(f"speed-up over Python: {med(python) / med(ours):.1f}x (safetensors), {med(python) / med(ours_pt):.1f}x "
          f"(pytorch)  (target >= 5x)")
    print(f"peak RSS ckpt / Python: {max(ours_rss) / max(python_rss):.3f}  (target: ckpt < 256 MiB)")


if __name__ == "__main__":
    main()
