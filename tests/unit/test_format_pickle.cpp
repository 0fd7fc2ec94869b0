#include <doctest/doctest.h>

#include "bytes.hpp"
#include "checkpoint/value_data.hpp"
#include "format/big_int.hpp"
#include "format/pickle.hpp"
#include "util/error.hpp"

using namespace ckpt;
using ckpt::test::as_bytes;
using ckpt::test::le32;
using pickle::Kind;

namespace {

pickle::Graph parse(std::string_view bytes) { return pickle::parse(as_bytes(bytes)); }

ErrorKind error_kind_of(std::string_view bytes) {
  try {
    parse(bytes);
  } catch (const Error& e) {
    return e.kind();
  }
  FAIL("expected an error");
  return ErrorKind::io;
}

// Opcodes with operands, spelled out so that no C escape swallows a following character.
std::string str(std::string_view s) { return "X" + le32(static_cast<std::uint32_t>(s.size())) + std::string(s); }
std::string put(int i) { return std::string("q") + static_cast<char>(i); }
std::string get(int i) { return std::string("h") + static_cast<char>(i); }
std::string int1(int v) { return std::string("K") + static_cast<char>(v); }
const std::string kTuple2 = "\x86";

// A protocol-2 pickle: PROTO 2, body, STOP.
std::string p2(std::string_view body) { return std::string("\x80\x02", 2) + std::string(body) + "."; }

}  // namespace

TEST_CASE("protocol 2 scalars, containers and the shared None") {
  // pickle.dumps({'a': [1, 300, 70000, -1], 'b': (None, True, False), 'c': 0.5}, protocol=2), CPython 3.11.
  const std::string bytes = std::string(
      "\200\002}q\000(X\001\000\000\000aq\001]q\002(K\001M,"
      "\001Jp\021\001\000J\377\377\377\377eX\001\000\000\000bq\003N\210\211\207q\004X\001\000\000\000cq\005G\077\340"
      "\000\000\000\000\000\000u.",
      67);
  const auto g = parse(bytes);
  const auto& root = g.at(g.root());
  REQUIRE(root.kind == Kind::dict);
  REQUIRE(root.items.size() == 6);
  const auto& list = g.at(*g.dict_get(g.root(), "a"));
  REQUIRE(list.items.size() == 4);
  CHECK(g.at(list.items[0]).integer == 1);
  CHECK(g.at(list.items[1]).integer == 300);
  CHECK(g.at(list.items[2]).integer == 70000);
  CHECK(g.at(list.items[3]).integer == -1);
  const auto& tuple = g.at(*g.dict_get(g.root(), "b"));
  REQUIRE(tuple.kind == Kind::tuple);
  CHECK(tuple.items[0] == g.none());
  CHECK(g.at(tuple.items[1]).flag);
  CHECK_FALSE(g.at(tuple.items[2]).flag);
  CHECK(g.at(*g.dict_get(g.root(), "c")).number == 0.5);
}

TEST_CASE("protocol 0 text opcodes") {
  // pickle.dumps([1, 2**70, 'x\\u00e9', 1.25, True], protocol=0), CPython 3.11; then the same with the
  // character spelled as a raw-unicode escape, which the UNICODE opcode also allows.
  const std::string text =
      std::string("(lp0\012I1\012aL1180591620717411303424L\012aVx\351\012p1\012aF1.25\012aI01\012a.", 56);
  const auto escaped = parse("(lVx\\u00e9\na.");
  CHECK(escaped.at(escaped.at(escaped.root()).items[0]).text == "x\xc3\xa9");
  const auto g = parse(text);
  const auto& list = g.at(g.root());
  REQUIRE(list.items.size() == 5);
  CHECK(g.at(list.items[0]).integer == 1);
  REQUIRE(g.at(list.items[1]).kind == Kind::big_integer);
  CHECK(decimal_from_twos_complement(g.at(list.items[1]).text) == "1180591620717411303424");
  CHECK(g.at(list.items[2]).text == "x\xc3\xa9");
  CHECK(g.at(list.items[3]).number == 1.25);
  CHECK(g.at(list.items[4]).kind == Kind::boolean);
}

