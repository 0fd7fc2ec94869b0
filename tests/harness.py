"""What every Python test suite shares: running the ckpt binary, reading what it wrote, and the checks after it.

Each test file puts tests/ on sys.path with one line and imports this module (and another suite's module as a
package, `from manage import runs`):

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

* The binary is $CKPT_BIN (CTest sets it), else build/ckpt in the repository; `require_binary()` says which
  is missing. REPO, DATA, HF_FIXTURES and FIXTURE_RUN name the checked-in fixtures.
* `ckpt(*args, cwd=, env=, timeout=)` runs it (stdin /dev/null) and returns a `Result` (returncode, stdout, stderr as
  text, `json()`, `error_line()`, `describe()` for assertion messages); it never raises on a non-zero exit.
  A run past `timeout` is killed and fails the test, unless the caller judges hangs itself
  (`report_timeout=True`: `Result.timed_out`). `limit_memory=True` caps the child's address space (hostile
  input must not take the machine down), `file_size_limit` the size of its files (a full disk); `cap` bounds
  what is kept of each stream. `ckpt_untrusted` is ckpt() with limit_memory and report_timeout, for hostile
  input. `ckpt_ok(testcase, ...)` also fails the test unless the exit status is 0, with the command and both
  streams in the message. `environment()` is this process's environment with some variables set or removed,
  for `env=`.
* safetensors, read with nothing but the format's rules (no `safetensors` package is installed for
  /usr/bin/python3): `read_header`, `read_safetensors` (torch tensors), `validate_safetensors` (every rule
  of the format (an 8-byte header length, a JSON header padded with spaces, contiguous data) and the
  safetensors library's data order; a list of problems).
* Files: `TempDirTest` (a fresh self.tmp per test, self.path()), `remove_temp_dir` for a module's
  directory ($CKPT_TEST_KEEP keeps it), `copy_tree_writable`, `copy_fixture_run`,
  `tree_snapshot` (every file, directory and symlink below a directory, to compare before and after),
  `leftover_temporaries` (ckpt's `.NAME.tmp-*` files and staging directories).
* `run_on_terminal(argv, term)`: a command with stdout and stderr on one pseudo-terminal, as in an interactive
  shell; `terminal_screen(output)`: the lines a terminal shows after that output (progress lines redrawn).
* `wait_until(condition)`: polls with a generous deadline instead of a fixed sleep, failing the test at the
  deadline or when a process it waits on ends first.

Importing this module needs neither torch nor numpy (the CLI and run-directory suites run without them);
`read_safetensors` imports them when called.
"""

import collections
import hashlib
import json
import os
import pty
import resource
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
DATA = os.path.join(TESTS, "data")
HF_FIXTURES = os.path.join(DATA, "hf-trainer-4.40.2")
FIXTURE_RUN = os.path.join(HF_FIXTURES, "run_safetensors")
CKPT_BIN = os.environ.get("CKPT_BIN") or os.path.join(REPO, "build", "ckpt")


def require_binary():
    """The binary's path; raises when there is no executable there (before a suite builds its fixtures)."""
    if not (os.path.isfile(CKPT_BIN) and os.access(CKPT_BIN, os.X_OK)):
        raise RuntimeError("ckpt binary not found at %s (build it, or set CKPT_BIN)" % CKPT_BIN)
    return CKPT_BIN


# --------------------------------------------------------------------------------------------------------------
# Running ckpt
# --------------------------------------------------------------------------------------------------------------

ERROR_PREFIX = "ckpt: error: "


