#!/usr/bin/python3
"""Writes a Hugging Face Trainer + DeepSpeed ZeRO run directory as DeepSpeed and the Trainer would, without either.

    make_zero_checkpoint.py RUN_DIR --stage {1,2,3} --world-size N --dtype {fp16,bf16} [--reference OUT.pt] ...

RUN_DIR gets one `checkpoint-<step>/` per `--checkpoints` step, each holding `global_step<step>/` (the ZeRO files
of every rank), `latest`, a `zero_to_fp32.py` stand-in, `rng_state[_<rank>].pth`, `scheduler.pt`,
`trainer_state.json`, `training_args.bin`, `config.json` and, when the Trainer would have gathered them,
`model.safetensors`. The run is the Trainer's default with DeepSpeed: a config without "optimizer" and "scheduler"
sections, so the Trainer's torch AdamW and linear LambdaLR are used (with --engine-scheduler the engine saves that
schedule in the model states' `lr_scheduler` and there is no `scheduler.pt`, the layout of a config that gives the
engine the scheduler). `Training.next_gradients()` and `trainer_optimizer()` give a test the next step's gradients
and the Trainer's optimizer, to step an optimizer rebuilt from a checkpoint against the run itself. The layout,
keys, dtypes, flattening, partitioning, alignment and padding follow DeepSpeed's save code as
docs/deepspeed-format.md records it (with the DeepSpeed commits read); nothing here comes from DeepSpeed's code.

The model (embedding tied to the output head, odd-sized linear layers, LayerNorm, BatchNorm buffers, a
non-persistent buffer, a frozen layer, a one-element parameter) is trained for real with torch.optim.AdamW on
fp32 master weights, one tensor per parameter, with seeded gradients; its 16-bit copy is what the model holds.
Flat partitions and their optimizer state are then cut out of those per-parameter tensors, so what DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint` would return is known before any file is written.

DeepSpeed, transformers and accelerate pickle some of their own classes (loss scalers, the ZeRO stage enum,
fragment addresses, TrainingArguments and the DeepSpeed config objects inside it). Stand-ins with the same module
and class names are registered in sys.modules below, so the pickles' GLOBAL opcodes name the real classes, as in
real files; loading these files needs this module imported (or the real packages). Storages are tagged with the
device a real run saves them from ('cuda:<rank>' for most, so torch.load needs map_location='cpu'), and under
stages 1/2 the module's parameters are views into one flat 16-bit buffer per param group, as DeepSpeed leaves them.

--reference OUT.pt consolidates the newest checkpoint from its files (torch.cat of the partitions, narrowing,
padding dropped, frozen parameters, buffers and tied names as zero_to_fp32 rebuilds them), asserts that the
result equals, bit for bit, the state dict taken from the model before anything was partitioned, and saves it.

--damage writes the newest checkpoint damaged: missing-rank (the last rank's optimizer shard gone),
truncated-shard (rank 0's optimizer shard cut in half), latest-missing-tag (`latest` names a tag that is not
there), latest-escape (`latest` holds `../global_step<N>`), sizes-mismatch (rank 0's first flat fp32 group one
element short, so the partitions no longer add up).

Needs only torch (1.13 here) and numpy: run it with /usr/bin/python3.
"""

import argparse
import collections
import dataclasses
import enum
import functools
import os
import re
import stat
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from manage import runs  # noqa: E402  (trainer_state, write_json, safetensors_bytes)
from stand_ins import stand_in as _stand_in  # noqa: E402

DAMAGES = ("missing-rank", "truncated-shard", "latest-missing-tag", "latest-escape", "sizes-mismatch")

# ----------------------------------------------------------------------------------------------------------------
# Stand-ins for the classes DeepSpeed and transformers pickle
# ----------------------------------------------------------------------------------------------------------------


@_stand_in("deepspeed.runtime.fp16.loss_scaler")
class LossScaler:
    """The static scaler: bf16 runs pickle one with cur_scale 1.0. Attributes in DeepSpeed's order."""

    def __init__(self, scale):
        self.cur_scale = scale
        self.dynamic = False


@_stand_in("deepspeed.runtime.fp16.loss_scaler")
class DynamicLossScaler:
    """fp16 runs with loss_scale 0 (dynamic). Attributes in the order DeepSpeed's constructors set them."""

    def __init__(self, init_scale, scale_window, min_scale, delayed_shift, consecutive_hysteresis, cur_iter):
        self.cur_scale = init_scale
        self.dynamic = False
        self.cur_iter = cur_iter
        self.last_overflow_iter = -1
        self.scale_factor = 2.0
        self.scale_window = scale_window
        self.min_scale = min_scale
        self.delayed_shift = delayed_shift
        self.cur_hysteresis = delayed_shift
        self.consecutive_hysteresis = consecutive_hysteresis
        self.raise_error_at_min_scale = True
        self.dynamic = True
        self.dtype = torch.float16


