#include "format/torch_archive.hpp"

#include <filesystem>

#include <algorithm>
#include <array>
#include <unordered_map>

#include "util/byte_reader.hpp"
#include "format/pickle_writer.hpp"
#include "util/error.hpp"

namespace ckpt::torch_archive {
namespace {

std::string member_where(const std::string& name) { return "member '" + name + "'"; }

}  // namespace

TorchArchive::TorchArchive(std::span<const std::uint8_t> bytes, const zip::ReadAt& read_at)
    : zip_([&]() -> zip::Archive {
        if (pickle::looks_like_legacy_torch(bytes)) {
          throw Error(ErrorKind::unsupported, "", "",
                      "legacy torch.save format (PyTorch < 1.6); load and save it again with a newer PyTorch");
        }
        if (!zip::looks_like_zip(bytes)) fail_corrupt("byte 0", "not a zip archive");
        return zip::Archive(bytes, read_at);
      }()) {
  if (zip_.entries().empty()) fail_corrupt("", "the archive has no members");
  const std::string& first = zip_.entries().front().name;
  const std::size_t slash = first.find('/');
  if (slash == std::string::npos) fail_corrupt(member_where(first), "member outside a prefix folder");
  prefix_ = first.substr(0, slash + 1);
  const zip::Entry* pickle_entry = zip_.find(prefix_ + "data.pkl");
  if (pickle_entry == nullptr) {
    if (zip_.find(prefix_ + "constants.pkl") != nullptr) {
      fail(ErrorKind::unsupported, "", "a TorchScript archive (torch.jit.save), not a torch.save file");
    }
    fail_corrupt("", "no " + prefix_ + "data.pkl member: not a torch.save archive");
  }
  if (const zip::Entry* order = zip_.find(prefix_ + "byteorder")) {
    auto order_bytes = zip_.data(*order);
    std::string_view text(reinterpret_cast<const char*>(order_bytes.data()), order_bytes.size());
    if (text != "little")
      fail(ErrorKind::unsupported, member_where(order->name), "byte order '" + std::string(text) + "'");
  }
  std::unordered_map<std::string, std::size_t> storage_by_key;
  auto persistent_load = [this, &storage_by_key](pickle::Graph& graph, pickle::NodeId pid) -> pickle::NodeId {
    const pickle::Node& tuple = graph.at(pid);
    if (tuple.kind != pickle::Kind::tuple || tuple.items.size() != 5 ||
        !graph.is(tuple.items[0], pickle::Kind::string) || graph.at(tuple.items[0]).text != "storage") {
      fail_corrupt("", "persistent id is not a ('storage', type, key, location, numel) tuple");
    }
    const pickle::Node& type = graph.at(tuple.items[1]);
    const pickle::Node& key = graph.at(tuple.items[2]);
    const pickle::Node& location = graph.at(tuple.items[3]);
    const pickle::Node& numel = graph.at(tuple.items[4]);
    if (type.kind != pickle::Kind::global || key.kind != pickle::Kind::string ||
        location.kind != pickle::Kind::string || numel.kind != pickle::Kind::integer || numel.integer < 0) {
      fail_corrupt("", "storage reference has malformed fields");
    }
    const std::string type_module = type.text.substr(0, type.text.find('\n'));
    const std::string type_name = type.text.substr(type.text.find('\n') + 1);
    const auto dtype = dtype_from_storage_class(type_name);
    if (!dtype || (type_module != "torch" && type_module != "torch.storage")) {
      fail(ErrorKind::unsupported, "", "storage type " + graph.global_name(tuple.items[1]));
    }
    if (auto seen = storage_by_key.find(key.text); seen != storage_by_key.end()) {
      if (graph.storages[seen->second].dtype != *dtype) {
        fail_corrupt("", "storage '" + key.text + "' referenced with two types");
      }
      pickle::Node ref;
      ref.kind = pickle::Kind::storage;
      ref.integer = static_cast<std::int64_t>(seen->second);
      return graph.add(std::move(ref));
    }
    const zip::Entry* record = zip_.find(prefix_ + "data/" + key.text);
    if (record == nullptr) fail_corrupt(member_where(prefix_ + "data/" + key.text), "storage record is missing");
    pickle::StorageRef storage;
    storage.key = key.text;
    storage.dtype = *dtype;
    storage.untyped = type_name == "UntypedStorage";
    storage.location = location.text;
    storage.numel = static_cast<std::uint64_t>(numel.integer);
    std::uint64_t bytes = 0;
    if (!checked_mul(storage.numel, storage.untyped ? 1 : element_size(*dtype), bytes) || bytes > record->size) {
      fail_corrupt(member_where(record->name), "storage declares " + std::to_string(storage.numel) +
                                                   " elements but its record holds " + std::to_string(record->size) +
                                                   " bytes");
    }
    storage_entries_.push_back(record);
    storage_bytes_.push_back(zip_.data(*record).first(static_cast<std::size_t>(bytes)));
    storage_by_key.emplace(storage.key, graph.storages.size());
    graph.storages.push_back(std::move(storage));
    pickle::Node ref;
    ref.kind = pickle::Kind::storage;
    ref.integer = static_cast<std::int64_t>(graph.storages.size() - 1);
    return graph.add(std::move(ref));
  };
  try {
    graph_ = pickle::parse(zip_.data(*pickle_entry), persistent_load);
  } catch (const Error& e) {
    throw e.with_context("", member_where(pickle_entry->name));
  }
}

std::span<const std::uint8_t> TorchArchive::tensor_extent(const pickle::TensorRef& tensor) const {
  // The parser checked that the view lies inside its storage, so this arithmetic cannot overflow.
  const std::size_t es = element_size(tensor.dtype);
  const std::uint64_t elements = tensor.element_extent();
  if (elements == 0) return {};
  return storage_bytes_[tensor.storage].subspan(static_cast<std::size_t>(tensor.storage_offset) * es,
                                                static_cast<std::size_t>(elements * es));
}

TorchFile::TorchFile(const std::string& path) : TorchFile(MappedFile(path)) {}

TorchFile::TorchFile(MappedFile mapped)
    : file_(std::move(mapped)), archive_([&]() -> TorchArchive {
        try {
          return TorchArchive(
              file_.bytes(), [this](std::uint64_t offset, std::span<std::uint8_t> out) { file_.read_at(offset, out); });
        } catch (const Error& e) {
          throw e.with_context(file_.path(), "");
        }
      }()) {}

Container sniff(std::span<const std::uint8_t> head) {
  if (zip::looks_like_zip(head)) return Container::torch_zip;
  if (pickle::looks_like_legacy_torch(head)) return Container::torch_legacy;
  if (head.size() >= 9) {
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | head[static_cast<std::size_t>(i)];
    if (n >= 2 && n <= 100'000'000 && head[8] == '{') return Container::safetensors;
  }
  for (std::uint8_t c : head) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '{' || c == '[') return Container::json;
    break;
  }
  return Container::unknown;
}

Container sniff(const ReadOnlyFile& file) {
  std::array<std::uint8_t, 64> head{};
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(file.size(), head.size()));
  file.read_at(0, std::span(head).first(n));
  return sniff(std::span(head).first(n));
}

std::optional<std::uint64_t> numel(const std::vector<std::int64_t>& shape) {
  std::uint64_t n = 1;
  for (std::int64_t d : shape) {
    if (d < 0 || !checked_mul(n, static_cast<std::uint64_t>(d), n)) return std::nullopt;
  }
  return n;
}

void write_file(const std::string& path, const pickle::Graph& graph,
                const std::function<void(std::size_t storage, zip::Writer& zip)>& write_storage, WriteOptions options) {
  AtomicFile out(path, options);
  zip::Writer zip(out);
  const std::string prefix = std::filesystem::path(path).stem().string() + "/";
  zip.add(prefix + "data.pkl", pickle::write(graph, graph.root()));
  for (std::size_t i = 0; i < graph.storages.size(); ++i) {
    zip.begin(prefix + "data/" + graph.storages[i].key);
    write_storage(i, zip);
    zip.end();
  }
  zip.add(prefix + "version", "3\n");
  zip.finish();
  out.commit();
}

}  // namespace ckpt::torch_archive
