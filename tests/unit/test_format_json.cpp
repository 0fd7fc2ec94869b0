#include <doctest/doctest.h>

#include <cmath>

#include "format/json.hpp"
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

TEST_CASE("dump replaces invalid UTF-8 instead of throwing") {
  json::Json v = std::string("ok\xff");
  CHECK(json::dump(v) == "\"ok\xEF\xBF\xBD\"");
}

TEST_CASE("a number beyond double's range is corrupt input, not an escaping exception (found by fuzz_json)") {
  try {
    json::parse(R"({"best_metric": 2.22357e6118087769})");
    FAIL("parsed");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::corrupt);
  }
}
