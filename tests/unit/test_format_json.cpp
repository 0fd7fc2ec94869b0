#include <doctest/doctest.h>

#include <cmath>

#include "format/json.hpp"
#include "growth.hpp"
#include "util/error.hpp"

using namespace ckpt;

TEST_CASE("Python's NaN and Infinity tokens, but not inside strings") {
  // json.dumps({"a": float("nan"), "b": [float("inf"), -float("inf")], "c": "NaN Infinity"}) in CPython
  const auto v = json::parse(R"({"a": NaN, "b": [Infinity, -Infinity], "c": "NaN Infinity"})");
  CHECK(std::isnan(v["a"].get<double>()));
  CHECK(v["b"][0].get<double>() == INFINITY);
  CHECK(v["b"][1].get<double>() == -INFINITY);
  CHECK(v["c"] == "NaN Infinity");
}

TEST_CASE("key order is kept") {
  const auto v = json::parse(R"({"z": 1, "a": 2})");
  CHECK(v.begin().key() == "z");
}

TEST_CASE("syntax errors name a byte; deep nesting is refused") {
  try {
    json::parse(R"({"a": [1, 2,, 3]})");
    FAIL("parsed");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::corrupt);
    CHECK(e.where().rfind("byte ", 0) == 0);
  }
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  try {
    json::parse(deep);
    FAIL("parsed");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
  }
}

TEST_CASE("dump writes a byte that is not UTF-8 as Python's os.fsdecode maps it, reversibly") {
  // os.fsencode(json.loads('"ok\\udcff"')) == b"ok\xff" in CPython.
  json::Json v = std::string("ok\xff");
  CHECK(json::dump(v) == "\"ok\\udcff\"");
  CHECK(json::dump(std::string("caf\xC3\xA9")) == "\"caf\xC3\xA9\"");
}

TEST_CASE(
    "numbers beyond double's range become infinities or zero, as Python's float() makes them (found by fuzz_json)") {
  // json.loads in CPython: 2.22357e6118087769 -> inf, -1e400 -> -inf, 1e-400 -> 0.0, 5e-324 -> 5e-324.
  CHECK(json::parse(R"({"best_metric": 2.22357e6118087769})")["best_metric"].get<double>() == INFINITY);
  CHECK(json::parse("-1e400").get<double>() == -INFINITY);
  CHECK(json::parse("1e-400").get<double>() == 0.0);
  CHECK(json::parse("5e-324").get<double>() == 5e-324);
}

TEST_CASE("integers are exact at any size") {
  // json.loads("123456789012345678901234567890") is that int in CPython; json.dumps writes it back unchanged.
  const auto v = json::parse(
      R"({"total_flos": 123456789012345678901234567890, "n": -9223372036854775808, "u": 18446744073709551615})");
  CHECK(json::big_integer_digits(v["total_flos"]) == "123456789012345678901234567890");
  CHECK(!v["total_flos"].is_number());
  CHECK(v["n"].get<std::int64_t>() == INT64_MIN);
  CHECK(v["u"].is_number_unsigned());
  CHECK(json::dump(v) ==
        R"({"total_flos":123456789012345678901234567890,"n":-9223372036854775808,"u":18446744073709551615})");
  CHECK(json::dump(json::parse("-123456789012345678901234567890")) == "-123456789012345678901234567890");
  // A string never becomes a big integer, whatever it holds.
  CHECK(json::parse(R"("\u0000ckpt:int:5")").is_string());
}

TEST_CASE("lone surrogate escapes are kept and written back as Python writes them") {
  // '{"output_dir": "runs/caf\udce9"}' is what json.dumps writes for os.fsdecode(b"runs/caf\xe9").
  const auto v = json::parse(R"({"output_dir": "runs/caf\udce9", "pair": "\ud83d\ude00", "high": "\ud83d!"})");
  CHECK(v["output_dir"].get<std::string>() == "runs/caf\xED\xB3\xA9");
  CHECK(v["pair"].get<std::string>() == "\xF0\x9F\x98\x80");
  CHECK(v["high"].get<std::string>() == "\xED\xA0\xBD!");
  CHECK(json::dump_python_sorted(v, -1) == R"({"high":"\ud83d!","output_dir":"runs/caf\udce9","pair":"\ud83d\ude00"})");
  CHECK(json::dump(v["output_dir"]) == R"("runs/caf\udce9")");
}

