"""`ckpt inspect` on corrupt and hostile input: it must never die by a signal, never hang, and either report
(exit 0, only when the damage is harmless) or refuse with exit 3 and one line `ckpt: error: ...` on stderr.

Run from the repository root:
    /usr/bin/python3 -m unittest discover -s tests/interop -p 'test_*.py' -v
    /usr/bin/python3 tests/interop/test_corruption.py -v

Every expectation is decided by Python before `ckpt` runs:
- truncations: every proper prefix of a torch zip or a safetensors file is invalid, so exit 3;
- safetensors bit flips: a reference validator (formats.md section 4, strict like the Rust reader) says valid
  (exit 0 required), invalid (exit 3 required) or ambiguous (duplicate keys: 0 or 3);
- torch zip bit flips: 3 required where the zip structure a reader must use is broken (signatures, the name or
  the local-header offset of data.pkl) or where Python's own unpickler (restricted, nothing imported) rejects
  the flipped data.pkl or finds a tensor outside its storage record; 0 or 3 elsewhere (record bytes and CRCs a
  reader may or may not check);
- hand-built hostile pickles and JSON: 3 where the input is plainly corrupt, 0 or 3 where it is a valid but
  nasty value (cycles, million-deep nesting, exponential sharing).

Subprocesses run on a pool of 2 threads. When one `ckpt` start is slow (a binary that links LibTorch spends
most of a second in static initialisers), the truncation offsets and bit flips are sampled down to fit
$CKPT_CORRUPTION_BUDGET_S (default 45 s): structural boundaries first, then evenly spaced offsets; flips are
the first N of the seeded sequence. $CKPT_CORRUPTION_FULL=1 runs everything. A summary goes to stderr.
"""

import collections
import concurrent.futures
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import unittest
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: harness, suites

import torch  # noqa: E402

import fixtures as F  # noqa: E402
import harness  # noqa: E402

TIMEOUT_S = 10.0
WORKERS = 2
FLIPS_PER_FILE = int(os.environ.get("CKPT_FLIPS", "300"))
VERIFY_FLIPS_PER_FILE = int(os.environ.get("CKPT_VERIFY_FLIPS", "60"))
SEED = 1234

TMP = None
SMALL = {}          # "bin" / "safetensors" -> path
PLAN = None         # sampling decisions, filled in setUpModule


def setUpModule():
    global TMP, PLAN
    harness.require_binary()
    TMP = tempfile.mkdtemp(prefix="ckpt-corruption-")
    SMALL["bin"] = make_small_bin(os.path.join(TMP, "small.bin"))
    SMALL["safetensors"] = make_small_safetensors(os.path.join(TMP, "small.safetensors"))
    PLAN = make_plan()


def tearDownModule():
    harness.remove_temp_dir(TMP)


def small_state():
    return {"w": torch.tensor([[1.0, 2.0], [3.0, -4.0]]), "b": torch.tensor([1, -2], dtype=torch.int8)}


def make_small_bin(path):
    torch.save(small_state(), path)
    assert os.path.getsize(path) < 2048
    return path


def make_small_safetensors(path):
    F.write_safetensors(path, list(small_state().items()), {"format": "pt"})
    return path


# ----------------------------------------------------------------------------------------------------------------
# Running many cases
# ----------------------------------------------------------------------------------------------------------------

Case = collections.namedtuple("Case", "name path args allowed why")


def run_cases(cases):
    def one(case):
        return case, harness.ckpt_untrusted(*case.args, timeout=TIMEOUT_S, cap=8 * 1024 * 1024, cwd=TMP)

    with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(one, cases))


def judge(case, r):
    """None if the result is acceptable, else (kind of problem, one-paragraph description)."""
    problem = None
    if r.timed_out:
        problem = "did not finish within %.0f s" % TIMEOUT_S
    elif r.returncode < 0:
        problem = "killed by signal %d" % -r.returncode
    elif r.returncode not in case.allowed:
        problem = "exit %d, allowed %s (%s)" % (r.returncode, sorted(case.allowed), case.why)
    elif r.returncode == 3:
        problem = r.error_line_problem(case.path)
    elif "--json" in case.args:
        if r.stdout_bytes > 8 * 1024 * 1024:
            problem = "wrote %d bytes of JSON for a %d-byte input" % (r.stdout_bytes, os.path.getsize(case.path))
        else:
            try:
                json.loads(r.stdout)
            except ValueError as e:
                problem = "exit %d but stdout is not JSON (%s)" % (r.returncode, e)
    if problem is None:
        return None
    kind = problem.split(" (")[0] if problem.startswith("exit") else problem.split(":")[0][:60]
    return kind, "%s: %s\n    %s\n    stderr: %r  stdout[:200]: %r" % (case.name, problem, r.command(),
                                                                        r.stderr[:300], r.stdout[:200])


class CorruptionCase(unittest.TestCase):

    def check_all(self, cases, label):
        results = run_cases(cases)
        judged = [j for j in (judge(c, r) for c, r in results) if j]
        failures = [text for _, text in judged]
        codes = collections.Counter(r.returncode for _, r in results)
        slowest = max((r.elapsed for _, r in results), default=0.0)
        sys.stderr.write("\n  [%s] %d runs, exit codes %s, slowest %.2f s, %d failures\n" % (
            label, len(results), dict(sorted(codes.items(), key=lambda kv: str(kv[0]))), slowest,
            len(failures)))
        if failures:
            by_kind = collections.Counter(kind for kind, _ in judged)
            self.fail("%d of %d cases failed (%s):\n%s%s" % (
                len(failures), len(cases), dict(by_kind), "\n".join(failures[:25]),
                "\n... and %d more" % (len(failures) - 25) if len(failures) > 25 else ""))


# ----------------------------------------------------------------------------------------------------------------
# Reference judgements
# ----------------------------------------------------------------------------------------------------------------


