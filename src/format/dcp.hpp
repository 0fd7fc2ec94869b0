// The `.metadata` file of a torch.distributed.checkpoint (DCP) directory, as torch 2.x's FileSystemWriter writes
// it (docs/fsdp-format.md): which tensors and byte blobs the checkpoint holds, how each tensor is cut into chunks,
// and in which `.distcp` file, at which byte range, each chunk or blob lies. Read without executing anything: the
// pickle's classes stay opaque object nodes whose BUILD state this reader interprets.
//
// Grammar (a plain pickle, protocol 2 or later, of dataclasses created by NEWOBJ and filled by BUILD):
//   metadata    = Metadata{state_dict_metadata: {fqn: storage_md}, planner_data: any,
//                          storage_data: {index: storage_info}, [storage_meta: any], [version: str | None]}
//   storage_md  = TensorStorageMetadata{properties: properties, size: torch.Size, chunks: [chunk]}
//               | BytesStorageMetadata (no state)
//   properties  = TensorProperties with state (dtype, layout, requires_grad, memory_format, pin_memory),
//                 dtype a GLOBAL `torch <dtype>`; or a dict with a `dtype` key
//   chunk       = ChunkStorageMetadata{offsets: torch.Size, sizes: torch.Size}
//   index       = MetadataIndex{fqn: str, [offset: torch.Size | None], [index: int | None]}
//   storage_info = _StorageInfo{relative_path: str, offset: int, length: int, [transform_descriptors: [str]]}
// Classes come from `torch.distributed.checkpoint.metadata` (TensorProperties also from
// `torch.distributed._shard.sharded_tensor.metadata`, where older torch 2.x defined it) and
// `torch.distributed.checkpoint.filesystem`; any other class is refused.
//
// Checks: every count and dimension capped (kMax*); every size, offset and numel non-negative and its products
// and sums free of overflow; every chunk inside its tensor, the chunks covering the tensor exactly without
// overlap; every chunk and blob with exactly one storage item and no storage item without one; each
// storage offset + length below 2^63; relative_path a plain file name (no '/', not "." or "..", no NUL).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "format/dtype.hpp"

namespace ckpt::dcp {

inline constexpr std::size_t kMaxEntries = 1u << 20;  // tensors and blobs in one checkpoint
inline constexpr std::size_t kMaxChunks = 1u << 22;   // chunks over all tensors
inline constexpr std::size_t kMaxChunksPerTensor = 1u << 16;
inline constexpr std::size_t kMaxDims = 64;
// Work per chunk the coverage check and row_major_runs may spend (overlap checks, probes for the next run's chunk):
// dimension-0 shards need one; a .metadata claiming more is refused as unsupported rather than read for minutes.
inline constexpr std::uint64_t kComparisonsPerChunk = 64;

// Where an item's bytes lie: `length` bytes at `offset` of file `relative_path` in the checkpoint directory.
struct StorageLocation {
  std::string relative_path;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

struct Chunk {
  std::vector<std::int64_t> offsets;  // of the chunk's first element in the tensor, one per dimension
  std::vector<std::int64_t> sizes;
  std::uint64_t numel = 0;
  StorageLocation storage;
};

// One entry of the saved state dict: a tensor cut into chunks, or a blob (a torch.save'd Python object).
struct Item {
  std::string fqn;
  bool is_bytes = false;
  DType dtype = DType::float32;    // tensors only
  std::vector<std::int64_t> size;  // tensors only
  std::uint64_t numel = 0;         // tensors only
  std::vector<Chunk> chunks;       // tensors only, in the metadata's order
  StorageLocation storage;         // blobs only
};

struct Metadata {
  std::vector<Item> items;  // in the metadata's order
  std::string version;      // Metadata.version when the writer recorded one (torch 2.5 and later), else empty
};

// Parses and checks a `.metadata` file's bytes. Throws Error (corrupt, unsupported) without a path, `where`
// naming the entry ("'model.fc.weight' chunk 2") or the pickle's byte.
Metadata parse_metadata(std::span<const std::uint8_t> bytes);

// `count` elements of the tensor, consecutive in its row-major order, that are also consecutive in chunk
// `chunk`'s own row-major order, from its element `first`.
struct Run {
  std::size_t chunk = 0;
  std::uint64_t first = 0;
  std::uint64_t count = 0;
};

// The runs that make up tensor `item` in row-major order: one per chunk when it is cut along dimension 0 only,
// more when a chunk does not span whole rows. Throws unsupported when more than `max_runs` would be needed.
// `item` must come from parse_metadata (its chunks checked to cover it).
std::vector<Run> row_major_runs(const Item& item, std::size_t max_runs);

// True when `name` is a plain file name inside the directory: not empty, no '/', not "." or "..", no NUL.
bool is_plain_file_name(const std::string& name);

}  // namespace ckpt::dcp
