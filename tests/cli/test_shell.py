"""The shell ecosystem: man page renders cleanly, completions parse and complete, install lays files out."""
import os
import re
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import harness  # noqa: E402
from harness import ckpt_ok  # noqa: E402

ROOT = harness.REPO


def read_text(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def subcommands():
    out = ckpt_ok(None, "--help").stdout
    section = out.split("Subcommands:", 1)[1]
    return re.findall(r"^\s+([a-z]+)\s", section, re.M)


def help_options(sub):
    """{option: (takes_value, description)} from `ckpt SUB --help`, each long option and -o, -q, -v on its own."""
    out = ckpt_ok(None, sub, "--help").stdout
    options = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^  (-\S+)(?: ([A-Z]+(?::\S+)?(?: in \[[^]]*\])?)(?= |$))?(?: REQUIRED)?(?: +(.*))?$", line)
        if m:
            takes_value = m.group(2) is not None
            current = [takes_value, m.group(3) or ""]
            for name in m.group(1).split(","):
                options[name] = current
        elif current is not None and line.startswith("      ") and line.strip():
            current[1] += " " + line.strip()
        else:
            current = None
    return {name: tuple(v) for name, v in options.items()}


def groff_text(text):
    """Man page source as the reader sees it: font escapes and quotes gone, \\- as -, macro names dropped."""
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\(aq", "'").replace("\\(dq", '"')
    text = text.replace("\\(mu", "x").replace("\\e", "\\")
    words = []
    for line in text.splitlines():
        if line.startswith("."):
            macro, _, rest = line.partition(" ")
            args = re.findall(r'"([^"]*)"|(\S+)', rest)
            joined = [a or b for a, b in args]
            # .BR/.BI/.RB... alternate fonts without spaces between their arguments; .B, .I join them with spaces.
            words.append(("".join(joined) if len(macro) == 3 else " ".join(joined)))
        else:
            words.append(line)
    return " ".join(w for w in words if w).strip()


def man_options():
    """{subcommand: {option: (takes_value, description)}} from the .TP entries of each SUBCOMMANDS section."""
    man = read_text("man", "ckpt.1")
    sections = re.split(r"^\.SS (\w+)\n", man.split(".SH SUBCOMMANDS", 1)[1].split("\n.SH ", 1)[0], flags=re.M)
    result = {}
    for name, body in zip(sections[1::2], sections[2::2]):
        options = {}
        for entry in body.split(".TP\n")[1:]:
            tag, _, description = entry.partition("\n")
            description = groff_text(re.split(r"^\.(?:PP|SS)", description, flags=re.M)[0])
            items = [item.split() for item in groff_text(tag).split(", ")]
            for i, words in enumerate(items):
                if words and words[0].startswith("-"):
                    # A short name shares the value of the long one after it: "-o, --output dst".
                    takes_value = len(words) > 1 or (len(words[0]) == 2 and i + 1 < len(items) and len(items[i + 1]) > 1)
                    options[words[0]] = (takes_value, description)
        result[name] = options
    return result


SAVE_ONLY = ("--output-dir", "--overwrite-output-dir", "--resume-if-exists")


def man_entries(man, sub):
    """The man page's options of `sub`: its own entries, and for resume the training options of save, which its
    section refers to ("The training options are those of save, except the three about the output directory")."""
    entries = dict(man[sub])
    if sub == "resume":
        entries.update({o: v for o, v in man["save"].items() if o not in SAVE_ONLY and o not in entries})
    return entries


def described_as(sub, option, man):
    """The man page's description of `option` of `sub`, following "as for SUB" references."""
    description = man_entries(man, sub)[option][1]
    m = re.match(r"(?i)(?:.*, )?as for (\w+)", description)
    if m and m.group(1) in man and option in man[m.group(1)] and m.group(1) != sub:
        return described_as(m.group(1), option, man)
    return description


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
            help_text = ckpt_ok(self, sub, "--help").stdout
            for option in re.findall(r"(--[a-z][a-z-]*)", help_text):
                self.assertIn(option, man, f"{sub} {option}")


class HelpAndManAgree(unittest.TestCase):
    """--help and the man page describe the same options, taking a value or not alike, with the same defaults."""

    def test_each_default_is_stated_once_in_one_form(self):
        for sub in subcommands():
            for option, (_, description) in help_options(sub).items():
                with self.subTest(sub=sub, option=option):
                    self.assertLessEqual(description.lower().count("default"), 1, description)
                    if "default" in description:
                        self.assertRegex(description, r"\[default: [^]]+\]$")

    def test_options_are_plain_names(self):
        for sub in subcommands():
            out = ckpt_ok(None, sub, "--help").stdout
            self.assertNotRegex(out, r"\n  -[^ \n]*[{}]", sub)

    def test_same_options_taking_a_value_alike(self):
        man = man_options()
        for sub in subcommands():
            help = {o: v for o, v in help_options(sub).items() if o not in ("-h", "--help")}
            documented = man_entries(man, sub)
            with self.subTest(sub=sub):
                self.assertEqual(sorted(documented), sorted(help))
                for option, (takes_value, _) in help.items():
                    self.assertEqual(documented[option][0], takes_value, option)

    def test_man_states_the_defaults_of_help(self):
        man = man_options()
        for sub in subcommands():
            documented = man_entries(man, sub)
            for option, (_, description) in help_options(sub).items():
                if option not in documented:
                    continue
                shown = re.search(r"\[default: ([^]]+)\]", description)
                own = man[sub].get(option)  # resume's entries from save state save's defaults
                stated = own and re.search(r"\[default: ([^]]+)\]", " ".join(own[1].split()))
                with self.subTest(sub=sub, option=option):
                    if shown and shown.group(1) != "the checkpoint's":  # resume's; its man section says so once
                        self.assertRegex(" ".join(described_as(sub, option, man).split()), r"[Dd]efault:? " + re.escape(shown.group(1)))
                    if stated:
                        self.assertEqual(shown and shown.group(1), stated.group(1))

    def test_readme_and_examples_use_options_of_their_subcommand(self):
        """The README's table and examples and the man page's EXAMPLES name only options --help lists."""
        readme = read_text("README.md")
        examples = read_text("man", "ckpt.1").split(".SH EXAMPLES", 1)[1].replace("\\-", "-").replace("\\e\n", " ")
        uses = re.findall(r"^\| `ckpt (\w+)(.*)$", readme, re.M) + re.findall(r"^\s*\$ ckpt (\w+)([^#\n]*)", readme, re.M)
        uses += re.findall(r"(?:^|\* )ckpt (\w+)(.*)$", examples, re.M)
        self.assertGreater(len(uses), 20)
        known = {sub: set(help_options(sub)) for sub in subcommands()}
        for sub, text in uses:
            with self.subTest(sub=sub, text=text[:60]):
                self.assertIn(sub, known)
                self.assertEqual(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text)) - known[sub], set())

    def test_training_options_are_described_in_their_help_words(self):
        """The man page's entries of the trainer's flags say what --help says (it may say more)."""
        man = man_options()
        words = lambda text: set(re.findall(r"[a-z0-9]+", text.lower()))
        for option, (_, description) in help_options("save").items():
            if option in ("-h", "--help"):
                continue
            with self.subTest(option=option):
                self.assertEqual(words(description) - words(man["save"][option][1]), set())


