"""Python counterparts of the embedded trainer, written from its documented contracts (src/train/data.hpp,
model.hpp, trainer.cpp's draw order), for the interop tests and the benchmark's Python loop.
"""

import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import read_safetensors  # the safetensors reader written from the format's rules


def make_data(seed, input_size=32, num_labels=4, train_examples=2048, eval_examples=512):
    rs = np.random.RandomState(seed)
    centers = rs.standard_normal((num_labels, input_size))

    def split(n):
        y = np.arange(n) % num_labels
        x = (0.3 * centers[y] + rs.standard_normal((n, input_size))).astype(np.float32)
        return torch.from_numpy(x), torch.from_numpy(y)

    return split(train_examples), split(eval_examples)


class MLP(nn.Module):
    def __init__(self, input_size=32, hidden_size=64, num_layers=2, num_labels=4, dropout=0.0):
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers))
        self.classifier = nn.Linear(hidden_size if num_layers else input_size, num_labels)
        self.dropout = dropout

    def forward(self, x):
        for layer in self.hidden:
            x = F.dropout(F.relu(layer(x)), self.dropout, self.training)
        return self.classifier(x)


def set_seed(seed):
    """transformers.set_seed on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def noisy_batch(x, indices, input_noise):
    noise = (np.random.standard_normal((len(indices), x.shape[1])) * input_noise).astype(np.float32)
    return x[indices] + torch.from_numpy(noise)


def linear_schedule(warmup, total):
    def factor(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    return factor


def make_optimizer(model, lr, weight_decay=0.0):
    """The Trainer's two parameter groups: weights with decay, biases without."""
    names = [n for n, _ in model.named_parameters()]
    decay = [n for n in names if "bias" not in n]
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def train_python(seed=42, max_steps=60, batch_size=32, lr=1e-3, input_noise=0.1, max_grad_norm=1.0, threads=None,
                 **model_args):
    """The trainer's loop in Python (no fp16, no saving); returns the model. Used by the benchmark."""
    if threads:
        torch.set_num_threads(threads)
    set_seed(seed)
    (x, y), _ = make_data(seed, model_args.get("input_size", 32), model_args.get("num_labels", 4))
    model = MLP(**model_args)
    optimizer = make_optimizer(model, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(0, max_steps))
    n = len(y)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    step = 0
    model.train()
    while step < max_steps:
        order = list(range(n))
        random.shuffle(order)
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            loss = F.cross_entropy(model(noisy_batch(x, idx, input_noise)), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            schedule.step()
            model.zero_grad(set_to_none=True)
            step += 1
            if step >= max_steps:
                break
    return model


def load_model(path, **model_args):
    _, tensors = read_safetensors(path)
    model = MLP(**model_args)
    model.load_state_dict(tensors)
    return model
