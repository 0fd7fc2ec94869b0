#include "checkpoint/diff_engine.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "checkpoint/tensor_scan.hpp"
#include "format/dtype_cast.hpp"
#include "format/torch_archive.hpp"
#include "util/error.hpp"
#include "util/ordered_pool.hpp"

namespace ckpt::checkpoint {

// ---- element statistics ----

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();
constexpr std::size_t kBlock = 1024;  // elements widened to double at a time
// Bytes per side read and compared at a time: a multiple of kBlock elements of every dtype.
constexpr std::uint64_t kCompareBlock = 256u << 10;

// |a - b| of two integers of one 64-bit dtype, exactly as far as a double holds it (never 0 for unequal ones).
double integer_distance(const std::uint8_t* a, const std::uint8_t* b, DType dtype) {
  std::uint64_t x, y;
  std::memcpy(&x, a, 8);
  std::memcpy(&y, b, 8);
  const bool x_greater = dtype == DType::int64 ? static_cast<std::int64_t>(x) > static_cast<std::int64_t>(y) : x > y;
  return static_cast<double>(x_greater ? x - y : y - x);  // modulo 2^64, which holds any such difference
}

// One element pair that is not equal, `distance` apart, b being (br + bi i).
void add_unequal(double br, double bi, double distance, const Tolerance& tolerance, ElementStats& s) {
  const double magnitude_b = bi == 0 ? std::fabs(br) : std::hypot(br, bi);
  ++s.differing;
  s.max_abs_diff = std::max(s.max_abs_diff, distance);
  const bool unbounded = distance == kInfinity || magnitude_b == 0 || std::isnan(magnitude_b);
  s.max_rel_diff = std::max(s.max_rel_diff, unbounded ? kInfinity : distance / magnitude_b);
  s.sum_sq_diff += distance * distance;
  if (!(distance <= tolerance.absolute + tolerance.relative * magnitude_b)) ++s.outside_tolerance;
}

}  // namespace

bool same_number(double a, double b) { return a == b || (std::isnan(a) && std::isnan(b)); }

void ElementStats::merge(const ElementStats& o) {
  elements += o.elements;
  differing += o.differing;
  outside_tolerance += o.outside_tolerance;
  max_abs_diff = std::max(max_abs_diff, o.max_abs_diff);
  max_rel_diff = std::max(max_rel_diff, o.max_rel_diff);
  sum_sq_diff += o.sum_sq_diff;
  sum_sq_a += o.sum_sq_a;
  sum_sq_b += o.sum_sq_b;
  dot += o.dot;
}

double ElementStats::l2_diff() const { return std::sqrt(sum_sq_diff); }
double ElementStats::l2_a() const { return std::sqrt(sum_sq_a); }

double ElementStats::cosine() const {
  const double norm_a = std::sqrt(sum_sq_a);
  const double norm_b = std::sqrt(sum_sq_b);
  if (norm_a == 0 && norm_b == 0) return 1;
  if (norm_a == 0 || norm_b == 0) return 0;
  return dot / (norm_a * norm_b);
}

void accumulate(std::span<const std::uint8_t> a, DType dtype_a, std::span<const std::uint8_t> b, DType dtype_b,
                const Tolerance& tolerance, ElementStats& s) {
  const std::size_t size_a = element_size(dtype_a);
  const std::size_t size_b = element_size(dtype_b);
  const std::size_t parts_a = is_complex(dtype_a) ? 2 : 1;
  const std::size_t parts_b = is_complex(dtype_b) ? 2 : 1;
  const std::size_t count = a.size() / size_a;
  // Integers and bools of one dtype are equal exactly when their bytes are: doubles would round 64-bit ones.
  const bool exact = dtype_a == dtype_b && !is_floating(dtype_a) && parts_a == 1;
  std::array<double, 2 * kBlock> wa;
  std::array<double, 2 * kBlock> wb;
  for (std::size_t start = 0; start < count; start += kBlock) {
    const std::size_t n = std::min(kBlock, count - start);
    widen_to_double(a.subspan(start * size_a, n * size_a), dtype_a, wa);
    widen_to_double(b.subspan(start * size_b, n * size_b), dtype_b, wb);
    s.elements += n;
    for (std::size_t i = 0; i < n; ++i) {
      const double ar = wa[i * parts_a];
      const double ai = parts_a == 2 ? wa[i * 2 + 1] : 0.0;
      const double br = wb[i * parts_b];
      const double bi = parts_b == 2 ? wb[i * 2 + 1] : 0.0;
      s.sum_sq_a += ar * ar + ai * ai;
      s.sum_sq_b += br * br + bi * bi;
      s.dot += ar * br + ai * bi;
      const std::uint8_t* pa = a.data() + (start + i) * size_a;
      const std::uint8_t* pb = b.data() + (start + i) * size_b;
      if (exact ? std::memcmp(pa, pb, size_a) == 0 : same_number(ar, br) && same_number(ai, bi)) continue;
      const bool nan = std::isnan(ar) || std::isnan(ai) || std::isnan(br) || std::isnan(bi);
      const double distance = nan                    ? kInfinity
                              : exact && size_a == 8 ? integer_distance(pa, pb, dtype_a)
                              : ai == 0 && bi == 0   ? std::fabs(ar - br)
                                                     : std::hypot(ar - br, ai - bi);
      add_unequal(br, bi, distance, tolerance, s);
    }
  }
}