TEST_CASE("a repeated key keeps its first position and its last value, as a Python dict") {
  // json.loads('{"a": 1, "b": 2, "a": 3}') == {'a': 3, 'b': 2} in CPython.
  const auto small = json::parse(R"({"a": 1, "b": 2, "a": 3})");
  CHECK(small.size() == 2);
  CHECK(small.begin().key() == "a");
  CHECK(small["a"] == 3);
  std::string text = "{";
  for (int i = 0; i < 100; ++i) text += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + ", ";
  text += "\"k7\": -1}";
  const auto big = json::parse(text);
  CHECK(big.size() == 100);
  CHECK(big["k7"] == -1);
  CHECK(std::next(big.begin(), 7).key() == "k7");
}

TEST_CASE("an object of a million keys parses in linear time") {
  std::string text = "{";
  for (int i = 0; i < 1000000; ++i) text += (i ? ",\"" : "\"") + std::to_string(i) + "\":" + std::to_string(i);
  text += "}";
  const auto v = json::parse(text);  // a linear key search per insertion would take hours
  CHECK(v.size() == 1000000);
}

TEST_CASE("Python's json grammar: what it refuses is refused") {
  for (const char* bad :
       {"01", "1.", ".5", "+1", "[1,]", "{\"a\":1,}", "\"a\tb\"", "\"\\x41\"", "nul", "[1] 2", "-", "\"\\u12\""}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(json::parse(bad), Error);
  }
  CHECK(json::parse(" \t\r\n[1 , -0.5e+2]\n")[1].get<double>() == -50.0);
}

TEST_CASE("floats are written as Python's repr writes them") {
  // json.dumps([1e16, 1e15, 1e-05, 0.0001, 0.4825291037559509, -0.0, 1.0, 123456789012345678.0, 5e-324]) in CPython.
  const json::Json v = {1e16, 1e15, 1e-05, 0.0001, 0.4825291037559509, -0.0, 1.0, 123456789012345678.0, 5e-324};
  CHECK(json::dump_python_sorted(v, -1) ==
        "[1e+16,1000000000000000.0,1e-05,0.0001,0.4825291037559509,-0.0,1.0,1.2345678901234568e+17,5e-324]");
  CHECK(json::dump(json::Json{NAN, INFINITY}) == "[null,null]");
  CHECK(json::dump_python_sorted(json::Json{NAN, -INFINITY}, -1) == "[NaN,-Infinity]");
}

TEST_CASE("dump_python_sorted escapes as json.dumps(ensure_ascii=True, sort_keys=True, indent=2)") {
  // json.dumps({"y": "\u00e9\x7f\U0001F600", "b": [], "a": {}}, sort_keys=True, indent=2)
  const json::Json v = json::parse(R"({"y": "\u00e9\u007f\ud83d\ude00", "b": [], "a": {}})");
  CHECK(json::dump_python_sorted(v, 2) ==
        "{\n  \"a\": {},\n  \"b\": [],\n  \"y\": \"\\u00e9\\u007f\\ud83d\\ude00\"\n}");
}

TEST_CASE(
    "an object built member by member keeps their order; a repeated key keeps its first place and its last value") {
  json::ObjectBuilder builder;
  builder.set("b", 1);
  builder.set("a", 2);
  builder.set("b", 3);
  const json::Json object = builder.take();
  CHECK(object.dump() == R"({"b":3,"a":2})");
  CHECK(object["a"] == 2);  // and Json finds its members as usual
}

TEST_CASE("members take time linear in their number") {
  // Json's own operator[] searches the members one by one: 300k took minutes.
  const auto build = [](std::size_t n) {
    json::ObjectBuilder builder(n);
    for (std::size_t i = 0; i < n; ++i) builder.set("key" + std::to_string(i), i);
    const json::Json object = builder.take();
    REQUIRE(object.size() == n);
    CHECK(object.back() == n - 1);
  };
  CHECK(test::time_relative_to_a_map(300000, build) < 30);  // about 3.5 here; quadratic, over 1000
}

namespace {

// The Error a read throws; fails the test when it throws none.
template <typename Read>
Error read_error(const Read& read) {
  try {
    read();
  } catch (const Error& e) {
    return e;
  }
  FAIL("no error");
  return Error(ErrorKind::io, "", "", "");
}

}  // namespace

