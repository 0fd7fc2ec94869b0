#include "checkpoint/fsdp.hpp"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "format/torch_archive.hpp"
#include "util/byte_reader.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kModelDirPrefix = "pytorch_model_fsdp_";
constexpr std::string_view kOptimizerDirPrefix = "optimizer_";
constexpr std::string_view kAccelerateModelKey = "model.";

// N of a name "<prefix>N<suffix>" whose N is 1 to 9 decimal digits.
std::optional<std::uint64_t> number_in(std::string_view name, std::string_view prefix, std::string_view suffix = {}) {
  if (name.size() <= prefix.size() + suffix.size() || name.substr(0, prefix.size()) != prefix ||
      name.substr(name.size() - suffix.size()) != suffix) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.size() > 9) return std::nullopt;
  std::uint64_t n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

// The rank of a "__<rank>_<n>.distcp" name.
std::optional<std::uint64_t> distcp_rank(std::string_view name) {
  const std::size_t split = name.find('_', 2);
  if (split == std::string_view::npos || !number_in(name.substr(split), "_", ".distcp")) return std::nullopt;
  return number_in(name.substr(0, split), "__");
}

// The directory's entries of `type` (symlinks are never a directory or a file here), by name.
std::vector<std::string> entries_of(const std::string& dir, fs::file_type type) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->symlink_status(ec).type() == type) names.push_back(it->path().filename().string());
  }
  if (ec) fail_io(dir, "list", ec.value());
  return names;
}

bool exists_unfollowed(const std::string& path) {
  std::error_code ec;
  return fs::symlink_status(path, ec).type() != fs::file_type::not_found && !ec;
}

// The numbered directory "<prefix><i>" with the lowest <i> that `accept` takes.
template <typename Accept>
std::optional<std::string> lowest_numbered_dir(const std::string& dir, std::string_view prefix, Accept accept) {
  std::optional<std::pair<std::uint64_t, std::string>> best;
  for (const std::string& name : entries_of(dir, fs::file_type::directory)) {
    const auto n = number_in(name, prefix);
    if (n && (!best || *n < best->first) && accept(dir + "/" + name)) best.emplace(*n, name);
  }
  if (!best) return std::nullopt;
  return dir + "/" + best->second;
}

std::string chunk_where(const dcp::Item& item, std::size_t chunk) {
  return "'" + item.fqn + "' chunk " + std::to_string(chunk);
}

// Checks the torch.save archive of one chunk and returns the offset, within it, of the chunk's first element.
std::uint64_t tensor_item_data(std::span<const std::uint8_t> bytes, const MappedFile& file, std::uint64_t at,
                               const dcp::Item& item, const dcp::Chunk& chunk) {
  if (torch_archive::sniff(bytes) == torch_archive::Container::safetensors) {
    fail(ErrorKind::unsupported, "", "a safetensors item (newer torch's SerializationFormat.SAFETENSORS), not read");
  }
  const torch_archive::TorchArchive archive(
      bytes, [&file, at](std::uint64_t offset, std::span<std::uint8_t> out) { file.read_at(at + offset, out); });
  const pickle::Graph& graph = archive.graph();
  if (!graph.is(graph.root(), pickle::Kind::tensor)) fail_corrupt("", "the item is not a saved tensor");
  const pickle::TensorRef& tensor = graph.tensors[static_cast<std::size_t>(graph.at(graph.root()).integer)];
  if (tensor.dtype != item.dtype) {
    fail_corrupt("", "the saved tensor is " + std::string(torch_name(tensor.dtype)) + ", the metadata says " +
                         std::string(torch_name(item.dtype)));
  }
  if (tensor.shape != chunk.sizes) fail_corrupt("", "the saved tensor's shape is not the chunk's sizes");
  std::int64_t expected_stride = 1;
  for (std::size_t d = tensor.shape.size(); d-- > 0;) {
    if (tensor.shape[d] > 1 && tensor.stride[d] != expected_stride) {
      fail(ErrorKind::unsupported, "", "the saved tensor is not contiguous");
    }
    expected_stride *= tensor.shape[d];  // bounded by the chunk's numel, which parse_metadata checked
  }
  return archive.storage_entry(tensor.storage).data_offset +
         static_cast<std::uint64_t>(tensor.storage_offset) * element_size(tensor.dtype);
}

}  // namespace

std::string FsdpLayout::describe() const {
  if (kind == FsdpKind::full) return "fsdp full";
  return world_size ? "fsdp sharded x" + std::to_string(*world_size) : "fsdp sharded";
}

