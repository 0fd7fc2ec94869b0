"""Writes a small run directory laid out as the Hugging Face Trainer lays it out: checkpoint-10 and
checkpoint-20 with pytorch_model.bin, optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json,
training_args.bin and config.json, produced by a real (tiny) torch training loop. Run with /usr/bin/python3."""
import json
import os
import random
import sys

import numpy as np
import torch


def main(run_dir):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / 20))
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    log_history = []
    for step in range(1, 21):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        log_history.append({"epoch": step / 20, "learning_rate": sched.get_last_lr()[0], "loss": round(loss.item(), 4), "step": step})
        if step % 10:
            continue
        eval_loss = torch.nn.functional.cross_entropy(model(x), y).item()
        log_history.append({"epoch": step / 20, "eval_loss": eval_loss, "step": step})
        out = os.path.join(run_dir, f"checkpoint-{step}")
        os.makedirs(out, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(out, "pytorch_model.bin"))
        torch.save(opt.state_dict(), os.path.join(out, "optimizer.pt"))
        torch.save(sched.state_dict(), os.path.join(out, "scheduler.pt"))
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
                   os.path.join(out, "rng_state.pth"))
        torch.save({"output_dir": run_dir, "learning_rate": 1e-3, "save_steps": 10}, os.path.join(out, "training_args.bin"))
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"model_type": "mlp", "hidden_size": 32, "torch_dtype": "float32"}, f, indent=2, sort_keys=True)
        state = {"global_step": step, "epoch": step / 20, "max_steps": 20, "log_history": log_history,
                 "best_metric": None, "best_model_checkpoint": None, "save_steps": 10}
        with open(os.path.join(out, "trainer_state.json"), "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ckpt-demo-run")