TEST_CASE("LONG1 widths: 5-byte ints that LibTorch rejects, negatives, and ints past 64 bits") {
  // The operands below are what pickle.dumps(v, protocol=2) writes for 2**32 + 1, -1, -(2**40), 2**70 + 5.
  auto g = parse(p2(std::string("\x8a\x05\x01\x00\x00\x00\x01", 7)));
  CHECK(g.at(g.root()).integer == 4294967297LL);
  g = parse(p2(std::string("\x8a\x01\xff", 3)));  // -1
  CHECK(g.at(g.root()).integer == -1);
  // -(2**40) = LONG1 6 bytes 00 00 00 00 00 ff
  g = parse(p2(std::string("\x8a\x06\x00\x00\x00\x00\x00\xff", 8)));
  CHECK(g.at(g.root()).integer == -1099511627776LL);
  // 2**70 + 5 = LONG1 9 bytes: 05 00 .. 00 40 00
  g = parse(p2(std::string("\x8a\x09\x05\x00\x00\x00\x00\x00\x00\x00\x40", 11)));
  REQUIRE(g.at(g.root()).kind == Kind::big_integer);
  CHECK(decimal_from_twos_complement(g.at(g.root()).text) == "1180591620717411303429");
}

TEST_CASE("protocol 4 and 5: frames, MEMOIZE, STACK_GLOBAL, sets, bytearray") {
  // pickle.dumps({'s': {1, 2}, 'b': bytearray(b'xy')}, protocol=5), CPython 3.11.
  const std::string bytes = std::string(
      "\200\005\225!\000\000\000\000\000\000\000}\224(\214\001s\224\217\224("
      "K\001K\002\220\214\001b\224\226\002\000\000\000\000\000\000\000xy\224u.",
      44);
  const auto g = parse(bytes);
  const auto& set = g.at(*g.dict_get(g.root(), "s"));
  CHECK(set.kind == Kind::set);
  CHECK(set.items.size() == 2);
  const auto& b = g.at(*g.dict_get(g.root(), "b"));
  CHECK(b.kind == Kind::bytes);
  CHECK(b.text == "xy");
}

TEST_CASE("OrderedDict with BUILD state, _codecs.encode bytes, enum members by getattr") {
  const std::string body =
      "ccollections\nOrderedDict\n)R(" + str("k") + int1(7) + "u}" + str("_metadata") + int1(1) + "sb";
  auto g = parse(p2(body));
  const auto& d = g.at(g.root());
  CHECK(d.kind == Kind::dict);
  CHECK(d.flag);
  REQUIRE(d.attributes != 0);
  CHECK(g.dict_get(d.attributes, "_metadata") != nullptr);

  g = parse(p2("c_codecs\nencode\n" +
               str("\xc3\xbf"
                   "ab") +
               str("latin1") + kTuple2 + "R"));
  CHECK(g.at(g.root()).kind == Kind::bytes);
  CHECK(g.at(g.root()).text ==
        "\xff"
        "ab");

  g = parse(
      p2("c__builtin__\ngetattr\nctransformers.trainer_utils\nIntervalStrategy\n" + str("STEPS") + kTuple2 + "R"));
  CHECK(g.at(g.root()).kind == Kind::global);
  CHECK(g.global_name(g.root()) == "transformers.trainer_utils.IntervalStrategy.STEPS");
}

TEST_CASE("a call to os.system is recorded as an opaque object, never made") {
  // The classic payload: posix.system('touch /tmp/pwned') via REDUCE.
  const auto g = parse(p2("cposix\nsystem\n" + str("touch /tmp/pwned") + "\x85R"));
  const auto& object = g.at(g.root());
  REQUIRE(object.kind == Kind::object);
  CHECK(g.global_name(object.items[pickle::object_callable]) == "posix.system");
  const auto data = checkpoint::to_data(g, g.root());
  CHECK(data["class"] == "posix.system");
  CHECK(data["args"][0] == "touch /tmp/pwned");
}

TEST_CASE("hostile pickles are refused with an error, not a crash") {
  SUBCASE("declared string longer than the input") {
    CHECK(error_kind_of(p2("X" + le32(0xFFFFFFF0u) + "abc")) == ErrorKind::corrupt);
  }
  SUBCASE("memo reference never stored") { CHECK(error_kind_of(p2(get(5))) == ErrorKind::corrupt); }
  SUBCASE("a list that contains itself") {
    CHECK(error_kind_of(p2("]" + put(0) + get(0) + "a")) == ErrorKind::unsupported);
  }
  SUBCASE("nesting deeper than the limit through the memo") {
    std::string body = "]" + put(0);
    for (int i = 0; i < 1000; ++i) body += "]" + get(0) + "a" + put(0) + "0";  // [prev], memo it, pop
    body += get(0);
    CHECK(error_kind_of(p2(body)) == ErrorKind::unsupported);
  }
  SUBCASE("pop from an empty stack") { CHECK(error_kind_of(p2("0")) == ErrorKind::corrupt); }
  SUBCASE("no STOP") { CHECK(error_kind_of("\x80\x02K\x01") == ErrorKind::corrupt); }
  SUBCASE("unknown opcode") { CHECK(error_kind_of(p2("\xff")) == ErrorKind::corrupt); }
  SUBCASE("persistent id outside an archive") { CHECK(error_kind_of(p2("NQ")) == ErrorKind::unsupported); }
  SUBCASE("extension registry") { CHECK(error_kind_of(p2("\x82\x01")) == ErrorKind::unsupported); }
  SUBCASE("APPEND to a non-list") { CHECK(error_kind_of(p2(int1(1) + int1(2) + "a")) == ErrorKind::corrupt); }
  SUBCASE("protocol 6") { CHECK(error_kind_of("\x80\x06N.") == ErrorKind::unsupported); }
  SUBCASE("integer literal too long to convert") {
    CHECK(error_kind_of("I" + std::string(5000, '9') + "\n.") == ErrorKind::corrupt);
  }
}

