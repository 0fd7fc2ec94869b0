// FSDP checkpoints as the Hugging Face Trainer saves them through accelerate (docs/fsdp-format.md):
//   SHARDED_STATE_DICT: pytorch_model_fsdp_<i>/ and optimizer_<i>/, each a torch.distributed.checkpoint (DCP)
//                       directory: `.metadata` (format/dcp.hpp) and `__<rank>_<n>.distcp` files whose items are
//                       torch.save archives of tensor chunks (or raw bytes of pickled Python objects);
//   FULL_STATE_DICT:    pytorch_model_fsdp.bin and optimizer.bin, plain torch.save files that every other reader
//                       already reads (no reader here beyond recognising them).
// accelerate saves the model as {"model": state_dict} and the optimizer as {"optimizer": ...}, flattened, so the
// model's DCP names are "model.<parameter name>".
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/assembled.hpp"
#include "format/dcp.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {

inline constexpr const char* kDcpMetadataName = ".metadata";
inline constexpr const char* kFsdpFullModelName = "pytorch_model_fsdp.bin";
inline constexpr const char* kFsdpFullOptimizerName = "optimizer.bin";

// Pieces one DCP tensor may be cut into (dcp::row_major_runs) before it is refused as unsupported.
inline constexpr std::size_t kMaxPiecesPerTensor = 1u << 18;

enum class FsdpKind { sharded, full };

struct FsdpLayout {
  FsdpKind kind = FsdpKind::sharded;
  std::string model_path;                     // the model's DCP directory, or pytorch_model_fsdp.bin
  std::optional<std::string> optimizer_path;  // optimizer_<i>/ or optimizer.bin, when present
  // Sharded: the distinct ranks among the model directory's `__<rank>_<n>.distcp` names (nullopt when it holds
  // none). Full: nullopt, the file does not say.
  std::optional<std::size_t> world_size;

  // "fsdp sharded x8", "fsdp sharded" (no .distcp file), "fsdp full".
  std::string describe() const;
};

// Recognises an FSDP checkpoint by names alone (symlinks never followed): sharded when a directory
// pytorch_model_fsdp_<i>/ holds `.metadata` (the lowest such <i>), else full when pytorch_model_fsdp.bin is a
// file. Nullopt for anything else; throws only when `checkpoint_dir` cannot be listed.
std::optional<FsdpLayout> detect_fsdp(const std::string& checkpoint_dir);

struct FsdpFileSize {
  std::string path;
  std::uint64_t size = 0;
};

// What inspect shows of a sharded FSDP checkpoint.
struct FsdpSummary {
  std::optional<std::size_t> world_size;
  std::vector<DType> dtypes;          // of the model's tensors, distinct, in first-seen order
  std::uint64_t parameter_count = 0;  // elements of the model's tensors
  std::size_t tensor_count = 0;       // the model's
  std::size_t blob_count = 0;         // the model's non-tensor items
  std::size_t optimizer_tensor_count = 0;
  std::string dcp_version;          // Metadata.version, empty before torch 2.5
  std::vector<FsdpFileSize> files;  // every .metadata and .distcp read, model first
};

// One DCP directory, opened and checked: `.metadata` parsed, every storage item's file present, a regular file
// holding the item's byte range, every tensor item a torch.save archive of one contiguous tensor with the
// metadata's dtype and the chunk's sizes. Owns the maps its pieces point into.
class DcpDirectory {
 public:
  // Throws Error naming the file at fault: corrupt for a file its metadata promises that is missing, a range past a
  // file's end or a malformed item or metadata (a damaged checkpoint, as a DeepSpeed one missing a rank is),
  // unsupported for variants ckpt does not read.
  explicit DcpDirectory(std::string dir);

  const std::string& path() const { return dir_; }
  const dcp::Metadata& metadata() const { return metadata_; }
  // The elements of tensor `item` (one of metadata().items) in row-major order, as pieces of its chunks' files.
  // Throws unsupported beyond kMaxPiecesPerTensor pieces.
  std::vector<Piece> pieces(const dcp::Item& item) const;
  std::vector<FsdpFileSize> file_sizes() const;

 private:
  std::string dir_;
  std::uint64_t metadata_size_ = 0;
  dcp::Metadata metadata_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  // Per item, per chunk: the file and byte offset of the chunk's first element (blobs: none).
  std::vector<std::vector<std::pair<const MappedFile*, std::uint64_t>>> chunk_data_;
};

class FsdpCheckpoint {
 public:
  // Opens a sharded FSDP checkpoint (detect_fsdp) and checks its model and optimizer directories as DcpDirectory
  // does. Throws Error: invalid_argument when `checkpoint_dir` holds no FSDP checkpoint, unsupported for a
  // FULL_STATE_DICT one (its pytorch_model_fsdp.bin is a plain torch.save file), else as DcpDirectory.
  explicit FsdpCheckpoint(const std::string& checkpoint_dir);

  const FsdpLayout& layout() const { return layout_; }
  const DcpDirectory& model() const { return *model_; }
  const DcpDirectory* optimizer() const { return optimizer_.get(); }

  // The full model state dict, tensors in the metadata's order, named without accelerate's "model." prefix
  // (kept when some tensor lacks it); blobs are left out.
  std::vector<AssembledTensor> model_tensors() const;
  FsdpSummary summary() const;

 private:
  FsdpLayout layout_;
  std::unique_ptr<DcpDirectory> model_;
  std::unique_ptr<DcpDirectory> optimizer_;
};

// Why `checkpoint_dir`'s FSDP layout is incomplete or damaged, one message per directory or file at fault, each
// naming the file; empty when complete. A full checkpoint's .bin files must parse as torch.save archives. Never
// throws for a damaged checkpoint (only when interrupted).
// `unreadable`, when given, is set when a problem is a variant ckpt cannot read (unsupported) rather than damage, so
// that rotation keeps such a checkpoint (checkpoint/run_dir.hpp Completeness::unreadable).
std::vector<std::string> fsdp_problems(const std::string& checkpoint_dir, bool* unreadable = nullptr);

}  // namespace ckpt::checkpoint