std::optional<FsdpLayout> detect_fsdp(const std::string& checkpoint_dir) {
  FsdpLayout layout;
  const auto model_dir = lowest_numbered_dir(checkpoint_dir, kModelDirPrefix, [](const std::string& path) {
    return exists_unfollowed(path + "/" + kDcpMetadataName);
  });
  if (model_dir) {
    layout.model_path = *model_dir;
    layout.optimizer_path =
        lowest_numbered_dir(checkpoint_dir, kOptimizerDirPrefix, [](const std::string&) { return true; });
    std::set<std::uint64_t> ranks;
    for (const std::string& name : entries_of(*model_dir, fs::file_type::regular)) {
      if (const auto rank = distcp_rank(name)) ranks.insert(*rank);
    }
    if (!ranks.empty()) layout.world_size = ranks.size();
    return layout;
  }
  const std::string full = checkpoint_dir + "/" + kFsdpFullModelName;
  std::error_code ec;
  if (fs::symlink_status(full, ec).type() != fs::file_type::regular) return std::nullopt;
  layout.kind = FsdpKind::full;
  layout.model_path = full;
  const std::string optimizer = checkpoint_dir + "/" + kFsdpFullOptimizerName;
  if (exists_unfollowed(optimizer)) layout.optimizer_path = optimizer;
  return layout;
}

DcpDirectory::DcpDirectory(std::string dir) : dir_(std::move(dir)) {
  const std::string metadata_path = dir_ + "/" + kDcpMetadataName;
  {
    if (!exists_unfollowed(metadata_path)) {
      throw Error(ErrorKind::corrupt, metadata_path, "", "missing: the DCP directory is incomplete");
    }
    fs_util::require_regular_file(metadata_path);
    const MappedFile metadata_file(metadata_path);
    metadata_size_ = metadata_file.size();
    try {
      metadata_ = dcp::parse_metadata(metadata_file.bytes());
    } catch (const Error& e) {
      throw e.with_context(metadata_path, "");
    }
  }
  std::map<std::string, const MappedFile*> by_name;
  auto open = [&](const std::string& name) -> const MappedFile& {
    if (const auto found = by_name.find(name); found != by_name.end()) return *found->second;
    const std::string path = dir_ + "/" + name;
    if (!exists_unfollowed(path)) {
      throw Error(ErrorKind::corrupt, path, "", "named by " + metadata_path + " but missing");
    }
    if (!fs_util::require_regular_file(path))
      throw Error(ErrorKind::corrupt, path, "", "a directory, not a .distcp file");
    files_.push_back(std::make_unique<MappedFile>(path));
    by_name.emplace(name, files_.back().get());
    return *files_.back();
  };
  auto item_bytes = [&](const dcp::StorageLocation& storage, const std::string& where) {
    const MappedFile& file = open(storage.relative_path);
    if (storage.offset + storage.length > file.size()) {  // parse_metadata: the sum is below 2^63
      throw Error(ErrorKind::corrupt, file.path(), where,
                  "bytes " + std::to_string(storage.offset) + " to " + std::to_string(storage.offset + storage.length) +
                      " reach past the end of the file (" + std::to_string(file.size()) + " bytes)");
    }
    return std::pair<const MappedFile*, std::span<const std::uint8_t>>(
        &file,
        file.bytes().subspan(static_cast<std::size_t>(storage.offset), static_cast<std::size_t>(storage.length)));
  };
  chunk_data_.resize(metadata_.items.size());
  for (std::size_t i = 0; i < metadata_.items.size(); ++i) {
    const dcp::Item& item = metadata_.items[i];
    if (item.is_bytes) {
      item_bytes(item.storage, "'" + item.fqn + "'");
      continue;
    }
    for (std::size_t c = 0; c < item.chunks.size(); ++c) {
      const dcp::StorageLocation& storage = item.chunks[c].storage;
      const std::string where = chunk_where(item, c) + " at byte " + std::to_string(storage.offset);
      const auto [file, bytes] = item_bytes(storage, where);
      std::uint64_t data = 0;
      try {
        data = tensor_item_data(bytes, *file, storage.offset, item, item.chunks[c]);
      } catch (const Error& e) {
        throw e.with_context(file->path(), where);
      }
      chunk_data_[i].emplace_back(file, storage.offset + data);
    }
  }
}

