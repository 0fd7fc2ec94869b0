"""`ckpt save|resume --nproc-per-node N`: data-parallel training on torch.distributed (Gloo) across processes on
loopback. Bit-exact resume with every rank's files, equivalence to one process with the same global batch, the
sharded optimizer and its consolidation (checked by Debian's torch via /usr/bin/python3), a worker killed in the
middle of a save, and the refusals.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import unittest

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import harness  # noqa: E402
from harness import sha256_file as sha  # noqa: E402

SHIM = os.environ.get("CKPT_FAULT_SHIM", "")
RUN = ["--max-steps", "60", "--save-steps", "20", "--dropout", "0.1", "--train-examples", "1024", "-q"]
TWO = ["--nproc-per-node", "2"]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def clean_env():
    return harness.environment(remove=("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                       "LD_PRELOAD", "CKPT_FAULT"))


def alive(pid):
    """Whether a process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DistributedTest(harness.TempDirTest):
    TEMP_PREFIX = "ckpt-dist-"

    def run_ckpt(self, args, env=None, timeout=300):
        return harness.ckpt(*args, env=env or clean_env(), timeout=timeout)

    def ok(self, args, **kwargs):
        r = self.run_ckpt(args, **kwargs)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def save(self, name, extra=()):
        self.ok(["save", "--output-dir", self.path(name)] + RUN + TWO + list(extra))
        return self.path(name)

    def resume_from_20(self, name, extra=()):
        """A second run stopped after checkpoint-20 (its later checkpoints removed), resumed with two processes."""
        run = self.save(name, extra)
        for step in (40, 60):
            shutil.rmtree(os.path.join(run, f"checkpoint-{step}"))
        for f in ("model.safetensors", "trainer_state.json"):
            os.remove(os.path.join(run, f))
        self.ok(["resume", run, "--from", "checkpoint-20"] + TWO + ["-q"])
        return run

    def test_resume_is_bit_exact_on_every_rank(self):
        a = self.save("a")
        self.assertEqual(sorted(os.listdir(os.path.join(a, "checkpoint-20"))),
                         ["config.json", "model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth", "scheduler.pt",
                          "trainer_state.json", "training_args.bin"])
        b = self.resume_from_20("b")
        self.assertEqual(sha(os.path.join(a, "model.safetensors")), sha(os.path.join(b, "model.safetensors")))
        for f in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"):
            self.assertEqual(sha(os.path.join(a, "checkpoint-60", f)), sha(os.path.join(b, "checkpoint-60", f)), f)
        # Each rank's generators, in the Hugging Face format, loaded by Python; the two ranks' files are distinct files.
        for rank in (0, 1):
            rng = torch.load(os.path.join(a, "checkpoint-60", f"rng_state_{rank}.pth"), weights_only=False)
            self.assertEqual(sorted(rng), ["cpu", "numpy", "python"])
        state = read_json(os.path.join(a, "checkpoint-60", "trainer_state.json"))
        self.assertEqual(state["global_step"], 60)
        self.assertEqual(state["train_batch_size"], 32)

    def test_sharded_optimizer_resume_is_bit_exact(self):
        a = self.save("a", ["--shard-optimizer"])
        names = os.listdir(os.path.join(a, "checkpoint-20"))
        self.assertIn("optimizer_0.pt", names)
        self.assertIn("optimizer_1.pt", names)
        self.assertNotIn("optimizer.pt", names)
        shards = [torch.load(os.path.join(a, "checkpoint-20", f"optimizer_{r}.pt")) for r in (0, 1)]
        self.assertEqual([s["shard"]["rank"] for s in shards], [0, 1])
        self.assertEqual([s["shard"]["world_size"] for s in shards], [2, 2])
        owned = shards[0]["shard"]["params"] + shards[1]["shard"]["params"]
        self.assertEqual(sorted(owned), list(range(6)))
        self.assertEqual([sorted(s["state"]) for s in shards], [s["shard"]["params"] for s in shards])
        b = self.resume_from_20("b", ["--shard-optimizer"])
        for f in ("model.safetensors", "optimizer_0.pt", "optimizer_1.pt", "rng_state_0.pth", "rng_state_1.pth"):
            self.assertEqual(sha(os.path.join(a, "checkpoint-60", f)), sha(os.path.join(b, "checkpoint-60", f)), f)
        # Sharding changes where the state lives, not the arithmetic.
        plain = self.save("plain")
        self.assertEqual(sha(os.path.join(a, "model.safetensors")), sha(os.path.join(plain, "model.safetensors")))

    def test_matches_one_process_with_the_same_global_batch(self):
        # Without dropout (each rank draws masks for its own rows), two processes with per-device batch 32 take
        # the steps of one process with batch 64: same examples, same input noise. Only float32 summation order
        # differs (each rank's mean gradient, then the all-reduce, against one mean over 64 rows): relative
        # differences near 1e-7 per step, which AdamW's normalised updates keep at that scale; 1e-5 absolute on
        # weights of order 0.1 after 60 steps leaves a hundredfold margin over what was measured (2e-8).
        args = ["--max-steps", "60", "--save-steps", "60", "--dropout", "0", "--train-examples", "1024", "-q"]
        self.ok(["save", "--output-dir", self.path("two")] + args + TWO + ["--per-device-train-batch-size", "32"])
        self.ok(["save", "--output-dir", self.path("one")] + args + ["--per-device-train-batch-size", "64"])
        two = harness.read_safetensors(self.path("two", "model.safetensors"))[1]
        one = harness.read_safetensors(self.path("one", "model.safetensors"))[1]
        self.assertEqual(sorted(two), sorted(one))
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)
        logs = lambda run: [e["loss"] for e in read_json(self.path(run, "trainer_state.json"))["log_history"] if "loss" in e]
        self.assertEqual(len(logs("two")), 6)
        for x, y in zip(logs("two"), logs("one")):
            self.assertAlmostEqual(x, y, delta=2e-4)

    def test_consolidate_equals_the_unsharded_optimizer_and_loads_in_adamw(self):
        sharded = self.save("sharded", ["--shard-optimizer"])
        plain = self.save("plain")
        out = self.path("consolidated")
        r = self.ok(["convert", os.path.join(sharded, "checkpoint-40"), "--consolidate", "-o", out, "--json"])
        actions = {f["destination"].split("/")[-1]: f["action"] for f in json.loads(r.stdout)["files"]}
        self.assertEqual(actions["optimizer.pt"], "consolidated")
        self.assertEqual(actions["model.safetensors"], "copied")
        self.assertEqual(sorted(os.listdir(out)), ["config.json", "model.safetensors", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth",
                                                  "scheduler.pt", "trainer_state.json", "training_args.bin"])
        # (torch 1.13's weights_only unpickler refuses BINFLOAT, so no optimizer state loads that way there.)
        merged = torch.load(os.path.join(out, "optimizer.pt"))
        reference = torch.load(os.path.join(plain, "checkpoint-40", "optimizer.pt"))
        self.assertEqual(list(merged), ["state", "param_groups"])
        self.assertEqual(list(merged["state"]), list(reference["state"]))
        self.assertEqual(merged["param_groups"], reference["param_groups"])
        for i, s in reference["state"].items():
            for key in ("step", "exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(merged["state"][i][key], s[key], rtol=0, atol=0)
        # Python's AdamW takes it, with parameters shaped as the weights (weights group, then biases).
        weights = harness.read_safetensors(os.path.join(out, "model.safetensors"))[1]
        order = ["hidden.0.weight", "hidden.1.weight", "classifier.weight", "hidden.0.bias", "hidden.1.bias", "classifier.bias"]
        params = [torch.nn.Parameter(weights[n].clone()) for n in order]
        opt = torch.optim.AdamW([{"params": params[:3], "weight_decay": 0.0}, {"params": params[3:], "weight_decay": 0.0}], lr=1e-3)
        opt.load_state_dict(merged)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        self.assertEqual(float(opt.state[params[0]]["step"]), 41.0)
        # The consolidated checkpoint resumes as an unsharded one.
        self.assertEqual(self.run_ckpt(["convert", os.path.join(plain, "checkpoint-40"), "--consolidate", "-o", self.path("x")]).returncode, 2)

    def test_consolidate_refuses_shards_that_do_not_fit(self):
        run = self.save("run", ["--shard-optimizer"])
        ckpt = os.path.join(run, "checkpoint-20")
        shard = torch.load(os.path.join(ckpt, "optimizer_1.pt"))
        shard["shard"]["params"] = [0] + shard["shard"]["params"]  # index 0 is rank 0's
        torch.save(shard, os.path.join(ckpt, "optimizer_1.pt"))
        r = self.run_ckpt(["convert", ckpt, "--consolidate", "-o", self.path("out")])
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("optimizer_1.pt: shard.params: index 0 owned by two shards", r.stderr)
        self.assertFalse(os.path.exists(self.path("out")))
        r = self.run_ckpt(["resume", run, "--from", "checkpoint-20"] + TWO)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("owned by two shards", r.stderr)
        r = self.run_ckpt(["convert", os.path.join(run, "checkpoint-40"), "--consolidate", "--dtype", "bf16", "-o", self.path("out")])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--dtype applies to converted weights", r.stderr)

    def test_another_tools_optimizer_file_is_never_deleted(self):
        # An optimizer_0.pt that ckpt did not write (no shard record): unreadable, not incomplete, so rotate keeps it.
        run = self.save("run")
        for step, foreign in ((20, {"state": {}, "param_groups": []}), (40, [1, 2, 3])):
            torch.save(foreign, os.path.join(run, f"checkpoint-{step}", "optimizer_0.pt"))
        by_name = {e["name"]: e for e in json.loads(self.ok(["list", run, "--json"]).stdout)}
        for name in ("checkpoint-20", "checkpoint-40"):
            self.assertFalse(by_name[name]["complete"])
            self.assertIn("not an optimizer shard written by ckpt", " ".join(by_name[name]["problems"]))
        self.ok(["rotate", run, "--keep", "1", "--stale-after", "0s", "-q"])
        self.assertTrue(os.path.isdir(os.path.join(run, "checkpoint-20")))
        self.assertTrue(os.path.isdir(os.path.join(run, "checkpoint-40")))

    def test_sigterm_stops_every_worker_after_the_step_and_the_launcher_takes_them_along(self):
        run = self.path("run")
        args = [harness.CKPT_BIN, "save", "--output-dir", run, "--max-steps", "100000", "--save-steps", "50", "--train-examples", "1024", "-q"] + TWO
        p = subprocess.Popen(args, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        harness.wait_until(lambda: any(d.startswith("checkpoint-") for d in (os.listdir(run) if os.path.isdir(run) else [])),
                           "checkpoint in " + run, timeout=120, interval=0.1)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 130, err)
        self.assertEqual(err, "")
        for c in (d for d in os.listdir(run) if d.startswith("checkpoint-")):
            self.assertEqual(self.run_ckpt(["inspect", os.path.join(run, c), "--verify"]).returncode, 0, c)
        # A launcher killed outright takes its workers with it.
        p = subprocess.Popen(args[:3] + [run + "2"] + args[4:], env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def two_workers():
            workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            return workers if len(workers) >= 2 else None

        workers = harness.wait_until(two_workers, "two workers started by the launcher", timeout=120, interval=0.1)
        self.assertEqual(len(workers), 2)
        p.kill()
        p.wait()
        harness.wait_until(lambda: not any(alive(w) for w in workers), "end of every worker with its launcher", timeout=30,
                           interval=0.1)

    def test_list_and_inspect_count_shards(self):
        run = self.save("run", ["--shard-optimizer"])
        r = json.loads(self.ok(["inspect", os.path.join(run, "checkpoint-20"), "--json"]).stdout)
        self.assertTrue(r["complete"])
        self.assertEqual(r["world_size"], 2)
        self.assertTrue(r["optimizer_sharded"])
        shard = [f for f in r["files"] if f["file"] == "optimizer_1.pt"][0]
        self.assertEqual(shard["kind"], "optimizer")
        os.remove(os.path.join(run, "checkpoint-20", "optimizer_1.pt"))
        listing = json.loads(self.ok(["list", run, "--json"]).stdout)
        by_name = {e["name"]: e for e in listing}
        self.assertFalse(by_name["checkpoint-20"]["complete"])
        self.assertIn("optimizer_1.pt", " ".join(by_name["checkpoint-20"]["problems"]))
        self.assertTrue(by_name["checkpoint-40"]["complete"])
        # resume without --from skips it for the newest complete one; an incomplete one named is refused.
        r = self.run_ckpt(["resume", run, "--from", "checkpoint-20"] + TWO)
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("optimizer_1.pt", r.stderr)

    def test_resume_with_another_world_size_warns(self):
        run = self.save("run", ["--shard-optimizer"])
        for step in (40, 60):
            shutil.rmtree(os.path.join(run, f"checkpoint-{step}"))
        r = self.run_ckpt(["resume", run, "--from", "checkpoint-20", "--max-steps", "40"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("was saved by 2 process(es) and this run has 1", r.stderr)
        self.assertIn("data order", r.stderr)
        self.assertTrue(os.path.isfile(os.path.join(run, "checkpoint-40", "optimizer.pt")))
        self.assertTrue(os.path.isfile(os.path.join(run, "checkpoint-40", "rng_state.pth")))

    def test_resume_from_an_archive(self):
        # Rank 0 restores the archive into a staging directory and tells the others where; it is gone afterwards.
        a = self.save("a", ["--shard-optimizer"])
        run = self.save("b", ["--shard-optimizer"])
        self.ok(["rotate", run, "--keep", "1", "--archive", "-q"])
        self.assertTrue(os.path.isfile(os.path.join(run, "archive", "checkpoint-20.ckpt")))
        shutil.rmtree(os.path.join(run, "checkpoint-60"))
        # --save-name: rank 0 alone names the final checkpoint (another rank trying too would find the name taken).
        self.ok(["resume", run, "--from", "checkpoint-20", "--save-name", "final"] + TWO + ["-q"])
        self.assertEqual(sha(os.path.join(a, "model.safetensors")), sha(os.path.join(run, "model.safetensors")))
        self.assertEqual(sha(os.path.join(a, "checkpoint-60", "optimizer_1.pt")), sha(os.path.join(run, "checkpoint-60", "optimizer_1.pt")))
        self.assertFalse([d for d in os.listdir(run) if d.startswith(".ckpt-staging-")])
        final = os.path.join(run, "final")
        self.assertEqual(sorted(os.listdir(final)), sorted(os.listdir(os.path.join(run, "checkpoint-60"))))
        self.assertTrue(os.path.samefile(os.path.join(final, "optimizer_1.pt"), os.path.join(run, "checkpoint-60", "optimizer_1.pt")))

    def test_worker_killed_during_a_save(self):
        if not SHIM:
            self.fail("CKPT_FAULT_SHIM is not set")
        a = self.save("a")
        env = clean_env()
        # Rank 1 SIGKILLs itself when it makes its rng state of checkpoint-40 durable.
        env.update(LD_PRELOAD=SHIM, CKPT_FAULT="fsync:2:kill", CKPT_FAULT_MATCH="rng_state_1")
        # The shim is not instrumented; under ASan it comes first in the library list by design.
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
        run = self.path("b")
        r = self.run_ckpt(["save", "--output-dir", run] + RUN + TWO, env=env)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ckpt: error: worker rank 1", r.stderr)
        self.assertIn("killed by signal 9", r.stderr)
        self.assertRegex(r.stderr, r"ckpt: error: rank 0: [^\n]*: rank 1 \(pid \d+\) is gone")
        self.assertEqual(sorted(d for d in os.listdir(run) if not d.startswith(".ckpt.")), ["checkpoint-20"])
        # The next run continues from the last complete checkpoint, as if nothing had happened.
        self.ok(["resume", run] + TWO + ["-q"])
        self.assertEqual(sha(os.path.join(a, "model.safetensors")), sha(os.path.join(run, "model.safetensors")))

    def test_launcher_environment_is_honoured(self):
        # Workers started by another launcher (torchrun's variables) train exactly as ckpt's own launcher does.
        reference = self.save("ours")
        port = str(free_port())
        run = self.path("theirs")
        procs = []
        for rank in (0, 1):
            env = clean_env()
            env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            procs.append(subprocess.Popen([harness.CKPT_BIN, "save", "--output-dir", run] + RUN + ["--json"], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=300) for p in procs]
        self.assertEqual([p.returncode for p in procs], [0, 0], outs)
        self.assertEqual(json.loads(outs[0][0])["global_step"], 60)
        self.assertEqual(outs[1][0], "")  # only rank 0 prints
        self.assertEqual(sha(os.path.join(reference, "model.safetensors")), sha(os.path.join(run, "model.safetensors")))

    def test_ranks_with_different_arguments_are_refused(self):
        port = str(free_port())
        run = self.path("run")
        procs = []
        for rank, lr in ((0, "0.001"), (1, "0.002")):
            env = clean_env()
            env.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            procs.append(subprocess.Popen([harness.CKPT_BIN, "save", "--output-dir", run, "--learning-rate", lr] + RUN, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=300) for p in procs]
        self.assertEqual([p.returncode for p in procs], [2, 2], outs)
        self.assertIn("rank 1: --learning-rate: differs from rank 0's", outs[1][1])
        self.assertIn("rank 1 failed to agree on the arguments", outs[0][1])
        self.assertFalse(os.path.exists(run))  # refused before anything was touched

    def test_port_in_use_and_other_refusals(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = str(busy.getsockname()[1])
            r = self.run_ckpt(["save", "--output-dir", self.path("run")] + RUN + TWO + ["--master-port", port], timeout=120)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("rank 0: 127.0.0.1:" + port + ": cannot serve the rendezvous store (is the port in use?)", r.stderr)
        self.assertIn("worker rank 0", r.stderr)
        r = self.run_ckpt(["save", "--output-dir", self.path("run")] + RUN + TWO + ["--async-save"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--async-save: works in a single process only", r.stderr)
        env = clean_env()
        env.update(RANK="2", WORLD_SIZE="2", MASTER_PORT="1")
        r = self.run_ckpt(["save", "--output-dir", self.path("run")] + RUN, env=env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("RANK: rank 2 is not in a world of 2", r.stderr)
        env.update(RANK="0", WORLD_SIZE="two")
        r = self.run_ckpt(["save", "--output-dir", self.path("run")] + RUN, env=env)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("WORLD_SIZE: 'two' is not a non-negative integer", r.stderr)
        r = self.run_ckpt(["save", "--output-dir", self.path("run")] + RUN + ["--nproc-per-node", "0"])
        self.assertEqual(r.returncode, 2, r.stderr)
        r = self.run_ckpt(["save", "--output-dir", self.path("run")] + RUN + ["--nnodes", "2"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("--master-addr: with --nnodes above 1", r.stderr)


if __name__ == "__main__":
    unittest.main()
