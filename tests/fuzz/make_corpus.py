"""Regenerates the seed corpora in tests/fuzz/corpus/<target>/ from real files: the unit-test data, files
torch.save writes here, and the Hugging Face Trainer fixtures. Run with /usr/bin/python3 from anywhere."""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(REPO, "tests", "data")
HF = os.path.join(DATA, "hf-trainer-4.40.2", "run_safetensors", "checkpoint-10")


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pickle_of(path):
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


def main():
    shutil.rmtree(os.path.join(HERE, "corpus"), ignore_errors=True)
    torch_files = {
        "tiny_state_dict": os.path.join(DATA, "tiny_state_dict.pt"),
        "tiny_values": os.path.join(DATA, "tiny_values.pt"),
        "scheduler": os.path.join(HF, "scheduler.pt"),
        "rng_state": os.path.join(HF, "rng_state.pth"),
        "training_args": os.path.join(HF, "training_args.bin"),
    }
    for name, path in torch_files.items():
        put("pickle", name, pickle_of(path))
        put("roundtrip", name, pickle_of(path))
        if os.path.getsize(path) < 16384:
            put("torch_archive", name, open(path, "rb").read())
    ckpt = os.environ.get("CKPT_BIN", os.path.join(REPO, "build", "ckpt"))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "tiny.safetensors")
        subprocess.run([ckpt, "convert", "-q", torch_files["tiny_state_dict"], "--to", "safetensors", "-o", out], check=True)
        put("safetensors", "tiny", open(out, "rb").read())
        out = os.path.join(tmp, "scheduler.safetensors")
        subprocess.run([ckpt, "convert", "-q", torch_files["scheduler"], "--to", "safetensors", "-o", out], check=True)
        put("safetensors", "scheduler", open(out, "rb").read())
        # Archives of small checkpoint directories: torch files (storage planes), safetensors, JSON, an empty file.
        small = os.path.join(tmp, "checkpoint-3")
        os.makedirs(small)
        shutil.copy(torch_files["tiny_state_dict"], small)
        shutil.copy(torch_files["scheduler"], small)
        shutil.copy(os.path.join(HF, "config.json"), small)
        shutil.copy(os.path.join(tmp, "tiny.safetensors"), small)
        open(os.path.join(small, "empty"), "wb").close()
        for level in ("1", "19"):
            out = os.path.join(tmp, "small-%s.ckpt" % level)
            subprocess.run([ckpt, "convert", "-q", small, "--to", "archive", "--level", level, "-o", out], check=True)
            put("archive", "small-level-" + level, open(out, "rb").read())
    fsdp = os.path.join(DATA, "fsdp")
    for name, path in (("model", "checkpoint-5/pytorch_model_fsdp_0/.metadata"),
                       ("optimizer", "checkpoint-5/optimizer_0/.metadata"), ("newer-bf16", "newer-bf16-x2.metadata")):
        put("dcp", name, open(os.path.join(fsdp, path), "rb").read())
    for name in ("trainer_state.json", "config.json"):
        put("json", name, open(os.path.join(HF, name), "rb").read())
    put("json", "nan", b'{"best_metric": NaN, "log_history": [{"loss": Infinity, "step": 1}, {"eval_loss": -Infinity, "step": 2}]}')


if __name__ == "__main__":
    sys.exit(main())
