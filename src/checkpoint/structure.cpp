#include "checkpoint/structure.hpp"

#include <charconv>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "checkpoint/value_data.hpp"
#include "format/big_int.hpp"
#include "format/json.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {
namespace {

using pickle::Kind;
using pickle::Node;
using pickle::NodeId;

std::string hex_of(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string bytes_of_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) fail_corrupt("structure", "odd-length hex bytes");
  std::string out(hex.size() / 2, '\0');
  for (std::size_t i = 0; i < out.size(); ++i) {
    unsigned v = 0;
    auto [p, ec] = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, v, 16);
    if (ec != std::errc() || p != hex.data() + 2 * i + 2) fail_corrupt("structure", "bad hex bytes");
    out[i] = static_cast<char>(v);
  }
  return out;
}

// Decimal digits (optional '-') -> little-endian two's complement, for ints past 64 bits.
std::string decimal_to_le(const std::string& text) {
  const bool negative = !text.empty() && text[0] == '-';
  const std::string_view digits = std::string_view(text).substr(negative ? 1 : 0);
  if (digits.empty() || digits.size() > 5000 || digits.find_first_not_of("0123456789") != std::string_view::npos) {
    fail_corrupt("structure", "bad $int digits");
  }
  return twos_complement_from_decimal(digits, negative);
}

class Encoder {
 public:
  Encoder(const pickle::Graph& g, std::vector<NamedArray>& arrays) : g_(g), arrays_(arrays) {}

  json::Json encode(NodeId id, const std::string& path) {
    const Node& n = g_.at(id);
    switch (n.kind) {
      case Kind::none:
        return nullptr;
      case Kind::boolean:
        return n.flag;
      case Kind::integer:
        return n.integer;
      case Kind::big_integer:
        return {{"$int", decimals_.of(g_, id)}};
      case Kind::floating:
        if (std::isnan(n.number)) return {{"$float", "nan"}};
        if (std::isinf(n.number)) return {{"$float", n.number > 0 ? "inf" : "-inf"}};
        return n.number;
      case Kind::string:
        return n.text;
      case Kind::bytes:
        return {{"$bytes", hex_of(n.text)}};
      case Kind::list:
        return sequence(n, path);
      case Kind::tuple:
        return {{"$tuple", sequence(n, path)}};
      case Kind::set:
        return {{"$set", sequence(n, path)}};
      case Kind::frozenset:
        return {{"$frozenset", sequence(n, path)}};
      case Kind::dict:
        return dict(n, path);
      case Kind::tensor: {
        const auto& t = g_.tensors[static_cast<std::size_t>(n.integer)];
        return {{"$tensor", array_name(id, path)}, {"requires_grad", t.requires_grad}, {"parameter", t.is_parameter}};
      }
      case Kind::ndarray: {
        const auto& a = g_.arrays[static_cast<std::size_t>(n.integer)];
        if (auto why = numpy_unstorable(a)) unstorable(path, *why);
        json::Json out{{"$ndarray", array_name(id, path)}, {"descr", a.descr}, {"shape", a.shape}};
        if (a.fortran_order) out["fortran_order"] = true;
        if (a.scalar) out["scalar"] = true;
        return out;
      }
      case Kind::numpy_dtype: {
        const std::string descr = std::string(1, static_cast<char>(n.integer)) + n.text;
        if (auto why = numpy_dtype_unstorable(descr, !n.flag)) unstorable(path, *why);
        return {{"$numpy_dtype", descr}};
      }
      case Kind::device:
        return {{"$device", n.text}};
      case Kind::global: {
        const auto nl = n.text.find('\n');
        return {{"$global", {n.text.substr(0, nl), n.text.substr(nl + 1)}}};
      }
      case Kind::storage:
      case Kind::object: {
        const NodeId callable = n.kind == Kind::object ? n.items[pickle::object_callable] : id;
        fail(ErrorKind::unsupported, path.empty() ? "the root value" : "'" + path + "'",
             "holds an object of class " + (g_.is(callable, Kind::global) ? g_.global_name(callable) : "?") +
                 ", which has no pickle-free form");
      }
    }
    return nullptr;
  }

 private:
  [[noreturn]] static void unstorable(const std::string& path, const std::string& why) {
    fail(ErrorKind::unsupported, path.empty() ? "the root value" : "'" + path + "'",
         "holds " + why + ", which ckpt cannot store exactly");
  }
  static std::string join(const std::string& path, const std::string& segment) {
    return path.empty() ? segment : path + "." + segment;
  }

  json::Json sequence(const Node& n, const std::string& path) {
    json::Json out = json::Json::array();
    for (std::size_t i = 0; i < n.items.size(); ++i) out.push_back(encode(n.items[i], join(path, std::to_string(i))));
    return out;
  }

