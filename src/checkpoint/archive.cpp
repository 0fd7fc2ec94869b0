#include "checkpoint/archive.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <thread>

#include "checkpoint/export.hpp"
#include "format/safetensors.hpp"
#include "format/torch_archive.hpp"
#include "util/atomic_file.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/ordered_pool.hpp"
#include "util/sha256.hpp"

namespace ckpt::checkpoint {
namespace {

namespace fs = std::filesystem;
using archive::Layout;
using archive::Manifest;
using archive::Segment;
using archive::Transform;
using pickle::Graph;
using pickle::Kind;
using pickle::NodeId;

unsigned thread_count(const ArchiveOptions& options) {
  if (options.threads > 0) return options.threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

// Each thread holds about five chunks (two slots of input and output, and its coder's planes); an archive sets its
// own chunk size, so the threads are capped to keep that within 1 GiB.
unsigned bounded_threads(const ArchiveOptions& options, std::uint64_t chunk_size) {
  constexpr std::uint64_t kBudget = 1ull << 30;
  return static_cast<unsigned>(
      std::max<std::uint64_t>(1, std::min<std::uint64_t>(thread_count(options), kBudget / (5 * chunk_size))));
}

// ---- reading a checkpoint directory ----

struct InputFile {
  std::string name;  // relative to the checkpoint directory
  std::string path;
  std::uint32_t mode = 0644;
  // While planning: the file mapped (as a torch.save zip when it is one) to read its metadata.
  std::unique_ptr<MappedFile> mapped;
  std::unique_ptr<torch_archive::TorchFile> torch;
  std::span<const std::uint8_t> bytes;
  // While compressing: chunks are read with pread, so memory stays bounded by the chunks in flight.
  std::unique_ptr<ReadOnlyFile> reader;
};

// Every regular file below `dir`, by name. Anything else is refused: an archive restores files only.
std::vector<InputFile> list_files(const std::string& dir) {
  std::vector<InputFile> files;
  for (const auto& name : fs_util::regular_files_below(dir)) {
    InputFile f;
    f.name = name;
    f.path = (fs::path(dir) / name).string();
    std::error_code ec;
    const auto status = fs::symlink_status(f.path, ec);
    if (ec) fail_io(f.path, "stat", ec.value());
    f.mode = static_cast<std::uint32_t>(status.permissions()) & 0777;
    files.push_back(std::move(f));
  }
  return files;
}

// How a storage of `dtype` is laid out in planes: floats rotated so their exponents fill one plane, complex
// numbers as pairs of floats, integers as plain byte planes, one-byte types as bytes.
void layout_for(DType dtype, Segment& s) {
  const std::size_t size = element_size(dtype);
  const bool complex = is_complex(dtype);
  s.element_size = static_cast<std::uint32_t>(complex ? size / 2 : size);
  if (s.element_size == 1 || s.size % s.element_size != 0) {
    s.layout = Layout::bytes;
    s.element_size = 1;
    s.transform = Transform::none;
    return;
  }
  s.layout = Layout::planes;
  s.transform = is_floating(dtype) || complex ? Transform::rotl1 : Transform::none;
}

// Names for the tensors of a pickled value: the path of dict keys and sequence indices that first reaches each
// (as checkpoint/structure.hpp names them). Each node is visited once, so shared references cost nothing.
void name_tensors(const Graph& g, NodeId node, const std::string& path, std::vector<bool>& seen,
                  std::vector<std::string>& names) {
  if (seen[node]) return;
  seen[node] = true;
  const auto& n = g.at(node);
  auto child = [&](const std::string& key) { return path.empty() ? key : path + "." + key; };
  switch (n.kind) {
    case Kind::tensor:
      if (names[static_cast<std::size_t>(n.integer)].empty())
        names[static_cast<std::size_t>(n.integer)] = path.empty() ? "." : path;
      break;
    case Kind::dict:
      for (std::size_t i = 0; i + 1 < n.items.size(); i += 2) {
        const auto& key = g.at(n.items[i]);
        const std::string k = key.kind == Kind::string    ? key.text
                              : key.kind == Kind::integer ? std::to_string(key.integer)
                                                          : std::to_string(i / 2);
        name_tensors(g, n.items[i + 1], child(k), seen, names);
      }
      break;
    case Kind::list:
    case Kind::tuple:
      for (std::size_t i = 0; i < n.items.size(); ++i)
        name_tensors(g, n.items[i], child(std::to_string(i)), seen, names);
      break;
    default:
      break;
  }
}

struct StorageSpan {
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
  DType dtype = DType::uint8;
};

// Cuts a file into segments: each storage span (sorted, not overlapping) a planes segment, the bytes between
// them bytes segments. Returns, per span, its segment index (kNoSegment for a span overlapping an earlier one or
// the end of the file: its bytes stay in a bytes segment).
constexpr std::size_t kNoSegment = static_cast<std::size_t>(-1);
std::vector<std::size_t> cut_segments(InputFile& in, const std::vector<StorageSpan>& spans, archive::File& out) {
  std::vector<std::size_t> segment_of(spans.size(), kNoSegment);
  std::vector<std::size_t> order(spans.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t b) { return spans[a].offset < spans[b].offset; });
  std::uint64_t at = 0;
  auto add = [&](std::uint64_t size, std::optional<DType> dtype) {
    Segment s;
    s.size = size;
    if (dtype) layout_for(*dtype, s);
    out.segments.push_back(std::move(s));
    return out.segments.size() - 1;
  };
  for (std::size_t i : order) {
    const auto& sp = spans[i];
    if (sp.offset < at || sp.size > in.bytes.size() || sp.offset > in.bytes.size() - sp.size)
      continue;  // left inside a bytes segment
    if (sp.offset > at) add(sp.offset - at, std::nullopt);
    segment_of[i] = add(sp.size, sp.dtype);
    at = sp.offset + sp.size;
  }
  if (at < in.bytes.size()) add(in.bytes.size() - at, std::nullopt);
  return segment_of;
}

// Segments and tensors of one file, from its own metadata. A file ckpt cannot parse is stored as bytes: the
// archive stays exact, only less compact.
void plan_file(InputFile& in, std::size_t file_index, archive::File& out, std::vector<archive::Tensor>& tensors) {
  in.mapped = std::make_unique<MappedFile>(in.path);
  in.bytes = in.mapped->bytes();
  out.name = in.name;
  out.size = in.bytes.size();
  out.mode = in.mode;
  const auto container = torch_archive::sniff(in.bytes.first(std::min<std::size_t>(64, in.bytes.size())));
  try {
    if (container == torch_archive::Container::safetensors) {
      const auto header = safetensors::parse(in.bytes);
      std::vector<StorageSpan> spans;
      for (std::size_t i = 0; i < header.tensors.size(); ++i) {
        const auto& t = header.tensors[i];
        spans.push_back({header.buffer_offset + t.begin, t.end - t.begin, t.dtype});
      }
      const auto segment_of = cut_segments(in, spans, out);
      for (std::size_t i = 0; i < header.tensors.size(); ++i) {
        const auto& t = header.tensors[i];
        if (segment_of[i] != kNoSegment) tensors.push_back({t.name, t.dtype, t.shape, file_index, segment_of[i], 0});
      }
      return;
    }
    if (container == torch_archive::Container::torch_zip) {
      in.torch = std::make_unique<torch_archive::TorchFile>(std::move(*in.mapped));
      in.mapped.reset();
      in.bytes = in.torch->mapped().bytes();
      const Graph& g = in.torch->graph();
      std::vector<StorageSpan> spans;
      for (std::size_t i = 0; i < g.storages.size(); ++i) {
        const auto bytes = in.torch->storage_bytes(i);
        spans.push_back(
            {static_cast<std::uint64_t>(bytes.data() - in.bytes.data()), bytes.size(), g.storages[i].dtype});
      }
      const auto segment_of = cut_segments(in, spans, out);
      std::vector<bool> seen(g.size(), false);
      std::vector<std::string> names(g.tensors.size());
      name_tensors(g, g.root(), "", seen, names);
      for (std::size_t i = 0; i < g.tensors.size(); ++i) {
        const auto& t = g.tensors[i];
        if (segment_of[t.storage] == kNoSegment || t.storage_offset < 0) continue;
        // Listed when its elements, counted densely from its offset, lie in its storage (as read_manifest checks):
        // an expanded view (stride 0) may claim more elements than its storage holds, and is left out.
        const std::uint64_t size = out.segments[segment_of[t.storage]].size;
        const std::uint64_t esize = element_size(t.dtype);
        const auto numel = torch_archive::numel(t.shape);
        const std::uint64_t offset = static_cast<std::uint64_t>(t.storage_offset);
        if (!numel || offset > size / esize || *numel > (size - offset * esize) / esize) continue;
        tensors.push_back({names[i].empty() ? "data/" + g.storages[t.storage].key : names[i], t.dtype, t.shape,
                           file_index, segment_of[t.storage], offset * esize});
      }
      return;
    }
  } catch (const Error&) {
    // Not what its first bytes promised: kept as bytes below (mapped again if the torch reader took the map).
    if (!in.mapped) {
      in.torch.reset();
      in.mapped = std::make_unique<MappedFile>(in.path);
      in.bytes = in.mapped->bytes();
    }
    const auto first_tensor =
        std::find_if(tensors.begin(), tensors.end(), [&](const archive::Tensor& t) { return t.file == file_index; });
    tensors.erase(first_tensor, tensors.end());
  }
  out.segments.clear();
  if (!in.bytes.empty()) {
    out.segments.push_back({in.bytes.size(), Layout::bytes, 1, Transform::none, {}});
  }
}

// A label for a segment in error messages: the tensor stored there, or its byte range.
std::string segment_label(const Manifest& m, std::size_t file, std::size_t segment, std::uint64_t file_offset) {
  for (const auto& t : m.tensors) {
    if (t.file == file && t.segment == segment) return "tensor " + t.name;
  }
  return "bytes at offset " + std::to_string(file_offset);
}

struct ChunkJob {
  std::size_t file = 0;
  std::size_t segment = 0;
  std::uint64_t chunk = 0;
  std::uint64_t file_offset = 0;  // of the chunk's first byte
  std::uint64_t length = 0;
};

std::vector<ChunkJob> chunk_jobs(const Manifest& m) {
  std::vector<ChunkJob> jobs;
  for (std::size_t f = 0; f < m.files.size(); ++f) {
    std::uint64_t offset = 0;
    for (std::size_t s = 0; s < m.files[f].segments.size(); ++s) {
      const auto& seg = m.files[f].segments[s];
      const std::uint64_t chunks = archive::chunk_count(seg, m.chunk_size);
      for (std::uint64_t c = 0; c < chunks; ++c) {
        const std::uint64_t length = archive::chunk_length(seg, m.chunk_size, c);
        jobs.push_back({f, s, c, offset + c * m.chunk_size, length});
      }
      offset += seg.size;
    }
  }
  return jobs;
}

// Decodes chunk `job.chunk` of a segment into `raw` (through `stored`, the frames as the archive holds them).
// Throws corrupt naming the archive, the file and what the segment holds.
void decode_chunk(const ReadOnlyFile& archive_file, const Manifest& m, const ChunkJob& job, archive::ChunkCoder& coder,
                  ByteBuffer& stored, ByteBuffer& raw) {
  const auto& segment = m.files[job.file].segments[job.segment];
  const auto extent = archive::chunk_extent(segment, job.chunk);
  stored.resize(extent.size);
  raw.resize(job.length);
  archive_file.read_at(extent.offset, stored.span());
  try {
    coder.decode(segment, job.chunk, stored.span(), extent.offset, raw.span());
  } catch (const Error& e) {
    throw Error(
        e.kind(), archive_file.path(),
        m.files[job.file].name + ": " + segment_label(m, job.file, job.segment, job.file_offset) + ": " + e.where(),
        e.detail());
  }
}

ArchiveSummary summary_of(const Manifest& m, const std::string& path, std::uint64_t archive_bytes) {
  ArchiveSummary s;
  s.path = path;
  s.checkpoint = m.checkpoint;
  s.step = m.step;
  s.original_bytes = m.original_size();
  s.archive_bytes = archive_bytes;
  s.files = m.files.size();
  s.tensors = m.tensors.size();
  return s;
}

// Decodes every chunk of `archive_bytes` in order on the pool, handing each file's bytes to `write` and checking
// each file's sha256 when its last byte has passed; `begin_file` and `end_file` bracket each file (also empty ones).
void decode_all(const ReadOnlyFile& archive_file, const Manifest& m, const ArchiveOptions& options,
                const std::function<void(std::size_t file)>& begin_file,
                const std::function<void(std::size_t file, std::span<const std::uint8_t>)>& write,
                const std::function<void(std::size_t file)>& end_file) {
  const auto jobs = chunk_jobs(m);
  const unsigned threads = bounded_threads(options, m.chunk_size);
  const std::size_t window = 2 * static_cast<std::size_t>(threads);
  struct Slot {
    ByteBuffer stored;
    ByteBuffer raw;
  };
  std::vector<Slot> slots(window);
  const std::string& archive_path = archive_file.path();
  std::vector<std::unique_ptr<archive::ChunkCoder>> coders;
  for (unsigned i = 0; i < threads; ++i) coders.push_back(std::make_unique<archive::ChunkCoder>(options.level));
  Sha256 hash;
  std::size_t open_file = 0;  // files before this one are finished
  bool file_open = false;
  const std::uint64_t total = m.original_size();
  std::uint64_t done = 0;
  auto finish = [&](std::size_t f) {
    if (hash.finish() != m.files[f].sha256) {
      throw Error(ErrorKind::corrupt, archive_path, m.files[f].name,
                  "sha256 mismatch: the restored bytes differ from the archived file");
    }
    end_file(f);
  };
  // Finishes every file before `f` (opening the empty ones in between) and opens `f` (none past the last).
  auto advance_to = [&](std::size_t f) {
    while (open_file < f || (open_file == f && !file_open && f < m.files.size())) {
      if (!file_open) {
        begin_file(open_file);
        file_open = true;
      }
      if (open_file == f) break;
      finish(open_file);
      file_open = false;
      ++open_file;
    }
  };
  run_ordered(
      jobs.size(), threads, window,
      [&](std::size_t j, unsigned worker) {
        const auto& job = jobs[j];
        auto& slot = slots[j % window];
        decode_chunk(archive_file, m, job, *coders[worker], slot.stored, slot.raw);
      },
      [&](std::size_t j) {
        const auto& job = jobs[j];
        advance_to(job.file);
        const auto raw = slots[j % window].raw.span();
        hash.update(raw);
        write(job.file, raw);
        done += raw.size();
        stop_if_interrupted(options.interrupted);
        if (options.progress) options.progress(done, total);
      });
  advance_to(m.files.size());
}

}  // namespace

json::Json trainer_state_to_manifest(const TrainerStateSummary& state) {
  auto optional = [](const auto& v) { return v ? json::Json(*v) : json::Json(nullptr); };
  json::Json evals = json::Json::array();
  for (const auto& [step, metrics] : state.eval_by_step) {
    json::ObjectBuilder values;
    for (const auto& [k, v] : metrics) values.set(k, v);
    evals.push_back({{"step", step}, {"metrics", values.take()}});
  }
  return {{"global_step", optional(state.global_step)},
          {"epoch", optional(state.epoch)},
          {"best_model_checkpoint", optional(state.best_model_checkpoint)},
          {"best_metric", optional(state.best_metric)},
          {"loss", optional(state.last_loss)},
          {"evaluations", std::move(evals)}};
}

std::optional<TrainerStateSummary> trainer_state_from_manifest(const json::Json& stored) {
  if (!stored.is_object()) return std::nullopt;
  // As lenient as summarize_trainer_state: a member of the wrong type is left out of the summary.
  const json::Fields fields(stored, "", "manifest.trainer_state", json::WrongType::absent);
  TrainerStateSummary s;
  s.global_step = fields.optional_int64("global_step");
  s.epoch = fields.optional_number("epoch");
  s.best_metric = fields.optional_number("best_metric");
  s.last_loss = fields.optional_number("loss");
  s.best_model_checkpoint = fields.optional_string("best_model_checkpoint");
  if (const auto evaluations = fields.optional_array("evaluations")) {
    for (std::size_t i = 0; i < evaluations->size(); ++i) {
      const json::Value evaluation = evaluations->at(i);
      if (!evaluation.json().is_object()) continue;
      const json::Fields e = evaluation.object();
      const auto step = e.optional_int64("step");
      const auto values = e.optional_object("metrics");
      if (!step || !values) continue;
      auto& metrics = s.eval_by_step[*step];
      values->for_each([&](const std::string& key, const json::Value& value) {
        if (value.json().is_number()) metrics[key] = value.number();
      });
    }
  }
  return s;
}

ArchiveFiles::ArchiveFiles(const std::string& archive_path)
    : file_(archive_path), manifest_(archive::read_manifest(file_)) {
  for (const auto& f : manifest_.files) {
    auto& offsets = segment_offsets_.emplace_back();
    std::uint64_t at = 0;
    for (const auto& segment : f.segments) {
      offsets.push_back(at);
      at += segment.size;  // read_manifest checked that the segments cover the file exactly
    }
  }
}

std::optional<std::size_t> ArchiveFiles::find(const std::string& name) const {
  for (std::size_t i = 0; i < manifest_.files.size(); ++i) {
    if (manifest_.files[i].name == name) return i;
  }
  return std::nullopt;
}

std::uint64_t ArchiveFiles::load_chunk(std::size_t file, std::uint64_t at, ChunkCache& cache) const {
  const archive::File& f = manifest_.files[file];
  const auto& offsets = segment_offsets_[file];
  // The last segment beginning at or before `at`: an empty segment shares its offset with the one after it.
  const std::size_t segment =
      static_cast<std::size_t>(std::upper_bound(offsets.begin(), offsets.end(), at) - offsets.begin()) - 1;
  const std::uint64_t chunk = (at - offsets[segment]) / manifest_.chunk_size;
  const ChunkJob job{file, segment, chunk, offsets[segment] + chunk * manifest_.chunk_size,
                     archive::chunk_length(f.segments[segment], manifest_.chunk_size, chunk)};
  if (!cache.holds_chunk || cache.file != file || cache.segment != segment || cache.chunk != chunk) {
    if (!cache.coder) cache.coder = std::make_unique<archive::ChunkCoder>(kDefaultArchiveLevel);
    cache.holds_chunk = false;
    decode_chunk(file_, manifest_, job, *cache.coder, cache.stored, cache.raw);
    cache.file = file;
    cache.segment = segment;
    cache.chunk = chunk;
    cache.holds_chunk = true;
  }
  return job.file_offset;
}

void ArchiveFiles::read(std::size_t file, std::uint64_t offset, std::span<std::uint8_t> out, ChunkCache& cache) const {
  const archive::File& f = manifest_.files[file];
  if (offset > f.size || out.size() > f.size - offset) {
    throw Error(ErrorKind::corrupt, path(), f.name + ": byte " + std::to_string(offset),
                "read past the end of the file");
  }
  for (std::size_t done = 0; done < out.size();) {
    const std::uint64_t at = offset + done;
    const std::uint64_t in_chunk = at - load_chunk(file, at, cache);
    const std::size_t n =
        static_cast<std::size_t>(std::min<std::uint64_t>(out.size() - done, cache.raw.size() - in_chunk));
    std::memcpy(out.data() + done, cache.raw.data() + in_chunk, n);
    done += n;
  }
}

std::unique_ptr<MemoryFile> ArchiveFiles::metadata_copy(std::size_t file) const {
  const archive::File& f = manifest_.files[file];
  auto copy = std::make_unique<MemoryFile>(f.name, f.size);
  ChunkCache cache;
  for (std::size_t s = 0; s < f.segments.size(); ++s) {
    if (f.segments[s].layout == Layout::planes) continue;
    const std::uint64_t end = segment_offsets_[file][s] + f.segments[s].size;
    for (std::uint64_t at = segment_offsets_[file][s]; at < end;) {
      const std::uint64_t in_chunk = at - load_chunk(file, at, cache);
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(end - at, cache.raw.size() - in_chunk));
      copy->write_at(at, cache.raw.span().subspan(static_cast<std::size_t>(in_chunk), n));
      at += n;
    }
  }
  return copy;
}