void accumulate_equal(std::span<const std::uint8_t> a, DType dtype, ElementStats& s) {
  const std::size_t size = element_size(dtype);
  const std::size_t parts = is_complex(dtype) ? 2 : 1;
  const std::size_t count = a.size() / size;
  std::array<double, 2 * kBlock> w;
  for (std::size_t start = 0; start < count; start += kBlock) {
    const std::size_t n = std::min(kBlock, count - start);
    widen_to_double(a.subspan(start * size, n * size), dtype, w);
    // Four running sums, which the compiler may keep in one vector register (one would be a chain of dependent adds).
    std::array<double, 4> lanes{};
    const std::size_t values = n * parts;
    std::size_t i = 0;
    for (; i + 4 <= values; i += 4) {
      for (std::size_t lane = 0; lane < 4; ++lane) lanes[lane] += w[i + lane] * w[i + lane];
    }
    for (; i < values; ++i) lanes[0] += w[i] * w[i];
    const double squares = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    s.elements += n;
    s.sum_sq_a += squares;
    s.sum_sq_b += squares;
    s.dot += squares;
  }
}

}  // namespace ckpt::checkpoint

namespace ckpt::checkpoint::diff_detail {

// ---- reading a tensor's elements ----

namespace {

bool is_contiguous(const pickle::TensorRef& t) {
  std::int64_t expected = 1;
  for (std::size_t d = t.shape.size(); d-- > 0;) {
    if (t.shape[d] != 1 && t.stride[d] != expected) return false;
    expected *= t.shape[d];
  }
  return true;
}

std::uint64_t first_byte(const TensorSide& side) {
  const auto& t = *side.tensor;
  return side.file->source->storage_offsets[t.storage] +
         static_cast<std::uint64_t>(t.storage_offset) * element_size(t.dtype);
}

}  // namespace

void read_elements(const TensorSide& side, std::uint64_t first, std::uint64_t count, std::uint64_t chunk_bytes,
                   ByteBuffer& out, Readers& readers, Window& window) {
  const auto& t = *side.tensor;
  const std::size_t es = element_size(t.dtype);
  out.resize(static_cast<std::size_t>(count * es));
  const std::uint64_t base = first_byte(side);
  if (is_contiguous(t)) {
    readers.read(side.file->bytes, base + first * es, out.span());
    return;
  }
  std::uint64_t last = 0;  // the view's last element, in elements from its first
  for (std::size_t d = 0; d < t.shape.size(); ++d)
    last += static_cast<std::uint64_t>(t.shape[d] - 1) * static_cast<std::uint64_t>(t.stride[d]);
  const std::uint64_t extent_end = base + (last + 1) * es;
  std::vector<std::int64_t> index(t.shape.size());
  std::uint64_t element = 0;
  for (std::size_t d = t.shape.size(), rest = first; d-- > 0;) {
    index[d] = static_cast<std::int64_t>(rest % static_cast<std::uint64_t>(t.shape[d]));
    rest /= static_cast<std::uint64_t>(t.shape[d]);
    element += static_cast<std::uint64_t>(index[d]) * static_cast<std::uint64_t>(t.stride[d]);
  }
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t at = base + element * es;
    if (window.file != side.file || at < window.start || at + es > window.start + window.bytes.size()) {
      window.file = side.file;
      window.start = at;
      window.bytes.resize(
          static_cast<std::size_t>(std::min(std::max<std::uint64_t>(chunk_bytes, es), extent_end - at)));
      readers.read(side.file->bytes, at, window.bytes.span());
    }
    std::memcpy(out.data() + i * es, window.bytes.data() + (at - window.start), es);
    next_element(t.shape, t.stride, index, element);
  }
}

std::uint64_t numel_of(const pickle::TensorRef& t) { return *torch_archive::numel(t.shape); }

// ---- the comparison of tensor values ----

