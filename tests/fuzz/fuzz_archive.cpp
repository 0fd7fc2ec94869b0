// libFuzzer target: the archive's trailer and manifest validation, then every chunk decoded from its extent and
// every file's sha256 compared, as restore does (without writing).
#include <cstdint>
#include <span>
#include <vector>

#include "format/archive.hpp"
#include "util/error.hpp"
#include "util/sha256.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const std::span<const std::uint8_t> bytes(data, size);
    const auto manifest = ckpt::archive::read_manifest(bytes);
    // A small archive may declare gigabytes of output (as a zip bomb does); restoring it writes them, chunk by
    // chunk in bounded memory. The fuzzer checks the decoding, not the disk, so it stops at 64 MiB.
    if (manifest.original_size() > (64u << 20)) return 0;
    ckpt::archive::ChunkCoder coder(1);
    std::vector<std::uint8_t> out;
    for (const auto& file : manifest.files) {
      ckpt::Sha256 hash;
      for (const auto& segment : file.segments) {
        for (std::uint64_t c = 0; c < ckpt::archive::chunk_count(segment, manifest.chunk_size); ++c) {
          const auto extent = ckpt::archive::chunk_extent(segment, c);
          out.resize(ckpt::archive::chunk_length(segment, manifest.chunk_size, c));
          coder.decode(segment, c, bytes.subspan(extent.offset, extent.size), extent.offset, out);
          hash.update(out);
        }
      }
      if (hash.finish() != file.sha256) return 0;
    }
  } catch (const ckpt::Error&) {}
  return 0;
}
