"""Benchmark for `ckpt diff`: the ~1 GiB fp32 pytorch_model.bin of bench/inspect_bench.py against a copy with a few
values changed, page cache warm, against what one writes in Python for the same question.

Measures in one run (median of --repeat):
  - ckpt diff A B as a whole process (exit status 1: they differ), and its peak RSS from wait4, measured before this
    script imports torch (a child's peak includes what it inherited at fork),
  - ckpt diff A A (every tensor identical: the bytes-only path),
  - Python: torch.load of both, then per tensor torch.allclose and the max absolute difference (import excluded).
Run: /usr/bin/python3 bench/diff_bench.py [--ckpt build/ckpt] [--dir /tmp/ckpt-bench] [--repeat 5]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import inspect_bench  # noqa: E402  (the model file's generator, shared with the inspect and convert benchmarks)

# Where B differs from A: (tensor, flat index, value added). embed.weight is tied to lm_head.weight, which changes with it.
CHANGES = [("embed.weight", 12345, 0.5), ("layers.3.attn.qkv.weight", 0, -1.0), ("layers.23.mlp.down.weight", 1638399, 1e-3)]
DIFFERING = len(CHANGES) + 1


def make_changed(src, dst):
    import torch

    state = torch.load(src)
    for name, index, delta in CHANGES:
        state[name].view(-1)[index] += delta
    torch.save(state, dst)


def run(cmd, expected):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != expected:
        sys.exit(f"{cmd} exited {os.waitstatus_to_exitcode(status)}, not {expected}: {proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss * 1024


def python_diff(a_path, b_path):
    import torch

    start = time.perf_counter()
    a = torch.load(a_path)
    b = torch.load(b_path)
    different = []
    for name, x in a.items():
        y = b.get(name)
        if y is None or x.shape != y.shape or x.dtype != y.dtype:
            different.append(name)
            continue
        if not torch.allclose(x, y, rtol=0, atol=0):
            different.append((name, (x - y).abs().max().item()))
    elapsed = time.perf_counter() - start
    assert len(different) == DIFFERING, different
    return elapsed


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "..", "build", "ckpt"))
    ap.add_argument("--dir", default="/tmp/ckpt-bench")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--make-changed", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_changed:
        make_changed(*args.make_changed)
        return
    os.makedirs(args.dir, exist_ok=True)
    a = os.path.join(args.dir, "pytorch_model.bin")
    b = os.path.join(args.dir, "changed.bin")
    if not os.path.exists(a):
        subprocess.run([sys.executable, inspect_bench.__file__, "--make", a], check=True)
    if not os.path.exists(b):
        subprocess.run([sys.executable, __file__, "--make-changed", a, b], check=True)
    size = os.path.getsize(a)
    warm(a)
    warm(b)

    different = [run([args.ckpt, "diff", "-q", a, b], 1) for _ in range(args.repeat)]
    same = [run([args.ckpt, "diff", "-q", a, a], 0) for _ in range(args.repeat)]
    python = [python_diff(a, b) for _ in range(args.repeat)]

    med = statistics.median
    ours = med(t for t, _ in different)
    rss = max(r for _, r in different + same)
    print(f"input: {a} ({size / 2**30:.2f} GiB fp32, 242 tensors, one tied) against a copy with {len(CHANGES)} values changed")
    print(f"ckpt diff A B ({DIFFERING} tensors differ): {ours * 1000:.0f} ms (median of {args.repeat})")
    print(f"ckpt diff A A (all identical): {med(t for t, _ in same) * 1000:.0f} ms")
    print(f"python torch.load both + torch.allclose / max abs per tensor: {med(python) * 1000:.0f} ms")
    print(f"speed-up over Python: {med(python) / ours:.1f}x  (target >= 5x)")
    print(f"peak RSS of ckpt diff: {rss / 2**20:.1f} MiB  (target < 64 MiB)")


if __name__ == "__main__":
    main()
