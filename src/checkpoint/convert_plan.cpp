#include "checkpoint/convert_plan.hpp"

#include <cctype>
#include <charconv>
#include <filesystem>
#include <map>
#include <tuple>

#include "checkpoint/file_kind.hpp"
#include "checkpoint/value_data.hpp"
#include "format/dtype_cast.hpp"
#include "format/torch_archive.hpp"
#include "util/error.hpp"

namespace ckpt::checkpoint::convert_detail {
namespace fs = std::filesystem;
using pickle::Graph;
using pickle::NodeId;

const pickle::TensorRef& tensor_of(const Weight& w) {
  return w.source->graph().tensors[static_cast<std::size_t>(w.source->graph().at(w.node).integer)];
}

const std::vector<std::int64_t>& shape_of(const Weight& w) {
  return w.assembled ? w.assembled->shape : tensor_of(w).shape;
}

DType dtype_of(const Weight& w) { return w.assembled ? w.assembled->dtype : tensor_of(w).dtype; }

std::vector<Weight> assembled_weights(const std::vector<AssembledTensor>& tensors) {
  std::vector<Weight> weights;
  for (const auto& t : tensors) weights.push_back({t.name, nullptr, 0, t.tied_to, &t});
  return weights;
}

void collect_weights(const Source& s, std::vector<Weight>& out) {
  const Graph& g = s.graph();
  if (!is_state_dict(g))
    throw Error(ErrorKind::unsupported, s.path, "",
                "not a state dict of tensors (an object or other values where weights were expected)");
  using ViewKey =
      std::tuple<const Source*, std::uint32_t, std::int64_t, std::vector<std::int64_t>, std::vector<std::int64_t>>;
  std::map<ViewKey, std::string> first;
  for (const auto& w : out) {
    const auto& t = tensor_of(w);
    first.emplace(ViewKey{w.source, t.storage, t.storage_offset, t.shape, t.stride}, w.name);
  }
  const auto& items = g.at(g.root()).items;
  for (std::size_t i = 0; i + 1 < items.size(); i += 2) {
    Weight w{g.at(items[i]).text, &s, items[i + 1], std::nullopt};
    const auto& t = g.tensors[static_cast<std::size_t>(g.at(w.node).integer)];
    auto [it, inserted] = first.emplace(ViewKey{&s, t.storage, t.storage_offset, t.shape, t.stride}, w.name);
    if (!inserted) w.tied_to = it->second;
    out.push_back(std::move(w));
  }
}

DType output_dtype(DType dtype, const ConvertOptions& options) {
  return options.dtype && is_floating(dtype) && can_cast(dtype, *options.dtype) ? *options.dtype : dtype;
}

std::uint64_t nbytes_of(const std::vector<std::int64_t>& shape, DType dtype) {
  return *torch_archive::numel(shape) * element_size(dtype);
}

WeightsPlan plan_shards(const std::vector<Weight>& weights, const ConvertOptions& options) {
  WeightsPlan plan;
  std::vector<std::size_t> untied;
  std::vector<std::uint64_t> sizes;
  for (std::size_t i = 0; i < weights.size(); ++i) {
    if (weights[i].tied_to) continue;
    untied.push_back(i);
    sizes.push_back(nbytes_of(shape_of(weights[i]), output_dtype(dtype_of(weights[i]), options)));
    plan.total_size += sizes.back();
  }
  const auto groups = greedy_shards(sizes, options.max_shard_size);
  std::map<std::string, std::size_t> shard_of;
  for (std::size_t k = 0; k < groups.size(); ++k) {
    for (std::size_t j : groups[k]) shard_of[weights[untied[j]].name] = k;
  }
  // A tied tensor travels with the tensor it is tied to; state-dict order is kept within each shard.
  plan.shards.resize(groups.size());
  for (std::size_t i = 0; i < weights.size(); ++i) {
    const std::size_t k = shard_of.at(weights[i].tied_to ? *weights[i].tied_to : weights[i].name);
    plan.shards[k].push_back(i);
    shard_of[weights[i].name] = k;
  }
  return plan;
}

WeightsFormat format_of(ConvertTarget to) {
  return to == ConvertTarget::safetensors ? WeightsFormat::safetensors : WeightsFormat::pytorch;
}

void check_dtype_option(const ConvertOptions& options) {
  if (options.dtype && !can_cast(DType::float32, *options.dtype)) {
    throw Error(ErrorKind::invalid_argument, "", "--dtype", "only float32, float16 and bfloat16 are targets");
  }
}

bool is_state_file_name(const std::string& name) {
  const auto kind = promised_kind(name);
  return kind && *kind != FileKind::weights;
}

std::string state_safetensors_name(const std::string& name) { return fs::path(name).stem().string() + ".safetensors"; }

std::string restored_state_name(const Source& s) {
  const std::string stem = fs::path(s.path).stem().string();
  const auto it = s.metadata.find(kSourceNameKey);
  if (it == s.metadata.end()) return stem + ".pt";
  for (const char* extension : {".pt", ".pth", ".bin"}) {
    if (it->second == stem + extension) return it->second;
  }
  throw Error(ErrorKind::corrupt, s.path, std::string("__metadata__ ") + kSourceNameKey,
              "names '" + it->second + "', but a file stored as " + stem + ".safetensors can only go back to " + stem +
                  ".pt, " + stem + ".pth or " + stem + ".bin");
}

void claim_output(const ConvertResult& result, std::size_t first, const std::string& destination,
                  const std::string& input) {
  for (std::size_t i = first; i < result.files.size(); ++i) {
    if (result.files[i].destination != destination) continue;
    const std::string& earlier = result.files[i].source.empty() ? "the weights index" : result.files[i].source;
    throw Error(ErrorKind::unsupported, input, "",
                "would become " + fs::path(destination).filename().string() + ", which " + earlier + " already became");
  }
}

}  // namespace ckpt::checkpoint::convert_detail

namespace ckpt::checkpoint {

namespace {

// "1.5" * factor, the whole text a number, the result at least one byte.
std::optional<std::uint64_t> scaled(const std::string& number, std::uint64_t factor) {
  double value = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (number.empty() || ec != std::errc() || end != number.data() + number.size() || !(value >= 0)) return std::nullopt;
  value *= static_cast<double>(factor);
  if (value < 1 || value > 1.8e19) return std::nullopt;
  return static_cast<std::uint64_t>(value);
}

}  // namespace

std::optional<std::uint64_t> parse_size(const std::string& text) {
  static const std::pair<const char*, std::uint64_t> kUnits[] = {{"KIB", 1ull << 10},
                                                                 {"MIB", 1ull << 20},
                                                                 {"GIB", 1ull << 30},
                                                                 {"TIB", 1ull << 40},
                                                                 {"KB", 1000ull},
                                                                 {"MB", 1000ull * 1000},
                                                                 {"GB", 1000ull * 1000 * 1000},
                                                                 {"TB", 1000ull * 1000 * 1000 * 1000},
                                                                 {"B", 1}};
  std::string upper;
  for (char c : text) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (const auto& [suffix, factor] : kUnits) {
    const std::string s(suffix);
    if (upper.size() <= s.size() || upper.compare(upper.size() - s.size(), s.size(), s) != 0) continue;
    return scaled(upper.substr(0, upper.size() - s.size()), factor);
  }
  return scaled(upper, 1);
}

}  // namespace ckpt::checkpoint
