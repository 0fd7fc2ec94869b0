// `ckpt diff A B`: two weights files, checkpoint directories or archives (any mix of torch.save and safetensors,
// single or sharded) compared tensor by tensor, and between checkpoints their training state too.
//
// What is compared: tensors by name (the state dict's keys, tied ones each under their own name): only in A, only in
// B, shape changed (not compared), dtype changed (values compared after widening, and different all the same), and
// for the rest their bytes, then, when they differ, their values (ElementStats). Between two checkpoints (directories
// or archives; not a model directory, which holds weights only) also each training-state file both or either hold,
// matched by name stem (optimizer.pt with optimizer.safetensors, which convert --include-state writes):
//   optimizer[_R]   state tensors as optimizer.state.INDEX.KEY, every other value (param_groups' lr, betas, eps,
//                   weight_decay, params, ...) as optimizer.param_groups.GROUP.KEY
//   scheduler, scaler   each entry of the state dict (scheduler.last_epoch, scheduler._last_lr, scaler.scale, ...)
//   rng_state[_R]   each generator whole (rng_state.python, .numpy, .cpu, .cuda): equal or not
//   trainer_state   global_step, epoch, the last logged learning_rate and loss, best_metric, best_model_checkpoint
//                   (by checkpoint name, as best finds it, so two runs' paths compare)
// Values (everything but tensors) must be equal; the tolerances apply to tensor elements only.
//
// Streaming: tensors are read in chunks with pread (archived ones decoded chunk by chunk), never whole and never
// through a map, so memory is a few chunk buffers per thread whatever the inputs' size. Chunks are compared as bytes
// first; values are widened to double only in tensors whose bytes differ.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "format/dtype.hpp"
#include "format/json.hpp"

namespace ckpt::checkpoint {

// torch.allclose's rule per element: |a - b| <= absolute + relative * |b|.
struct Tolerance {
  double absolute = 0;
  double relative = 0;
};

// Element by element comparison of two tensors' values, accumulated over chunks. Elements are widened to double
// (format/dtype_cast); complex ones compare as complex numbers (|a - b| and |b| their moduli), and a real element
// against a complex one is a complex number of imaginary part 0.
//   equal      a == b, or both NaN: a NaN in both at one position counts as equal (torch.equal would not).
//              Integer elements of one dtype compare exactly (their bytes), not as rounded doubles.
//   |a - b|    0 when equal; infinite when one of them is NaN (or they are infinities of opposite signs)
struct ElementStats {
  std::uint64_t elements = 0;
  std::uint64_t differing = 0;          // not equal
  std::uint64_t outside_tolerance = 0;  // neither equal nor within the Tolerance
  double max_abs_diff = 0;              // of |a - b|
  double max_rel_diff = 0;  // of |a - b| / |b|: infinite where b is 0 (or NaN, or |a - b| infinite) and a is not b
  double sum_sq_diff = 0;   // of |a - b|^2
  double sum_sq_a = 0;      // of |a|^2 (NaN propagates, as in torch.linalg.norm)
  double sum_sq_b = 0;
  double dot = 0;  // of a * conj(b), its real part

  // Adds `other`, accumulated over later elements. Sums are added in the order merged, so a fixed order of merges
  // gives the same result on any number of threads.
  void merge(const ElementStats& other);
  double l2_diff() const;
  double l2_a() const;
  // dot / (|a| |b|); 1 when both are all zeros (they are equal), 0 when only one is.
  double cosine() const;
};

// Adds the element pairs of `a` (of dtype_a) and `b` (of dtype_b): little-endian, contiguous, as many elements each.
void accumulate(std::span<const std::uint8_t> a, DType dtype_a, std::span<const std::uint8_t> b, DType dtype_b,
                const Tolerance& tolerance, ElementStats& stats);
// Adds elements whose bytes are the same in A and B: none differs, and only the sums of squares and the dot product
// grow (by the sum of |a|^2 each).
void accumulate_equal(std::span<const std::uint8_t> a, DType dtype, ElementStats& stats);

enum class TensorStatus { identical, within_tolerance, different, dtype_changed, shape_changed, only_in_a, only_in_b };
const char* to_string(TensorStatus status);

struct TensorDiff {
  std::string name;
  TensorStatus status = TensorStatus::identical;
  std::optional<DType> dtype_a, dtype_b;
  std::optional<std::vector<std::int64_t>> shape_a, shape_b;
  // When values were compared: not for identical bytes (nothing to measure), nor shapes or names that differ.
  std::optional<ElementStats> stats;
  bool same() const { return status == TensorStatus::identical || status == TensorStatus::within_tolerance; }
};

// A value that is no tensor: a hyper-parameter, a step, a generator's state. Shown as JSON data (a generator as
// inspect summarises it), compared whole and exactly.
struct ValueDiff {
  std::string name;
  bool in_a = true;
  bool in_b = true;
  json::Json a;  // null when not in A (or None)
  json::Json b;
  bool same = true;
};

struct DiffSection {
  std::string name;  // weights, optimizer, optimizer_1, scheduler, scaler, rng_state, trainer_state, ...
  std::optional<std::string> file_a;  // what it was read from (a file name inside a checkpoint); nullopt: not in A
  std::optional<std::string> file_b;
  std::vector<TensorDiff> tensors;  // A's order, then those only in B in B's order
  std::vector<ValueDiff> values;
  bool same() const;
};

struct DiffInput {
  std::string path;
  std::string kind;  // file, weights_index, checkpoint, model_directory, archive
};

struct DiffResult {
  DiffInput a;
  DiffInput b;
  std::vector<DiffSection> sections;
  std::vector<std::string> notes;  // what was not compared, and why
  bool same() const;
};

struct DiffOptions {
  Tolerance tolerance;
  // fnmatch patterns (no special meaning for '/' or '.'): only tensors and values whose name any of them matches
  // are compared (a section's file only in A or B is named by the section's name). Empty: everything.
  std::vector<std::string> only;
  unsigned threads = 0;  // 0: every core
  // Per side, the most a job reads whole: a tensor piece whose bytes differ is widened from buffers of this size
  // (equal bytes are found 256 KiB at a time); small tensors share a job up to it.
  std::uint64_t chunk_bytes = 4u << 20;
  // Called with bytes compared and bytes to compare in all (both sides).
  std::function<void(std::uint64_t done, std::uint64_t total)> progress;
};

// Throws Error: not_found (a missing path, a directory without weights), corrupt/unsupported (naming the file, and
// the tensor where one is being read), invalid_argument (inputs that cannot be compared: a run directory, an
// optimizer file against weights; --only matching nothing), io.
DiffResult diff(const std::string& a, const std::string& b, const DiffOptions& options);

}  // namespace ckpt::checkpoint
