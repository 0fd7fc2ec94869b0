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

TEST_CASE("numbers beyond double's range become infinities or zero, as Python's float() makes them (found by fuzz_json)") {
  // json.loads in CPython: 2.22357e6118087769 -> inf, -1e400 -> -inf, 1e-400 -> 0.0, 5e-324 -> 5e-324.
  CHECK(json::parse(R"({"best_metric": 2.22357e6118087769})")["best_metric"].get<double>() == INFINITY);
  CHECK(json::parse("-1e400").get<double>() == -INFINITY);
  CHECK(json::parse("1e-400").get<double>() == 0.0);
  CHECK(json::parse("5e-324").get<double>() == 5e-324);
}

TEST_CASE("integers are exact at any size") {
  // json.loads("123456789012345678901234567890") is that int in CPython; json.dumps writes it back unchanged.
  const auto v = json::parse(R"({"total_flos": 123456789012345678901234567890, "n": -9223372036854775808, "u": 18446744073709551615})");
  CHECK(json::big_integer_digits(v["total_flos"]) == "123456789012345678901234567890");
  CHECK(!v["total_flos"].is_number());
  CHECK(v["n"].get<std::int64_t>() == INT64_MIN);
  CHECK(v["u"].is_number_unsigned());
  CHECK(json::dump(v) == R"({"total_flos":123456789012345678901234567890,"n":-9223372036854775808,"u":18446744073709551615})");
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
  for (const char* bad : {"01", "1.", ".5", "+1", "[1,]", "{\"a\":1,}", "\"a\tb\"", "\"\\x41\"", "nul", "[1] 2", "-", "\"\\u12\""}) {
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
  CHECK(json::dump_python_sorted(v, 2) == "{\n  \"a\": {},\n  \"b\": [],\n  \"y\": \"\\u00e9\\u007f\\ud83d\\ude00\"\n}");
}

TEST_CASE("an object built member by member keeps their order; a repeated key keeps its first place and its last value") {
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
