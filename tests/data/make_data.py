"""Regenerates the small binary fixtures the C++ unit tests read. Run with /usr/bin/python3 (Debian's torch).

tiny_state_dict.pt: a torch.save zip of an OrderedDict state dict with a tied view and a strided view.
tiny_values.pt: a torch.save zip whose pickle holds the non-tensor values the unpickler must interpret.
The expected values the tests assert are printed by this script (python says), so they can be re-checked.
"""
import collections
import sys

import torch

torch.manual_seed(0)
base = torch.arange(12, dtype=torch.float32)
state = collections.OrderedDict()
state["weight"] = base.view(3, 4)
state["weight_t"] = base.view(3, 4).t()           # strided view of the same storage
state["tied"] = state["weight"]                    # the very same view
state["bias"] = torch.tensor([1.5, -2.0], dtype=torch.float64)
state["step"] = torch.tensor(7, dtype=torch.int64)  # 0-d
state["empty"] = torch.zeros(0, 3, dtype=torch.bfloat16)
torch.save(state, "tiny_state_dict.pt")

values = {
    "int_big": 2**70 + 5,
    "int_neg": -(2**40),
    "float": 0.1,
    "bytes": b"\x00\xffab",
    "set": {1},
    "tuple": (1, "two", None, True),
    "device": torch.device("cpu"),
    "dtype_tensor": torch.ones(2, dtype=torch.float16),
}
torch.save(values, "tiny_values.pt")
print("int_big", values["int_big"], file=sys.stderr)
print("int_neg", values["int_neg"], file=sys.stderr)