def bash_options():
    """({subcommand: options offered}, options after which bash completes a value) from completions/ckpt.bash."""
    text = read_text("completions", "ckpt.bash").replace("\\\n", " ")
    lists = dict(re.findall(r"^\s*local (\w+)=\"([^\"]*)\"", text, re.M))
    offered = {}
    for sub, value in re.findall(r"^\s*(\w+)\) options=\"([^\"]*)\"", text, re.M):
        offered[sub] = set(re.sub(r"\$(\w+)", lambda m: lists.get(m.group(1), ""), value).split())
    prev_block = text.split("case $prev in", 1)[1].split("\n  esac", 1)[0]
    taking_value = set()
    for pattern in re.findall(r"^\s*([-a-z0-9| ]+)\)", prev_block, re.M):
        taking_value.update(p.strip() for p in pattern.split("|"))
    return offered, taking_value


def zsh_options():
    """{subcommand: {option: takes_value}} from completions/_ckpt; both names of a `{-q,--quiet}` spec."""
    text = read_text("completions", "_ckpt")
    arrays = {name: body for name, body in re.findall(r"^\s*(\w+)=\(\n(.*?)^\s*\)", text, re.M | re.S)}
    spec = re.compile(r"(?:\{([-a-z0-9,]+)\}|(--?[a-z][-a-z0-9]*))'?\[[^]]*\](:?)")
    result = {}
    for sub, body in re.findall(r"^\s{8}(\w+)\)\n(.*?);;", text, re.M | re.S):
        body = re.sub(r"\$(\w+)", lambda m: arrays.get(m.group(1), ""), body)
        result[sub] = {name: bool(colon) for names, name_alone, colon in spec.findall(body)
                       for name in (names.split(",") if names else [name_alone])}
    return result