bool is_archive(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  try {
    ReadOnlyFile file(path);
    std::array<std::uint8_t, archive::kHeaderSize> head{};
    if (file.size() < head.size()) return false;
    file.read_at(0, head);
    return archive::has_magic(head);
  } catch (const Error&) {
    return false;
  }
}

ArchiveInfo read_archive_info(const std::string& archive_path) {
  ReadOnlyFile file(archive_path);
  ArchiveInfo info{archive::read_manifest(file), {}};
  info.summary = summary_of(info.manifest, archive_path, file.size());
  return info;
}

ArchiveSummary archive_checkpoint(const std::string& dir, const std::string& archive_path,
                                  const ArchiveOptions& options) {
  std::error_code ec;
  fs_util::require_directory(dir);
  if (fs::exists(fs::symlink_status(archive_path, ec)) && !options.force) {
    throw Error(ErrorKind::invalid_argument, archive_path, "", "already exists; pass --force to replace it");
  }
  if (options.chunk_size < archive::kMinChunkSize || options.chunk_size > archive::kMaxChunkSize ||
      options.chunk_size % archive::kMaxElementSize) {
    throw Error(ErrorKind::invalid_argument, "", "chunk size", "out of range");
  }
  fs_util::create_parent_directories(archive_path);
  fs_util::clear_abandoned_temporaries_of(archive_path);  // left by an earlier writer, killed
  Manifest m;
  m.chunk_size = options.chunk_size;
  m.checkpoint = fs::path(dir).lexically_normal().filename().string();
  if (m.checkpoint.empty()) m.checkpoint = fs::path(dir).lexically_normal().parent_path().filename().string();
  m.step = checkpoint_step(m.checkpoint);
  const auto completeness = assess_completeness(dir);
  m.trainer_state = completeness.state ? trainer_state_to_manifest(*completeness.state) : json::Json(nullptr);

  auto inputs = list_files(dir);
  m.files.resize(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    plan_file(inputs[i], i, m.files[i], m.tensors);
    inputs[i].torch.reset();
    inputs[i].mapped.reset();
    inputs[i].bytes = {};
    inputs[i].reader = std::make_unique<ReadOnlyFile>(inputs[i].path);
    if (inputs[i].reader->size() < m.files[i].size) fail_shrank(inputs[i].path, "");
    if (inputs[i].reader->size() != m.files[i].size)
      throw Error(ErrorKind::io, inputs[i].path, "", "changed size while being archived");
  }

  const auto jobs = chunk_jobs(m);
  const unsigned threads = bounded_threads(options, m.chunk_size);
  const std::size_t window = 2 * static_cast<std::size_t>(threads);
  struct Slot {
    ByteBuffer raw;
    std::vector<archive::Frame> frames;
    std::vector<std::uint8_t> stored;
  };
  std::vector<Slot> slots(window);
  std::vector<std::unique_ptr<archive::ChunkCoder>> coders;
  for (unsigned i = 0; i < threads; ++i) coders.push_back(std::make_unique<archive::ChunkCoder>(options.level));

  AtomicFile out(archive_path, {.direct = true});
  out.write(std::span<const std::uint8_t>(archive::header_bytes()));
  Sha256 hash;
  std::size_t hashed_file = 0;
  auto finish_files_before = [&](std::size_t f) {
    for (; hashed_file < f; ++hashed_file) m.files[hashed_file].sha256 = hash.finish();
  };
  const std::uint64_t total = m.original_size();
  std::uint64_t done = 0;
  run_ordered(
      jobs.size(), threads, window,
      [&](std::size_t j, unsigned worker) {
        const auto& job = jobs[j];
        auto& slot = slots[j % window];
        slot.raw.resize(job.length);
        inputs[job.file].reader->read_at(job.file_offset, slot.raw.span());
        slot.stored.clear();
        try {
          slot.frames = coders[worker]->encode(slot.raw.span(), m.files[job.file].segments[job.segment], slot.stored);
        } catch (const Error& e) {
          throw Error(e.kind(), inputs[job.file].path,
                      segment_label(m, job.file, job.segment, job.file_offset) + ": " + e.where(), e.detail());
        }
      },
      [&](std::size_t j) {
        const auto& job = jobs[j];
        finish_files_before(job.file);
        auto& slot = slots[j % window];
        const std::uint64_t base = out.position();
        out.write(slot.stored);
        auto& frames = m.files[job.file].segments[job.segment].frames;
        for (auto frame : slot.frames) {
          frame.offset += base;
          frames.push_back(frame);
        }
        hash.update(slot.raw.span());
        done += job.length;
        stop_if_interrupted(options.interrupted);
        if (options.progress) options.progress(done, total);
      });
  finish_files_before(m.files.size());
  const std::uint64_t manifest_offset = out.position();
  const std::string manifest = archive::serialize_manifest(m);
  out.write(manifest);
  out.write(std::span<const std::uint8_t>(archive::trailer_bytes(manifest_offset, manifest)));
  const std::uint64_t archive_bytes = out.position();
  out.commit();
  return summary_of(m, archive_path, archive_bytes);
}

