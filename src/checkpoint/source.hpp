// Checkpoint files as value graphs, whatever their container: a torch.save zip, or a safetensors file (weights,
// or another checkpoint file ckpt stored there: checkpoint/structure.hpp), with where each storage's bytes lie.
// Shared by inspect and convert.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "format/pickle.hpp"
#include "format/torch_archive.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {

// Safetensors metadata keys ckpt writes besides {"format": "pt"} (see checkpoint/convert.hpp).
inline constexpr const char* kOrderKey = "ckpt_order";
inline constexpr const char* kAliasesKey = "ckpt_aliases";
inline constexpr const char* kAttributesKey = "ckpt_attributes";
inline constexpr const char* kStructureKey = "ckpt_structure";
inline constexpr const char* kSourceNameKey = "ckpt_source_name";

// A file read for conversion: its value graph, and where in the file each storage's bytes begin.
struct Source {
  std::string path;
  bool safetensors = false;
  std::unique_ptr<torch_archive::TorchFile> torch;
  std::unique_ptr<MappedFile> mapped;  // safetensors only
  pickle::Graph own_graph;             // safetensors only
  std::vector<std::uint64_t> storage_offsets;
  std::map<std::string, std::string> metadata;

  const pickle::Graph& graph() const { return torch ? torch->graph() : own_graph; }
  const MappedFile& file() const { return torch ? torch->mapped() : *mapped; }
  bool has_structure() const { return metadata.count(kStructureKey) != 0; }
  // The bytes from a tensor's first to its last element, a view into the mapped file.
  std::span<const std::uint8_t> tensor_extent(const pickle::TensorRef& tensor) const;
};

// Refuses a tensor view whose elements, taken one by one (written out, compared), would be far more than its storage
// holds: an expanded view (stride 0) of more than 16 times its storage's bytes and 1 MiB, which a few bytes of pickle
// can declare. Throws unsupported naming the file.
void check_view_size(const Source& source, const pickle::TensorRef& tensor);

// Reads a torch.save zip or a safetensors file. Throws Error naming the path (unsupported for anything else).
std::unique_ptr<Source> load_source(const std::string& path);

}  // namespace ckpt::checkpoint