def fish_options():
    """{subcommand: {option: takes_value}} from completions/ckpt.fish."""
    text = read_text("completions", "ckpt.fish")
    variables = dict((name, value) for name, value in re.findall(r"^set -l (\w+) (.*)$", text, re.M))
    text = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), text)
    result = {}
    for line in text.splitlines():
        m = re.match(r'complete -c ckpt -n "__fish_seen_subcommand_from ([a-z ]+)"(.*)', line)
        if not m:
            continue
        names = ["--" + n for n in re.findall(r" -l (\S+)", m.group(2))] + ["-" + n for n in re.findall(r" -s (\S+)", m.group(2))]
        takes_value = bool(re.search(r" -[xr]( |$)", m.group(2)))
        for sub in m.group(1).split():
            for name in names:
                result.setdefault(sub, {})[name] = takes_value
    return result


class Completions(unittest.TestCase):
    def test_every_option_of_every_subcommand_alike_in_each_script(self):
        bash_offered, bash_taking_value = bash_options()
        zsh, fish = zsh_options(), fish_options()
        self.assertEqual(sorted(subcommands()), ["best", "convert", "diff", "inspect", "latest", "list", "resume", "rotate", "save", "tag"])
        for sub in subcommands():
            help = {o: v[0] for o, v in help_options(sub).items() if o.startswith("--")}
            # Short names (-o, -q, -v) as zsh and fish offer them beside the long ones; bash offers long names only.
            short = {o: v[0] for o, v in help_options(sub).items() if not o.startswith("--") and o != "-h"}
            with self.subTest(sub=sub):
                self.assertEqual({o: v for o, v in zsh[sub].items() if not o.startswith("--")}, short, "zsh")
                self.assertEqual({o: v for o, v in fish[sub].items() if not o.startswith("--")}, short, "fish")
                self.assertEqual(sorted(bash_offered[sub]), sorted(help), "bash")
                for option, takes_value in help.items():
                    self.assertEqual(option in bash_taking_value, takes_value, "bash " + option)
                self.assertEqual(sorted(o for o in zsh[sub] if o.startswith("--")), sorted(help), "zsh")
                self.assertEqual({o: v for o, v in zsh[sub].items() if o.startswith("--")}, help, "zsh")
                self.assertEqual(sorted(o for o in fish[sub] if o.startswith("--")), sorted(help), "fish")
                self.assertEqual({o: v for o, v in fish[sub].items() if o.startswith("--")}, help, "fish")

    def test_every_subcommand_in_every_script(self):
        for name in ("ckpt.bash", "_ckpt", "ckpt.fish"):
            text = read_text("completions", name)
            for sub in subcommands():
                self.assertIn(sub, text, f"{name} lacks {sub}")

    def test_bash_completes_subcommands_and_options(self):
        self.assertEqual(bash_complete("ckpt ins"), ["inspect"])
        self.assertEqual(sorted(bash_complete("ckpt ")), ["--help", "--version", "best", "convert", "diff", "help", "inspect", "latest", "list", "resume", "rotate", "save", "tag"])
        self.assertEqual(bash_complete("ckpt help ro"), ["rotate"])
        self.assertEqual(bash_complete("ckpt help rotate "), [])
        self.assertEqual(sorted(bash_complete("ckpt latest --")), ["--archives", "--help", "--json", "--recursive", "--restore-to", "--verify"])
        self.assertEqual(sorted(bash_complete("ckpt inspect --")), ["--help", "--json", "--summary", "--verify"])
        self.assertEqual(sorted(bash_complete("ckpt diff --")), ["--all", "--help", "--json", "--only", "--quiet", "--rtol", "--tolerance"])
        self.assertEqual(bash_complete("ckpt diff --tolerance "), [])

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
            # Several runs: every RUN_DIR and --recursive's ROOT.
            for sub in ("list", "latest", "rotate"):
                self.assertEqual(bash_complete(f"ckpt {sub} {tmp}/run1 {tmp}/ru"), [f"{tmp}/run1"], sub)
                self.assertEqual(bash_complete(f"ckpt {sub} --recursive {tmp}/ru"), [f"{tmp}/run1"], sub)

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
            # Named checkpoints too, which resume finds by name; not a directory without trainer_state.json.
            os.mkdir(os.path.join(tmp, "milestone"))
            open(os.path.join(tmp, "milestone", "trainer_state.json"), "w").close()
            self.assertEqual(sorted(bash_complete(f"ckpt resume {tmp} --from ")), ["checkpoint-10", "checkpoint-20", "checkpoint-5", "milestone"])
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
            os.mkdir(os.path.join(tmp, "milestone"))
            open(os.path.join(tmp, "milestone", "trainer_state.json"), "w").close()
            out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
            self.assertEqual(sorted(line.split("\t")[0] for line in out.splitlines()), ["checkpoint-10", "checkpoint-20", "checkpoint-5", "milestone"])

    def tag_run(self, tmp):
        """A run directory with checkpoints, archives, named checkpoints and what is neither (completions must tell)."""
        for name in ("checkpoint-10", "checkpoint-20", "keep", "final", "plain", "tmp-checkpoint-30", "archive"):
            os.mkdir(os.path.join(tmp, name))
        for name in ("keep", "final", "checkpoint-10", "tmp-checkpoint-30"):
            open(os.path.join(tmp, name, "trainer_state.json"), "w").close()
        os.symlink("keep", os.path.join(tmp, "link"))
        for name in ("checkpoint-5.ckpt", "notes.txt"):
            open(os.path.join(tmp, "archive", name), "w").close()
        open(os.path.join(tmp, "checkpoint-7.ckpt"), "w").close()
        return ["archive/checkpoint-5.ckpt", "checkpoint-10", "checkpoint-20", "checkpoint-7.ckpt"], ["final", "keep"]

    def test_bash_completes_checkpoints_and_named_checkpoints_after_tag(self):
        self.assertEqual(sorted(bash_complete("ckpt tag --")), ["--delete", "--help", "--json"])
        with tempfile.TemporaryDirectory() as tmp:
            sources, named = self.tag_run(tmp)
            self.assertEqual(bash_complete(f"ckpt tag {tmp[:-1]}"), [tmp])
            self.assertEqual(sorted(bash_complete(f"ckpt tag {tmp} ")), sources)
            self.assertEqual(sorted(bash_complete(f"ckpt tag --json {tmp} ")), sources)
            self.assertEqual(bash_complete(f"ckpt tag {tmp} archive/"), ["archive/checkpoint-5.ckpt"])
            self.assertEqual(bash_complete(f"ckpt tag {tmp} checkpoint-10 "), [])  # the new NAME
            self.assertEqual(sorted(bash_complete(f"ckpt tag --delete {tmp} ")), named)
            self.assertEqual(sorted(bash_complete(f"ckpt tag {tmp} --delete ")), named)

    def test_zsh_and_fish_complete_checkpoints_and_named_checkpoints_after_tag(self):
        with tempfile.TemporaryDirectory() as tmp:
            sources, named = self.tag_run(tmp)
            self.assertEqual(zsh_complete(f"ckpt tag {tmp} archive/"), f"ckpt tag {tmp} archive/checkpoint-5.ckpt ")
            self.assertEqual(zsh_complete(f"ckpt tag {tmp} checkpoint-2"), f"ckpt tag {tmp} checkpoint-20 ")
            self.assertEqual(zsh_complete(f"ckpt tag --delete {tmp} k"), f"ckpt tag --delete {tmp} keep ")
            self.assertEqual(zsh_complete(f"ckpt tag --delete {tmp} f"), f"ckpt tag --delete {tmp} final ")
            for line, expected in ((f"ckpt tag {tmp} ", sources), (f"ckpt tag --delete {tmp} ", named),
                                   (f"ckpt tag {tmp} checkpoint-10 ", [])):
                with self.subTest(line=line):
                    script = f"source {ROOT}/completions/ckpt.fish; complete -C '{line}'"
                    out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
                    self.assertEqual(sorted(row.split("\t")[0] for row in out.splitlines()), expected)

    def test_zsh_and_fish_parse(self):
        subprocess.run(["zsh", "-n", os.path.join(ROOT, "completions", "_ckpt")], check=True)
        subprocess.run(["fish", "-n", os.path.join(ROOT, "completions", "ckpt.fish")], check=True)

    def test_zsh_completes(self):
        self.assertEqual(zsh_complete("ckpt conv"), "ckpt convert ")
        self.assertEqual(zsh_complete("ckpt hel"), "ckpt help ")
        self.assertEqual(zsh_complete("ckpt help rot"), "ckpt help rotate ")
        self.assertEqual(zsh_complete("ckpt convert x --to arch"), "ckpt convert x --to archive ")
        self.assertEqual(zsh_complete("ckpt convert x --cons"), "ckpt convert x --consolidate ")
        self.assertEqual(zsh_complete("ckpt save --nproc"), "ckpt save --nproc-per-node ")
        self.assertEqual(zsh_complete("ckpt rotate --sort m"), "ckpt rotate --sort mtime ")
        self.assertEqual(zsh_complete("ckpt latest --rest"), "ckpt latest --restore-to ")
        self.assertEqual(zsh_complete("ckpt list --recur"), "ckpt list --recursive ")
        self.assertEqual(zsh_complete("ckpt diff --rt"), "ckpt diff --rtol ")
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("checkpoint-10", "checkpoint-200"):
                os.mkdir(os.path.join(tmp, name))
            self.assertEqual(zsh_complete(f"ckpt resume {tmp} --from checkpoint-1"), f"ckpt resume {tmp} --from checkpoint-10 ")
            os.mkdir(os.path.join(tmp, "milestone"))
            open(os.path.join(tmp, "milestone", "trainer_state.json"), "w").close()
            self.assertEqual(zsh_complete(f"ckpt resume {tmp} --from mile"), f"ckpt resume {tmp} --from milestone ")

    def test_fish_completes(self):
        script = (f"source {ROOT}/completions/ckpt.fish; complete -C 'ckpt ins'; complete -C 'ckpt inspect --v'; "
                  "complete -C 'ckpt rotate --sort '")
        out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
        self.assertIn("inspect", out)
        help_completions = subprocess.run(["fish", "--no-config", "-c", f"source {ROOT}/completions/ckpt.fish; complete -C 'ckpt help '"],
                                          capture_output=True, text=True, check=True).stdout
        self.assertEqual(sorted(line.split("\t")[0] for line in help_completions.splitlines()),
                         ["best", "convert", "diff", "inspect", "latest", "list", "resume", "rotate", "save", "tag"])
        self.assertIn("--verify", out)
        self.assertIn("mtime", out)
        script = f"source {ROOT}/completions/ckpt.fish; complete -C 'ckpt latest --'"
        out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
        self.assertEqual(sorted(line.split("\t")[0] for line in out.splitlines()), ["--archives", "--help", "--json", "--recursive", "--restore-to", "--verify"])
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "runs"))
            open(os.path.join(tmp, "runs.txt"), "w").close()
            script = f"source {ROOT}/completions/ckpt.fish; complete -C 'ckpt rotate --recursive {tmp}/ru'"
            out = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True, check=True).stdout
            self.assertEqual([line.split("\t")[0] for line in out.splitlines()], [f"{tmp}/runs/"])


class Install(unittest.TestCase):
    def test_cmake_install_lays_out_files(self):
        build = os.path.dirname(harness.CKPT_BIN)
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