def validate_safetensors(data):
    """formats.md section 4, as strict as the Rust reader. Returns (True | False | None, reason);
    None = ambiguous."""
    if len(data) < 8:
        return False, "shorter than 8 bytes"
    n = struct.unpack("<Q", data[:8])[0]
    if n > 100000000:
        return False, "header length %d > 100,000,000" % n
    if 8 + n > len(data):
        return False, "header runs past the end"
    try:
        text = data[8:8 + n].decode("utf-8")
    except UnicodeDecodeError:
        return False, "header is not UTF-8"
    duplicate = []

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            duplicate.append(keys)
        return collections.OrderedDict(items)

    def no_constants(name):
        raise ValueError("JSON has no " + name)

    try:
        header = json.loads(text, object_pairs_hook=pairs, parse_constant=no_constants)
    except ValueError as e:
        return False, "header is not JSON: %s" % e
    except RecursionError:
        return False, "header nested deeper than any valid header (3 levels)"
    if duplicate:
        return None, "duplicate keys %r" % duplicate
    if not isinstance(header, dict):
        return False, "header is not an object"
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                return False, "__metadata__ is not {str: str}"
            continue
        if not isinstance(info, dict):
            return False, "%r is not an object" % name
        if set(info) != {"dtype", "shape", "data_offsets"}:
            return False, "%r has keys %r" % (name, sorted(info))
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in F.ST_SIZE:
            return False, "unknown dtype %r" % (dtype,)

        def is_uint(v):
            return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 64

        if not isinstance(shape, list) or not all(is_uint(x) for x in shape):
            return False, "bad shape %r" % (shape,)
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_uint(x) for x in offsets):
            return False, "bad data_offsets %r" % (offsets,)
        numel = 1
        for x in shape:
            numel *= x
        if offsets[0] > offsets[1] or offsets[1] - offsets[0] != numel * F.ST_SIZE[dtype]:
            return False, "%r: data_offsets %r do not hold %d x %s" % (name, offsets, numel, dtype)
        spans.append(tuple(offsets))
    spans.sort()
    end = 0
    for b, e in spans:
        if b != end:
            return False, "tensor data not contiguous at %d" % b
        end = e
    if 8 + n + end != len(data):
        return False, "file size %d != 8 + %d + %d" % (len(data), n, end)
    return True, "valid"


def zip_layout(data):
    """Offsets of the zip structures of an (intact) torch zip."""
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", data[eocd + 12:eocd + 20])
    entries = []
    p = cd_offset
    while data[p:p + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[p + 28:p + 34])
        size = struct.unpack("<I", data[p + 24:p + 28])[0]
        local = struct.unpack("<I", data[p + 42:p + 46])[0]
        name = data[p + 46:p + 46 + name_len].decode()
        lname_len, lextra_len = struct.unpack("<HH", data[local + 26:local + 30])
        start = local + 30 + lname_len + lextra_len
        entries.append({"name": name, "cd": p, "cd_name": p + 46, "name_len": name_len, "local": local,
                        "data": start, "size": size})
        p += 46 + name_len + extra_len + comment_len
    z64 = data.rfind(b"PK\x06\x06")
    z64loc = data.rfind(b"PK\x06\x07")
    return {"eocd": eocd, "cd_offset": cd_offset, "cd_end": cd_offset + cd_size, "entries": entries,
            "zip64": z64, "zip64_locator": z64loc}


def check_torch_pickle(pkl, records):
    """Python's (restricted) unpickler on a data.pkl plus the storage records. (True | False | None, why)."""
    try:
        value = F.RefUnpickler(pkl).load()
    except UnicodeDecodeError as e:
        return None, "string is not UTF-8 (%s)" % e
    except Exception as e:  # noqa: BLE001 - any failure of Python's unpickler means corrupt
        return False, "Python's unpickler fails: %s: %s" % (type(e).__name__, e)
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif isinstance(v, F.StorageRef) or isinstance(v, F.TensorRef):
            s = v if isinstance(v, F.StorageRef) else v.storage
            if not isinstance(s.dtype, str) or not isinstance(s.key, str) or not isinstance(s.numel, int):
                return False, "storage reference is malformed"
            if s.key not in records:
                return False, "storage record %r missing" % s.key
            if s.numel < 0 or s.numel * F.ELEMENT_SIZE[s.dtype] > records[s.key]:
                return False, "storage %r claims %d elements, record has %d bytes" % (s.key, s.numel,
                                                                                        records[s.key])
            if not -(2 ** 63) <= s.numel * F.ELEMENT_SIZE[s.dtype] < 2 ** 63:
                return False, "storage byte size does not fit int64"
            if isinstance(v, F.TensorRef):
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in (v.offset,) + v.shape +
                           v.stride):
                    return False, "tensor geometry is not integers"
                if not all(-(2 ** 63) <= x < 2 ** 63 for x in (v.offset,) + v.shape + v.stride):
                    return False, "tensor geometry does not fit int64"
                if not v.numel < 2 ** 63:
                    return False, "numel %d does not fit int64" % v.numel
                if v.offset < 0 or any(x < 0 for x in v.shape) or any(x < 0 for x in v.stride):
                    return False, "negative tensor geometry"
                if len(v.shape) != len(v.stride):
                    return False, "shape and stride differ in length"
                if v.numel > 0:
                    last = v.offset + sum((n - 1) * st for n, st in zip(v.shape, v.stride))
                    if last >= s.numel:
                        return False, "tensor reaches element %d of a %d-element storage" % (last, s.numel)
        elif isinstance(v, F.OpaqueBase):
            stack.extend(v._args)
            stack.append(v._state)
    return True, "Python loads it"


# ----------------------------------------------------------------------------------------------------------------
# Case construction
# ----------------------------------------------------------------------------------------------------------------


def structural_offsets_bin(data):
    lay = zip_layout(data)
    points = set(range(0, 8))
    for e in lay["entries"]:
        for base in (e["local"], e["data"], e["data"] + e["size"], e["cd"], e["cd_name"]):
            points.update((base - 1, base, base + 1, base + 4))
    for base in (lay["cd_offset"], lay["cd_end"], lay["zip64"], lay["zip64_locator"], lay["eocd"]):
        points.update((base - 1, base, base + 1, base + 4))
    points.update(range(len(data) - 24, len(data)))
    return sorted(p for p in points if 0 <= p < len(data))


def structural_offsets_safetensors(data):
    n = struct.unpack("<Q", data[:8])[0]
    points = set(range(0, 8 + n + 1))  # the whole header region: it is small
    points.update(range(len(data) - 4, len(data)))
    return sorted(p for p in points if 0 <= p < len(data))


def _spread(items, count):
    if count >= len(items):
        return list(items)
    step = len(items) / float(count)
    return [items[int(i * step)] for i in range(count)]


