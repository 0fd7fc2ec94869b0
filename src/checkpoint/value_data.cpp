#include "checkpoint/value_data.hpp"

#include "format/big_int.hpp"
#include "format/json.hpp"
#include "format/torch_archive.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint {
namespace {

constexpr std::size_t kMaxConvertedValues = 1u << 20;
constexpr std::size_t kMaxConvertedBytes = 64u << 20;

// The size of a value once every shared reference is expanded, computed over the graph (acyclic and at most
// pickle::kMaxDepth deep, so the recursion is bounded) in time linear in its size, saturating at the budgets.
class Expansion {
 public:
  explicit Expansion(const pickle::Graph& graph) : graph_(graph) {}

  std::pair<std::uint64_t, std::uint64_t> of(pickle::NodeId id) {
    if (auto it = memo_.find(id); it != memo_.end()) return it->second;
    const pickle::Node& n = graph_.at(id);
    std::uint64_t values = 1;
    std::uint64_t bytes = n.text.size();
    auto add = [&](pickle::NodeId child) {
      auto [v, b] = of(child);
      values = std::min<std::uint64_t>(values + v, kMaxConvertedValues + 1);
      bytes = std::min<std::uint64_t>(bytes + b, kMaxConvertedBytes + 1);
    };
    for (pickle::NodeId child : n.items) add(child);
    if (n.attributes != 0) add(n.attributes);
    return memo_[id] = {values, bytes};
  }

 private:
  const pickle::Graph& graph_;
  std::unordered_map<pickle::NodeId, std::pair<std::uint64_t, std::uint64_t>> memo_;
};

class Converter {
 public:
  explicit Converter(const pickle::Graph& graph) : graph_(graph) {}

  // Refuses up front a value whose expansion would exceed the budgets, before building any of it.
  json::Json convert_checked(pickle::NodeId id) {
    check_expansion(graph_, id);
    return convert(id);
  }

  json::Json convert(pickle::NodeId id) {
    const pickle::Node& n = graph_.at(id);
    using pickle::Kind;
    switch (n.kind) {
      case Kind::none:
        return nullptr;
      case Kind::boolean:
        return n.flag;
      case Kind::integer:
        return n.integer;
      case Kind::big_integer:
        return decimals_.of(graph_, id);
      case Kind::floating:
        return n.number;
      case Kind::string:
        return n.text;
      case Kind::bytes:
        return json::Json{{"type", "bytes"}, {"length", n.text.size()}};
      case Kind::list:
      case Kind::tuple:
      case Kind::set:
      case Kind::frozenset: {
        json::Json array = json::Json::array();
        for (pickle::NodeId item : n.items) array.push_back(convert(item));
        return array;
      }
      case Kind::dict: {
        json::ObjectBuilder object(n.items.size() / 2);
        for (std::size_t i = 0; i + 1 < n.items.size(); i += 2)
          object.set(key_text(n.items[i]), convert(n.items[i + 1]));
        return object.take();
      }
      case Kind::global:
        return json::Json{{"type", "global"}, {"name", graph_.global_name(id)}};
      case Kind::object: {
        const auto& slots = n.items;
        json::Json object{{"type", "object"}};
        const pickle::NodeId callable = slots[pickle::object_callable];
        object["class"] =
            graph_.is(callable, Kind::global) ? json::Json(graph_.global_name(callable)) : convert(callable);
        object["args"] = convert(slots[pickle::object_args]);
        object["state"] = convert(slots[pickle::object_state]);
        if (slots[pickle::object_appended] != graph_.none()) object["items"] = convert(slots[pickle::object_appended]);
        if (slots[pickle::object_set_items] != graph_.none())
          object["entries"] = convert(slots[pickle::object_set_items]);
        return object;
      }
      case Kind::storage: {
        const auto& s = graph_.storages[static_cast<std::size_t>(n.integer)];
        return json::Json{{"type", "storage"}, {"dtype", torch_name(s.dtype)}, {"key", s.key}, {"numel", s.numel}};
      }
      case Kind::tensor: {
        const auto& t = graph_.tensors[static_cast<std::size_t>(n.integer)];
        return json::Json{{"type", "tensor"},
                          {"dtype", torch_name(t.dtype)},
                          {"shape", t.shape},
                          {"nbytes", *torch_archive::numel(t.shape) * element_size(t.dtype)}};
      }
      case Kind::ndarray: {
        const auto& a = graph_.arrays[static_cast<std::size_t>(n.integer)];
        return json::Json{{"type", "ndarray"}, {"dtype", numpy_dtype_name(a.descr)}, {"shape", a.shape}};
      }
      case Kind::numpy_dtype:
        return json::Json{{"type", "numpy_dtype"}, {"dtype", numpy_dtype_name("|" + n.text)}};
      case Kind::device:
        return json::Json{{"type", "device"}, {"device", n.text}};
    }
    return nullptr;
  }

 private:
  std::string key_text(pickle::NodeId id) {
    const pickle::Node& k = graph_.at(id);
    if (k.kind == pickle::Kind::string) return k.text;
    return json::dump(convert(id));
  }