class Result:
    """One finished run of ckpt. stdout and stderr are text (UTF-8, invalid bytes replaced), at most the cap each;
    stdout_bytes counts all of stdout."""

    def __init__(self, argv, returncode, stdout, stderr, timed_out, stdout_bytes, elapsed):
        self.argv = argv
        self.args = argv[1:]
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        self.stdout_bytes = stdout_bytes
        self.elapsed = elapsed

    def command(self):
        return " ".join(shlex.quote(a) for a in self.argv)

    def describe(self):
        """The command, exit status and both streams (their first 3000 characters), for an assertion message."""
        return "command: %s\nexit: %s%s\nstdout (%d bytes):\n%s\nstderr:\n%s" % (
            self.command(), self.returncode, " (TIMED OUT)" if self.timed_out else "", self.stdout_bytes,
            self.stdout[:3000], self.stderr[:3000])

    def json(self):
        """stdout parsed as one JSON document; AssertionError (with describe()) when it is not one."""
        try:
            return json.loads(self.stdout)
        except ValueError as e:
            raise AssertionError("printed no JSON (%s)\n%s" % (e, self.describe()))

    def error_line_problem(self, path=None):
        """None if stderr is exactly one line `ckpt: error: ...` (naming `path` when given), else what is wrong."""
        err = self.stderr
        if not err:
            return "stderr is empty: no `ckpt: error: ...` line"
        if not err.endswith("\n"):
            return "stderr does not end with a newline: %r" % err[:500]
        lines = err[:-1].split("\n")
        if len(lines) != 1:
            return "stderr has %d lines, expected 1: %r" % (len(lines), err[:500])
        if not lines[0].startswith(ERROR_PREFIX):
            return "stderr does not start with %r: %r" % (ERROR_PREFIX, err[:500])
        if path is not None and path not in lines[0]:
            return "stderr does not name the file %r: %r" % (path, err[:500])
        return None

    def error_line(self):
        """The message of the one `ckpt: error:` line on stderr (AssertionError unless there is exactly that)."""
        problem = self.error_line_problem()
        if problem is not None:
            raise AssertionError("not one error line: %s" % problem)
        return self.stderr[len(ERROR_PREFIX):-1]


def environment(changes=None, remove=()):
    """A copy of this process's environment with the variables of `changes` set and those named in `remove` gone."""
    env = dict(os.environ)
    for name in remove:
        env.pop(name, None)
    env.update(changes or {})
    return env


def _memory_limit_kb():
    """The child's address-space cap: $CKPT_TEST_MEM_LIMIT_MB (default 4096; 0 = none). None under a sanitizer,
    whose shadow memory reserves terabytes of address space."""
    mb = int(os.environ.get("CKPT_TEST_MEM_LIMIT_MB", "4096"))
    if mb <= 0:
        return None
    try:
        with open(CKPT_BIN, "rb") as f:
            blob = f.read()
        if b"__asan_init" in blob or b"__tsan_init" in blob or b"__msan_init" in blob:
            return None
    except OSError:
        pass
    return mb * 1024


_memory_limit = []  # [kb or None] once computed: reading the binary once per process is enough


def ckpt(*args, cwd=None, env=None, timeout=60, cap=64 * 1024 * 1024, limit_memory=False,
         report_timeout=False, file_size_limit=None):
    """Runs `ckpt ARGS...` (each argument str()-ed) and returns its Result; never raises on a non-zero exit.

    env: the child's whole environment (see environment()), default this process's; stdin is /dev/null. At most
    `cap` bytes of each stream are kept (a buggy binary may write without end). A run longer than `timeout`
    seconds is killed; that raises AssertionError unless report_timeout, where the Result says timed_out.
    limit_memory: `ulimit -v` for the child (see _memory_limit_kb). file_size_limit: no file of the child grows
    past that many bytes, and a write() that would fails with EFBIG (SIGXFSZ ignored): a full disk without
    mounting one."""
    argv = [CKPT_BIN] + [str(a) for a in args]
    command = argv
    if limit_memory:
        if not _memory_limit:
            _memory_limit.append(_memory_limit_kb())
        if _memory_limit[0]:
            command = ["/bin/sh", "-c", 'ulimit -v %d; exec "$0" "$@"' % _memory_limit[0]] + argv
    limit_file_size = None
    if file_size_limit is not None:
        def limit_file_size():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    start = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            env=env, preexec_fn=limit_file_size)
    kept = {"out": [bytearray(), 0], "err": [bytearray(), 0]}

    def pump(stream, key):
        buf = kept[key]
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            buf[1] += len(chunk)
            if len(buf[0]) < cap:
                buf[0] += chunk[:cap - len(buf[0])]

    threads = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    for t in threads:
        t.join(5)
    proc.stdout.close()
    proc.stderr.close()
    result = Result(argv, proc.returncode, kept["out"][0].decode("utf-8", "replace"),
                    kept["err"][0].decode("utf-8", "replace"), timed_out, kept["out"][1], time.monotonic() - start)
    if timed_out and not report_timeout:
        raise AssertionError("ckpt ran longer than %s s\n%s" % (timeout, result.describe()))
    return result