@_stand_in("deepspeed.runtime.zero.config")
class ZeroStageEnum(int, enum.Enum):
    """An int Enum: Python 3.11 pickles a member by name (getattr(ZeroStageEnum, 'gradients')), other Pythons
    by value (ZeroStageEnum(2)); `by_value` below writes the second form."""

    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3
    max_stage = 3


def _reduce_by_value(member, protocol):
    return member.__class__, (member.value,)


@_stand_in("deepspeed.utils.tensor_fragment")
@dataclasses.dataclass
class fragment_address:  # noqa: N801  (DeepSpeed's name)
    numel: int
    start: int


@_stand_in("transformers.integrations.deepspeed")
class HfTrainerDeepSpeedConfig:
    """TrainingArguments.hf_deepspeed_config: the resolved DeepSpeed config, pickled inside training_args.bin.
    Attributes in the order accelerate's HfDeepSpeedConfig and then transformers' subclass set them."""

    def __init__(self, config, dtype):
        self.config = config
        self._stage = config["zero_optimization"]["stage"]
        self._offload = False
        self._dtype = dtype
        self.mismatches = []


@_stand_in("accelerate.utils.dataclasses")
class DeepSpeedPlugin:
    """TrainingArguments.deepspeed_plugin, built from hf_deepspeed_config (a few of its many fields)."""

    def __init__(self, hf_ds_config):
        self.hf_ds_config = hf_ds_config
        self.gradient_accumulation_steps = hf_ds_config.config["gradient_accumulation_steps"]
        self.gradient_clipping = hf_ds_config.config["gradient_clipping"]
        self.zero_stage = hf_ds_config._stage


@_stand_in("transformers.training_args")
class TrainingArguments:
    def __init__(self, **fields):
        self.__dict__.update(fields)


# ----------------------------------------------------------------------------------------------------------------
# The model and its training
# ----------------------------------------------------------------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = torch.nn.Linear(width, width + 3)
        self.norm = torch.nn.LayerNorm(width + 3)
        self.proj = torch.nn.Linear(width + 3, width)


class ZeroTestModel(torch.nn.Module):
    """Parameter sizes are odd on purpose, so that flat groups need alignment and partitions padding."""

    def __init__(self, width, layers, vocab, tied, frozen):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(layers))
        self.bn = torch.nn.BatchNorm1d(width)
        self.register_buffer("position_ids", torch.arange(7), persistent=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor([2.5]))
        if frozen:
            self.frozen = torch.nn.Linear(width, 5)
            self.frozen.requires_grad_(False)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight


LR = 1e-3
TOTAL_STEPS = 1000


@dataclasses.dataclass
class Options:
    stage: int
    world_size: int
    dtype: str
    checkpoints: list
    width: int = 12
    layers: int = 2
    vocab: int = 29
    tied: bool = True
    frozen: bool = True
    param_groups: int = 2
    sub_group_size: int = 1_000_000_000
    gather_16bit: bool = False
    enum_by_value: bool = False
    engine_scheduler: bool = False
    seed: int = 1234
    ds_version: str = "0.19.8"
    micro_batch: int = 4

    @property
    def torch_dtype(self):
        return torch.float16 if self.dtype == "fp16" else torch.bfloat16