def sample_offsets(length, priority, count):
    """`count` offsets in [0, length): the structural ones first (spread evenly if they alone are too many),
    then evenly spaced others."""
    if count >= length:
        return list(range(length))
    if count <= len(priority):
        return sorted(set(_spread(priority, count)))
    taken = set(priority)
    others = [i for i in range(length) if i not in taken]
    return sorted(taken | set(_spread(others, count - len(priority))))


def seeded_flips(length, count, seed=SEED):
    rng = random.Random(seed)
    return [(rng.randrange(length), rng.randrange(8)) for _ in range(count)]


def make_plan():
    """How many runs fit the time budget (measured on this machine, with this binary)."""
    times = []
    for _ in range(3):
        r = harness.ckpt_untrusted("inspect", SMALL["safetensors"], "--json", timeout=60, cwd=TMP)
        times.append(r.elapsed)
    per_run = sorted(times)[1]
    full = os.environ.get("CKPT_CORRUPTION_FULL") == "1"
    budget = float(os.environ.get("CKPT_CORRUPTION_BUDGET_S", "45"))
    sizes = {k: os.path.getsize(p) for k, p in SMALL.items()}
    wanted = {"trunc_bin": sizes["bin"], "trunc_st": sizes["safetensors"], "flips": FLIPS_PER_FILE,
              "verify_flips": VERIFY_FLIPS_PER_FILE}
    hostile_reserve = len(hostile_pickles()) + 50  # + zips, safetensors, JSON, baseline
    capacity = int(budget * WORKERS / max(per_run, 1e-3)) - hostile_reserve
    total = sum(v * (2 if k.endswith("flips") else 1) for k, v in wanted.items())
    plan = dict(wanted)
    if not full and total > capacity:
        capacity = max(capacity, 40)
        share = {"trunc_bin": 0.35, "trunc_st": 0.15, "flips": 0.20, "verify_flips": 0.05}  # flips x2 files
        for k, frac in share.items():
            plan[k] = min(wanted[k], max(8, int(capacity * frac)))
    plan["per_run_s"] = per_run
    plan["sampled"] = plan != dict(wanted, per_run_s=per_run)
    sys.stderr.write("\n  [plan] one ckpt run takes %.3f s; %s: truncations bin %d/%d, safetensors %d/%d; "
                     "flips %d/%d per file; --verify flips %d/%d per file%s\n" % (
                         per_run, "SAMPLED to fit %.0f s" % budget if plan["sampled"] else "full",
                         plan["trunc_bin"], wanted["trunc_bin"], plan["trunc_st"], wanted["trunc_st"],
                         plan["flips"], wanted["flips"], plan["verify_flips"], wanted["verify_flips"],
                         " (CKPT_CORRUPTION_FULL=1 runs all)" if plan["sampled"] else ""))
    return plan


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


class BaselineTests(CorruptionCase):

    def test_small_files_are_valid(self):
        for kind, path in SMALL.items():
            with self.subTest(kind=kind):
                r = harness.ckpt_untrusted("inspect", path, "--json", "--verify", timeout=TIMEOUT_S, cwd=TMP)
                self.assertEqual(r.returncode, 0, r.describe())
                doc = json.loads(r.stdout)
                self.assertEqual([t["name"] for t in doc["tensors"]], ["w", "b"], r.command())

    def test_reference_judges_the_originals_valid(self):
        with open(SMALL["safetensors"], "rb") as f:
            self.assertEqual(validate_safetensors(f.read()), (True, "valid"))
        with open(SMALL["bin"], "rb") as f:
            data = f.read()
        lay = zip_layout(data)
        records = {e["name"].split("/data/", 1)[1]: e["size"] for e in lay["entries"] if "/data/" in e["name"]}
        pkl_entry = [e for e in lay["entries"] if e["name"].endswith("/data.pkl")][0]
        pkl = data[pkl_entry["data"]:pkl_entry["data"] + pkl_entry["size"]]
        self.assertEqual(check_torch_pickle(pkl, records)[0], True)
        # and the reference does reject what torch itself cannot load
        self.assertFalse(check_torch_pickle(pkl[:-1], records)[0])
        self.assertFalse(check_torch_pickle(pkl, {"0": 16})[0])


class TruncationTests(CorruptionCase):

    def truncations(self, kind, count, priority_fn):
        path = SMALL[kind]
        with open(path, "rb") as f:
            data = f.read()
        ext = os.path.splitext(path)[1]
        d = os.path.join(TMP, "trunc_" + kind)
        os.makedirs(d, exist_ok=True)
        cases = []
        for n in sample_offsets(len(data), priority_fn(data), count):
            p = write(os.path.join(d, "t%05d%s" % (n, ext)), data[:n])
            cases.append(Case("%s truncated to %d of %d bytes" % (kind, n, len(data)), p,
                              ["inspect", p, "--json"], {3}, "a proper prefix is never a valid file"))
        return cases

    def test_truncated_torch_zip(self):
        self.check_all(self.truncations("bin", PLAN["trunc_bin"], structural_offsets_bin), "truncate .bin")

    def test_truncated_safetensors(self):
        self.check_all(self.truncations("safetensors", PLAN["trunc_st"], structural_offsets_safetensors),
                       "truncate .safetensors")