def ckpt_untrusted(*args, **options):
    """ckpt on hostile input (options as for ckpt()): the address space capped, and a hang reported in the Result
    (timed_out) rather than raised, for the corruption and interop suites that judge every outcome."""
    return ckpt(*args, limit_memory=True, report_timeout=True, **options)


def ckpt_ok(testcase, *args, **options):
    """Runs ckpt (options as for ckpt()) and fails `testcase` unless it exits 0; with testcase None (outside a
    test method) that is an AssertionError."""
    r = ckpt(*args, **options)
    if testcase is None:
        assert r.returncode == 0, "ckpt failed\n" + r.describe()
    else:
        testcase.assertEqual(r.returncode, 0, "ckpt failed\n" + r.describe())
    return r


# --------------------------------------------------------------------------------------------------------------
# safetensors: reading and validating
# --------------------------------------------------------------------------------------------------------------

DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
               "F64": 8, "I64": 8, "U64": 8, "C64": 8, "F8_E5M2": 1, "F8_E4M3": 1}
MAX_HEADER = 100000000

# The safetensors library's Dtype enum order (its derived Ord).
DTYPE_ENUM_RANK = {code: i for i, code in enumerate(
    ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"])}


def torch_dtypes():
    """safetensors dtype code -> torch dtype, for the codes torch 1.13 has."""
    import torch
    return {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
            "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "F64": torch.float64,
            "I64": torch.int64, "C64": torch.complex64}


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    dup = sorted(k for k, c in collections.Counter(keys).items() if c > 1)
    if dup:
        raise ValueError("duplicate keys %r" % dup)
    return collections.OrderedDict(pairs)


def validate_safetensors(path, require_pt=True):
    """Checks a file against the format's rules. Returns a list of problems (empty: valid)."""
    problems = []
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)
    if size < 8:
        return ["file is %d bytes, shorter than the 8-byte header length" % size]
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        return ["header length %d exceeds 100,000,000" % n]
    if 8 + n > size:
        return ["header length %d runs past the end of a %d-byte file" % (n, size)]
    if (8 + n) % 8 != 0:
        problems.append("8 + header length (%d) is not a multiple of 8: header not padded" % (8 + n))
    raw = data[8:8 + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return problems + ["header is not UTF-8: %s" % e]
    stripped = text.rstrip(" ")
    padding = len(text) - len(stripped)
    if padding >= 8:
        problems.append("header padded with %d spaces (padding to 8 needs at most 7)" % padding)
    if stripped != stripped.strip():
        problems.append("header has leading or non-space trailing whitespace")
    if any(c in stripped[-1:] for c in "\t\r\n\x00"):
        problems.append("header padded with something other than spaces")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        return problems + ["header is not JSON: %s" % e]
    if not isinstance(header, dict):
        return problems + ["header is not a JSON object"]
    meta = header.get("__metadata__")
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            problems.append("__metadata__ is not an object of strings: %r" % (meta,))
        elif require_pt and meta.get("format") != "pt":
            problems.append("__metadata__ format is %r, not 'pt'" % meta.get("format"))
    elif require_pt:
        problems.append("no __metadata__ (Hugging Face requires format 'pt')")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            problems.append("tensor %r: entry %r does not have exactly dtype, shape, data_offsets" % (name, info))
            continue
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            problems.append("tensor %r: unknown dtype %r" % (name, dtype))
            continue
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            problems.append("tensor %r: bad shape %r" % (name, shape))
            continue
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            problems.append("tensor %r: bad data_offsets %r" % (name, offsets))
            continue
        begin, end = offsets
        if end < begin:
            problems.append("tensor %r: data_offsets %r end before they begin" % (name, offsets))
            continue
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * DTYPE_SIZES[dtype]:
            problems.append("tensor %r: %d bytes for %d elements of %s" % (name, end - begin, numel, dtype))
        entries.append((begin, end, name, dtype))
    if problems:
        return problems
    entries.sort(key=lambda e: (e[0], e[1]))
    position = 0
    for begin, end, name, _ in entries:
        if begin != position:
            problems.append("tensor %r starts at %d, expected %d (offsets not contiguous from 0)" % (name, begin, position))
        position = end
    if 8 + n + position != size:
        problems.append("8 + header (%d) + buffer (%d) = %d != file size %d" % (n, position, 8 + n + position, size))
    # The safetensors library orders the data by its Dtype enum, descending (`right.dtype().cmp(&left.dtype())`
    # in its prepare()), then by name. Zero-size tensors share an offset with the next tensor, so the order is
    # checked on (begin, rank) with ties allowed among empty tensors.
    in_file = [(e[2], e[3]) for e in sorted(entries, key=lambda e: (e[0], e[1] - e[0] > 0, e[2]))]
    expected = sorted(in_file, key=lambda t: (-DTYPE_ENUM_RANK[t[1]], t[0].encode("utf-8")))
    nonempty_in_file = [e[2] for e in entries if e[1] > e[0]]
    nonempty_expected = [t[0] for t in expected if t[0] in set(nonempty_in_file)]
    if nonempty_in_file != nonempty_expected:
        problems.append("data not ordered by dtype (the library's enum, descending) then name: file order %r, expected %r"
                        % (nonempty_in_file[:12], nonempty_expected[:12]))
    # An empty tensor carries no bytes, but its offset must still fall where the ordering would put it.
    rank = {name: i for i, (name, _) in enumerate(expected)}
    sorted_by_offset = sorted(entries, key=lambda e: (e[0], rank[e[2]]))
    if [e[2] for e in sorted_by_offset] != [t[0] for t in expected]:
        problems.append("offsets do not follow the dtype-size-then-name order: %r" % ([e[2] for e in sorted_by_offset][:12],))
    return problems


def read_safetensors(path):
    """(metadata dict, OrderedDict name -> tensor) in header order; tensors as torch tensors (copies)."""
    import numpy as np
    import torch
    dtypes = torch_dtypes()
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"), object_pairs_hook=collections.OrderedDict)
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = collections.OrderedDict()
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = dtypes[info["dtype"]]
        if end == begin:
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        raw = np.frombuffer(data, dtype=np.uint8, count=end - begin, offset=base + begin).copy()
        t = torch.from_numpy(raw)
        if dtype != torch.uint8:
            t = t.view(dtype)
        tensors[name] = t.reshape(info["shape"])
    return meta, tensors


def read_header(path):
    """The JSON header of a safetensors file, keys in file order (`__metadata__` included)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n).decode("utf-8"), object_pairs_hook=collections.OrderedDict)


# --------------------------------------------------------------------------------------------------------------
# Directories and files
# --------------------------------------------------------------------------------------------------------------


class TempDirTest(unittest.TestCase):
    """A fresh temporary directory per test (self.tmp, removed after it); TEMP_PREFIX names it."""

    TEMP_PREFIX = "ckpt-test-"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self.TEMP_PREFIX)
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)


def remove_temp_dir(path):
    """Removes a test module's temporary directory (tearDownModule), unless $CKPT_TEST_KEEP asks to keep it for a
    look (then says where)."""
    if not path:
        return
    if os.environ.get("CKPT_TEST_KEEP"):
        print("kept", path, file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


def copy_tree_writable(src, dst):
    """Copies a (possibly read-only) fixture directory tree without its permission bits, so the copy is ours to
    change; symlinks are followed."""
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        s = os.path.join(src, name)
        d = os.path.join(dst, name)
        if os.path.isdir(s):
            copy_tree_writable(s, d)
        else:
            shutil.copyfile(s, d)


def copy_fixture_run(dest_parent, name="run_safetensors"):
    """A writable copy of the checked-in Trainer run (FIXTURE_RUN) at dest_parent/name; returns its path."""
    dest = os.path.join(dest_parent, name)
    copy_tree_writable(FIXTURE_RUN, dest)
    return dest


def sha256_file(path):
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_snapshot(path, ignore=(".ckpt.lock",)):
    """{relative path: SHA-256 of a file's bytes, ('dir',) or ('link', target)} for everything under `path`
    (symlinks not followed); names in `ignore` directly under `path` are skipped (by default the run lock file
    that every rotate creates). Equal snapshots: the same tree, byte for byte."""
    out = {}
    for root, dirs, files in os.walk(path):
        if root == path:
            files = [f for f in files if f not in ignore]
        for d in list(dirs):
            full = os.path.join(root, d)
            if os.path.islink(full):
                out[os.path.relpath(full, path)] = ("link", os.readlink(full))
                dirs.remove(d)
            else:
                out[os.path.relpath(full, path) + "/"] = ("dir",)
        for f in files:
            full = os.path.join(root, f)
            if os.path.islink(full):
                out[os.path.relpath(full, path)] = ("link", os.readlink(full))
            else:
                out[os.path.relpath(full, path)] = sha256_file(full)
    return out


def leftover_temporaries(directory):
    """Names directly in `directory` that are ckpt's temporary files or staging directories (`.NAME.tmp-*`);
    [] when the directory does not exist."""
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if ".tmp-" in n)


# --------------------------------------------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------------------------------------------


def wait_until(condition, what, timeout=60, interval=0.05, process=None):
    """Polls `condition()` until it returns something true, and returns that. Raises AssertionError saying
    `what` was awaited when `timeout` seconds pass first, or when `process` (a Popen) ends first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError("the process ended (exit %s) before %s" % (process.returncode, what))
        if time.monotonic() > deadline:
            raise AssertionError("no %s within %s s" % (what, timeout))
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------------------
# A pseudo-terminal (progress lines)
# --------------------------------------------------------------------------------------------------------------


def run_on_terminal(argv, term, timeout=120):
    """`argv` with stdout and stderr on one pseudo-terminal, as in an interactive shell: (exit status, output).

    TERM is set to `term` and NO_COLOR removed, so the caller decides whether escape sequences are allowed."""
    master, slave = pty.openpty()
    env = environment({"TERM": term}, remove=("NO_COLOR",))
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                p.kill()
                raise AssertionError("no output for %d s from %s" % (timeout, argv))
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    return p.wait(timeout=timeout), output.decode()


def terminal_screen(output):
    """The lines a terminal shows after `output`: \\r returns to the line's start, ESC [K erases to its end,
    characters overwrite what is under them."""
    lines, line, column, i = [], [], 0, 0
    while i < len(output):
        if output.startswith("\x1b[K", i):
            del line[column:]
            i += 3
            continue
        c = output[i]
        if c == "\r":
            column = 0
        elif c == "\n":
            lines.append("".join(line))
            line, column = [], 0
        else:
            if column < len(line):
                line[column] = c
            else:
                line.append(c)
            column += 1
        i += 1
    if line:
        lines.append("".join(line))
    return lines