namespace {

// The larger element size of a pending pair: its pieces hold a chunk's bytes of that side.
std::uint64_t widest(const Pending& pair) {
  return std::max(element_size(pair.a.tensor->dtype), element_size(pair.b.tensor->dtype));
}

}  // namespace

void compare_tensor_values(const std::vector<Pending>& pending, const std::vector<Tied>& tied_pairs,
                           const DiffOptions& options, DiffResult& result) {
  // A piece is one chunk of a tensor pair; a job, consecutive pieces of at most a chunk's bytes per side (small
  // tensors share one), so that the threads hand over work once per chunk, not once per tensor.
  struct Piece {
    std::size_t pair;
    std::uint64_t first;
    std::uint64_t count;
  };
  std::vector<Piece> pieces;
  std::uint64_t total = 0;
  for (std::size_t p = 0; p < pending.size(); ++p) {
    const std::uint64_t numel = numel_of(*pending[p].a.tensor);
    const std::uint64_t per_piece = std::max<std::uint64_t>(1, options.chunk_bytes / widest(pending[p]));
    for (std::uint64_t first = 0; first < numel; first += per_piece)
      pieces.push_back({p, first, std::min(per_piece, numel - first)});
    total += numel * (element_size(pending[p].a.tensor->dtype) + element_size(pending[p].b.tensor->dtype));
  }
  const auto jobs_of = [&](const std::vector<std::size_t>& piece_indices) {
    std::vector<std::pair<std::size_t, std::size_t>> jobs;  // [begin, end) in piece_indices
    std::uint64_t bytes = 0;
    for (std::size_t i = 0; i < piece_indices.size(); ++i) {
      const Piece& piece = pieces[piece_indices[i]];
      const std::uint64_t piece_bytes = piece.count * widest(pending[piece.pair]);
      if (jobs.empty() || bytes + piece_bytes > options.chunk_bytes) {
        jobs.emplace_back(i, i);
        bytes = 0;
      }
      jobs.back().second = i + 1;
      bytes += piece_bytes;
    }
    return jobs;
  };
  struct Worker {
    Readers readers;
    ByteBuffer a, b;
    Window window_a, window_b;
    ByteBuffer block_a, block_b;
  };
  const unsigned threads = options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  const std::size_t window = 2 * static_cast<std::size_t>(threads);
  std::vector<Worker> workers(threads);
  struct Result {
    bool equal = false;
    ElementStats stats;
  };
  std::vector<std::vector<Result>> slots(window);  // per job in flight, a result per piece
  struct PairState {
    bool bytes_differ = false;
    ElementStats stats;
    std::vector<std::size_t> equal_pieces;
  };
  std::vector<PairState> states(pending.size());
  const auto read = [&](const Piece& piece, bool both, Worker& worker) {
    const Pending& p = pending[piece.pair];
    try {
      read_elements(p.a, piece.first, piece.count, options.chunk_bytes, worker.a, worker.readers, worker.window_a);
      if (both)
        read_elements(p.b, piece.first, piece.count, options.chunk_bytes, worker.b, worker.readers, worker.window_b);
    } catch (const Error& e) {
      throw e.with_context("", "tensor '" + result.sections[p.section].tensors[p.tensor].name + "'");
    }
  };

  // Whether a piece's bytes are the same on both sides, compared a block at a time: blocks small enough to stay in
  // the core's cache between the read and the comparison (reading a whole piece first would go out to memory and
  // back). Strided views are gathered whole.
  const auto same_bytes = [&](const Piece& piece, Worker& worker) {
    const Pending& p = pending[piece.pair];
    if (!is_contiguous(*p.a.tensor) || !is_contiguous(*p.b.tensor)) {
      read(piece, true, worker);
      return std::memcmp(worker.a.data(), worker.b.data(), worker.a.size()) == 0;
    }
    const std::uint64_t es = element_size(p.a.tensor->dtype);
    const std::uint64_t begin_a = first_byte(p.a) + piece.first * es;
    const std::uint64_t begin_b = first_byte(p.b) + piece.first * es;
    const std::uint64_t length = piece.count * es;
    for (std::uint64_t at = 0; at < length; at += kCompareBlock) {
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kCompareBlock, length - at));
      worker.block_a.resize(n);
      worker.block_b.resize(n);
      try {
        worker.readers.read(p.a.file->bytes, begin_a + at, worker.block_a.span());
        worker.readers.read(p.b.file->bytes, begin_b + at, worker.block_b.span());
      } catch (const Error& e) {
        throw e.with_context("", "tensor '" + result.sections[p.section].tensors[p.tensor].name + "'");
      }
      if (std::memcmp(worker.block_a.data(), worker.block_b.data(), n) != 0) return false;
    }
    return true;
  };

  // Every piece's bytes, then the values of those whose bytes differ.
  std::vector<std::size_t> all(pieces.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
  const auto jobs = jobs_of(all);
  std::uint64_t done = 0;
  run_ordered(
      jobs.size(), threads, window,
      [&](std::size_t j, unsigned w) {
        auto& results = slots[j % window];
        results.assign(jobs[j].second - jobs[j].first, Result{});
        for (std::size_t k = jobs[j].first; k < jobs[j].second; ++k) {
          const Piece& piece = pieces[k];
          const Pending& p = pending[piece.pair];
          Worker& worker = workers[w];
          Result& r = results[k - jobs[j].first];
          r.equal = p.a.tensor->dtype == p.b.tensor->dtype && same_bytes(piece, worker);
          if (r.equal) continue;
          read(piece, true, worker);
          accumulate(worker.a.span(), p.a.tensor->dtype, worker.b.span(), p.b.tensor->dtype, options.tolerance,
                     r.stats);
        }
      },
      [&](std::size_t j) {
        for (std::size_t k = jobs[j].first; k < jobs[j].second; ++k) {
          const Piece& piece = pieces[k];
          const Result& r = slots[j % window][k - jobs[j].first];
          PairState& state = states[piece.pair];
          if (r.equal) {
            state.equal_pieces.push_back(k);
          } else {
            state.bytes_differ = true;
            state.stats.merge(r.stats);
          }
          done += piece.count * (element_size(pending[piece.pair].a.tensor->dtype) +
                                 element_size(pending[piece.pair].b.tensor->dtype));
        }
        if (options.progress) options.progress(done, total);
      });

  // The norms of a tensor whose bytes differ somewhere count its equal pieces too.
  std::vector<std::size_t> norm_pieces;
  for (const auto& state : states) {
    if (state.bytes_differ) norm_pieces.insert(norm_pieces.end(), state.equal_pieces.begin(), state.equal_pieces.end());
  }
  const auto norm_jobs = jobs_of(norm_pieces);
  run_ordered(
      norm_jobs.size(), threads, window,
      [&](std::size_t j, unsigned w) {
        auto& results = slots[j % window];
        results.assign(norm_jobs[j].second - norm_jobs[j].first, Result{});
        for (std::size_t k = norm_jobs[j].first; k < norm_jobs[j].second; ++k) {
          const Piece& piece = pieces[norm_pieces[k]];
          const TensorSide& a = pending[piece.pair].a;
          Worker& worker = workers[w];
          ElementStats& stats = results[k - norm_jobs[j].first].stats;
          if (!is_contiguous(*a.tensor)) {
            read(piece, false, worker);
            accumulate_equal(worker.a.span(), a.tensor->dtype, stats);
            continue;
          }
          // A block at a time, as same_bytes reads: whole elements, whole widening blocks, so the sums come out as
          // from the whole piece.
          const std::uint64_t es = element_size(a.tensor->dtype);
          const std::uint64_t begin = first_byte(a) + piece.first * es;
          for (std::uint64_t at = 0; at < piece.count * es; at += kCompareBlock) {
            worker.block_a.resize(
                static_cast<std::size_t>(std::min<std::uint64_t>(kCompareBlock, piece.count * es - at)));
            worker.readers.read(a.file->bytes, begin + at, worker.block_a.span());
            accumulate_equal(worker.block_a.span(), a.tensor->dtype, stats);
          }
        }
      },
      [&](std::size_t j) {
        for (std::size_t k = norm_jobs[j].first; k < norm_jobs[j].second; ++k) {
          states[pieces[norm_pieces[k]].pair].stats.merge(slots[j % window][k - norm_jobs[j].first].stats);
        }
      });

  for (std::size_t p = 0; p < pending.size(); ++p) {
    TensorDiff& t = result.sections[pending[p].section].tensors[pending[p].tensor];
    if (!states[p].bytes_differ && t.status == TensorStatus::identical) continue;
    t.stats = states[p].stats;
    t.stats->elements = numel_of(*pending[p].a.tensor);
    if (t.status == TensorStatus::dtype_changed) continue;
    t.status = t.stats->outside_tolerance == 0 ? TensorStatus::within_tolerance : TensorStatus::different;
  }
  for (const Tied& tied : tied_pairs) {
    const TensorDiff& compared = result.sections[pending[tied.pending].section].tensors[pending[tied.pending].tensor];
    TensorDiff& t = result.sections[tied.section].tensors[tied.tensor];
    t.status = compared.status;
    t.stats = compared.stats;
  }
}

}  // namespace ckpt::checkpoint::diff_detail