  const pickle::Graph& graph_;
  BigIntDecimals decimals_;
};

}  // namespace

const std::string& BigIntDecimals::of(const pickle::Graph& graph, pickle::NodeId id) {
  auto it = digits_.find(id);
  if (it == digits_.end()) it = digits_.emplace(id, decimal_from_twos_complement(graph.at(id).text)).first;
  return it->second;
}

json::Json to_data(const pickle::Graph& graph, pickle::NodeId id) { return Converter(graph).convert_checked(id); }

void check_expansion(const pickle::Graph& graph, pickle::NodeId id) {
  auto [values, bytes] = Expansion(graph).of(id);
  if (values > kMaxConvertedValues) {
    fail(ErrorKind::unsupported, "",
         "value expands to more than " + std::to_string(kMaxConvertedValues) + " values through shared references");
  }
  if (bytes > kMaxConvertedBytes) {
    fail(ErrorKind::unsupported, "",
         "value expands to more than " + std::to_string(kMaxConvertedBytes >> 20) +
             " MiB of text through shared references");
  }
}

bool is_state_dict(const pickle::Graph& g) {
  const pickle::Node& n = g.at(g.root());
  if (n.kind != pickle::Kind::dict || (n.items.empty() && !n.flag)) return false;
  for (std::size_t i = 0; i + 1 < n.items.size(); i += 2) {
    if (!g.is(n.items[i], pickle::Kind::string) || !g.is(n.items[i + 1], pickle::Kind::tensor)) return false;
  }
  return true;
}

std::string numpy_dtype_name(const std::string& descr) {
  std::string code = descr;
  if (!code.empty() && (code[0] == '<' || code[0] == '>' || code[0] == '|' || code[0] == '=')) code.erase(0, 1);
  if (code.empty()) return descr;
  const char kind = code[0];
  const std::string bytes = code.substr(1);
  const std::string bits = bytes.empty() ? "" : std::to_string(std::atoi(bytes.c_str()) * 8);
  switch (kind) {
    case 'u':
      return "uint" + bits;
    case 'i':
      return "int" + bits;
    case 'f':
      return "float" + bits;
    case 'c':
      return "complex" + bits;
    case 'b':
      return "bool";
    default:
      return code;
  }
}

namespace {

// Bytes per element of a numpy type string, from its size digits ("<u4" 4, "<U2" 8: 4 per character); nullopt
// for a type string without them.
std::optional<std::uint64_t> numpy_itemsize(const std::string& descr) {
  if (descr.size() < 3 || descr.size() > 12) return std::nullopt;
  const std::string digits = descr.substr(2);
  if (digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  const std::uint64_t size = std::stoull(digits);
  return descr[1] == 'U' ? size * 4 : size;
}

}  // namespace

std::optional<std::string> numpy_state_problem(const pickle::NdArray& array) {
  if (array.descr.empty()) return std::nullopt;
  const std::string dtype = numpy_dtype_name(array.descr);
  if (array.descr.size() > 1 && array.descr[1] == 'O') {
    if (array.data_kind == pickle::NdArray::Data::object_list) return std::nullopt;
    return "a numpy array of dtype object whose state holds no list of its values";
  }
  if (array.data_kind != pickle::NdArray::Data::bytes)
    return "a numpy array of dtype " + dtype + " whose state holds no raw bytes";
  const auto numel = torch_archive::numel(array.shape);
  if (!numel) return "a numpy array of shape that is negative or overflows";
  const auto itemsize = numpy_itemsize(array.descr);
  if (!itemsize) return std::nullopt;  // a type whose size numpy works out itself: not judged here
  std::uint64_t need = 0;
  if (__builtin_mul_overflow(*numel, *itemsize, &need) || need != array.data.size()) {
    return "a numpy array of dtype " + dtype + " holding " + std::to_string(array.data.size()) +
           " bytes where its shape needs " +
           (need == 0 && *numel != 0 ? std::string("more than 2^64") : std::to_string(need));
  }
  return std::nullopt;
}

std::optional<std::string> numpy_dtype_unstorable(const std::string& descr, bool plain_dtype) {
  const bool known_order = !descr.empty() && (descr[0] == '<' || descr[0] == '>' || descr[0] == '|' || descr[0] == '=');
  const bool numeric = descr.size() > 1 && std::string_view("biufc").find(descr[1]) != std::string_view::npos;
  if (!known_order || !numeric || !numpy_itemsize(descr))
    return "numpy dtype " + numpy_dtype_name(descr) + " (only bool, integer, float and complex types are kept)";
  if (!plain_dtype) return "numpy dtype " + numpy_dtype_name(descr) + " with fields, a subarray or metadata";
  return std::nullopt;
}

std::optional<std::string> numpy_unstorable(const pickle::NdArray& array) {
  if (array.descr.empty()) return std::nullopt;  // kept as such: written back without a state
  if (auto why = numpy_dtype_unstorable(array.descr, array.plain_dtype)) return why;
  return numpy_state_problem(array);
}

}  // namespace ckpt::checkpoint
