"""The shell ecosystem: man page renders cleanly, completions parse and complete, install lays files out."""
import os
import re
import subprocess
import tempfile
import unittest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CKPT = os.environ.get("CKPT_BIN", os.path.join(ROOT, "build", "ckpt"))


def read_text(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def subcommands():
    out = subprocess.run([CKPT, "--help"], capture_output=True, text=True, check=True).stdout
    section = out.split("Subcommands:", 1)[1]
    return re.findall(r"^\s+([a-z]+)\s", section, re.M)


def zsh_complete(line):
    """The line as an interactive zsh shows it after a TAB (tests/cli/zsh_complete.zsh drives it in a pseudo-terminal)."""
    out = subprocess.run(["zsh", "-f", os.path.join(ROOT, "tests", "cli", "zsh_complete.zsh"), os.path.join(ROOT, "completions"), line],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    return out.replace("\r", "\n").splitlines()[-1] if out.strip() else ""


def bash_complete(line):
    """Runs the bash completion function on `line` (completing its last word) and returns COMPREPLY."""
    words = line.split(" ")
    script = f"""
source /usr/share/bash-completion/bash_completion
source {ROOT}/completions/ckpt.bash
COMP_WORDS=({' '.join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
COMP_POINT={len(line)}
_ckpt
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()


class ManPage(unittest.TestCase):
    def test_renders_without_warnings(self):
        r = subprocess.run(["groff", "-man", "-ww", "-z", os.path.join(ROOT, "man", "ckpt.1")], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertEqual(r.stderr, "")

    def test_mentions_every_subcommand_and_option(self):
        man = read_text("man", "ckpt.1").replace("\\-", "-")
        for sub in subcommands():
            self.assertIn(f".SS {sub}", man)
            help_text = subprocess.run([CKPT, sub, "--help"], capture_output=True, text=True, check=True).stdout
            for option in re.findall(r"(--[a-z][a-z-]*)", help_text):
                self.assertIn(option, man, f"{sub} {option}")


class Completions(unittest.TestCase):
    def test_every_subcommand_in_every_script(self):
        for name in ("ckpt.bash", "_ckpt", "ckpt.fish"):
            text = read_text("completions", name)
            for sub in subcommands():
                self.assertIn(sub, text, f"{name} lacks {sub}")

    def test_bash_completes_subcommands_and_options(self):
        self.assertEqual(bash_complete("ckpt ins"), ["inspect"])
        self.assertEqual(sorted(bash_complete("ckpt ")), ["--help", "--version", "best", "convert", "inspect", "latest", "list", "resume", "rotate", "save"])
        self.assertEqual(sorted(bash_complete("ckpt latest --")), ["--archives", "--help", "--json", "--restore-to", "--verify"])
        self.assertEqual(sorted(bash_complete("ckpt inspect --")), ["--help", "--json", "--summary", "--verify"])

    def test_bash_completes_option_values(self):
        self.assertEqual(sorted(bash_complete("ckpt rotate --sort ")), ["mtime", "step"])
        self.assertEqual(sorted(bash_complete("ckpt best --mode m")), ["max", "min"])
        self.assertIn("--keep-every", bash_complete("ckpt rotate --keep"))
        self.assertEqual(sorted(bash_complete("ckpt convert x --to ")), ["archive", "dir", "pytorch", "safetensors"])
        self.assertIn("--keep-archives", bash_complete("ckpt rotate --keep"))
        self.assertEqual(bash_complete("ckpt rotate --arch"), ["--archive", "--archive-dir"])
        self.assertEqual(bash_complete("ckpt rotate --archive-d"), ["--archive-dir"])
        self.assertEqual(sorted(bash_complete("ckpt convert x --dtype ")), ["bf16", "fp16", "fp32"])

    def test_bash_completes_directories_for_run_commands(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "run1"))
            open(os.path.join(tmp, "run.txt"), "w").close()
            self.assertEqual(bash_complete(f"ckpt list {tmp}/ru"), [f"{tmp}/run1"])

    def test_bash_completes_paths_after_inspect(self):
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "checkpoint-10"))
            self.assertEqual(bash_complete(f"ckpt inspect {tmp}/check"), [f"{tmp}/checkpoint-10"])

    def test_bash_completes_checkpoints_after_from(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("checkpoint-10", "checkpoint-20", "other", "archive"):
                os.mkdir(os.path.join(tmp, name))
            self.assertEqual(sorted(bash_complete(f"ckpt resume {tmp} --from ")), ["checkpoint-10", "checkpoint-20"])
            # Archived checkpoints too: resume restores them by name.
            for name in ("checkpoint-5.ckpt", "notes.txt"):
                open(os.path.join(tmp, "archive", name), "w").close()
            self.assertEqual(sorted(bash_complete(f"ckpt resume {tmp} --from ")), ["checkpoint-10", "checkpoint-20", "checkpoint-5"])
            self.assertEqual(bash_complete(f"ckpt resume --max-steps 100 {tmp} --from checkpoint-2"), ["checkpoint-20"])
            self.assertIn("--save-total-limit", bash_complete("ckpt save --save-total"))
            self.assertEqual(bash_complete("ckpt save --metric-for-best-model eval_a"), ["eval_accuracy"])

    def test_fish_completes_checkpoints_after_from(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("checkpoint-10", "checkpoint-20"):
                os.mkdir(os.path.join(tmp, name))
            script = f"source {ROOT}/completions/ckpt.fish; complete -C 'ckpt resume {tmp} --from '"
            out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
            self.assertEqual(sorted(line.split("\t")[0] for line in out.splitlines()), ["checkpoint-10", "checkpoint-20"])
            os.mkdir(os.path.join(tmp, "archive"))
            open(os.path.join(tmp, "archive", "checkpoint-5.ckpt"), "w").close()
            out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
            self.assertEqual(sorted(line.split("\t")[0] for line in out.splitlines()), ["checkpoint-10", "checkpoint-20", "checkpoint-5"])

    def test_zsh_and_fish_parse(self):
        subprocess.run(["zsh", "-n", os.path.join(ROOT, "completions", "_ckpt")], check=True)
        subprocess.run(["fish", "-n", os.path.join(ROOT, "completions", "ckpt.fish")], check=True)

    def test_zsh_completes(self):
        self.assertEqual(zsh_complete("ckpt conv"), "ckpt convert ")
        self.assertEqual(zsh_complete("ckpt convert x --to arch"), "ckpt convert x --to archive ")
        self.assertEqual(zsh_complete("ckpt convert x --cons"), "ckpt convert x --consolidate ")
        self.assertEqual(zsh_complete("ckpt save --nproc"), "ckpt save --nproc-per-node ")
        self.assertEqual(zsh_complete("ckpt rotate --sort m"), "ckpt rotate --sort mtime ")
        self.assertEqual(zsh_complete("ckpt latest --rest"), "ckpt latest --restore-to ")
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("checkpoint-10", "checkpoint-200"):
                os.mkdir(os.path.join(tmp, name))
            self.assertEqual(zsh_complete(f"ckpt resume {tmp} --from checkpoint-1"), f"ckpt resume {tmp} --from checkpoint-10 ")

    def test_fish_completes(self):
        script = (f"source {ROOT}/completions/ckpt.fish; complete -C 'ckpt ins'; complete -C 'ckpt inspect --v'; "
                  "complete -C 'ckpt rotate --sort '")
        out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
        self.assertIn("inspect", out)
        self.assertIn("--verify", out)
        self.assertIn("mtime", out)
        script = f"source {ROOT}/completions/ckpt.fish; complete -C 'ckpt latest --'"
        out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
        self.assertEqual(sorted(line.split("\t")[0] for line in out.splitlines()), ["--archives", "--json", "--restore-to", "--verify"])


class Install(unittest.TestCase):
    def test_cmake_install_lays_out_files(self):
        build = os.path.dirname(CKPT)
        with tempfile.TemporaryDirectory() as dest:
            subprocess.run(["cmake", "--install", build, "--prefix", "/usr/local"], check=True, capture_output=True,
                           env={**os.environ, "DESTDIR": dest})
            for path in ("usr/local/bin/ckpt", "usr/local/share/man/man1/ckpt.1", "usr/local/lib/ckpt/libckpt_train.so",
                         "usr/local/share/bash-completion/completions/ckpt",
                         "usr/local/share/zsh/site-functions/_ckpt",
                         "usr/local/share/fish/vendor_completions.d/ckpt.fish"):
                self.assertTrue(os.path.exists(os.path.join(dest, path)), path)


if __name__ == "__main__":
    unittest.main()