class BitFlipTests(CorruptionCase):

    def flip_cases_safetensors(self, count, verify):
        with open(SMALL["safetensors"], "rb") as f:
            data = f.read()
        n = struct.unpack("<Q", data[:8])[0]
        d = os.path.join(TMP, "flip_st" + ("_verify" if verify else ""))
        os.makedirs(d, exist_ok=True)
        cases = []
        for i, (pos, bit) in enumerate(seeded_flips(len(data), count, SEED + (7 if verify else 0))):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            valid, why = validate_safetensors(bytes(b))
            if valid is True:
                allowed = {0, 1} if verify else {0}
                if pos >= 8 + n:
                    why = "flip in the tensor data: the file is still valid"
                else:
                    why = "header still valid per formats.md section 4 (%s)" % why
            elif valid is False:
                allowed = {3}
            else:
                allowed = {0, 1, 3} if verify else {0, 3}
            p = write(os.path.join(d, "f%03d_%d_%d.safetensors" % (i, pos, bit)), bytes(b))
            cases.append(Case("safetensors bit %d of byte %d flipped" % (bit, pos), p,
                              ["inspect", p, "--json"] + (["--verify"] if verify else []), allowed, why))
        return cases

    def flip_cases_bin(self, count, verify):
        with open(SMALL["bin"], "rb") as f:
            data = f.read()
        lay = zip_layout(data)
        records = {e["name"].split("/data/", 1)[1]: e["size"] for e in lay["entries"] if "/data/" in e["name"]}
        pkl_entry = [e for e in lay["entries"] if e["name"].endswith("/data.pkl")][0]
        must_fail = {}
        for base in [lay["eocd"]] + [e["cd"] for e in lay["entries"]] + [pkl_entry["local"]]:
            for q in range(base, base + 4):
                must_fail[q] = "a zip signature a reader must check"
        name_start = pkl_entry["cd_name"] + pkl_entry["name"].index("data.pkl")
        for q in range(name_start, name_start + len("data.pkl")):
            must_fail[q] = "the central directory no longer names data.pkl"
        local_field = pkl_entry["cd"] + 42
        d = os.path.join(TMP, "flip_bin" + ("_verify" if verify else ""))
        os.makedirs(d, exist_ok=True)
        cases = []
        for i, (pos, bit) in enumerate(seeded_flips(len(data), count, SEED + (7 if verify else 0))):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            allowed, why = ({0, 1, 3} if verify else {0, 3}), "the damage may or may not matter to a reader"
            if pos in must_fail:
                allowed, why = {3}, must_fail[pos]
            elif local_field <= pos < local_field + 4:
                new_local = struct.unpack("<I", bytes(b[local_field:local_field + 4]))[0]
                if bytes(b[new_local:new_local + 4]) != b"PK\x03\x04":
                    allowed, why = {3}, "data.pkl's local header offset points at no local header"
            elif pkl_entry["local"] + 26 <= pos < pkl_entry["local"] + 30:
                # name/extra length in data.pkl's local header: the data now starts elsewhere
                name_len, extra_len = struct.unpack("<HH", bytes(b[pkl_entry["local"] + 26:pkl_entry["local"] + 30]))
                start = pkl_entry["local"] + 30 + name_len + extra_len
                ok, reason = check_torch_pickle(bytes(b[start:start + pkl_entry["size"]]), records)
                if ok is False:
                    allowed, why = {3}, "data.pkl's data now starts at %d: %s" % (start, reason)
            elif pkl_entry["data"] <= pos < pkl_entry["data"] + pkl_entry["size"]:
                pkl = bytes(b[pkl_entry["data"]:pkl_entry["data"] + pkl_entry["size"]])
                ok, reason = check_torch_pickle(pkl, records)
                if ok is False:
                    allowed, why = {3}, "flip in data.pkl: " + reason
                else:
                    why = "flip in data.pkl: " + reason
            p = write(os.path.join(d, "f%03d_%d_%d.bin" % (i, pos, bit)), bytes(b))
            cases.append(Case(".bin bit %d of byte %d flipped" % (bit, pos), p,
                              ["inspect", p, "--json"] + (["--verify"] if verify else []), allowed, why))
        return cases

    def test_bit_flips_safetensors(self):
        self.check_all(self.flip_cases_safetensors(PLAN["flips"], False), "flip .safetensors")

    def test_bit_flips_torch_zip(self):
        self.check_all(self.flip_cases_bin(PLAN["flips"], False), "flip .bin")

    def test_bit_flips_with_verify(self):
        cases = (self.flip_cases_safetensors(PLAN["verify_flips"], True) +
                 self.flip_cases_bin(PLAN["verify_flips"], True))
        self.check_all(cases, "flip --verify")


# ----------------------------------------------------------------------------------------------------------------
# Hand-built hostile input
# ----------------------------------------------------------------------------------------------------------------

O = F.Op
BIG = 1000000