  json::Json dict(const Node& n, const std::string& path) {
    bool plain = !n.flag && n.attributes == 0;
    for (std::size_t i = 0; plain && i + 1 < n.items.size(); i += 2) {
      const Node& k = g_.at(n.items[i]);
      plain = k.kind == Kind::string && (k.text.empty() || k.text[0] != '$');
    }
    if (plain) {
      json::ObjectBuilder out(n.items.size() / 2);
      for (std::size_t i = 0; i + 1 < n.items.size(); i += 2) {
        const std::string& key = g_.at(n.items[i]).text;
        out.set(key, encode(n.items[i + 1], join(path, key)));
      }
      return out.take();
    }
    json::Json pairs = json::Json::array();
    for (std::size_t i = 0; i + 1 < n.items.size(); i += 2) {
      const Node& k = g_.at(n.items[i]);
      const std::string segment = k.kind == Kind::string    ? k.text
                                  : k.kind == Kind::integer ? std::to_string(k.integer)
                                                            : "key" + std::to_string(i / 2);
      pairs.push_back(
          {encode(n.items[i], join(path, "key" + std::to_string(i / 2))), encode(n.items[i + 1], join(path, segment))});
    }
    json::Json out{{"$dict", std::move(pairs)}, {"$ordered", n.flag}};
    if (n.attributes != 0) out["$attrs"] = encode(n.attributes, join(path, "$attrs"));
    return out;
  }

  std::string array_name(NodeId id, const std::string& path) {
    if (auto it = names_.find(id); it != names_.end()) return it->second;
    std::string name = path.empty() ? "value" : path;
    for (int n = 2; used_.count(name); ++n) name = (path.empty() ? "value" : path) + "#" + std::to_string(n);
    used_.insert(name);
    names_.emplace(id, name);
    arrays_.push_back({name, id});
    return name;
  }

  const pickle::Graph& g_;
  std::vector<NamedArray>& arrays_;
  std::unordered_map<NodeId, std::string> names_;
  std::unordered_set<std::string> used_;
  BigIntDecimals decimals_;
};

// Reads the encoding Encoder writes. Its flags (`$ordered`, `requires_grad`, `fortran_order`...) are false unless
// true, as they always were (WrongType::absent); every other member is required and typed.
class Decoder {
 public:
  Decoder(pickle::Graph& g, const std::function<NodeId(const std::string&, bool, bool)>& make_tensor,
          const std::function<std::string(const std::string&)>& array_bytes)
      : g_(g), make_tensor_(make_tensor), array_bytes_(array_bytes) {}

