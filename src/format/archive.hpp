// The compressed checkpoint archive (`checkpoint-N.ckpt`): one file holding every file of a checkpoint
// directory, tensor bytes split into byte planes and each plane compressed on its own. docs/archive-format.md
// explains the choices; this is the byte-level contract.
//
// Grammar (integers little-endian):
//   archive  = header frame* manifest trailer
//   header   = "CKPTARC1" version:u32 (= 1) flags:u32 (= 0)                                   16 bytes
//   frame    = stored bytes of one chunk or one plane of a chunk, located only by the manifest
//   manifest = UTF-8 JSON, uncompressed:
//     {"format": "ckpt-archive", "version": 1, "checkpoint": NAME, "step": int | null,
//      "chunk_size": int, "trainer_state": {...} | null, "files": [file...], "tensors": [tensor...]}
//   file     = {"name": relative path, "size": int, "mode": int, "sha256": hex, "segments": [segment...]}
//   segment  = {"size": int, "layout": "bytes" | "planes", "element_size": 1..8, "transform": "none" | "rotl1",
//               "frames": [frame...]}
//   frame    = [codec: 0 raw | 1 zstd | 2 rans (format/rans.hpp), offset: int, stored_size: int,
//               crc32 of the stored bytes: int]
//   tensor   = {"name": str, "dtype": torch name, "shape": [int...], "file": index, "segment": index,
//               "offset": byte offset in the segment}
//   trailer  = manifest_offset:u64 manifest_size:u64 manifest_crc32:u32 version:u32 "CKPTEND1"  32 bytes
//
// A file's segments are consecutive and cover it exactly. Each segment is cut in chunks of chunk_size bytes
// (the last one shorter). A "bytes" chunk is one frame. A "planes" chunk of n elements is element_size frames:
// frame p holds byte p of every element (little-endian elements), after the transform: "rotl1" rotates each
// float element left by one bit, so its exponent fills the top byte plane and the sign joins the lowest.
// Frames tile the bytes between the header and the manifest in manifest order (each stored once, decoded once, for
// one chunk), so a chunk's frames lie together, within the chunk's length; a frame is stored compressed only when
// that is smaller than its plane, is never smaller than its codec needs for its plane (zstd: 6 bytes and 4 per
// 128 KiB; rANS: 21 bytes), and decompresses to exactly its size. So an archive holds at most what its frames can
// honestly expand to. The trailer lets a reader find the manifest with two small reads.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "format/dtype.hpp"
#include "format/json.hpp"
#include "util/byte_buffer.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::archive {

inline constexpr std::size_t kHeaderSize = 16;
inline constexpr std::size_t kTrailerSize = 32;
inline constexpr std::uint32_t kVersion = 1;
inline constexpr std::uint64_t kMinChunkSize = 4096;
inline constexpr std::uint64_t kMaxChunkSize = 16u << 20;
inline constexpr std::uint64_t kMaxManifestSize = 64u << 20;  // ~1.5 TB of checkpoint in 4 MiB chunks
inline constexpr std::size_t kMaxElementSize = 8;

enum class Codec : std::uint8_t { raw = 0, zstd = 1, rans = 2 };  // rans: format/rans.hpp
enum class Layout : std::uint8_t { bytes, planes };
enum class Transform : std::uint8_t { none, rotl1 };

struct Frame {
  Codec codec = Codec::raw;
  std::uint64_t offset = 0;
  std::uint64_t stored_size = 0;
  std::uint32_t crc32 = 0;
};

struct Segment {
  std::uint64_t size = 0;
  Layout layout = Layout::bytes;
  std::uint32_t element_size = 1;
  Transform transform = Transform::none;
  std::vector<Frame> frames;
};

struct File {
  std::string name;  // relative, '/'-separated, no "." or ".." components
  std::uint64_t size = 0;
  std::uint32_t mode = 0644;
  std::array<std::uint8_t, 32> sha256{};
  std::vector<Segment> segments;
};

struct Tensor {
  std::string name;
  DType dtype = DType::uint8;
  std::vector<std::int64_t> shape;
  std::size_t file = 0;
  std::size_t segment = 0;
  std::uint64_t offset = 0;
};

struct Manifest {
  std::string checkpoint;  // the directory's name when archived: checkpoint-N
  std::optional<std::int64_t> step;
  std::uint64_t chunk_size = 4u << 20;
  json::Json trainer_state;  // checkpoint/archive's summary of trainer_state.json, or null
  std::vector<File> files;
  std::vector<Tensor> tensors;

  std::uint64_t original_size() const;
};

// How many chunks a segment has, and the raw size of chunk `index`.
std::uint64_t chunk_count(const Segment& segment, std::uint64_t chunk_size);
std::uint64_t chunk_length(const Segment& segment, std::uint64_t chunk_size, std::uint64_t index);

// The archive bytes holding a chunk's frames; read_manifest checks that it is no longer than the chunk.
struct Extent {
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
};
Extent chunk_extent(const Segment& segment, std::uint64_t index);

// Reads and validates the manifest through the trailer (two reads; no frame is touched). The frames tile the
// payload in order and are large enough for their planes, frame counts and plane sizes agree with the segment
// sizes, names are safe relative paths, tensor references point at existing segments. Throws a corrupt Error naming the
// byte offset or manifest field (unsupported for another version).
Manifest read_manifest(const ReadOnlyFile& file);
Manifest read_manifest(std::span<const std::uint8_t> archive);

// Whether these bytes begin an archive.
bool has_magic(std::span<const std::uint8_t> head);

// Encoding and decoding one chunk; a Codec per frame so each plane gets what wins on it.
class ChunkCoder {
 public:
  explicit ChunkCoder(int level);
  ~ChunkCoder();
  ChunkCoder(const ChunkCoder&) = delete;
  ChunkCoder& operator=(const ChunkCoder&) = delete;

  // Encodes `raw` (one chunk of `segment`'s layout) into `stored` (appended) and returns one Frame per stored
  // frame, with offsets relative to the start of what this call appended.
  std::vector<Frame> encode(std::span<const std::uint8_t> raw, const Segment& segment,
                            std::vector<std::uint8_t>& stored);

  // Decodes chunk `index` of `segment` into `out` (exactly the chunk's length) from `extent`, the archive's
  // bytes of chunk_extent(segment, index) read from `extent_offset`. Throws a corrupt Error (a bad CRC, a frame
  // that does not decompress to its size) naming the frame's offset.
  void decode(const Segment& segment, std::uint64_t index, std::span<const std::uint8_t> extent,
              std::uint64_t extent_offset, std::span<std::uint8_t> out);

 private:
  int level_;
  void* cctx_ = nullptr;
  void* dctx_ = nullptr;
  ByteBuffer planes_;
  ByteBuffer scratch_;
  std::vector<std::uint8_t> coded_;
};

// The manifest's JSON and the trailer that follows it (the manifest starting at `manifest_offset`).
std::string serialize_manifest(const Manifest& manifest);
std::array<std::uint8_t, kHeaderSize> header_bytes();
std::array<std::uint8_t, kTrailerSize> trailer_bytes(std::uint64_t manifest_offset, std::string_view manifest);

}  // namespace ckpt::archive
