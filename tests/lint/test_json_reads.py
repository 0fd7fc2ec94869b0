"""scripts/check_json_reads.py: src/format and src/checkpoint read JSON only through json::Fields, and the check
finds each kind of read it forbids (a planted violation of every rule) while letting writes pass."""
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import check_json_reads  # noqa: E402


def lines(snippet):
    return [line for line, _ in check_json_reads.violations(snippet)]


class CheckJsonReadsTest(unittest.TestCase):
    def test_the_sources_pass(self):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_json_reads.py"),
                            os.path.join(ROOT, "src", "format"), os.path.join(ROOT, "src", "checkpoint")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_a_planted_read_fails_the_check(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "planted.cpp"), "w") as f:
                f.write("// reads a const object\nstd::string name(const json::Json& doc) { return doc[\"name\"]; }\n")
            r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "check_json_reads.py"), d],
                               capture_output=True, text=True)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("planted.cpp:2:", r.stdout)

    def test_subscripts_by_a_string_literal_are_writes_only(self):
        self.assertEqual(lines('void f(json::Json& j) {\n  j["a"] = 1;\n  j["b"]["c"] = 2;\n  report.fields["n"] = 3;\n}\n'), [])
        self.assertEqual(lines('double f(json::Json& j) {\n  return j["a"].get<double>();\n}\n'), [2])
        self.assertEqual(lines('bool f(json::Json& j) {\n  return j["a"] == 1;\n}\n'), [2])
        self.assertEqual(lines('void f(json::Json& e) {\n  e["n"] = e["n"].get<int>() + 1;\n}\n'), [2])
        self.assertEqual(lines('void f(json::Json& j) {\n  for (auto& x : j["list"]) g(x);\n}\n'), [2])

    def test_a_const_json_value_is_never_subscripted(self):
        self.assertEqual(lines('int f(const json::Json& doc, int i) {\n  return doc[i].get<int>();\n}\n'), [2])
        self.assertEqual(lines('void f() {\n  const Json pairs = g();\n  h(pairs[0]);\n}\n'), [3])
        self.assertEqual(lines('void f(const nlohmann::ordered_json &v) {\n  h(v [key]);\n}\n'), [2])
        # Other names, members of other objects and non-JSON containers are not JSON values.
        self.assertEqual(lines('void f(const json::Json& doc, std::vector<int> v) {\n  h(v[0], other.doc[1], docs[2]);\n}\n'), [])

    def test_at_and_value_with_a_key_are_reads(self):
        self.assertEqual(lines('void f(json::Json& j) {\n  h(j.at("a"));\n  h(j.value("b", 0));\n}\n'), [2, 3])

    def test_comments_and_string_literals_are_not_code(self):
        self.assertEqual(lines('// doc["a"] in a comment\n/* x["b"] */\nstd::string s = "[\\"x\\"]" + "[" + R"(v["c"])";\n'), [])


if __name__ == "__main__":
    unittest.main()
