// Reading files written by torch.save (PyTorch >= 1.6: a zip archive) without executing their pickle.
//
// Grammar (a zip archive, see format/zip.hpp, whose members all live under one prefix folder):
//   archive  = PREFIX/data.pkl PREFIX/data/<key>* [PREFIX/version] [PREFIX/byteorder] [PREFIX/.format_version]
//              [PREFIX/.storage_alignment] [PREFIX/.data/...]
//   data.pkl = a pickle (format/pickle.hpp) whose persistent ids are storage references:
//   pid      = ('storage', <GLOBAL torch.<Type>Storage | torch.storage.UntypedStorage>, key: str,
//               location: str, numel: int)
//   data/<key> = the storage's bytes, little-endian unless PREFIX/byteorder says "big"; at least numel
//               elements of the storage's type (bytes for an untyped storage).
// The same key may be referenced many times (tied weights, views); it is one storage.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "format/pickle.hpp"
#include "format/zip.hpp"
#include "format/zip_writer.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::torch_archive {

// A torch.save archive held in `bytes`: a whole file (TorchFile), or one item of a torch.distributed.checkpoint
// file (format/dcp.hpp). `read_at` reads at offsets relative to `bytes`, as zip::ReadAt. Throws Error without a
// path (the caller knows it), with the member and byte offset where they apply. Views into `bytes`, which must
// outlive it.
class TorchArchive {
 public:
  explicit TorchArchive(std::span<const std::uint8_t> bytes, const zip::ReadAt& read_at = {});

  const zip::Archive& zip() const { return zip_; }
  const std::string& prefix() const { return prefix_; }
  const pickle::Graph& graph() const { return graph_; }

  // The bytes of storage `index` (Graph::storages), a view into `bytes`.
  std::span<const std::uint8_t> storage_bytes(std::size_t index) const { return storage_bytes_[index]; }
  // The bytes from a tensor's first to its last element (all of them when it is contiguous).
  std::span<const std::uint8_t> tensor_extent(const pickle::TensorRef& tensor) const;
  // The zip member holding storage `index`; its data_offset is relative to `bytes`.
  const zip::Entry& storage_entry(std::size_t index) const { return *storage_entries_[index]; }

 private:
  zip::Archive zip_;
  std::string prefix_;
  pickle::Graph graph_;
  std::vector<const zip::Entry*> storage_entries_;
  std::vector<std::span<const std::uint8_t>> storage_bytes_;
};

class TorchFile {
 public:
  // Maps and parses `path`. Throws Error with the path, and the member and byte offset where it applies.
  explicit TorchFile(const std::string& path);
  // The same, for a file already mapped (sniffed by the caller).
  explicit TorchFile(MappedFile file);

  const std::string& path() const { return file_.path(); }
  std::uint64_t size() const { return file_.size(); }
  const zip::Archive& zip() const { return archive_.zip(); }
  const std::string& prefix() const { return archive_.prefix(); }
  const pickle::Graph& graph() const { return archive_.graph(); }

  // The bytes of storage `index` (Graph::storages), a view into the mapped file.
  std::span<const std::uint8_t> storage_bytes(std::size_t index) const { return archive_.storage_bytes(index); }
  // The bytes from a tensor's first to its last element (all of them when it is contiguous).
  std::span<const std::uint8_t> tensor_extent(const pickle::TensorRef& tensor) const {
    return archive_.tensor_extent(tensor);
  }
  // The zip member holding storage `index`.
  const zip::Entry& storage_entry(std::size_t index) const { return archive_.storage_entry(index); }
  const MappedFile& mapped() const { return file_; }

 private:
  MappedFile file_;
  TorchArchive archive_;
};

enum class Container { torch_zip, torch_legacy, safetensors, json, unknown };

// What a file is, from its first bytes alone.
Container sniff(std::span<const std::uint8_t> head);
// The same for a file on disk (reads its first 64 bytes).
Container sniff(const ReadOnlyFile& file);

// Writes `graph` as torch.save does, atomically: PREFIX/data.pkl (format/pickle_writer.hpp), one record
// data/<key> per storage, whose bytes `write_storage` appends to `zip` when called with the storage's index, and
// PREFIX/version. PREFIX is the file name without its extension, as torch.save names it.
void write_file(const std::string& path, const pickle::Graph& graph,
                const std::function<void(std::size_t storage, zip::Writer& zip)>& write_storage,
                WriteOptions options = {});

// Number of elements a shape holds; nullopt when the product overflows.
std::optional<std::uint64_t> numel(const std::vector<std::int64_t>& shape);

}  // namespace ckpt::torch_archive