def hostile_pickles():
    """(name, data.pkl bytes, records, allowed exit codes, why)."""
    rec = {"0": b"\0" * 16}
    corrupt = {3}
    nasty = {0, 3}
    cases = [
        ("binunicode_length_past_end", O.PROTO2 + b"X" + struct.pack("<I", 0xFFFFFFF0) + b"abc", {}, corrupt,
         "declared string length runs past the end"),
        ("binunicode8_length_2^63", O.PROTO4 + b"\x8d" + struct.pack("<Q", 2 ** 63) + b"ab" + O.STOP, {},
         corrupt, "declared string length runs past the end"),
        ("binbytes8_length_2^64-1", O.PROTO4 + b"\x8e" + struct.pack("<Q", 2 ** 64 - 1) + b"ab" + O.STOP, {},
         corrupt, "declared bytes length runs past the end"),
        ("short_binbytes_past_end", O.PROTO2 + b"C\xff" + b"ab" + O.STOP, {}, corrupt, "length past the end"),
        ("long4_length_2^31-1", O.PROTO2 + b"\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"\x01" + O.STOP, {},
         corrupt, "declared integer length runs past the end"),
        ("long4_negative_length", O.PROTO2 + b"\x8b" + struct.pack("<i", -1) + O.STOP, {}, corrupt,
         "negative length"),
        ("frame_length_2^64-1", O.PROTO4 + b"\x95" + struct.pack("<Q", 2 ** 64 - 1) + O.EMPTY_DICT + O.STOP, {},
         corrupt, "frame runs past the end"),
        ("binget_missing_memo", O.PROTO2 + b"h\x05" + O.STOP, {}, corrupt, "memo entry 5 was never put"),
        ("long_binget_missing_memo", O.PROTO2 + b"j" + struct.pack("<I", 0xFFFFFFFF) + O.STOP, {}, corrupt,
         "memo entry 2^32-1 was never put"),
        ("get_missing_memo_proto0", b"g99\n.", {}, corrupt, "memo entry 99 was never put"),
        ("only_stop", O.PROTO2 + O.STOP, {}, corrupt, "STOP with an empty stack"),
        ("no_stop", O.PROTO2 + O.EMPTY_DICT, {}, corrupt, "pickle ends without STOP"),
        ("unknown_opcode", O.PROTO2 + b"\xff" + O.STOP, {}, corrupt, "0xff is no opcode"),
        ("pop_empty_stack", O.PROTO2 + O.POP + O.EMPTY_DICT + O.STOP, {}, corrupt, "POP on an empty stack"),
        ("append_to_int", O.PROTO2 + b"K\x01K\x02" + O.APPEND + O.STOP, {}, corrupt, "APPEND to an int"),
        ("tuple_without_mark", O.PROTO2 + b"K\x01" + O.TUPLE + O.STOP, {}, corrupt, "TUPLE without MARK"),
        ("setitems_odd", O.PROTO2 + O.EMPTY_DICT + O.MARK + O.str("k") + O.SETITEMS + O.STOP, {}, corrupt,
         "SETITEMS with a key and no value"),
        # tensors whose numbers do not add up
        ("shape_product_overflows_int64", F.tensor_pickle(size=(2 ** 40, 2 ** 40), stride=(1, 1)), rec,
         corrupt, "numel 2^80"),
        ("shape_product_2^63_with_zero_strides", F.tensor_pickle(size=(2 ** 21, 2 ** 21, 2 ** 21),
                                                                 stride=(0, 0, 0)), rec, corrupt,
         "numel 2^63 does not fit int64"),
        ("dim_beyond_int64", F.tensor_pickle(size=(2 ** 64,), stride=(1,)), rec, corrupt, "size 2^64"),
        ("negative_dim", F.tensor_pickle(size=(-1,), stride=(1,)), rec, corrupt, "size -1"),
        ("stride_2^62", F.tensor_pickle(size=(2,), stride=(2 ** 62,)), rec, corrupt, "view far past storage"),
        ("negative_stride", F.tensor_pickle(size=(2,), stride=(-1,)), rec, corrupt, "negative stride"),
        ("offset_int64_max", F.tensor_pickle(offset=2 ** 63 - 1, size=(1,), stride=(1,)), rec, corrupt,
         "offset past storage"),
        ("negative_offset", F.tensor_pickle(offset=-1), rec, corrupt, "offset -1"),
        ("view_past_storage", F.tensor_pickle(numel=4, size=(5,)), rec, corrupt, "5 elements of a 4-element "
         "storage"),
        ("storage_numel_bigger_than_record", F.tensor_pickle(numel=1000, size=(1000,)), rec, corrupt,
         "1000 float32 claimed, 16 bytes stored (torch 1.13 reads past the record here)"),
        ("storage_numel_bigger_than_record_view_fits", F.tensor_pickle(numel=1000, size=(4,)), rec, corrupt,
         "1000 float32 claimed, 16 bytes stored"),
        ("storage_numel_times_size_overflows", F.tensor_pickle(numel=2 ** 62, size=(4,)), rec, corrupt,
         "2^62 float32 = 2^64 bytes"),
        ("storage_numel_negative", F.tensor_pickle(numel=-1, size=(0,)), rec, corrupt, "numel -1"),
        ("storage_record_missing", F.tensor_pickle(key="7"), rec, corrupt, "no data/7 in the zip"),
        ("persistent_id_not_a_tuple", O.PROTO2 + O.EMPTY_DICT + O.str("w") + O.str("storage") + O.BINPERSID +
         O.SETITEM + O.STOP, rec, corrupt, "persistent id is a string"),
        ("persistent_id_short_tuple", O.PROTO2 + O.EMPTY_DICT + O.str("w") + O.tuple_of(O.str("storage")) +
         O.BINPERSID + O.SETITEM + O.STOP, rec, corrupt, "persistent id ('storage',)"),
        ("unknown_storage_class", F.tensor_pickle(storage_class="EvilStorage"), rec, corrupt,
         "torch has no EvilStorage: torch.load fails"),
        ("storage_class_from_another_module", F.tensor_pickle().replace(b"ctorch\nFloatStorage\n",
                                                                        b"cevil\nFloatStorage\n"), rec, corrupt,
         "evil.FloatStorage is not torch.FloatStorage: torch.load fails"),
        # valid but nasty values
        ("deep_lists_1e6", O.PROTO2 + O.EMPTY_LIST * BIG + O.APPEND * (BIG - 1) + O.STOP, {}, nasty,
         "a list nested a million deep"),
        ("deep_marks_1e6", O.PROTO2 + O.MARK * BIG + O.EMPTY_DICT + O.STOP, {}, nasty, "a million open MARKs"),
        ("deep_tuples_1e6", O.PROTO2 + O.MARK * BIG + O.TUPLE * BIG + O.STOP, {}, nasty,
         "a tuple nested a million deep"),
        ("deep_dicts_3e5", O.PROTO2 + (O.EMPTY_DICT + O.str("k")) * 300000 + O.EMPTY_DICT +
         O.SETITEM * 300000 + O.STOP, {}, nasty, "a dict nested 300k deep"),
        ("deep_calls_3e5", O.PROTO2 + O.glob("evil", "f") + O.put(0) + O.get(0) * (300000 - 1) +
         O.EMPTY_TUPLE + (O.REDUCE + O.TUPLE1) * (300000 - 1) + O.REDUCE + O.STOP, {}, nasty,
         "opaque calls nested 300k deep"),
        ("list_contains_itself", O.PROTO2 + O.EMPTY_LIST + O.put(0) + O.get(0) + O.APPEND + O.STOP, {}, nasty,
         "cycle"),
        ("dict_contains_itself", O.PROTO2 + O.EMPTY_DICT + O.put(0) + O.str("me") + O.get(0) + O.SETITEM +
         O.STOP, {}, nasty, "cycle"),
        ("two_lists_cycle", O.PROTO2 + O.EMPTY_LIST + O.put(0) + O.EMPTY_LIST + O.put(1) + O.get(0) +
         O.APPEND + O.APPEND + O.STOP, {}, nasty, "cycle through two lists"),
        ("tuple_list_cycle", O.PROTO2 + O.EMPTY_LIST + O.put(0) + O.get(0) + O.TUPLE1 + O.APPEND + O.STOP, {},
         nasty, "cycle through a tuple"),
        ("object_state_cycle", O.PROTO2 + O.glob("evil", "C") + O.put(0) + O.EMPTY_TUPLE + O.NEWOBJ +
         O.put(1) + O.EMPTY_DICT + O.str("self") + O.get(1) + O.SETITEM + O.BUILD + O.STOP, {}, nasty,
         "object whose state holds itself"),
        ("shared_lists_2^64_leaves", O.PROTO2 + O.EMPTY_LIST + O.put(0) + b"".join(
            O.POP + O.EMPTY_LIST + O.put(i) + O.MARK + O.get(i - 1) + O.get(i - 1) + O.APPENDS
            for i in range(1, 65)) + O.STOP, {}, nasty, "each list holds the previous one twice"),
        ("shared_dicts_2^64_leaves", O.PROTO2 + O.EMPTY_DICT + O.put(0) + b"".join(
            O.POP + O.EMPTY_DICT + O.put(i) + O.MARK + O.str("a") + O.get(i - 1) + O.str("b") +
            O.get(i - 1) + O.SETITEMS for i in range(1, 65)) + O.STOP, {}, nasty,
         "each dict holds the previous one twice"),
        ("one_mb_string_100k_times", O.PROTO2 + O.str("x" * BIG) + O.put(0) + O.EMPTY_LIST + O.MARK +
         O.get(0) * 100000 + O.APPENDS + O.STOP, {}, nasty, "100 GB if expanded"),
        ("memo_index_2^32-1", O.PROTO2 + O.EMPTY_DICT + b"r" + struct.pack("<I", 0xFFFFFFFF) + b"j" +
         struct.pack("<I", 0xFFFFFFFF) + O.POP + O.STOP, {}, nasty, "sparse memo"),
        ("many_sparse_memo_puts", O.PROTO2 + O.EMPTY_DICT + b"".join(
            b"r" + struct.pack("<I", (i * 2654435761) & 0xFFFFFFFF) for i in range(50000)) + O.STOP, {},
         nasty, "50k scattered memo indices"),
        ("ten_thousand_tensors_one_storage", O.PROTO2 + O.EMPTY_DICT + O.MARK + b"".join(
            O.str("t%d" % i) + F.tensor_pickle()[len(O.PROTO2 + O.EMPTY_DICT + O.str("w")):-2]
            for i in range(10000)) + O.SETITEMS + O.STOP, rec, nasty, "10k views of one storage"),
    ]
    return cases


