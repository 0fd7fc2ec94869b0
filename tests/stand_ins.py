"""Stand-ins for the classes other packages pickle into checkpoints (DeepSpeed, transformers, torch 2.x's
torch.distributed.checkpoint), for the fixture generators in tests/deepspeed and tests/fsdp: a class decorated
with stand_in("pkg.module") pickles as `pkg.module <its name>`, as the real class would, without the package."""
import sys
import types


def _module(name):
    """sys.modules[name], created empty with its parent packages when absent (pickle imports the whole path)."""
    if name not in sys.modules:
        sys.modules[name] = types.ModuleType(name)
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(_module(parent), child, sys.modules[name])
    return sys.modules[name]


def stand_in(module_name):
    """Class decorator: the class pickles as `module_name.<its name>`."""
    def register(cls):
        cls.__module__ = module_name
        setattr(_module(module_name), cls.__name__, cls)
        return cls
    return register
