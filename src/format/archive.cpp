#include "format/archive.hpp"

#include <zstd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "format/rans.hpp"
#include "util/byte_reader.hpp"
#include "util/crc32.hpp"
#include "util/error.hpp"
#include "util/sha256.hpp"

namespace ckpt::archive {
namespace {

constexpr std::string_view kMagic = "CKPTARC1";
constexpr std::string_view kEndMagic = "CKPTEND1";
constexpr std::size_t kMaxNameLength = 4096;

// A float plane whose bytes carry more than this many bits of order-0 entropy is stored raw without trying a
// codec: measured on mantissa planes, zstd never shrinks them, and trying costs most of the compression time.
constexpr double kIncompressibleBits = 7.9;

// The key path of the manifest's members in errors: "manifest.files[0].segments[1].frames[2]".
constexpr const char* kManifest = "manifest";

[[noreturn]] void bad(const std::string& where, const std::string& what) { fail_corrupt(where, what); }

std::uint64_t add_checked(std::uint64_t a, std::uint64_t b, const std::string& where) {
  if (a > std::numeric_limits<std::uint64_t>::max() - b) bad(where, "sizes overflow");
  return a + b;
}

bool safe_relative_path(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || name.front() == '/' || name.find('\0') != std::string_view::npos)
    return false;
  std::size_t start = 0;
  while (start <= name.size()) {
    const std::size_t end = std::min(name.find('/', start), name.size());
    const std::string_view part = name.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::array<std::uint8_t, 32> parse_digest(const std::string& hex, const std::string& where) {
  std::array<std::uint8_t, 32> digest{};
  if (hex.size() != 64) bad(where, "not a sha256 digest");
  for (std::size_t i = 0; i < 32; ++i) {
    const int hi = hex_digit(hex[2 * i]);
    const int lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) bad(where, "not a sha256 digest");
    digest[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return digest;
}

// The fewest stored bytes from which a frame of `codec` can decode `plane` bytes (plane > 0), so that an archive
// expands no further than its codecs can: a zstd frame is a 4-byte magic number, a header of at least 2 bytes and
// blocks that each decode to at most 128 KiB (the format's block maximum) and take at least 4 bytes (an RLE block:
// a 3-byte header and its byte), so at most 32768 times its size; a rANS block holds its symbol count, at least one
// (symbol, frequency) entry and four 4-byte states, which is all a plane of one repeated byte needs.
std::uint64_t min_stored_size(Codec codec, std::uint64_t plane) {
  constexpr std::uint64_t kZstdFrameOverhead = 4 + 2;
  constexpr std::uint64_t kZstdMinBlock = 3 + 1;
  constexpr std::uint64_t kZstdMaxBlockContent = 128u << 10;
  constexpr std::uint64_t kRansMinBlock = 2 + 3 + 4 * 4;
  switch (codec) {
    case Codec::raw:
      return plane;
    case Codec::zstd:
      return kZstdFrameOverhead + kZstdMinBlock * ((plane + kZstdMaxBlockContent - 1) / kZstdMaxBlockContent);
    case Codec::rans:
      return kRansMinBlock;
  }
  return plane;
}

// `next_frame` is where the next frame must begin: frames tile the bytes between the header and the manifest in
// manifest order, so each stored byte belongs to one frame of one chunk and is decoded once.
Segment parse_segment(const json::Fields& j, std::uint64_t chunk_size, std::uint64_t payload_end,
                      std::uint64_t& next_frame) {
  const std::string& where = j.key_path();
  Segment s;
  s.size = j.uint64("size");
  const std::string layout = j.string("layout");
  const std::string transform = j.string("transform");
  const std::uint64_t element_size = j.uint64("element_size");
  if (layout == "bytes")
    s.layout = Layout::bytes;
  else if (layout == "planes")
    s.layout = Layout::planes;
  else
    bad(j.key_path("layout"), "unknown layout '" + layout + "'");
  if (transform == "none")
    s.transform = Transform::none;
  else if (transform == "rotl1")
    s.transform = Transform::rotl1;
  else
    bad(j.key_path("transform"), "unknown transform '" + transform + "'");
  if (element_size != 1 && element_size != 2 && element_size != 4 && element_size != 8)
    bad(j.key_path("element_size"), "must be 1, 2, 4 or 8");
  s.element_size = static_cast<std::uint32_t>(element_size);
  if (s.layout == Layout::bytes && (s.element_size != 1 || s.transform != Transform::none))
    bad(where, "a bytes segment has no planes");
  if (s.transform == Transform::rotl1 && s.element_size == 1) bad(where, "rotl1 needs elements of 2 bytes or more");
  if (s.size % s.element_size != 0) bad(j.key_path("size"), "not a whole number of elements");

  const json::Elements frames = j.array("frames");
  const std::uint64_t chunks = chunk_count(s, chunk_size);
  const std::uint64_t per_chunk = s.layout == Layout::planes ? s.element_size : 1;
  if (frames.size() / per_chunk != chunks || frames.size() % per_chunk != 0)
    bad(frames.key_path(), "the frame count does not match the size");
  s.frames.reserve(frames.size());
  for (std::size_t i = 0; i < frames.size(); ++i) {
    const json::Value item = frames.at(i);
    const json::Elements f = item.array();
    const std::string fw = f.key_path();
    if (f.size() != 4) bad(fw, "not [codec, offset, size, crc32]");
    Frame frame;
    const std::uint64_t codec = f.at(0).uint64();
    if (codec > 2) bad(fw, "unknown codec " + std::to_string(codec));
    frame.codec = static_cast<Codec>(codec);
    frame.offset = f.at(1).uint64();
    frame.stored_size = f.at(2).uint64();
    const std::uint64_t crc = f.at(3).uint64();
    if (crc > 0xffffffffu) bad(fw, "crc32 out of range");
    frame.crc32 = static_cast<std::uint32_t>(crc);
    if (frame.offset < kHeaderSize || add_checked(frame.offset, frame.stored_size, fw) > payload_end)
      bad(fw, "outside the archive's frames");
    if (frame.offset != next_frame) {
      bad(fw, "starts at byte " + std::to_string(frame.offset) + ", not where the frame before it ends (" +
                  std::to_string(next_frame) + "): frames are stored in order, each once");
    }
    next_frame = frame.offset + frame.stored_size;
    const std::uint64_t raw = chunk_length(s, chunk_size, i / per_chunk) / per_chunk;
    // A frame is compressed only when that makes it smaller, so no frame is larger than its plane (and a chunk's
    // frames, stored together, need one read and one chunk-sized buffer).
    if (frame.codec == Codec::raw ? frame.stored_size != raw : frame.stored_size >= raw)
      bad(fw, "larger than its plane");
    if (frame.stored_size < min_stored_size(frame.codec, raw)) {
      bad(fw, std::to_string(frame.stored_size) + " bytes cannot decode to " + std::to_string(raw) + " with its codec");
    }
    s.frames.push_back(frame);
  }
  return s;
}

Manifest parse_manifest(std::span<const std::uint8_t> text, std::uint64_t payload_end) {
  const json::Json doc = json::parse(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()));
  const json::Fields j(doc, "", kManifest);
  if (j.string("format") != "ckpt-archive") bad(j.key_path("format"), "not a ckpt archive");
  if (const std::uint64_t version = j.uint64("version"); version != kVersion) {
    fail(ErrorKind::unsupported, kManifest,
         "archive version " + std::to_string(version) + " (this ckpt reads version 1)");
  }
  Manifest m;
  m.checkpoint = j.string("checkpoint");
  if (const json::Value step = j.required("step"); !step.json().is_null()) {
    if (!step.json().is_number_unsigned() ||
        step.json().get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      step.fail("not a step");
    }
    m.step = step.json().get<std::int64_t>();
  }
  m.chunk_size = j.uint64("chunk_size");
  if (m.chunk_size < kMinChunkSize || m.chunk_size > kMaxChunkSize || m.chunk_size % kMaxElementSize != 0) {
    bad(j.key_path("chunk_size"), "out of range");
  }
  m.trainer_state = j.required("trainer_state").json();
  std::set<std::string_view> names;
  std::uint64_t total = 0;
  std::uint64_t next_frame = kHeaderSize;
  const json::Elements files = j.array("files");
  for (std::size_t i = 0; i < files.size(); ++i) {
    const json::Fields file = files.at(i).object();
    const std::string& fw = file.key_path();
    File f;
    f.name = file.string("name");
    if (!safe_relative_path(f.name)) bad(file.key_path("name"), "not a safe relative path: '" + f.name + "'");
    f.size = file.uint64("size");
    f.mode = static_cast<std::uint32_t>(file.uint64("mode") & 0777);
    f.sha256 = parse_digest(file.string("sha256"), file.key_path("sha256"));
    const json::Elements segments = file.array("segments");
    std::uint64_t covered = 0;
    for (std::size_t k = 0; k < segments.size(); ++k) {
      f.segments.push_back(parse_segment(segments.at(k).object(), m.chunk_size, payload_end, next_frame));
      covered = add_checked(covered, f.segments.back().size, fw);
    }
    if (covered != f.size) bad(fw, "segments do not cover the file");
    total = add_checked(total, f.size, fw);
    m.files.push_back(std::move(f));
  }
  if (next_frame != payload_end)
    bad(files.key_path(), "the frames end at byte " + std::to_string(next_frame) + ", not at the manifest");
  for (const auto& f : m.files) {
    if (!names.insert(f.name).second) bad(files.key_path(), "'" + f.name + "' appears twice");
  }
  // No file may also be a directory of another ("a" and "a/b"): restoring could not create both.
  for (const auto& f : m.files) {
    for (std::size_t slash = f.name.find('/'); slash != std::string::npos; slash = f.name.find('/', slash + 1)) {
      if (names.count(std::string_view(f.name).substr(0, slash))) {
        bad(files.key_path(), "'" + f.name.substr(0, slash) + "' is both a file and a directory");
      }
    }
  }
  const json::Elements tensors = j.array("tensors");
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const json::Fields tensor = tensors.at(i).object();
    const std::string& tw = tensor.key_path();
    Tensor t;
    t.name = tensor.string("name");
    const auto dtype = dtype_from_short_code(tensor.string("dtype"));
    if (!dtype) bad(tensor.key_path("dtype"), "unknown dtype");
    t.dtype = *dtype;
    const json::Elements shape = tensor.array("shape");
    for (std::size_t k = 0; k < shape.size(); ++k) t.shape.push_back(shape.at(k).int64(0));
    t.file = tensor.uint64("file");
    t.segment = tensor.uint64("segment");
    t.offset = tensor.uint64("offset");
    if (t.file >= m.files.size() || t.segment >= m.files[t.file].segments.size() ||
        t.offset > m.files[t.file].segments[t.segment].size) {
      bad(tw, "points outside the archive's files");
    }
    // Its elements lie inside its segment (numel overflow-checked: each dimension is below 2^63).
    std::uint64_t bytes = element_size(t.dtype);
    for (std::int64_t d : t.shape) {
      if (d != 0 && bytes > std::numeric_limits<std::uint64_t>::max() / static_cast<std::uint64_t>(d))
        bad(shape.key_path(), "too many elements");
      bytes *= static_cast<std::uint64_t>(d);
    }
    if (bytes > m.files[t.file].segments[t.segment].size - t.offset) bad(tw, "extends past its segment");
    m.tensors.push_back(std::move(t));
  }
  return m;
}

struct Trailer {
  std::uint64_t manifest_offset = 0;
  std::uint64_t manifest_size = 0;
  std::uint32_t manifest_crc = 0;
};

void check_header(std::span<const std::uint8_t> header) {
  ByteReader r(header, "archive header");
  if (!has_magic(header)) fail_corrupt("byte 0", "not a ckpt archive (no CKPTARC1 magic)");
  r.seek(kMagic.size());
  const std::uint32_t version = r.u32le();
  if (version != kVersion)
    fail(ErrorKind::unsupported, "byte 8",
         "archive version " + std::to_string(version) + " (this ckpt reads version 1)");
  if (r.u32le() != 0) fail(ErrorKind::unsupported, "byte 12", "archive flags this ckpt does not know");
}

Trailer parse_trailer(std::span<const std::uint8_t> trailer, std::uint64_t file_size) {
  ByteReader r(trailer, "archive trailer", file_size - kTrailerSize);
  Trailer t;
  t.manifest_offset = r.u64le();
  t.manifest_size = r.u64le();
  t.manifest_crc = r.u32le();
  const std::uint32_t version = r.u32le();
  const auto end = r.take(kEndMagic.size());
  const std::string where = "byte " + std::to_string(file_size - kTrailerSize);
  if (std::memcmp(end.data(), kEndMagic.data(), kEndMagic.size()) != 0)
    fail_corrupt(where, "no CKPTEND1 trailer (a truncated archive?)");
  if (version != kVersion) fail_corrupt(where, "the trailer's version differs from the header's");
  if (t.manifest_size > kMaxManifestSize) fail_corrupt(where, "manifest larger than 256 MiB");
  if (t.manifest_offset < kHeaderSize || t.manifest_offset > file_size - kTrailerSize ||
      file_size - kTrailerSize - t.manifest_offset != t.manifest_size) {
    fail_corrupt(where, "the manifest's offset and size do not match the file");
  }
  return t;
}

Manifest checked_manifest(std::span<const std::uint8_t> text, const Trailer& t) {
  if (crc32(text) != t.manifest_crc)
    fail_corrupt("byte " + std::to_string(t.manifest_offset), "manifest checksum mismatch");
  return parse_manifest(text, t.manifest_offset);
}

// Byte planes: plane b holds byte b of every element, after rotating each element left by one bit when asked.
// SSE2 (every x86-64) handles 16 elements at a time; the rest, and other CPUs, go element by element.
template <typename Word>
void split_scalar(const std::uint8_t* raw, std::size_t begin, std::size_t count, bool rotate, std::uint8_t* planes) {
  for (std::size_t i = begin; i < count; ++i) {
    Word w;
    std::memcpy(&w, raw + i * sizeof(Word), sizeof(Word));
    if (rotate) w = std::rotl(w, 1);
    for (std::size_t b = 0; b < sizeof(Word); ++b) planes[b * count + i] = static_cast<std::uint8_t>(w >> (8 * b));
  }
}

template <typename Word>
void merge_scalar(const std::uint8_t* planes, std::size_t begin, std::size_t count, bool rotate, std::uint8_t* raw) {
  for (std::size_t i = begin; i < count; ++i) {
    Word w = 0;
    for (std::size_t b = 0; b < sizeof(Word); ++b)
      w |= static_cast<Word>(static_cast<Word>(planes[b * count + i]) << (8 * b));
    if (rotate) w = std::rotr(w, 1);
    std::memcpy(raw + i * sizeof(Word), &w, sizeof(Word));
  }
}

#if defined(__SSE2__)
__m128i load(const std::uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
void store(std::uint8_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

// Even bytes of a then b, and odd bytes of a then b.
void deinterleave(__m128i a, __m128i b, __m128i& even, __m128i& odd) {
  const __m128i low = _mm_set1_epi16(0x00ff);
  even = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
  odd = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
}

std::size_t split_simd(const std::uint8_t* raw, std::size_t count, std::size_t width, bool rotate,
                       std::uint8_t* planes) {
  std::size_t i = 0;
  if (width == 2) {
    for (; i + 16 <= count; i += 16) {
      __m128i v0 = load(raw + 2 * i), v1 = load(raw + 2 * i + 16);
      if (rotate) {
        v0 = _mm_or_si128(_mm_slli_epi16(v0, 1), _mm_srli_epi16(v0, 15));
        v1 = _mm_or_si128(_mm_slli_epi16(v1, 1), _mm_srli_epi16(v1, 15));
      }
      __m128i p0, p1;
      deinterleave(v0, v1, p0, p1);
      store(planes + i, p0);
      store(planes + count + i, p1);
    }
  } else if (width == 4) {
    for (; i + 16 <= count; i += 16) {
      __m128i v[4];
      for (int k = 0; k < 4; ++k) {
        v[k] = load(raw + 4 * i + 16 * k);
        if (rotate) v[k] = _mm_or_si128(_mm_slli_epi32(v[k], 1), _mm_srli_epi32(v[k], 31));
      }
      __m128i e0, o0, e1, o1, p0, p1, p2, p3;
      deinterleave(v[0], v[1], e0, o0);  // bytes 0,2 and 1,3 of elements 0..7
      deinterleave(v[2], v[3], e1, o1);
      deinterleave(e0, e1, p0, p2);
      deinterleave(o0, o1, p1, p3);
      store(planes + i, p0);
      store(planes + count + i, p1);
      store(planes + 2 * count + i, p2);
      store(planes + 3 * count + i, p3);
    }
  }
  return i;
}

std::size_t merge_simd(const std::uint8_t* planes, std::size_t count, std::size_t width, bool rotate,
                       std::uint8_t* raw) {
  std::size_t i = 0;
  if (width == 2) {
    for (; i + 16 <= count; i += 16) {
      const __m128i p0 = load(planes + i), p1 = load(planes + count + i);
      __m128i v0 = _mm_unpacklo_epi8(p0, p1), v1 = _mm_unpackhi_epi8(p0, p1);
      if (rotate) {
        v0 = _mm_or_si128(_mm_srli_epi16(v0, 1), _mm_slli_epi16(v0, 15));
        v1 = _mm_or_si128(_mm_srli_epi16(v1, 1), _mm_slli_epi16(v1, 15));
      }
      store(raw + 2 * i, v0);
      store(raw + 2 * i + 16, v1);
    }
  } else if (width == 4) {
    for (; i + 16 <= count; i += 16) {
      const __m128i p0 = load(planes + i), p1 = load(planes + count + i);
      const __m128i p2 = load(planes + 2 * count + i), p3 = load(planes + 3 * count + i);
      const __m128i a_lo = _mm_unpacklo_epi8(p0, p1), a_hi = _mm_unpackhi_epi8(p0, p1);
      const __m128i b_lo = _mm_unpacklo_epi8(p2, p3), b_hi = _mm_unpackhi_epi8(p2, p3);
      __m128i v[4] = {_mm_unpacklo_epi16(a_lo, b_lo), _mm_unpackhi_epi16(a_lo, b_lo), _mm_unpacklo_epi16(a_hi, b_hi),
                      _mm_unpackhi_epi16(a_hi, b_hi)};
      for (int k = 0; k < 4; ++k) {
        if (rotate) v[k] = _mm_or_si128(_mm_srli_epi32(v[k], 1), _mm_slli_epi32(v[k], 31));
        store(raw + 4 * i + 16 * k, v[k]);
      }
    }
  }
  return i;
}
#else
std::size_t split_simd(const std::uint8_t*, std::size_t, std::size_t, bool, std::uint8_t*) { return 0; }
std::size_t merge_simd(const std::uint8_t*, std::size_t, std::size_t, bool, std::uint8_t*) { return 0; }
#endif

void split_planes(std::span<const std::uint8_t> raw, std::size_t width, bool rotate, std::uint8_t* planes) {
  const std::size_t count = raw.size() / width;
  const std::size_t done = split_simd(raw.data(), count, width, rotate, planes);
  switch (width) {
    case 2:
      split_scalar<std::uint16_t>(raw.data(), done, count, rotate, planes);
      break;
    case 4:
      split_scalar<std::uint32_t>(raw.data(), done, count, rotate, planes);
      break;
    default:
      split_scalar<std::uint64_t>(raw.data(), done, count, rotate, planes);
      break;
  }
}

void merge_planes(const std::uint8_t* planes, std::size_t width, bool rotate, std::span<std::uint8_t> raw) {
  const std::size_t count = raw.size() / width;
  const std::size_t done = merge_simd(planes, count, width, rotate, raw.data());
  switch (width) {
    case 2:
      merge_scalar<std::uint16_t>(planes, done, count, rotate, raw.data());
      break;
    case 4:
      merge_scalar<std::uint32_t>(planes, done, count, rotate, raw.data());
      break;
    default:
      merge_scalar<std::uint64_t>(planes, done, count, rotate, raw.data());
      break;
  }
}

// Byte counts of 16 evenly spaced 4 KiB samples of a large plane (all of a small one).
std::array<std::uint64_t, 256> sample_histogram(std::span<const std::uint8_t> bytes) {
  constexpr std::size_t kSamples = 16;
  constexpr std::size_t kSampleSize = 4096;
  if (bytes.size() <= kSamples * kSampleSize) return rans::histogram(bytes);
  std::array<std::uint64_t, 256> counts{};
  const std::size_t stride = bytes.size() / kSamples;
  for (std::size_t k = 0; k < kSamples; ++k) {
    const auto sample = rans::histogram(bytes.subspan(k * stride, kSampleSize));
    for (std::size_t s = 0; s < 256; ++s) counts[s] += sample[s];
  }
  return counts;
}

}  // namespace

std::uint64_t Manifest::original_size() const {
  std::uint64_t total = 0;
  for (const auto& f : files) total += f.size;
  return total;
}

std::uint64_t chunk_count(const Segment& segment, std::uint64_t chunk_size) {
  return segment.size / chunk_size + (segment.size % chunk_size != 0 ? 1 : 0);
}

std::uint64_t chunk_length(const Segment& segment, std::uint64_t chunk_size, std::uint64_t index) {
  const std::uint64_t begin = index * chunk_size;
  return begin >= segment.size ? 0 : std::min(chunk_size, segment.size - begin);
}

bool has_magic(std::span<const std::uint8_t> head) {
  return head.size() >= kMagic.size() && std::memcmp(head.data(), kMagic.data(), kMagic.size()) == 0;
}

Manifest read_manifest(const ReadOnlyFile& file) {
  try {
    if (file.size() < kHeaderSize + kTrailerSize) fail_corrupt("byte 0", "too short for an archive");
    std::array<std::uint8_t, kHeaderSize> header{};
    file.read_at(0, header);
    check_header(header);
    std::array<std::uint8_t, kTrailerSize> trailer{};
    file.read_at(file.size() - kTrailerSize, trailer);
    const Trailer t = parse_trailer(trailer, file.size());
    std::vector<std::uint8_t> text(t.manifest_size);
    file.read_at(t.manifest_offset, text);
    return checked_manifest(text, t);
  } catch (const Error& e) {
    throw e.with_context(file.path(), "");
  }
}

Manifest read_manifest(std::span<const std::uint8_t> archive) {
  if (archive.size() < kHeaderSize + kTrailerSize) fail_corrupt("byte 0", "too short for an archive");
  check_header(archive.first(kHeaderSize));
  const Trailer t = parse_trailer(archive.last(kTrailerSize), archive.size());
  return checked_manifest(archive.subspan(t.manifest_offset, t.manifest_size), t);
}

ChunkCoder::ChunkCoder(int level) : level_(level) {}

ChunkCoder::~ChunkCoder() {
  ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(cctx_));
  ZSTD_freeDCtx(static_cast<ZSTD_DCtx*>(dctx_));
}

std::vector<Frame> ChunkCoder::encode(std::span<const std::uint8_t> raw, const Segment& segment,
                                      std::vector<std::uint8_t>& stored) {
  if (!cctx_) {
    cctx_ = ZSTD_createCCtx();
    if (!cctx_) throw std::bad_alloc();
    ZSTD_CCtx_setParameter(static_cast<ZSTD_CCtx*>(cctx_), ZSTD_c_compressionLevel, level_);
  }
  const std::size_t planes = segment.layout == Layout::planes ? segment.element_size : 1;
  std::span<const std::uint8_t> source = raw;
  if (planes > 1) {
    planes_.resize(raw.size());
    split_planes(raw, planes, segment.transform == Transform::rotl1, planes_.data());
    source = planes_.span();
  }
  const std::size_t plane_size = raw.size() / planes;
  const std::size_t base = stored.size();
  std::vector<Frame> frames;
  for (std::size_t p = 0; p < planes; ++p) {
    const auto plane = source.subspan(p * plane_size, plane_size);
    Frame frame;
    frame.offset = stored.size() - base;
    frame.codec = Codec::raw;
    std::span<const std::uint8_t> best = plane;
    // Bytes (pickles, JSON) go to zstd. A plane goes raw when it looks random, else to whichever of zstd (runs
    // and repeats) and rANS (skewed symbols: a float's exponent) is smaller.
    // Float planes are judged from samples first: most are random mantissa bytes, not worth a full count. Integer
    // planes are always tried, since counters look random byte by byte yet repeat.
    std::array<std::uint64_t, 256> counts{};
    const bool is_plane = segment.layout == Layout::planes;
    const bool random_looking =
        segment.transform == Transform::rotl1 && rans::entropy_bits(sample_histogram(plane)) > kIncompressibleBits;
    if (!plane.empty() && !random_looking) {
      if (is_plane) counts = rans::histogram(plane);
      scratch_.resize(ZSTD_compressBound(plane.size()));
      const std::size_t n =
          ZSTD_compress2(static_cast<ZSTD_CCtx*>(cctx_), scratch_.data(), scratch_.size(), plane.data(), plane.size());
      if (ZSTD_isError(n)) fail(ErrorKind::io, "zstd", ZSTD_getErrorName(n));
      if (n < best.size()) {
        frame.codec = Codec::zstd;
        best = {scratch_.data(), n};
      }
      if (is_plane && rans::estimated_size(counts) < best.size()) {
        coded_.clear();
        rans::encode(plane, counts, coded_);
        if (coded_.size() < best.size()) {
          frame.codec = Codec::rans;
          best = coded_;
        }
      }
    }
    stored.insert(stored.end(), best.begin(), best.end());
    frame.stored_size = best.size();
    frame.crc32 = crc32(best);
    frames.push_back(frame);
  }
  return frames;
}

Extent chunk_extent(const Segment& segment, std::uint64_t index) {
  const std::size_t planes = segment.layout == Layout::planes ? segment.element_size : 1;
  std::uint64_t begin = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t end = 0;
  for (std::size_t p = 0; p < planes; ++p) {
    const Frame& f = segment.frames[index * planes + p];
    begin = std::min(begin, f.offset);
    end = std::max(end, f.offset + f.stored_size);
  }
  return {begin, end - begin};
}

void ChunkCoder::decode(const Segment& segment, std::uint64_t index, std::span<const std::uint8_t> extent,
                        std::uint64_t extent_offset, std::span<std::uint8_t> out) {
  if (!dctx_) {
    dctx_ = ZSTD_createDCtx();
    if (!dctx_) throw std::bad_alloc();
  }
  const std::size_t planes = segment.layout == Layout::planes ? segment.element_size : 1;
  const std::size_t plane_size = out.size() / planes;
  std::uint8_t* target = out.data();
  if (planes > 1) {
    planes_.resize(out.size());
    target = planes_.data();
  }
  for (std::size_t p = 0; p < planes; ++p) {
    const Frame& frame = segment.frames[index * planes + p];
    const std::string where = "frame at byte " + std::to_string(frame.offset);
    if (frame.offset < extent_offset || frame.offset - extent_offset > extent.size() ||
        frame.stored_size > extent.size() - (frame.offset - extent_offset)) {
      fail(ErrorKind::invalid_argument, where, "outside the bytes given");
    }
    const auto stored = extent.subspan(frame.offset - extent_offset, frame.stored_size);
    if (crc32(stored) != frame.crc32) fail_corrupt(where, "checksum mismatch");
    std::uint8_t* plane = target + p * plane_size;
    if (frame.codec == Codec::raw) {
      if (stored.size() != plane_size) fail_corrupt(where, "a raw frame of the wrong size");
      std::memcpy(plane, stored.data(), plane_size);
      continue;
    }
    if (frame.codec == Codec::rans) {
      try {
        rans::decode(stored, {plane, plane_size});
      } catch (const Error& e) {
        fail_corrupt(where, e.where() + ": " + e.detail());
      }
      continue;
    }
    const std::size_t n =
        ZSTD_decompressDCtx(static_cast<ZSTD_DCtx*>(dctx_), plane, plane_size, stored.data(), stored.size());
    if (ZSTD_isError(n)) fail_corrupt(where, std::string("zstd: ") + ZSTD_getErrorName(n));
    if (n != plane_size)
      fail_corrupt(where, "decompressed to " + std::to_string(n) + " bytes, not " + std::to_string(plane_size));
  }
  if (planes > 1) merge_planes(planes_.data(), planes, segment.transform == Transform::rotl1, out);
}

std::string serialize_manifest(const Manifest& m) {
  json::Json files = json::Json::array();
  for (const auto& f : m.files) {
    json::Json segments = json::Json::array();
    for (const auto& s : f.segments) {
      json::Json frames = json::Json::array();
      for (const auto& fr : s.frames)
        frames.push_back({static_cast<int>(fr.codec), fr.offset, fr.stored_size, fr.crc32});
      segments.push_back({{"size", s.size},
                          {"layout", s.layout == Layout::planes ? "planes" : "bytes"},
                          {"element_size", s.element_size},
                          {"transform", s.transform == Transform::rotl1 ? "rotl1" : "none"},
                          {"frames", std::move(frames)}});
    }
    files.push_back({{"name", f.name},
                     {"size", f.size},
                     {"mode", f.mode},
                     {"sha256", Sha256::hex(f.sha256)},
                     {"segments", std::move(segments)}});
  }
  json::Json tensors = json::Json::array();
  for (const auto& t : m.tensors) {
    tensors.push_back({{"name", t.name},
                       {"dtype", short_code(t.dtype)},
                       {"shape", t.shape},
                       {"file", t.file},
                       {"segment", t.segment},
                       {"offset", t.offset}});
  }
  return json::dump({{"format", "ckpt-archive"},
                     {"version", kVersion},
                     {"checkpoint", m.checkpoint},
                     {"step", m.step ? json::Json(*m.step) : json::Json(nullptr)},
                     {"chunk_size", m.chunk_size},
                     {"trainer_state", m.trainer_state},
                     {"files", std::move(files)},
                     {"tensors", std::move(tensors)}});
}

std::array<std::uint8_t, kHeaderSize> header_bytes() {
  std::array<std::uint8_t, kHeaderSize> h{};
  std::memcpy(h.data(), kMagic.data(), kMagic.size());
  h[8] = static_cast<std::uint8_t>(kVersion);
  return h;
}

std::array<std::uint8_t, kTrailerSize> trailer_bytes(std::uint64_t manifest_offset, std::string_view manifest) {
  std::array<std::uint8_t, kTrailerSize> t{};
  auto put = [&](std::size_t at, std::uint64_t v, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) t[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
  };
  put(0, manifest_offset, 8);
  put(8, manifest.size(), 8);
  put(16, crc32({reinterpret_cast<const std::uint8_t*>(manifest.data()), manifest.size()}), 4);
  put(20, kVersion, 4);
  std::memcpy(t.data() + 24, kEndMagic.data(), kEndMagic.size());
  return t;
}

}  // namespace ckpt::archive
