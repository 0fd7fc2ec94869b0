"""Benchmark for `ckpt convert --to safetensors` of a ~1 GiB fp32 pytorch_model.bin, page cache warm.

Measures in one run (median of --repeat, outputs removed between runs):
  - cp of the same file, and cp followed by `sync FILE` (ckpt fsyncs what it writes, so that is the fair peer),
  - ckpt convert as a whole process, and its peak RSS (from wait4, measured before this script imports torch:
    a child's peak includes what it inherited at fork),
  - Python: torch.load, then writing the same safetensors layout with plain file writes.
Run: /usr/bin/python3 bench/convert_bench.py [--ckpt build/ckpt] [--dir /tmp/ckpt-bench]
The input file is the one bench/inspect_bench.py makes (generated here if missing).
"""
import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd} failed: {proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss * 1024


def remove(path):
    if os.path.exists(path):
        os.unlink(path)


def python_convert(src, dst):
    import torch

    start = time.perf_counter()
    state = torch.load(src)
    names = sorted(state, key=lambda n: (-state[n].element_size(), n))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for n in names:
        size = state[n].numel() * state[n].element_size()
        header[n] = {"dtype": "F32", "shape": list(state[n].shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text.encode())
        for n in names:
            f.write(state[n].contiguous().numpy().tobytes())
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "..", "build", "ckpt"))
    ap.add_argument("--dir", default="/tmp/ckpt-bench")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, "pytorch_model.bin")
    if not os.path.exists(src):
        subprocess.run([sys.executable, os.path.join(HERE, "inspect_bench.py"), "--make", src], check=True)
    size = os.path.getsize(src)
    with open(src, "rb") as f:
        while f.read(1 << 24):
            pass
    out = os.path.join(args.dir, "out.safetensors")
    copy = os.path.join(args.dir, "copy.bin")

    cp, cp_sync, ours, rss = [], [], [], []
    for _ in range(args.repeat):
        remove(copy)
        cp.append(run(["cp", src, copy])[0])
        remove(copy)
        start = time.perf_counter()
        subprocess.run(["cp", src, copy], check=True)
        subprocess.run(["sync", copy], check=True)
        cp_sync.append(time.perf_counter() - start)
        remove(copy)
        remove(out)
        t, r = run([args.ckpt, "convert", "-q", src, "--to", "safetensors", "-o", out])
        ours.append(t)
        rss.append(r)
    remove(out)
    python = []
    for _ in range(args.repeat):
        python.append(python_convert(src, out))
        remove(out)

    med = statistics.median
    print(f"input: {src} ({size / 2**30:.2f} GiB fp32, 243 tensors, one tied)")
    print(f"cp: {med(cp) * 1000:.0f} ms; cp + sync FILE: {med(cp_sync) * 1000:.0f} ms")
    print(f"ckpt convert --to safetensors (fsynced): {med(ours) * 1000:.0f} ms, peak RSS {max(rss) / 2**20:.1f} MiB")
    print(f"python torch.load + write safetensors (fsynced): {med(python) * 1000:.0f} ms")
    print(f"ratio ckpt / (cp + sync): {med(ours) / med(cp_sync):.2f}x  (target <= 1.5x)")
    print(f"ratio ckpt / cp without sync: {med(ours) / med(cp):.2f}x")
    print(f"speed-up over Python: {med(python) / med(ours):.1f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