  NodeId decode(const json::Json& v, const std::string& key_path, std::size_t depth) {
    if (depth > pickle::kMaxDepth) fail_corrupt(key_path, "nested too deeply");
    if (v.is_null()) return g_.none();
    if (v.is_boolean()) return scalar(Kind::boolean, [&](Node& n) { n.flag = v.get<bool>(); });
    if (v.is_number_integer()) {
      if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
        return text(Kind::big_integer, decimal_to_le(std::to_string(v.get<std::uint64_t>())));
      }
      return scalar(Kind::integer, [&](Node& n) { n.integer = v.get<std::int64_t>(); });
    }
    if (v.is_number_float()) return scalar(Kind::floating, [&](Node& n) { n.number = v.get<double>(); });
    if (v.is_string()) return text(Kind::string, v.get<std::string>());
    if (v.is_array()) return sequence(Kind::list, json::Elements(v, at(key_path)), depth);
    if (!v.is_object()) fail_corrupt(key_path, "unexpected JSON value");
    const json::Fields f(v, at(key_path));
    if (f.has("$int")) return text(Kind::big_integer, decimal_to_le(f.string("$int")));
    if (f.has("$float")) {
      const std::string name = f.string("$float");
      const double d = name == "nan" ? NAN : name == "inf" ? INFINITY : name == "-inf" ? -INFINITY : 0;
      if (d == 0) f.required("$float").fail("is not nan, inf or -inf");
      return scalar(Kind::floating, [&](Node& n) { n.number = d; });
    }
    if (f.has("$bytes")) return text(Kind::bytes, bytes_of_hex(f.string("$bytes")));
    if (f.has("$tuple")) return sequence(Kind::tuple, f.array("$tuple"), depth);
    if (f.has("$set")) return sequence(Kind::set, f.array("$set"), depth);
    if (f.has("$frozenset")) return sequence(Kind::frozenset, f.array("$frozenset"), depth);
    if (f.has("$dict")) {
      const json::Elements pairs = f.array("$dict");
      std::vector<NodeId> items;
      for (std::size_t i = 0; i < pairs.size(); ++i) {
        const json::Elements pair = pairs.at(i).array();
        if (pair.size() != 2) pair.fail("is not a [key, value] pair");
        items.push_back(decode(pair.at(0), depth + 1));
        items.push_back(decode(pair.at(1), depth + 1));
      }
      Node n;
      n.kind = Kind::dict;
      n.items = std::move(items);
      n.flag = flag(f, "$ordered");
      if (const auto attributes = f.optional("$attrs")) n.attributes = decode(*attributes, depth + 1);
      return g_.add(std::move(n));
    }
    if (f.has("$tensor")) {
      const std::string name = f.string("$tensor");
      if (auto it = tensors_.find(name); it != tensors_.end()) return it->second;
      const bool requires_grad = flag(f, "requires_grad");
      const bool parameter = flag(f, "parameter");
      return tensors_[name] = make_tensor_(name, requires_grad, parameter);
    }
    if (f.has("$ndarray")) {
      const std::string name = f.string("$ndarray");
      if (auto it = tensors_.find(name); it != tensors_.end()) return it->second;
      pickle::NdArray array;
      array.descr = f.string("descr");
      const json::Elements shape = f.array("shape");
      for (std::size_t i = 0; i < shape.size(); ++i) array.shape.push_back(shape.at(i).int64());
      array.fortran_order = flag(f, "fortran_order");
      array.scalar = flag(f, "scalar");
      if (array.scalar && !array.shape.empty()) f.fail("a numpy scalar with a shape");
      array.data = array_bytes_(name);
      if (array.descr.empty() && !array.data.empty()) f.fail("$ndarray '" + name + "' has bytes but no descr");
      if (auto why = numpy_unstorable(array)) f.fail("$ndarray '" + name + "' is " + *why);
      return tensors_[name] = g_.add_array(std::move(array));
    }
    if (f.has("$numpy_dtype")) {
      const std::string descr = f.string("$numpy_dtype");
      if (auto why = numpy_dtype_unstorable(descr, true)) f.required("$numpy_dtype").fail("is " + *why);
      Node n;
      n.kind = Kind::numpy_dtype;
      n.integer = descr[0];
      n.text = descr.substr(1);
      return g_.add(std::move(n));
    }
    if (f.has("$device")) return text(Kind::device, f.string("$device"));
    if (f.has("$global")) {
      const json::Elements parts = f.array("$global");
      if (parts.size() != 2) parts.fail("is not [module, name]");
      return text(Kind::global, parts.at(0).string() + "\n" + parts.at(1).string());
    }
    Node n;
    n.kind = Kind::dict;
    f.for_each([&](const std::string& key, const json::Value& value) {
      n.items.push_back(text(Kind::string, key));
      n.items.push_back(decode(value, depth + 1));
    });
    return g_.add(std::move(n));
  }

 private:
  NodeId decode(const json::Value& v, std::size_t depth) { return decode(v.json(), v.key_path(), depth); }
  json::Location at(const std::string& key_path) const { return {path_, key_path, json::WrongType::absent}; }
  static bool flag(const json::Fields& f, std::string_view key) { return f.optional_boolean(key).value_or(false); }
  template <typename Fill>
  NodeId scalar(Kind kind, Fill fill) {
    Node n;
    n.kind = kind;
    fill(n);
    return g_.add(std::move(n));
  }
  NodeId text(Kind kind, std::string s) {
    Node n;
    n.kind = kind;
    n.text = std::move(s);
    return g_.add(std::move(n));
  }
  NodeId sequence(Kind kind, const json::Elements& items, std::size_t depth) {
    Node n;
    n.kind = kind;
    for (std::size_t i = 0; i < items.size(); ++i) n.items.push_back(decode(items.at(i), depth + 1));
    return g_.add(std::move(n));
  }

  pickle::Graph& g_;
  const std::function<NodeId(const std::string&, bool, bool)>& make_tensor_;
  const std::function<std::string(const std::string&)>& array_bytes_;
  const std::shared_ptr<const std::string> path_ = std::make_shared<const std::string>();  // the caller names the file
  std::unordered_map<std::string, NodeId> tensors_;
};

}  // namespace

json::Json encode_structure(const pickle::Graph& graph, pickle::NodeId root, std::vector<NamedArray>& arrays) {
  check_expansion(graph, root);  // the encoding expands shared references, as to_data does
  return Encoder(graph, arrays).encode(root, "");
}

pickle::NodeId decode_structure(const json::Json& encoded, pickle::Graph& graph,
                                const std::function<pickle::NodeId(const std::string&, bool, bool)>& make_tensor,
                                const std::function<std::string(const std::string&)>& array_bytes) {
  return Decoder(graph, make_tensor, array_bytes).decode(encoded, "structure", 0);
}

}  // namespace ckpt::checkpoint
