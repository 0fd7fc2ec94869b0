"""Benchmark for `ckpt inspect`: the whole ckpt process against torch.load of the same file inside Python.

Writes a ~1 GiB fp32 pytorch_model.bin shaped like a transformer (embedding, 24 blocks of attention and MLP
weights, layer norms; 243 tensors) in a child process, warms the page cache, then measures in one run:
  - ckpt inspect PATH as a whole process (median wall time and its peak RSS from wait4), and for scale the
    cost of starting any process here (`ckpt --version`),
  - torch.load(path) inside Python (median of --repeat runs, import excluded).
ckpt is measured before this script imports torch: a child's peak RSS includes what it inherited at fork.
Run with /usr/bin/python3 (Debian's torch): python3 bench/inspect_bench.py [--ckpt build/ckpt] [--dir /tmp/x]
"""
import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time



def make_model_file(path, hidden=1280, layers=24, vocab=32000):
    import torch

    torch.manual_seed(0)
    state = collections.OrderedDict()
    state["embed.weight"] = torch.randn(vocab, hidden)
    for i in range(layers):
        p = f"layers.{i}."
        state[p + "ln1.weight"] = torch.ones(hidden)
        state[p + "ln1.bias"] = torch.zeros(hidden)
        state[p + "attn.qkv.weight"] = torch.randn(3 * hidden, hidden)
        state[p + "attn.qkv.bias"] = torch.zeros(3 * hidden)
        state[p + "attn.out.weight"] = torch.randn(hidden, hidden)
        state[p + "attn.out.bias"] = torch.zeros(hidden)
        state[p + "ln2.weight"] = torch.ones(hidden)
        state[p + "ln2.bias"] = torch.zeros(hidden)
        state[p + "mlp.up.weight"] = torch.randn(hidden, hidden)
        state[p + "mlp.down.weight"] = torch.randn(hidden, hidden)
    state["lm_head.weight"] = state["embed.weight"]
    torch.save(state, path)
    return len(state)


def run_ckpt(ckpt, *args):
    start = time.perf_counter()
    proc = subprocess.Popen([ckpt, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"ckpt inspect failed: {proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(os.path.dirname(__file__), "..", "build", "ckpt"))
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--make", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_model_file(args.make)
        return
    tmp = args.dir or tempfile.mkdtemp(prefix="ckpt-bench-")
    os.makedirs(tmp, exist_ok=True)
    path = os.path.join(tmp, "pytorch_model.bin")
    if not os.path.exists(path):
        subprocess.run([sys.executable, __file__, "--make", path], check=True)
    size = os.path.getsize(path)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass

    start_cost = statistics.median(run_ckpt(args.ckpt, "--version")[0] for _ in range(args.repeat))
    ckpt_runs = [run_ckpt(args.ckpt, "inspect", path) for _ in range(args.repeat)]
    ckpt_time = statistics.median(t for t, _ in ckpt_runs)
    ckpt_rss = max(r for _, r in ckpt_runs)

    import torch

    torch.set_num_threads(os.cpu_count())
    torch_times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        state = torch.load(path)
        torch_times.append(time.perf_counter() - start)
        del state
    torch_time = statistics.median(torch_times)

    print(f"file: {path} ({size / 2**30:.2f} GiB fp32, 243 tensors)")
    print(f"torch.load inside Python: {torch_time * 1000:.1f} ms (median of {args.repeat})")
    print(f"ckpt inspect, whole process: {ckpt_time * 1000:.1f} ms (median of {args.repeat}); "
          f"starting a process here (ckpt --version): {start_cost * 1000:.1f} ms")
    print(f"ratio ckpt/torch.load: {ckpt_time / torch_time * 100:.2f}%  (target < 2%)")
    print(f"peak RSS: {ckpt_rss / 2**20:.1f} MiB  (target < 64 MiB)")


if __name__ == "__main__":
    main()