def _zip_with(path, members, compression=zipfile.ZIP_STORED):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one case
        with zipfile.ZipFile(path, "w", compression=compression) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


class HostileInputTests(CorruptionCase):

    def test_hostile_pickles(self):
        d = os.path.join(TMP, "hostile")
        os.makedirs(d, exist_ok=True)
        cases = []
        for name, pkl, records, allowed, why in hostile_pickles():
            p = F.write_torch_zip(os.path.join(d, name + ".pt"), pkl, records)
            cases.append(Case(name, p, ["inspect", p, "--json"], allowed, why))
        self.check_all(cases, "hostile pickles")

    def test_hostile_pickles_are_judged_like_python(self):
        """Where a case demands exit 3, Python's restricted unpickler (or torch) also rejects it."""
        for name, pkl, records, allowed, why in hostile_pickles():
            if allowed != {3}:
                continue
            with self.subTest(case=name):
                ok, reason = check_torch_pickle(pkl, {k: len(v) for k, v in records.items()})
                self.assertIs(ok, False, "reference accepts %s: %s" % (name, reason))

    def test_hostile_zips(self):
        d = os.path.join(TMP, "hostile_zip")
        os.makedirs(d, exist_ok=True)
        good_pkl = F.tensor_pickle()
        rec = b"\0" * 16
        rnd = random.Random(SEED)
        specs = [
            ("deflated_members", [("deflated/data.pkl", good_pkl), ("deflated/data/0", rec),
                                  ("deflated/version", b"3\n")], zipfile.ZIP_DEFLATED, {0, 3},
             "compressed members: supported or refused"),
            ("no_data_pkl", [("no_data_pkl/data/0", rec), ("no_data_pkl/version", b"3\n")], zipfile.ZIP_STORED,
             {3}, "no data.pkl"),
            ("empty_zip", [], zipfile.ZIP_STORED, {3}, "a zip with no entries"),
            ("duplicate_data_pkl", [("dup/data.pkl", good_pkl), ("dup/data.pkl", O.PROTO2 + O.EMPTY_DICT +
                                                                  O.STOP), ("dup/data/0", rec)],
             zipfile.ZIP_STORED, {0, 3}, "two members named data.pkl"),
            ("mixed_prefixes", [("a/data.pkl", good_pkl), ("b/data/0", rec)], zipfile.ZIP_STORED, {0, 3},
             "records under another prefix"),
            ("traversal_names", [("../../x/data.pkl", good_pkl), ("../../x/data/0", rec)], zipfile.ZIP_STORED,
             {0, 3}, "member names with ..; nothing may be written anywhere"),
        ]
        cases = []
        for name, members, comp, allowed, why in specs:
            p = _zip_with(os.path.join(d, name + ".pt"), members, comp)
            cases.append(Case(name, p, ["inspect", p, "--json"], allowed, why))
        raw = [
            ("empty_file", b"", {3}, "0 bytes"),
            ("zip_magic_then_noise", b"PK\x03\x04" + bytes(rnd.randrange(256) for _ in range(200)), {3},
             "zip magic followed by noise"),
            ("legacy_magic_then_noise", b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e" +
             bytes(rnd.randrange(256) for _ in range(100)), {3}, "legacy torch magic then noise"),
            ("eocd_only", b"PK\x05\x06" + b"\0" * 18, {3}, "an end record and nothing else"),
            ("eocd_claims_huge_directory", b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 65535, 65535,
                                                                       0xFFFFFFF0, 0, 0), {3},
             "central directory past the end"),
        ]
        for name, data, allowed, why in raw:
            p = write(os.path.join(d, name + ".bin"), data)
            cases.append(Case(name, p, ["inspect", p, "--json"], allowed, why))
        escape = os.path.normpath(os.path.join(TMP, "..", "..", "x", "data.pkl"))
        existed = os.path.exists(escape)
        self.check_all(cases, "hostile zips")
        if not existed:
            self.assertFalse(os.path.exists(escape), "something wrote " + escape)

    def test_hostile_safetensors(self):
        d = os.path.join(TMP, "hostile_st")
        os.makedirs(d, exist_ok=True)

        def st(header_bytes, data=b"", pad=True):
            if pad:
                header_bytes += b" " * ((-len(header_bytes)) % 8)
            return struct.pack("<Q", len(header_bytes)) + header_bytes + data

        specs = [
            ("header_len_100000001", struct.pack("<Q", 100000001) + b"{}" + b" " * 6, {3}, "N > 100,000,000"),
            ("header_len_2^64-1", struct.pack("<Q", 2 ** 64 - 1) + b"{}", {3}, "N past the end"),
            ("numel_overflow", st(b'{"a":{"dtype":"F32","shape":[4611686018427387904,4],'
                                  b'"data_offsets":[0,16]}}', b"\0" * 16), {3}, "numel * 4 overflows"),
            ("offsets_overlap", st(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                   b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12), {3},
             "overlapping tensors"),
            ("offsets_gap", st(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8), {3},
             "data does not start at 0"),
            ("empty_tensor_past_data", st(b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,8]},'
                                          b'"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"\0" * 4),
             {3}, "an empty tensor at offset 8 of a 4-byte buffer"),
            ("empty_tensor_at_end", st(b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},'
                                       b'"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"\0" * 4),
             {0}, "valid: an empty tensor right at the end of the buffer"),
            ("end_before_begin", st(b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}}', b"\0" * 8), {3},
             "end < begin"),
            ("negative_shape", st(b'{"a":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}}', b"\0" * 4), {3},
             "negative dimension"),
            ("float_shape", st(b'{"a":{"dtype":"U8","shape":[4.0],"data_offsets":[0,4]}}', b"\0" * 4), {3},
             "non-integer dimension"),
            ("unknown_dtype", st(b'{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4), {3},
             "unknown dtype"),
            ("metadata_not_strings", st(b'{"__metadata__":{"format":1}}'), {3}, "metadata value not a string"),
            ("metadata_nested_1e6", st(b'{"__metadata__":' + b"[" * BIG + b"]" * BIG + b"}"), {3},
             "metadata a million arrays deep"),
            ("unterminated_nesting_1e6", st(b'{"a":' + b"[" * BIG), {3}, "JSON never closed"),
            ("header_not_object", st(b"[]"), {3}, "header is an array"),
            ("trailing_bytes", st(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}', b"\0" * 5), {3},
             "file longer than header + data"),
            ("nul_in_padding", st(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}' + b"\0", b"\0" * 4,
                                  pad=False), {3}, "NUL after the JSON"),
            ("nan_in_shape", st(b'{"a":{"dtype":"U8","shape":[NaN],"data_offsets":[0,4]}}', b"\0" * 4), {3},
             "NaN is not JSON"),
            ("duplicate_tensor_names", st(b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},'
                                          b'"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}', b"\0" * 8),
             {0, 3}, "duplicate keys: JSON leaves it open"),
            ("ten_thousand_empty_tensors", st(b"{" + b",".join(
                b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(10000)) + b"}"),
             {0}, "valid: 10k empty tensors"),
        ]
        cases = []
        for name, data, allowed, why in specs:
            if allowed == {3}:
                self.assertIs(validate_safetensors(data)[0], False, name)
            p = write(os.path.join(d, name + ".safetensors"), data)
            cases.append(Case(name, p, ["inspect", p, "--json"], allowed, why))
        self.check_all(cases, "hostile safetensors")

    def test_hostile_structure_metadata(self):
        """ckpt_structure (checkpoint/structure.hpp) with members missing or of the wrong type: each is refused as
        corrupt naming its key path and why, never read past the JSON object (the first case read out of bounds; an ASan build
        reported it)."""
        d = os.path.join(TMP, "hostile_structure")
        os.makedirs(d, exist_ok=True)
        tensor = [("x", torch.zeros(2, dtype=torch.uint8))]
        specs = [
            ("ndarray_without_descr", {"$ndarray": "x", "shape": []}, "structure.descr: is missing"),
            ("ndarray_descr_number", {"$ndarray": "x", "descr": 1, "shape": []}, "structure.descr: is not a string"),
            ("ndarray_name_number", {"$ndarray": 1, "descr": "|u1", "shape": []}, "structure.$ndarray: is not a string"),
            ("tensor_name_list", {"$tensor": []}, "structure.$tensor: is not a string"),
            ("int_not_string", {"$int": 5}, "structure.$int: is not a string"),
            ("float_null", {"$float": None}, "structure.$float: is not a string"),
            ("device_object", {"$device": {}}, "structure.$device: is not a string"),
        ]
        cases = []
        for name, structure, message in specs:
            p = os.path.join(d, name + ".safetensors")
            F.write_safetensors(p, tensor, {"format": "pt", "ckpt_structure": json.dumps(structure)})
            cases.append(Case(name, p, ["inspect", p, "--json"], {3}, "malformed ckpt_structure"))
        self.check_all(cases, "hostile ckpt_structure")
        for (name, _, message), (case, r) in zip(specs, run_cases(cases)):
            self.assertIn(message, r.stderr, name)

    def test_hostile_attributes_metadata(self):
        """ckpt_attributes (the state dict's _metadata, read back by convert) malformed: refused as corrupt, naming the
        file and the metadata key (its errors once named neither)."""
        d = os.path.join(TMP, "hostile_attributes")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, "model.safetensors")
        for attributes, where in (({"$tuple": 5}, "__metadata__ ckpt_attributes: structure.$tuple"),
                                  ({"$tensor": "x"}, "__metadata__ ckpt_attributes")):
            F.write_safetensors(p, [("x", torch.zeros(2))], {"format": "pt", "ckpt_attributes": json.dumps(attributes)})
            r = harness.ckpt_untrusted("convert", p, "--to", "pytorch", "-o", os.path.join(d, "out.bin"), "--json",
                                       timeout=60, cwd=TMP)
            self.assertEqual(r.returncode, 3, r.stderr)
            error = json.loads(r.stdout)["error"]
            self.assertEqual((error["path"], error["where"]), (p, where))
            self.assertFalse(os.path.exists(os.path.join(d, "out.bin")))

    def test_hostile_json(self):
        d = os.path.join(TMP, "hostile_json")
        specs = [
            ("trainer_state.json", b'{"global_step": 1, "log_history": ' + b"[" * BIG + b"]" * BIG + b"}",
             {0, 3}, "valid JSON a million arrays deep"),
            ("trainer_state.json", b'{"global_step": 1, "log_history": [' + b"{" * 10 + b"]}", {3},
             "broken JSON"),
            ("trainer_state.json", b'{"global_step": 1, "log_history": [{"loss": NaN, "step": Infinity}, '
                                   b'{"loss": -Infinity}]}', {0}, "HF writes bare NaN/Infinity: valid"),
            ("trainer_state.json", b'{"global_step": 99999999999999999999999, "log_history": []}', {0, 3},
             "global_step beyond 64 bits"),
            ("config.json", b"{" * BIG, {3}, "a million unclosed objects"),
            ("config.json", b'{"a": ' + b'{"a": ' * 500000 + b"1" + b"}" * 500001, {0, 3},
             "valid JSON objects 500k deep"),
            ("config.json", b'{"model_type": "\xff\xfe"}', {0, 3}, "invalid UTF-8 in a string"),
            ("model.safetensors.index.json", b'{"metadata": {"total_size": -1}, "weight_map": ' + b"[" * BIG +
             b"]" * BIG + b"}", {0, 3}, "weight_map a million arrays deep"),
        ]
        cases = []
        for i, (name, data, allowed, why) in enumerate(specs):
            sub = os.path.join(d, "case%02d" % i)
            os.makedirs(sub)
            p = write(os.path.join(sub, name), data)
            cases.append(Case("%s #%d (%s)" % (name, i, why), p, ["inspect", p, "--json"], allowed, why))
        self.check_all(cases, "hostile json")