TEST_CASE("every truncation of a real pickle fails cleanly") {
  const std::string full = p2("ccollections\nOrderedDict\n)R(" + str("k") + int1(7) + "u");
  CHECK_NOTHROW(parse(full));
  for (std::size_t n = 0; n < full.size(); ++n) {
    CHECK_THROWS_AS(parse(std::string_view(full).substr(0, n)), Error);
  }
}

TEST_CASE("shared references that expand exponentially hit the conversion budget") {
  // l0 = []; l1 = [l0, l0]; l2 = [l1, l1]; ... 2^40 leaves when expanded, tiny as a graph.
  std::string body = "]" + put(0);
  for (int i = 0; i < 40; ++i) body += "(" + get(0) + get(0) + "l" + put(0) + "0";
  body += get(0);
  const auto g = parse(p2(body));
  CHECK_THROWS_AS(checkpoint::to_data(g, g.root()), Error);
}

TEST_CASE("nested tensor rebuild calls do not recurse (found in review: 30,000 levels crashed the stack)") {
  // args_k = (_rebuild_from_type_v2, torch.Tensor, args_{k-1}), args_0 = (); then _rebuild_from_type_v2(*args_n):
  // an interpreter that applies the inner call recursively goes 30,000 frames deep while parsing.
  std::string body =
      "ctorch._utils\n_rebuild_from_type_v2\n" + put(0) + "0" + "ctorch\nTensor\n" + put(1) + "0" + ")" + put(2) + "0";
  for (int i = 0; i < 30000; ++i) body += get(0) + get(1) + get(2) + "\x87" + put(2) + "0";
  body += get(0) + get(2) + "R";
  CHECK(error_kind_of(p2(body)) == ErrorKind::unsupported);  // too deep, refused after parsing
}

TEST_CASE("copying one large value many times hits the copy budget (found in review)") {
  // b = bytes(1 MiB); then bytes(b) 64 times, each call copying it
  std::string body = "B" + le32(1u << 20) + std::string(1u << 20, 'x') + put(0) + "0";
  for (int i = 0; i < 64; ++i) body += "c__builtin__\nbytes\n" + get(0) + "\x85R0";
  body += "N";
  CHECK(error_kind_of(p2(body)) == ErrorKind::corrupt);
}

TEST_CASE("NEWOBJ_EX keyword arguments survive the node table growing while they are copied (a fuzzer's find)") {
  // NEWOBJ_EX copies the kwargs dict's items into the new object's set items; making that dict node can grow the
  // node table, which once freed the items being copied. Filler of every length puts the growth at that moment
  // for one of them (ASan reports the read; tests/fuzz/regressions/pickle-newobj-ex-kwargs-use-after-free).
  for (int filler = 0; filler < 300; ++filler) {
    std::string p = "\x80\x02(";
    for (int k = 0; k < filler; ++k) p += "K\x01";
    p += "l0";                                   // LIST, POP: nodes made and dropped
    p += "cmod\nCls\n)}" + str("a") + "K\x07s";  // GLOBAL, EMPTY_TUPLE, {"a": 7}
    p += "\x92.";                                // NEWOBJ_EX, STOP
    const auto g = parse(p);
    const auto& object = g.at(g.root());
    REQUIRE(object.kind == Kind::object);
    const auto& kwargs = g.at(object.items[pickle::object_set_items]);
    REQUIRE(kwargs.items.size() == 2);
    CHECK(g.at(kwargs.items[0]).text == "a");
    CHECK(g.at(kwargs.items[1]).integer == 7);
  }
}