// Writes every file of the archive into the existing directory `dir`; with `durable`, fsyncs them and the
// subdirectories it made (the caller fsyncs `dir` itself). Modes are set last, once nothing needs to reopen a file.
void write_files(const ReadOnlyFile& archive_file, const Manifest& m, const ArchiveOptions& options,
                 const std::string& dir, bool durable) {
  std::vector<std::string> written;
  std::vector<std::string> directories;
  std::unique_ptr<AtomicFile> file;
  decode_all(
      archive_file, m, options,
      [&](std::size_t f) {
        const fs::path path = fs::path(dir) / m.files[f].name;
        if (path.parent_path() != fs::path(dir) && !fs::is_directory(path.parent_path())) {
          std::error_code mk;
          fs::create_directories(path.parent_path(), mk);
          if (mk)
            throw Error(ErrorKind::io, path.parent_path().string(), "", "cannot create directory: " + mk.message());
          for (fs::path p = path.parent_path(); p != fs::path(dir); p = p.parent_path())
            directories.push_back(p.string());
        }
        file = std::make_unique<AtomicFile>(path.string(), WriteOptions{.direct = true, .durable = false});
      },
      [&](std::size_t, std::span<const std::uint8_t> bytes) { file->write(bytes); },
      [&](std::size_t) {
        file->commit();
        written.push_back(file->destination());
        file.reset();
      });
  if (durable) {
    fs_util::fsync_files(written);
    std::sort(directories.begin(), directories.end());
    directories.erase(std::unique(directories.begin(), directories.end()), directories.end());
    for (auto it = directories.rbegin(); it != directories.rend(); ++it) fs_util::fsync_directory(*it);
  }
  for (std::size_t f = 0; f < m.files.size(); ++f) {
    const std::string path = (fs::path(dir) / m.files[f].name).string();
    if (::chmod(path.c_str(), m.files[f].mode) != 0) fail_io(path, "chmod", errno);
  }
}