# A newline, a screen-clearing escape sequence, a C1 CSI (U+009B) and a right-to-left override.
HOSTILE_NAME = "a\n\x1b[2J\x9b2J\u202e"


class HostileNameTests(unittest.TestCase):
    """Names and keys from a file reach the terminal only escaped: an error stays one line and no control
    character (C0, DEL, C1, bidirectional override) or invalid UTF-8 byte passes through."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="names-", dir=TMP)

    def assertTerminalSafe(self, text, what):
        bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c in "\u202e\ufffd"]
        self.assertEqual(bad, [], "%s passes control characters or invalid UTF-8 through: %r" % (what, text[:2000]))

    def assertOneSafeErrorLine(self, path, args=None):
        r = harness.ckpt_untrusted(*(args or ["inspect", path]), timeout=TIMEOUT_S, cwd=TMP)
        self.assertEqual(r.returncode, 3, r.describe())
        self.assertIsNone(r.error_line_problem(path), r.describe())
        self.assertTerminalSafe(r.stderr, "the error line")
        self.assertIn("\\n", r.stderr, "the newline is shown escaped: " + r.describe())
        return r

    def safetensors(self, header, data=b""):
        hb = json.dumps(header).encode("utf-8")
        hb += b" " * ((-len(hb)) % 8)
        return write(os.path.join(self.dir, "hostile.safetensors"), struct.pack("<Q", len(hb)) + hb + data)

    def test_safetensors_tensor_name_in_error(self):
        self.assertOneSafeErrorLine(self.safetensors({HOSTILE_NAME: {"dtype": "F32", "shape": [1]}}))

    def test_safetensors_metadata_key_in_error(self):
        self.assertOneSafeErrorLine(self.safetensors({"__metadata__": {HOSTILE_NAME: 1}}))

    def test_safetensors_dtype_in_error(self):
        self.assertOneSafeErrorLine(self.safetensors({"w": {"dtype": HOSTILE_NAME, "shape": [1], "data_offsets": [0, 4]}},
                                                     b"\0" * 8))

    def test_pickle_storage_key_in_error(self):
        path = F.write_torch_zip(os.path.join(self.dir, "key.pt"), F.tensor_pickle(key=HOSTILE_NAME), {})
        self.assertOneSafeErrorLine(path)

    def test_pickle_global_name_in_error(self):
        storage_class = O.str("torch") + O.str(HOSTILE_NAME) + O.STACK_GLOBAL
        pid = O.tuple_of(O.str("storage"), storage_class, O.str("0"), O.str("cpu"), O.int(4))
        pkl = O.PROTO2 + O.EMPTY_DICT + O.str("w") + O.glob("torch._utils", "_rebuild_tensor_v2") + O.tuple_of(
            pid + O.BINPERSID, O.int(0), O.tuple_of(O.int(4)), O.tuple_of(O.int(1)), O.NEWFALSE,
            O.glob("collections", "OrderedDict") + O.EMPTY_TUPLE + O.REDUCE) + O.REDUCE + O.SETITEM + O.STOP
        path = F.write_torch_zip(os.path.join(self.dir, "global.pt"), pkl, {"0": b"\0" * 16})
        self.assertOneSafeErrorLine(path)

    def test_zip_member_name_in_error(self):
        # A member outside any prefix folder, its name ending in bytes that are not UTF-8 (patched in after
        # writing: zipfile only writes valid names, and no CRC covers them).
        path = _zip_with(os.path.join(self.dir, "member.pt"), [(HOSTILE_NAME + "@@", b"x")])
        with open(path, "rb") as f:
            data = f.read()
        write(path, data.replace(b"@@", b"\xff\xc0"))
        self.assertOneSafeErrorLine(path)

    def test_inspect_text_shows_names_escaped(self):
        header = {"__metadata__": {HOSTILE_NAME: "v\x1b]0;title\x07"},
                  HOSTILE_NAME: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
        path = self.safetensors(header, b"\0" * 8)
        pt = F.write_torch_zip(os.path.join(self.dir, "names.pt"), F.tensor_pickle(name=HOSTILE_NAME), {"0": b"\0" * 16})
        checkpoint = os.path.join(self.dir, "checkpoint-5")
        os.mkdir(checkpoint)
        shutil.copy(path, os.path.join(checkpoint, "model.safetensors"))
        shutil.copy(pt, os.path.join(checkpoint, "optimizer.pt"))
        for p in (path, pt, checkpoint):
            with self.subTest(path=p):
                r = harness.ckpt_untrusted("inspect", p, timeout=TIMEOUT_S, cwd=TMP)
                self.assertEqual(r.returncode, 0, r.describe())
                self.assertTerminalSafe(r.stdout, "inspect's text")
                self.assertIn("a\\n\\x1b[2J\\u{9b}2J\\u{202e}", r.stdout)


if __name__ == "__main__":
    unittest.main()