std::vector<Piece> DcpDirectory::pieces(const dcp::Item& item) const {
  const std::size_t index = static_cast<std::size_t>(&item - metadata_.items.data());
  std::vector<Piece> result;
  const std::uint64_t es = element_size(item.dtype);
  for (const dcp::Run& run : dcp::row_major_runs(item, kMaxPiecesPerTensor)) {
    const auto& [file, offset] = chunk_data_[index][run.chunk];
    result.push_back(Piece{file, offset + run.first * es, run.count, item.dtype});
  }
  return result;
}

std::vector<FsdpFileSize> DcpDirectory::file_sizes() const {
  std::vector<FsdpFileSize> sizes{{dir_ + "/" + kDcpMetadataName, metadata_size_}};
  for (const auto& file : files_) sizes.push_back({file->path(), file->size()});
  return sizes;
}

FsdpCheckpoint::FsdpCheckpoint(const std::string& checkpoint_dir) {
  auto layout = detect_fsdp(checkpoint_dir);
  if (!layout) {
    throw Error(ErrorKind::invalid_argument, checkpoint_dir, "",
                "not an FSDP checkpoint (no pytorch_model_fsdp_<i>/.metadata or pytorch_model_fsdp.bin)");
  }
  if (layout->kind == FsdpKind::full) {
    throw Error(ErrorKind::unsupported, layout->model_path, "",
                "a FULL_STATE_DICT FSDP checkpoint: read the file as a torch.save state dict");
  }
  layout_ = std::move(*layout);
  model_ = std::make_unique<DcpDirectory>(layout_.model_path);
  if (layout_.optimizer_path) optimizer_ = std::make_unique<DcpDirectory>(*layout_.optimizer_path);
}

std::vector<AssembledTensor> FsdpCheckpoint::model_tensors() const {
  const auto& items = model_->metadata().items;
  const bool prefixed = std::all_of(items.begin(), items.end(), [](const dcp::Item& item) {
    return item.is_bytes || item.fqn.compare(0, kAccelerateModelKey.size(), kAccelerateModelKey) == 0;
  });
  std::vector<AssembledTensor> tensors;
  for (const dcp::Item& item : items) {
    if (item.is_bytes) continue;
    AssembledTensor tensor;
    tensor.name = prefixed ? item.fqn.substr(kAccelerateModelKey.size()) : item.fqn;
    tensor.dtype = item.dtype;
    tensor.shape = item.size;
    tensor.pieces = model_->pieces(item);
    tensors.push_back(std::move(tensor));
  }
  return tensors;
}

FsdpSummary FsdpCheckpoint::summary() const {
  FsdpSummary summary;
  summary.world_size = layout_.world_size;
  summary.dcp_version = model_->metadata().version;
  for (const dcp::Item& item : model_->metadata().items) {
    if (item.is_bytes) {
      ++summary.blob_count;
      continue;
    }
    ++summary.tensor_count;
    summary.parameter_count += item.numel;  // bounded: every element was found in a file
    if (std::find(summary.dtypes.begin(), summary.dtypes.end(), item.dtype) == summary.dtypes.end()) {
      summary.dtypes.push_back(item.dtype);
    }
  }
  summary.files = model_->file_sizes();
  if (optimizer_) {
    for (const dcp::Item& item : optimizer_->metadata().items) summary.optimizer_tensor_count += item.is_bytes ? 0 : 1;
    for (FsdpFileSize& file : optimizer_->file_sizes()) summary.files.push_back(std::move(file));
  }
  return summary;
}

std::vector<std::string> fsdp_problems(const std::string& checkpoint_dir, bool* unreadable) {
  std::vector<std::string> problems;
  auto check = [&problems, unreadable](const auto& open) {
    try {
      open();
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::interrupted) throw;
      problems.push_back(e.what());
      if (unreadable && e.kind() == ErrorKind::unsupported) *unreadable = true;
    }
  };
  std::optional<FsdpLayout> layout;
  check([&] { layout = detect_fsdp(checkpoint_dir); });
  if (!problems.empty()) return problems;
  if (!layout) {
    return {checkpoint_dir + ": no FSDP checkpoint (pytorch_model_fsdp_<i>/.metadata or pytorch_model_fsdp.bin)"};
  }
  std::vector<std::string> paths{layout->model_path};
  if (layout->optimizer_path) paths.push_back(*layout->optimizer_path);
  for (const std::string& path : paths) {
    if (layout->kind == FsdpKind::sharded) {
      check([&path] { DcpDirectory{path}; });
    } else {
      check([&path] { torch_archive::TorchFile{path}; });
    }
  }
  return problems;
}

}  // namespace ckpt::checkpoint