ArchiveSummary restore_archive(const std::string& archive_path, const std::string& dir, const ArchiveOptions& options) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(dir, ec)) && !options.force) {
    throw Error(ErrorKind::invalid_argument, dir, "", "already exists; pass --force to replace it");
  }
  ReadOnlyFile archive_file(archive_path);
  const Manifest m = archive::read_manifest(archive_file);
  std::set<std::string> names;
  for (const auto& file : m.files) names.insert(file.name);
  require_replaceable(dir, names);  // before decoding anything
  fs_util::create_parent_directories(dir);
  build_output_directory(dir, names,
                         [&](const std::string& staging) { write_files(archive_file, m, options, staging, true); });
  return summary_of(m, archive_path, archive_file.size());
}

ArchiveSummary extract_archive(const std::string& archive_path, const std::string& dir, const ArchiveOptions& options,
                               bool durable) {
  ReadOnlyFile archive_file(archive_path);
  const Manifest m = archive::read_manifest(archive_file);
  write_files(archive_file, m, options, dir, durable);
  return summary_of(m, archive_path, archive_file.size());
}

ArchiveSummary verify_archive(const std::string& archive_path, const ArchiveOptions& options) {
  ReadOnlyFile archive_file(archive_path);
  const Manifest m = archive::read_manifest(archive_file);
  decode_all(
      archive_file, m, options, [](std::size_t) {}, [](std::size_t, std::span<const std::uint8_t>) {},
      [](std::size_t) {});
  return summary_of(m, archive_path, archive_file.size());
}

}  // namespace ckpt::checkpoint