class Training:
    """The model trained with AdamW on fp32 master weights, one tensor per parameter, as the truth that the
    partitions are cut from. Param groups as the HF Trainer builds them: weights that decay, then biases and
    LayerNorm weights that do not; with 3 groups the one-element logit_scale gets a group (and lr) of its own."""

    def __init__(self, opts):
        self.opts = opts
        torch.manual_seed(opts.seed)
        self.model = ZeroTestModel(opts.width, opts.layers, opts.vocab, opts.tied, opts.frozen)
        # First name of every parameter object, as DeepSpeed's param_names (named_parameters deduplicates).
        self.names = {id(p): n for n, p in self.model.named_parameters()}
        self.masters = collections.OrderedDict(
            (n, p.detach().clone().float()) for n, p in self.model.named_parameters() if p.requires_grad)
        self.groups = self._param_groups()
        self.optimizer = trainer_optimizer(self.groups, self.masters)
        # Trainer.create_scheduler's linear schedule (a LambdaLR over a functools.partial) on the same optimizer,
        # so that the saved param groups carry initial_lr and the decayed lr, as in a real run.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                          functools.partial(linear_decay, total=TOTAL_STEPS))
        self.generator = torch.Generator().manual_seed(opts.seed + 1)
        self.step = 0

    def _param_groups(self):
        no_decay = set()
        for module_name, module in self.model.named_modules():
            for param_name, _ in module.named_parameters(recurse=False):
                full = module_name + "." + param_name if module_name else param_name
                if isinstance(module, torch.nn.LayerNorm) or param_name == "bias":
                    no_decay.add(full)
        names = list(self.masters)
        own = ["logit_scale"] if self.opts.param_groups == 3 else []
        decay = [n for n in names if n not in no_decay and n not in own]
        rest = [n for n in names if n in no_decay and n not in own]
        if self.opts.param_groups == 1:
            return [(decay + rest, 0.01, LR)]
        groups = [(decay, 0.01, LR), (rest, 0.0, LR)]
        if own:
            groups.append((own, 0.0, LR / 10))
        return groups

    def train_to(self, step):
        while self.step < step:
            for name, gradient in self._gradients(self.generator).items():
                self.masters[name].grad = gradient
            self.optimizer.step()
            self.schedule.step()
            self.step += 1
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if param.requires_grad:
                    param.copy_(self.masters[name])
            self.model.bn.running_mean.copy_(torch.randn(self.opts.width, generator=self.generator))
            self.model.bn.running_var.copy_(torch.rand(self.opts.width, generator=self.generator) + 0.5)
            self.model.bn.num_batches_tracked.fill_(step)

    def _gradients(self, generator):
        return collections.OrderedDict(
            (name, torch.randn(master.shape, generator=generator) * 0.1) for name, master in self.masters.items())

    def next_gradients(self):
        """{name: gradient} of every trainable parameter for the next step, as train_to would draw them, leaving
        the run's generator as it was (a test steps an optimizer rebuilt from the checkpoint with these)."""
        return self._gradients(torch.Generator().set_state(self.generator.get_state()))

    def optimizer_state(self, name):
        """AdamW's state of one parameter: {step, exp_avg, exp_avg_sq}."""
        return self.optimizer.state[self.masters[name]]

    def group_hyperparameters(self):
        """Each param group's hyper-parameters without 'params', as torch's state_dict writes them."""
        return [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.state_dict()["param_groups"]]

    def module_16bit(self):
        """The model as the engine holds it after .half() / .bfloat16(): parameters and floating buffers."""
        return {n: (t.to(self.opts.torch_dtype) if t.is_floating_point() else t.clone())
                for n, t in self.model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# What the engine records about the module
# ----------------------------------------------------------------------------------------------------------------


def persistent_buffer_names(module, prefix=""):
    """engine._get_buffer_names: buffers of each module, then its children, skipping non-persistent ones."""
    names = []
    for name, buf in module.named_buffers(recurse=False):
        if buf is not None and name not in module._non_persistent_buffers_set:
            names.append(prefix + name)
    for name, child in module.named_children():
        names += persistent_buffer_names(child, prefix + name + ".")
    return names


def shared_params(module):
    """engine._get_shared_params: {a later name of a parameter object: the first name it was seen under}."""
    first_name = {}
    shared = {}
    for name, param in every_parameter_name(module):
        if id(param) in first_name:
            shared[name] = first_name[id(param)]
        else:
            first_name[id(param)] = name
    return shared


def every_parameter_name(module):
    """(name, parameter) under every name, tied parameters included (named_parameters drops repeats)."""
    for module_name, owner in module.named_modules():
        for name, param in owner._parameters.items():
            if param is not None:
                yield (module_name + "." + name if module_name else name), param


def frozen_names(training):
    return [training.names[id(p)] for p in training.model.parameters() if not p.requires_grad]


# ----------------------------------------------------------------------------------------------------------------
# Partitioning
# ----------------------------------------------------------------------------------------------------------------


def ceil_to(n, multiple):
    return multiple * ((n + multiple - 1) // multiple)


def stage3_partition(flat_values, rank, world_size, padding_fill):
    """A parameter's ds_tensor on `rank`: ceil(numel / world) elements; the tail past the parameter is whatever
    the allocation held (torch.empty), modelled by `padding_fill`."""
    size = (flat_values.numel() + world_size - 1) // world_size
    part = padding_fill(size).to(flat_values.dtype)
    start = rank * size
    count = max(0, min(size, flat_values.numel() - start))
    part[:count] = flat_values[start:start + count]
    return part


def garbage(generator):
    """Finite, non-zero stand-ins for uninitialised padding, so that nothing may rely on its value."""
    return lambda n: torch.randn(n, generator=generator) * 1000.0


def stage12_rank_files(training, rank):
    """DeepSpeedZeroOptimizer.state_dict() of `rank` for stages 1 and 2."""
    opts = training.opts
    world = opts.world_size
    partitions, states, paddings, mappings = [], {}, [], []
    for g, (names, _, _) in enumerate(training.groups):
        flat = torch.cat([training.masters[n].reshape(-1) for n in names])
        aligned = ceil_to(flat.numel(), 2 * world)
        size = aligned // world
        # DeepSpeedZeroOptimizer.__init__: the part of this rank's partition past the group's end, the whole
        # partition when it starts past the end (a group smaller than world - 1 partitions pads several ranks).
        padding = min(size, max(0, (rank + 1) * size - flat.numel()))

        def cut(values):
            padded = torch.zeros(aligned)
            padded[:values.numel()] = values
            return padded[rank * size:(rank + 1) * size].clone()

        partition = cut(flat)
        # _get_groups_without_padding: a view, so torch.save stores the whole padded partition's storage.
        partitions.append(partition[:size - padding])
        paddings.append(padding)
        step = training.optimizer_state(names[0])["step"]
        states[g] = {"step": step.clone(),
                     "exp_avg": cut(torch.cat([training.optimizer_state(n)["exp_avg"].reshape(-1) for n in names])),
                     "exp_avg_sq": cut(torch.cat([training.optimizer_state(n)["exp_avg_sq"].reshape(-1)
                                                  for n in names]))}
        mapping = collections.OrderedDict()
        offset = 0
        for n in names:
            numel = training.masters[n].numel()
            begin, end = max(offset, rank * size), min(offset + numel, (rank + 1) * size)
            if begin < end:
                mapping[n] = fragment_address(numel=end - begin, start=begin - rank * size)
            offset += numel
        mappings.append(mapping)
    param_groups = training.group_hyperparameters()
    for g, group in enumerate(param_groups):
        group["params"] = [g]
    # A plain dict in this key order, as state_dict() fills it.
    return {
        "loss_scaler": loss_scaler(opts, training.step),
        "dynamic_loss_scale": opts.dtype == "fp16",
        "overflow": False,
        "clip_grad": 1.0,
        "base_optimizer_state": {"state": states, "param_groups": param_groups},
        "single_partition_of_fp32_groups": partitions,
        "zero_stage": zero_stage(opts),
        "group_paddings": paddings,
        "partition_count": [world] * len(training.groups),
        "ds_version": opts.ds_version,
        "param_slice_mappings": mappings,
    }


def stage3_sub_groups(training):
    """Stage 3 splits each param group into sub-groups of about sub_group_size partitioned elements; the list
    of (param group index, names) in order."""
    world = training.opts.world_size
    out = []
    for g, (names, _, _) in enumerate(training.groups):
        partitioned = [(training.masters[n].numel() + world - 1) // world for n in names]
        if training.opts.sub_group_size >= sum(partitioned):
            out.append((g, list(names)))
            continue
        current, count = [], 0
        for i, n in enumerate(names):
            current.append(n)
            count += partitioned[i]
            if count >= training.opts.sub_group_size or i == len(names) - 1:
                out.append((g, current))
                current, count = [], 0
    return out


def stage3_rank_files(training, rank, padding_fill):
    """DeepSpeedZeroOptimizer_Stage3.state_dict() of `rank`."""
    opts = training.opts
    world = opts.world_size
    sub_groups = stage3_sub_groups(training)
    flats, states = [], {}
    zero_fill = lambda n: torch.zeros(n)  # noqa: E731  (Adam moments of padding stay zero: its gradients are)
    for s, (_, names) in enumerate(sub_groups):
        flats.append(torch.cat([stage3_partition(training.masters[n].reshape(-1), rank, world, padding_fill)
                                for n in names]))
        states[s] = {"step": training.optimizer_state(names[0])["step"].clone()}
        for key in ("exp_avg", "exp_avg_sq"):
            states[s][key] = torch.cat([stage3_partition(training.optimizer_state(n)[key].reshape(-1), rank, world,
                                                         zero_fill) for n in names])
    param_groups = training.group_hyperparameters()
    for g, group in enumerate(param_groups):
        group["params"] = [s for s, (owner, _) in enumerate(sub_groups) if owner == g]
    # _rigid_state_dict: a plain dict in this key order.
    return {
        "zero_stage": zero_stage(opts),
        "loss_scaler": loss_scaler(opts, training.step),
        "dynamic_loss_scale": opts.dtype == "fp16",
        "overflow": False,
        "partition_count": world,
        "optimizer_state_dict": {"state": states, "param_groups": param_groups},
        "fp32_flat_groups": flats,
    }


def zero_stage(opts):
    return ZeroStageEnum(opts.stage)


def pickle_enums_by_value(by_value):
    """Python 3.11 pickles enum members by name, others by value; pickle looks __reduce_ex__ up on the class."""
    if by_value:
        ZeroStageEnum.__reduce_ex__ = _reduce_by_value
    elif "__reduce_ex__" in ZeroStageEnum.__dict__:
        del ZeroStageEnum.__reduce_ex__


def loss_scaler(opts, step):
    if opts.dtype == "fp16":
        return DynamicLossScaler(init_scale=2.0 ** 16, scale_window=1000, min_scale=1, delayed_shift=2,
                                 consecutive_hysteresis=False, cur_iter=step)
    return LossScaler(1.0)


# ----------------------------------------------------------------------------------------------------------------
# Writing a checkpoint
# ----------------------------------------------------------------------------------------------------------------


def ds_config(opts):
    """The config dict the Trainer hands to deepspeed.initialize ("auto" values resolved), pickled as ds_config."""
    zero = {"stage": opts.stage, "allgather_partitions": True, "allgather_bucket_size": 2e8, "overlap_comm": True,
            "reduce_scatter": True, "reduce_bucket_size": float(opts.width * opts.width), "contiguous_gradients": True}
    if opts.stage == 3:
        zero.update({"sub_group_size": float(opts.sub_group_size), "stage3_prefetch_bucket_size": 0.9 * opts.width ** 2,
                     "stage3_param_persistence_threshold": 10 * opts.width,
                     "stage3_gather_16bit_weights_on_model_save": opts.gather_16bit})
    return {
        "fp16": {"enabled": opts.dtype == "fp16", "loss_scale": 0, "loss_scale_window": 1000,
                 "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": opts.dtype == "bf16"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "steps_per_print": 2000,
        "train_batch_size": opts.micro_batch * opts.world_size,
        "train_micro_batch_size_per_gpu": opts.micro_batch,
        "wall_clock_breakdown": False,
    }


def trainer_optimizer(groups, tensors):
    """Trainer.create_optimizer's torch AdamW over `tensors` ({name: tensor}) grouped as `groups` ((names,
    weight_decay, lr) each): groups name params and weight_decay, the rest comes from the defaults (the third
    group's own lr stands for a user's custom group)."""
    return torch.optim.AdamW(
        [dict({"params": [tensors[n] for n in names], "weight_decay": wd}, **({} if lr == LR else {"lr": lr}))
         for names, wd, lr in groups], lr=LR, betas=(0.9, 0.999), eps=1e-8)


def linear_decay(step, total):
    return max(0.0, (total - step) / total)


def model_states(training, rank, module, padding_fill):
    """engine._save_checkpoint's dict for `rank` (stages 1/2 write only rank 0's)."""
    opts = training.opts
    zero3 = opts.stage == 3
    frozen = frozen_names(training)
    by_name = dict(training.model.named_parameters())
    if zero3:
        param_shapes = [collections.OrderedDict((n, training.masters[n].shape) for n in names)
                        for _, names in stage3_sub_groups(training)]
    else:
        param_shapes = [collections.OrderedDict((n, training.masters[n].shape) for n in names)
                        for names, _, _ in training.groups]
    save_frozen = opts.stage >= 2
    if zero3:
        fragments = collections.OrderedDict(
            (n, stage3_partition(by_name[n].detach().reshape(-1).to(opts.torch_dtype), rank, opts.world_size,
                                 padding_fill)) for n in frozen)
    else:
        fragments = collections.OrderedDict((n, by_name[n].detach().to(opts.torch_dtype)) for n in frozen)
    # engine._save_checkpoint builds a plain dict(...) in this key order.
    return {
        "module": module,
        "buffer_names": persistent_buffer_names(training.model),
        "optimizer": None,
        "param_shapes": param_shapes,
        "frozen_param_shapes": collections.OrderedDict((n, by_name[n].shape) for n in frozen) if save_frozen
        else None,
        # Computed on global rank 0 only: the other ranks' files hold {}.
        "shared_params": shared_params(training.model) if rank == 0 else {},
        "frozen_param_fragments": fragments if save_frozen else None,
        # The Trainer's own LambdaLR is not one of DeepSpeed's schedulers, so accelerate does not hand it to
        # deepspeed.initialize: the engine has none, and the Trainer writes scheduler.pt itself. With
        # engine_scheduler the engine owns the schedule (a DeepSpeed config with an optimizer section) and saves it.
        "lr_scheduler": training.schedule.state_dict() if opts.engine_scheduler else None,
        "data_sampler": None,
        "random_ltd": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": training.step,
        "global_samples": training.step * opts.micro_batch * opts.world_size,
        "dp_world_size": opts.world_size,
        "mp_world_size": 1,
        "ds_config": ds_config(opts),
        "ds_version": opts.ds_version,
    }


def module_state(training):
    """engine.module_state_dict(): the 16-bit model; under stage 3 every parameter is an empty placeholder
    (free_param leaves torch.empty(0)), tied names sharing one."""
    module = training.module_16bit()
    if training.opts.stage == 3:
        placeholders = {}
        for name, param in every_parameter_name(training.model):
            placeholders.setdefault(id(param), torch.empty(0, dtype=training.opts.torch_dtype))
            module[name] = placeholders[id(param)]
    else:
        # DeepSpeedZeroOptimizer points every trainable parameter into its group's flat 16-bit buffer (aligned to
        # 2 x world, zero padded): the module's entries are views with storage offsets into one storage per
        # group, and tied names share the view. Frozen parameters and buffers keep storages of their own.
        views = {}
        for names, _, _ in training.groups:
            numel = sum(training.masters[n].numel() for n in names)
            flat = torch.zeros(ceil_to(numel, 2 * training.opts.world_size), dtype=training.opts.torch_dtype)
            offset = 0
            for n in names:
                count = training.masters[n].numel()
                flat[offset:offset + count] = module[n].reshape(-1)
                views[n] = flat[offset:offset + count].view(training.masters[n].shape)
                offset += count
        for name, param in every_parameter_name(training.model):
            first = training.names[id(param)]
            if first in views:
                module[name] = views[first]
            else:
                module[name] = module[first]
    return collections.OrderedDict((n, module[n]) for n in training.model.state_dict())


def cpu_resident_storages(saved):
    """The storages that a real run holds in host memory when it saves `saved` (an optim_states or model_states
    dict): the optimizers' step counters (torch's AdamW keeps them on the CPU) and the frozen fragments
    (engine._get_param_fragment_func copies them with .cpu()). Everything else lives on the rank's GPU."""
    out = set()
    zero = saved.get("optimizer_state_dict")
    if zero is not None:
        base = zero.get("base_optimizer_state") or zero.get("optimizer_state_dict")
        out |= {state["step"].storage().data_ptr() for state in base["state"].values()}
    out |= {t.storage().data_ptr() for t in (saved.get("frozen_param_fragments") or {}).values()}
    return out


def save_from_gpu(saved, path, rank):
    """torch.save as rank `rank` of a one-node run would: storages on its GPU are tagged 'cuda:<rank>' in the
    pickle (torch.load needs map_location without CUDA), host-memory ones 'cpu'."""
    on_cpu = cpu_resident_storages(saved)
    original = torch.serialization.location_tag

    def location(storage):
        return original(storage) if storage.data_ptr() in on_cpu else "cuda:%d" % rank

    torch.serialization.location_tag = location
    try:
        torch.save(saved, path)
    finally:
        torch.serialization.location_tag = original


def optim_file_name(opts, rank):
    return "%szero_pp_rank_%d_mp_rank_00_optim_states.pt" % ("bf16_" if opts.dtype == "bf16" else "", rank)


def model_file_name(opts, rank):
    return "zero_pp_rank_%d_mp_rank_00_model_states.pt" % rank if opts.stage == 3 else "mp_rank_00_model_states.pt"


def write_checkpoint(run_dir, training):
    opts = training.opts
    step = training.step
    checkpoint = os.path.join(run_dir, "checkpoint-%d" % step)
    tag = "global_step%d" % step
    tag_dir = os.path.join(checkpoint, tag)
    os.makedirs(tag_dir)
    module = module_state(training)
    padding = torch.Generator().manual_seed(opts.seed + 7 + step)
    for rank in range(opts.world_size):
        if opts.stage == 3 or rank == 0:
            save_from_gpu(model_states(training, rank, module, garbage(padding)),
                          os.path.join(tag_dir, model_file_name(opts, rank)), rank)
        optimizer = (stage3_rank_files(training, rank, garbage(padding)) if opts.stage == 3
                     else stage12_rank_files(training, rank))
        save_from_gpu({"optimizer_state_dict": optimizer, "ds_config": ds_config(opts), "ds_version": opts.ds_version},
                      os.path.join(tag_dir, optim_file_name(opts, rank)), rank)
    with open(os.path.join(checkpoint, "latest"), "w") as f:
        f.write(tag)
    script = os.path.join(checkpoint, "zero_to_fp32.py")
    with open(script, "w") as f:
        f.write("#!/usr/bin/env python\n# Stand-in for DeepSpeed's deepspeed/utils/zero_to_fp32.py, which the engine "
                "copies here (rank 0, mode +x).\n# ckpt never runs it.\n")
    os.chmod(script, os.stat(script).st_mode | stat.S_IEXEC)
    write_hf_files(checkpoint, training, module)
    return checkpoint


def write_hf_files(checkpoint, training, module):
    """What the Trainer writes beside DeepSpeed's files: weights (when gathered), config, RNG states, the
    scheduler, state, arguments. No optimizer.pt: the engine saved the optimizer."""
    opts = training.opts
    if opts.stage < 3 or opts.gather_16bit:
        # save_pretrained keeps one name of tied weights: the first.
        values = training.module_16bit()
        tensors = {}
        seen = set()
        for name, tensor in module.items():
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors[name] = safetensors_entry(values[name])
        with open(os.path.join(checkpoint, "model.safetensors"), "wb") as f:
            f.write(runs.safetensors_bytes(tensors, {"format": "pt"}))
    runs.write_json(os.path.join(checkpoint, "config.json"), {
        "architectures": ["ZeroTestModel"], "model_type": "zero-test", "width": opts.width, "layers": opts.layers,
        "vocab_size": opts.vocab, "tie_word_embeddings": opts.tied,
        "torch_dtype": "float16" if opts.dtype == "fp16" else "bfloat16"})
    for rank in range(opts.world_size):
        name = "rng_state.pth" if opts.world_size == 1 else "rng_state_%d.pth" % rank
        torch.save(runs.hf_rng_state(opts.seed + rank + training.step), os.path.join(checkpoint, name))
    # Trainer._save_optimizer_and_scheduler: a scheduler that is not the engine's (see model_states) is saved.
    if not opts.engine_scheduler:
        torch.save(training.schedule.state_dict(), os.path.join(checkpoint, "scheduler.pt"))
    runs.write_json(os.path.join(checkpoint, "trainer_state.json"), runs.trainer_state(training.step))
    hf_config = HfTrainerDeepSpeedConfig(ds_config(opts), opts.torch_dtype)
    torch.save(TrainingArguments(
        output_dir=os.path.dirname(checkpoint), per_device_train_batch_size=opts.micro_batch, learning_rate=LR,
        weight_decay=0.01, max_grad_norm=1.0, max_steps=TOTAL_STEPS, save_steps=max(opts.checkpoints[0], 1),
        save_total_limit=None, fp16=opts.dtype == "fp16", bf16=opts.dtype == "bf16", deepspeed="ds_config.json",
        seed=opts.seed, local_rank=0, hf_deepspeed_config=hf_config, deepspeed_plugin=DeepSpeedPlugin(hf_config)),
        os.path.join(checkpoint, "training_args.bin"))


_SAFETENSORS_DTYPE = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}
_SAME_WIDTH_INT = {torch.float16: torch.int16, torch.bfloat16: torch.int16}


def safetensors_entry(tensor):
    raw = tensor.contiguous()
    if raw.dtype in _SAME_WIDTH_INT:
        raw = raw.view(_SAME_WIDTH_INT[raw.dtype])
    return (_SAFETENSORS_DTYPE[tensor.dtype], list(tensor.shape), raw.numpy().tobytes())


# ----------------------------------------------------------------------------------------------------------------
# Damage
# ----------------------------------------------------------------------------------------------------------------


def damage(checkpoint, opts, kind):
    step = int(os.path.basename(checkpoint).rpartition("-")[2])
    tag_dir = os.path.join(checkpoint, "global_step%d" % step)
    if kind == "missing-rank":
        os.remove(os.path.join(tag_dir, optim_file_name(opts, opts.world_size - 1)))
    elif kind == "truncated-shard":
        path = os.path.join(tag_dir, optim_file_name(opts, 0))
        os.truncate(path, os.path.getsize(path) // 2)
    elif kind == "latest-missing-tag":
        with open(os.path.join(checkpoint, "latest"), "w") as f:
            f.write("global_step%d" % (step + 1))
    elif kind == "latest-escape":
        with open(os.path.join(checkpoint, "latest"), "w") as f:
            f.write("../global_step%d" % step)
    elif kind == "sizes-mismatch":
        path = os.path.join(tag_dir, optim_file_name(opts, 0))
        saved = torch.load(path, map_location="cpu")
        key = "fp32_flat_groups" if opts.stage == 3 else "single_partition_of_fp32_groups"
        groups = saved["optimizer_state_dict"][key]
        groups[0] = groups[0][:-1].clone()
        save_from_gpu(saved, path, 0)
    else:
        raise ValueError(kind)


# ----------------------------------------------------------------------------------------------------------------
# The reference: consolidation from the files, checked against the model
# ----------------------------------------------------------------------------------------------------------------


def consolidate(checkpoint):
    """The state dict get_fp32_state_dict_from_zero_checkpoint returns for `checkpoint`, rebuilt from its files:
    buffers (as float32), frozen parameters (stage >= 2, in their 16-bit dtype), trainable fp32 master weights,
    then tied names aliasing the tensor they share."""
    with open(os.path.join(checkpoint, "latest")) as f:
        tag_dir = os.path.join(checkpoint, f.read().strip())
    names = sorted(os.listdir(tag_dir), key=natural_key)
    optim = [torch.load(os.path.join(tag_dir, n), map_location="cpu") for n in names if n.endswith("_optim_states.pt")]
    model = [torch.load(os.path.join(tag_dir, n), map_location="cpu") for n in names if n.endswith("_model_states.pt")]
    zero = optim[0]["optimizer_state_dict"]
    stage = int(zero["zero_stage"])
    world = max(zero["partition_count"]) if isinstance(zero["partition_count"], list) else zero["partition_count"]
    assert world == len(optim), "%d optimizer shards for a partition count of %d" % (len(optim), world)
    out = collections.OrderedDict()
    first = model[0]
    # parse_model_states: the module's entries named in buffer_names, in the module's order, all as float32
    # (num_batches_tracked too).
    for name, tensor in first["module"].items():
        if name in first["buffer_names"]:
            out[name] = tensor.float()
    for name, shape in (first["frozen_param_shapes"] or {}).items():
        if stage <= 2:
            out[name] = first["frozen_param_fragments"][name]
        else:
            pieces = torch.cat([m["frozen_param_fragments"][name] for m in model])
            out[name] = pieces[:shape.numel()].view(shape)
    if stage <= 2:
        for g, shapes in enumerate(first["param_shapes"]):
            flat = torch.cat([o["optimizer_state_dict"]["single_partition_of_fp32_groups"][g] for o in optim])
            offset = 0
            for name, shape in shapes.items():
                out[name] = flat[offset:offset + shape.numel()].view(shape)
                offset += shape.numel()
            assert ceil_to(offset, 2 * world) == ceil_to(flat.numel(), 2 * world), "group %d does not add up" % g
    else:
        flats = [torch.cat(o["optimizer_state_dict"]["fp32_flat_groups"]) for o in optim]
        offset = 0
        for shapes in first["param_shapes"]:
            for name, shape in shapes.items():
                size = (shape.numel() + world - 1) // world
                out[name] = torch.cat([f[offset:offset + size] for f in flats])[:shape.numel()].view(shape)
                offset += size
        assert offset == flats[0].numel(), "partitions hold %d elements, parameters %d" % (flats[0].numel(), offset)
    for alias, target in first["shared_params"].items():
        if target in out:
            out[alias] = out[target]
    return out


def natural_key(text):
    """zero_to_fp32's file order: rank 10 after rank 9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expected_state_dict(training):
    """The same dict taken from the model and its fp32 masters, before anything was partitioned."""
    opts = training.opts
    module = training.module_16bit()
    out = collections.OrderedDict()
    for name in persistent_buffer_names(training.model):
        out[name] = module[name].float()
    if opts.stage >= 2:
        for name in frozen_names(training):
            out[name] = module[name]
    for names, _, _ in (training.groups if opts.stage < 3 else [(n, 0, 0) for _, n in stage3_sub_groups(training)]):
        for name in names:
            out[name] = training.masters[name]
    for alias, target in shared_params(training.model).items():
        if target in out:
            out[alias] = out[target]
    return out


def assert_same(actual, expected):
    assert list(actual) == list(expected), "names differ: %s against %s" % (list(actual), list(expected))
    for name, tensor in expected.items():
        got = actual[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, "%s: %s %s against %s %s" % (
            name, got.dtype, tuple(got.shape), tensor.dtype, tuple(tensor.shape))
        assert torch.equal(raw_bytes(got), raw_bytes(tensor)), name + " differs"


def raw_bytes(tensor):
    """The tensor's elements as bytes, so that equality is bit for bit (-0.0 is not 0.0, NaN equals itself)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--world-size", type=int, choices=range(1, 65), metavar="1..64", required=True)
    p.add_argument("--dtype", choices=("fp16", "bf16"), required=True)
    p.add_argument("--checkpoints", default="5", help="comma-separated steps, one checkpoint-<step> each (5)")
    p.add_argument("--width", type=int, default=12)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=29)
    p.add_argument("--no-tied", dest="tied", action="store_false", help="head.weight not tied to embed.weight")
    p.add_argument("--no-frozen", dest="frozen", action="store_false", help="no frozen layer")
    p.add_argument("--param-groups", type=int, choices=(1, 2, 3), default=2,
                   help="1: one group; 2: decay / no decay, as the Trainer (default); 3: plus logit_scale alone")
    p.add_argument("--sub-group-size", type=int, default=1_000_000_000,
                   help="stage 3: partitioned elements per optimizer sub-group (DeepSpeed's default 1e9)")
    p.add_argument("--gather-16bit", action="store_true",
                   help="stage 3: stage3_gather_16bit_weights_on_model_save, so the Trainer writes model.safetensors")
    p.add_argument("--enum-by-value", action="store_true",
                   help="pickle zero_stage as ZeroStageEnum(2) (Pythons other than 3.11) instead of by name")
    p.add_argument("--engine-scheduler", action="store_true",
                   help="the engine owns the schedule: its state in the model states' lr_scheduler, no scheduler.pt")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--ds-version", default="0.19.8")
    p.add_argument("--damage", choices=DAMAGES, help="damage the newest checkpoint this way")
    p.add_argument("--reference", metavar="OUT.pt",
                   help="write the consolidated fp32 state dict of the newest checkpoint")
    args = p.parse_args(argv)
    steps = sorted({int(s) for s in args.checkpoints.split(",")})
    if not steps or steps[0] < 1:
        p.error("--checkpoints: steps are positive integers")
    opts = Options(stage=args.stage, world_size=args.world_size, dtype=args.dtype, checkpoints=steps, width=args.width,
                   layers=args.layers, vocab=args.vocab, tied=args.tied, frozen=args.frozen,
                   param_groups=args.param_groups, sub_group_size=args.sub_group_size, gather_16bit=args.gather_16bit,
                   enum_by_value=args.enum_by_value, engine_scheduler=args.engine_scheduler, seed=args.seed, ds_version=args.ds_version)
    return args, opts


def build(run_dir, opts, damage_kind=None, reference=None):
    """Writes the run; returns (the Training at the newest step, the newest checkpoint's path)."""
    os.makedirs(run_dir, exist_ok=True)
    pickle_enums_by_value(opts.enum_by_value)
    training = Training(opts)
    checkpoint = None
    for step in opts.checkpoints:
        training.train_to(step)
        checkpoint = write_checkpoint(run_dir, training)
    if reference:
        consolidated = consolidate(checkpoint)
        assert_same(consolidated, expected_state_dict(training))
        torch.save(consolidated, reference)
    if damage_kind:
        damage(checkpoint, opts, damage_kind)
    return training, checkpoint


def main(argv=None):
    args, opts = parse(sys.argv[1:] if argv is None else argv)
    build(args.run_dir, opts, args.damage, args.reference)


if __name__ == "__main__":
    main()
