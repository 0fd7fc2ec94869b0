#include <doctest/doctest.h>

#include <chrono>

#include "format/json_object.hpp"

using namespace ckpt;

TEST_CASE("an object built member by member keeps their order; a repeated key keeps its first place and its last value") {
  json::ObjectBuilder builder;
  builder.add("b", 1);
  builder.add("a", 2);
  builder.add("b", 3);
  const json::Json object = std::move(builder).build();
  CHECK(object.dump() == R"({"b":3,"a":2})");
  CHECK(object["a"] == 2);  // and Json finds its members as usual
}

TEST_CASE("300k members take time linear in their number") {
  // Json's own operator[] would take minutes here; the deadline is generous for a linear build (about 0.1 s).
  const auto started = std::chrono::steady_clock::now();
  json::ObjectBuilder builder(300000);
  for (int i = 0; i < 300000; ++i) builder.add("key" + std::to_string(i), i);
  const json::Json object = std::move(builder).build();
  CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(10));
  REQUIRE(object.size() == 300000);
  CHECK(object.back() == 299999);
}