TEST_CASE("Fields: each typed read, required and optional") {
  const json::Json doc = json::parse(
      R"({"s": "text", "i": -3, "u": 18446744073709551615, "f": 0.5, "b": true, "o": {"k": 1}, "a": [1, "x"], "n": NaN})");
  const json::Fields f(doc, "state.json", "");
  CHECK(f.has("s"));
  CHECK(!f.has("missing"));
  CHECK(f.string("s") == "text");
  CHECK(f.int64("i") == -3);
  CHECK(f.uint64("u") == 18446744073709551615u);
  CHECK(f.number("f") == 0.5);
  CHECK(f.number("i") == -3.0);  // a number read accepts integers
  CHECK(std::isnan(f.number("n")));
  CHECK(f.boolean("b"));
  CHECK(f.object("o").int64("k") == 1);
  const json::Elements a = f.array("a");
  REQUIRE(a.size() == 2);
  CHECK(a.at(0).int64() == 1);
  CHECK(a.at(1).string() == "x");
  CHECK(a.at(1).key_path() == "a[1]");
  CHECK(f.optional_string("s") == "text");
  CHECK(!f.optional_string("missing"));
  CHECK(!f.optional_int64("missing"));
  CHECK(!f.optional_object("missing"));
  CHECK(f.optional_array("a")->size() == 2);
  CHECK(f.value_or_null("missing").is_null());
  CHECK(f.value_or_null("o") == json::Json{{"k", 1}});
  std::vector<std::string> keys;
  f.for_each([&](const std::string& key, const json::Value& value) { keys.push_back(key + "=" + value.key_path()); });
  CHECK(keys.front() == "s=s");
  CHECK(keys.size() == 8);
}

TEST_CASE(
    "Fields: a missing member, a wrong type or a value out of range is corrupt, naming the file and the key path") {
  const json::Json doc =
      json::parse(R"({"log_history": [{"loss": 1}, {"loss": "x", "step": 3.0}], "big": 99999999999999999999999,
                                         "layer.0.weight": {"shape": [2, -1]}, "n": 5})");
  const json::Fields f(doc, "run/trainer_state.json", "");
  const auto second = [&] { return f.array("log_history").at(1).object(); };
  Error e = read_error([&] { second().number("loss"); });
  CHECK(e.kind() == ErrorKind::corrupt);
  CHECK(e.path() == "run/trainer_state.json");
  CHECK(e.where() == "log_history[1].loss");
  CHECK(e.detail() == "is not a number");
  CHECK(read_error([&] { second().int64("step"); }).where() == "log_history[1].step");  // a float is not an integer
  e = read_error([&] { second().string("epoch"); });
  CHECK(e.where() == "log_history[1].epoch");
  CHECK(e.detail() == "is missing");
  CHECK(read_error([&] { f.array("log_history").at(2); }).detail() == "has no element 2");
  CHECK(read_error([&] { f.uint64("big"); }).detail() == "is not a non-negative integer");  // beyond 64 bits
  CHECK(read_error([&] { f.int64("n", 0, 4); }).detail() == "is not an integer from 0 to 4");
  CHECK(read_error([&] { f.uint64("n", 4); }).detail() == "is not an integer from 0 to 4");
  CHECK(read_error([&] { f.object("n"); }).detail() == "is not an object");
  CHECK(read_error([&] { f.array("n"); }).detail() == "is not an array");
  CHECK(read_error([&] { f.boolean("n"); }).detail() == "is not true or false");
  CHECK(read_error([&] { f.optional_string("n"); }).where() == "n");  // optional reads are strict about types
  // A key that is not a plain name is quoted.
  e = read_error([&] { f.object("layer.0.weight").array("shape").at(1).uint64(); });
  CHECK(e.where() == R"(["layer.0.weight"].shape[1])");
  const json::Fields header(doc, "", "header");
  CHECK(read_error([&] { header.object("layer.0.weight").string("dtype"); }).where() ==
        R"(header["layer.0.weight"].dtype)");
  CHECK(read_error([&] { header.array("log_history").at(0).object().string("loss"); }).where() ==
        "header.log_history[0].loss");
  // The root must be an object.
  const json::Json list = json::parse("[1]");
  e = read_error([&] { json::Fields(list, "config.json", ""); });
  CHECK(e.kind() == ErrorKind::corrupt);
  CHECK(std::string(e.what()) == "config.json: is not a JSON object");
}

TEST_CASE(
    "Fields: with WrongType::absent, optional reads take a member of the wrong type as missing; required reads still "
    "fail") {
  const json::Json doc = json::parse(R"({"epoch": "x", "log_history": [{"loss": null}], "global_step": -1, "o": []})");
  const json::Fields f(doc, "trainer_state.json", "", json::WrongType::absent);
  CHECK(!f.optional_number("epoch"));
  CHECK(!f.optional_int64("global_step", 0));
  CHECK(!f.optional_object("o"));
  CHECK(!f.optional_array("epoch"));
  CHECK(!f.optional_boolean("epoch"));
  CHECK(!f.optional_string("global_step"));
  CHECK(!f.array("log_history").at(0).object().optional_number("loss"));  // nested reads inherit the rule
  CHECK(read_error([&] { f.number("epoch"); }).where() == "epoch");
}
