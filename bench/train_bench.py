"""Benchmark for `ckpt save` / `ckpt resume`, measured in one run:

  1. Checkpoint write: a model whose weights and AdamW state are about 1 GiB (MLP, hidden 4096, 6 layers:
     84M parameters) saved at each of 3 steps; the trainer's own save timings (--json save_write_seconds, fsyncs
     included) against `cp -r` of the same checkpoint directory, bare and followed by `sync -f` (ckpt makes what
     it writes durable, so cp+sync is the like-for-like peer). cp is timed twice: right after the previous copy
     was deleted (the page cache reuses just-freed, already-backed memory: the best case for cp) and after a
     10 s pause (on this VM, memory left free for a few seconds is handed back to the hypervisor and costs
     about 1.8 s/GiB to touch again; ckpt's direct I/O does not allocate page cache, so it does not pay this).
  2. --async-save: the training stall per checkpoint (save_stall_seconds), first checkpoint (allocates the
     snapshot buffers) and the others, against the synchronous save time.
  3. Resume: the trainer's load time (load_seconds: weights, optimizer, scheduler, RNG, trainer state) against
     Python's torch.load of the same pickle files (pytorch_model.bin, optimizer.pt, scheduler.pt, rng_state.pth),
     with the files evicted from the page cache (posix_fadvise DONTNEED) and with them just read (warm).
  4. Training speed of the default model: steps per second of `ckpt save` against the same loop in Python torch
     (tests/train/reference.py: same model, data, optimizer, schedule, clipping) at the same thread count.
  5. Data-parallel training of the default model on 2 processes (Gloo, one thread each, 32 examples per process):
     steps per second of `ckpt save --nproc-per-node 2` against the same loop in Python with
     DistributedDataParallel, and with `--shard-optimizer` against Python's ZeroRedundancyOptimizer.

Run: /usr/bin/python3 bench/train_bench.py [--ckpt build/ckpt] [--dir /tmp/ckpt-train-bench] [--repeat 3]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "train"))  # reference.py
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # harness.py, which reference.py reads safetensors with

BIG = ["--hidden-size", "4096", "--num-layers", "6", "--train-examples", "64", "--per-device-train-batch-size", "8",
       "--eval-steps", "0", "--max-steps", "3", "--save-steps", "1", "--no-save-safetensors"]


def ckpt_json(ckpt, args):
    r = subprocess.run([ckpt, *args, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ckpt {' '.join(args)} failed: {r.stderr}")
    return json.loads(r.stdout)


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ddp_worker(rank, world_size, port, steps, shard, results):
    """The default model's loop as torch.distributed users write it: DDP over Gloo, each process its rows of
    the global batch; steps per second from the first step to the last, as ckpt's train_steps_per_second."""
    import random

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    import reference

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    reference.set_seed(42)
    (x, y), _ = reference.make_data(42)
    model = DistributedDataParallel(reference.MLP())
    if shard:
        optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3,
                                            betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    else:
        optimizer = reference.make_optimizer(model.module, 1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, reference.linear_schedule(0, steps))
    batch, n = 32, len(y)
    dist.barrier()
    start = time.perf_counter()
    step = 0
    while step < steps:
        order = list(range(n))
        random.shuffle(order)
        for s in range(n // (batch * world_size)):
            idx = order[(s * world_size + rank) * batch:(s * world_size + rank + 1) * batch]
            loss = F.cross_entropy(model(reference.noisy_batch(x, idx, 0.1)), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step >= steps:
                break
    dist.barrier()
    if rank == 0:
        results.put(steps / (time.perf_counter() - start))
    dist.destroy_process_group()


def python_ddp_steps_per_second(steps, shard):
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=ddp_worker, args=(rank, 2, port, steps, shard, results)) for rank in range(2)]
    for w in workers:
        w.start()
    value = results.get(timeout=600)
    for w in workers:
        w.join()
        if w.exitcode != 0:
            sys.exit(f"the Python DDP worker failed: exit {w.exitcode}")
    return value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", default=os.path.join(os.path.dirname(HERE), "build", "ckpt"))
    parser.add_argument("--dir", default="/tmp/ckpt-train-bench")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    results = {}

    # 1 and 2: synchronous and asynchronous saves of the big model.
    sync_write, first_stall, later_stall, cp_times, cp_sync_times, cp_sync_cold = [], [], [], [], [], []
    for i in range(args.repeat):
        run = os.path.join(args.dir, f"sync-{i}")
        r = ckpt_json(args.ckpt, ["save", "--output-dir", run, *BIG])
        sync_write += r["save_write_seconds"]
        run_async = os.path.join(args.dir, f"async-{i}")
        r = ckpt_json(args.ckpt, ["save", "--output-dir", run_async, *BIG, "--async-save"])
        # The last checkpoint's stall includes waiting at the end of training, when nothing is left to stall.
        first_stall.append(r["save_stall_seconds"][0])
        later_stall += r["save_stall_seconds"][1:-1]
        shutil.rmtree(run_async)
        source = os.path.join(run, "checkpoint-1")
        copy = os.path.join(args.dir, "copy")
        subprocess.run(["sync"], check=True)
        cp_times.append(timed(lambda: subprocess.run(["cp", "-r", source, copy], check=True)))
        shutil.rmtree(copy)
        subprocess.run(["sync"], check=True)
        cp_sync_times.append(timed(lambda: (subprocess.run(["cp", "-r", source, copy], check=True),
                                           subprocess.run(["sync", "-f", copy], check=True))))
        shutil.rmtree(copy)
        subprocess.run(["sync"], check=True)
        time.sleep(10)
        cp_sync_cold.append(timed(lambda: (subprocess.run(["cp", "-r", source, copy], check=True),
                                          subprocess.run(["sync", "-f", copy], check=True))))
        shutil.rmtree(copy)
    checkpoint = os.path.join(args.dir, "sync-0", "checkpoint-1")
    size = dir_bytes(checkpoint)
    write = statistics.median(sync_write)
    results["checkpoint_bytes"] = size
    results["save_seconds"] = write
    results["cp_seconds"] = statistics.median(cp_times)
    results["cp_sync_seconds"] = statistics.median(cp_sync_times)
    results["cp_sync_after_pause_seconds"] = statistics.median(cp_sync_cold)
    results["save_throughput_vs_cp"] = results["cp_seconds"] / write
    results["save_throughput_vs_cp_sync"] = results["cp_sync_seconds"] / write
    results["save_throughput_vs_cp_sync_after_pause"] = results["cp_sync_after_pause_seconds"] / write
    results["async_first_stall_seconds"] = statistics.median(first_stall)
    results["async_stall_seconds"] = statistics.median(later_stall)
    results["async_stall_fraction"] = results["async_stall_seconds"] / write

    # 3: resume's load against torch.load of the same files, with the files out of the page cache (cold) and in
    # it (warm: just read, as after torch.save or a copy).
    def checkpoint_files(i):
        d = os.path.join(args.dir, f"sync-{i}", "checkpoint-1")
        return [os.path.join(d, f) for f in os.listdir(d)]

    def cold(i):
        for path in checkpoint_files(i):
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

    def warm(i):
        for path in checkpoint_files(i):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass

    states = (("cold", cold), ("warm", warm))
    loads = {}
    for state, prepare in states:
        loads[state] = []
        for i in range(args.repeat):
            prepare(i)
            r = ckpt_json(args.ckpt, ["resume", os.path.join(args.dir, f"sync-{i}"), "--from", "checkpoint-1", "--max-steps", "1"])
            loads[state].append(r["load_seconds"])
    import torch  # imported only now: the children above are timed without it in this process

    for state, prepare in states:
        python_loads = []
        for i in range(args.repeat):
            prepare(i)
            d = os.path.join(args.dir, f"sync-{i}", "checkpoint-1")
            python_loads.append(timed(lambda: [torch.load(os.path.join(d, f)) for f in
                                               ("pytorch_model.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")]))
        results[f"resume_load_seconds_{state}"] = statistics.median(loads[state])
        results[f"python_torch_load_seconds_{state}"] = statistics.median(python_loads)
        results[f"resume_load_fraction_of_python_{state}"] = statistics.median(loads[state]) / statistics.median(python_loads)

    # 4: steps per second of the default model.
    import reference

    for threads in (1, 2):
        ours = []
        for i in range(args.repeat):
            r = ckpt_json(args.ckpt, ["save", "--output-dir", os.path.join(args.dir, f"speed-{threads}-{i}"), "--max-steps",
                                      str(args.steps), "--save-steps", str(10 * args.steps), "--eval-steps", "0", "--threads", str(threads)])
            ours.append(r["metrics"]["train_steps_per_second"])
        python = []
        for i in range(args.repeat):
            python.append(args.steps / timed(lambda: reference.train_python(max_steps=args.steps, threads=threads)))
        results[f"steps_per_second_{threads}_threads"] = statistics.median(ours)
        results[f"python_steps_per_second_{threads}_threads"] = statistics.median(python)
        results[f"speedup_{threads}_threads"] = statistics.median(ours) / statistics.median(python)

    # 5: two processes.
    for shard in (False, True):
        label = "zero1" if shard else "ddp"
        ours = []
        for i in range(args.repeat):
            r = ckpt_json(args.ckpt, ["save", "--output-dir", os.path.join(args.dir, f"{label}-{i}"), "--nproc-per-node", "2",
                                      "--max-steps", str(args.steps), "--save-steps", str(10 * args.steps), "--eval-steps", "0",
                                      *(["--shard-optimizer"] if shard else [])])
            ours.append(r["metrics"]["train_steps_per_second"])
        python = [python_ddp_steps_per_second(args.steps, shard) for _ in range(args.repeat)]
        results[f"{label}_2_processes_steps_per_second"] = statistics.median(ours)
        results[f"python_{label}_2_processes_steps_per_second"] = statistics.median(python)
        results[f"{label}_2_processes_speedup"] = statistics.median(ours) / statistics.median(python)

    shutil.rmtree(args.dir, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
