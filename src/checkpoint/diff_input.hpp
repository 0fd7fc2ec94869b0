// Internal to diff (checkpoint/diff*.cpp): one side of `ckpt diff` as the comparison reads it. An Input is a path
// given on the command line (a file, a weights index, a checkpoint or model directory, an archive); it lists the
// files it holds by name, parses them through load_source (an archived file's metadata from a sparse copy) and
// names them in errors and sections as the user knows them. A LoadedFile's tensor bytes are read through a
// Location, never through a map: a plain file with pread, an archived one decoded chunk by chunk.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "checkpoint/archive.hpp"
#include "checkpoint/source.hpp"
#include "format/json.hpp"
#include "util/error.hpp"
#include "util/memory_file.hpp"

namespace ckpt::checkpoint::diff_detail {

// Tensor bytes come from a plain file, or from a file inside an archive, decoded chunk by chunk.
struct Location {
  const ReadOnlyFile* file = nullptr;
  const ArchiveFiles* archive = nullptr;
  std::size_t member = 0;
};

// One thread's way to read Locations: an archive's chunk cache per archive (whichever of its files is read).
class Readers {
 public:
  void read(const Location& where, std::uint64_t offset, std::span<std::uint8_t> out) {
    if (where.file) {
      where.file->read_at(offset, out);
    } else {
      where.archive->read(where.member, offset, out, caches_[where.archive]);
    }
  }

 private:
  std::unordered_map<const ArchiveFiles*, ArchiveFiles::ChunkCache> caches_;
};

// A checkpoint file as parsed: its value graph, and where its tensors' bytes are read from.
struct LoadedFile {
  std::string name;  // as sections show it: the file's name inside a checkpoint, else the path given
  std::unique_ptr<Source> source;
  Location bytes;
};

enum class InputKind { file, weights_index, checkpoint, model_directory, archive };

const char* to_string(InputKind kind);

// One side of the comparison: a file, a weights index, or a set of files by name (a directory's, an archive's).
// Throws Error: not_found for a missing path, io for a directory it cannot list, and what opening an archive throws.
class Input {
 public:
  explicit Input(const std::string& path);

  const std::string& path() const { return path_; }
  InputKind kind() const { return kind_; }
  bool has_training_state() const { return kind_ == InputKind::checkpoint || kind_ == InputKind::archive; }
  // Files by name, directly inside (a directory's or an archive's; none for a file).
  const std::vector<std::string>& names() const { return names_; }

  // Where a parser can read the file `name`: beside the others, or an archived file's metadata copy.
  std::optional<std::string> path_of(const std::string& name);

  // Parses the file `name` (for a file input, the path itself).
  std::unique_ptr<LoadedFile> load(const std::string& name);

  json::Json load_json(const std::string& name);

  // The weights files, in the order Hugging Face loads shards; empty when there are none.
  std::vector<std::unique_ptr<LoadedFile>> load_weights();

  // The weights' file name (a sharded set's index), once load_weights found them; the path for a file input.
  const std::string& weights_name() const { return kind_ == InputKind::file ? path_ : weights_name_; }

  // How errors and sections name a file of this input.
  std::string display(const std::string& name) const;

 private:
  // An error about an archived file (about its metadata copy, when a parser raised it) named as the user knows the
  // file: the archive, then the file in it.
  Error renamed(const Error& e, const std::string& name) const;

  std::string path_;
  InputKind kind_ = InputKind::file;
  std::vector<std::string> names_;
  std::unique_ptr<ArchiveFiles> archive_;
  std::map<std::string, std::unique_ptr<MemoryFile>> copies_;
  std::string weights_name_;
};

}  // namespace ckpt::checkpoint::diff_detail
