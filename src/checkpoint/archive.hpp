// Compressed archives of checkpoint directories (format/archive.hpp): `ckpt convert --to archive|dir`,
// `rotate --archive`, and the archived checkpoints that list, best, inspect and resume see.
//
// Archiving finds each file's tensors from its own metadata (a safetensors header, a torch.save zip's pickle:
// read through a map, which touches only those pages); every tensor storage becomes a segment of byte planes,
// everything else (pickles, JSON, zip headers, files ckpt cannot parse) segments of bytes. Chunks are then read
// with pread, compressed on every core and written in order; memory is bounded by chunk size x threads.
// Restoring checks each file's sha256 before the directory appears.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "checkpoint/run_dir.hpp"
#include "format/archive.hpp"
#include "util/byte_buffer.hpp"
#include "util/memory_file.hpp"

namespace ckpt::checkpoint {

inline constexpr const char* kArchiveExtension = ".ckpt";
inline constexpr const char* kArchiveDirName = "archive";  // rotate --archive's default, inside the run directory
inline constexpr int kDefaultArchiveLevel = 3;

struct ArchiveOptions {
  int level = kDefaultArchiveLevel;  // zstd level for the frames it tries
  unsigned threads = 0;              // 0: every core
  std::uint64_t chunk_size = 4u << 20;
  bool force = false;  // replace an existing destination
  // Called with bytes done and bytes in all.
  std::function<void(std::uint64_t, std::uint64_t)> progress;
  // Set (by a signal handler) to stop: archiving and restoring throw Error(interrupted) at the next chunk, and what
  // they had begun to write is removed as on any failure.
  const std::atomic<bool>* interrupted = nullptr;
};

struct ArchiveSummary {
  std::string path;        // the archive
  std::string checkpoint;  // the archived directory's name
  std::optional<std::int64_t> step;
  std::uint64_t original_bytes = 0;
  std::uint64_t archive_bytes = 0;
  std::size_t files = 0;
  std::size_t tensors = 0;
  double ratio() const {
    return archive_bytes ? static_cast<double>(original_bytes) / static_cast<double>(archive_bytes) : 0;
  }
};

// Writes `archive_path` atomically from the checkpoint directory `dir` (regular files and subdirectories;
// a symlink or special file inside is refused). Throws Error: not_found, invalid_argument (an existing
// destination without force), unsupported, io.
ArchiveSummary archive_checkpoint(const std::string& dir, const std::string& archive_path,
                                  const ArchiveOptions& options);

// Restores an archive into the directory `dir`, which appears complete or not at all; every file's sha256 is
// checked before. Throws Error: corrupt (naming the file and tensor), unsupported, invalid_argument, io.
ArchiveSummary restore_archive(const std::string& archive_path, const std::string& dir, const ArchiveOptions& options);

// Writes the archive's files into the existing, empty directory `dir`, every file's sha256 checked. With `durable`
// the files and the subdirectories made are fsynced (`dir` itself is the caller's to fsync before it publishes it:
// tag restores into a staging directory); without, nothing is, for a copy that lives only as long as its caller
// (resume restores into a staging directory it removes). Throws like restore_archive; what was written stays for
// the caller to remove.
ArchiveSummary extract_archive(const std::string& archive_path, const std::string& dir, const ArchiveOptions& options,
                               bool durable);

// Decodes every frame and checks every file's sha256 without writing anything. Throws like restore_archive.
ArchiveSummary verify_archive(const std::string& archive_path, const ArchiveOptions& options);

// Whether `path` is a regular file starting with the archive magic.
bool is_archive(const std::string& path);

// The manifest and the summary of an archive, read without decompressing anything.
struct ArchiveInfo {
  archive::Manifest manifest;
  ArchiveSummary summary;
};
ArchiveInfo read_archive_info(const std::string& archive_path);

// An archive's files read in place, without restoring it (diff compares archived checkpoints so): a chunk is decoded
// when bytes in it are read, its frames' CRC-32 checked. The files' sha256 are not: that needs every file decoded
// whole (restore and inspect --verify check them). Memory: a chunk and its stored frames per reader.
class ArchiveFiles {
 public:
  // Reads the manifest (no frame). Throws Error naming the archive.
  explicit ArchiveFiles(const std::string& archive_path);

  const std::string& path() const { return file_.path(); }
  const archive::Manifest& manifest() const { return manifest_; }
  // The index of the file named `name` (a path relative to the archived directory), if there is one.
  std::optional<std::size_t> find(const std::string& name) const;

  // The chunk a reader decoded last, and the coder decoding them: one per thread reading.
  struct ChunkCache {
    std::unique_ptr<archive::ChunkCoder> coder;
    ByteBuffer stored;
    ByteBuffer raw;
    std::size_t file = 0;
    std::size_t segment = 0;
    std::uint64_t chunk = 0;
    bool holds_chunk = false;
  };
  // Fills `out` with the bytes of file `file` from `offset`. Throws corrupt naming the archive, the file and what the
  // segment holds, past the end of the file or when a frame does not decode.
  void read(std::size_t file, std::uint64_t offset, std::span<std::uint8_t> out, ChunkCache& cache) const;

  // File `file` for parsers that take a path (load_source, json::parse_file): an in-memory copy holding every byte
  // but those of its byte-plane segments (tensor storages of elements wider than a byte: nearly all of a
  // checkpoint), which read as zeros there and take no memory; read() gives those. Errors of parsers name the copy's
  // path: callers name the archive and the file instead.
  std::unique_ptr<MemoryFile> metadata_copy(std::size_t file) const;

 private:
  // Makes `cache` hold the chunk of file `file` that byte `at` lies in; returns where in the file the chunk begins.
  std::uint64_t load_chunk(std::size_t file, std::uint64_t at, ChunkCache& cache) const;

  ReadOnlyFile file_;
  archive::Manifest manifest_;
  std::vector<std::vector<std::uint64_t>> segment_offsets_;  // per file, where each segment begins in it
};

// trainer_state.json's summary as an archive's manifest stores it, and back.
json::Json trainer_state_to_manifest(const TrainerStateSummary& state);
std::optional<TrainerStateSummary> trainer_state_from_manifest(const json::Json& stored);

}  // namespace ckpt::checkpoint
