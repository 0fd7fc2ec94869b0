#include <doctest/doctest.h>

#include <cstring>
#include <functional>
#include <random>
#include <set>

#include "bytes.hpp"
#include "format/archive.hpp"
#include "util/crc32.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::test;
using archive::Codec;
using archive::Layout;
using archive::Segment;
using archive::Transform;

namespace {

std::vector<std::uint8_t> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> v(n);
  for (auto& b : v) b = static_cast<std::uint8_t>(rng());
  return v;
}

// Floats of weights' shape: random sign and mantissa, exponents concentrated on a few values (2^-5 .. 2^-8), so
// that only the exponent byte is compressible.
std::vector<std::uint8_t> float_bytes(std::size_t count, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> v(count * 4);
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint32_t r = rng();
    const std::uint32_t exponent = 122 - (r >> 30);
    const std::uint32_t bits = (rng() & 0x807fffffu) | (exponent << 23);
    std::memcpy(v.data() + 4 * i, &bits, 4);
  }
  return v;
}

Segment planes_segment(std::uint64_t size, std::uint32_t width, Transform transform) {
  Segment s;
  s.size = size;
  s.layout = width == 1 ? Layout::bytes : Layout::planes;
  s.element_size = width;
  s.transform = transform;
  return s;
}

// Encodes `raw` as one chunk and decodes it back, checking the frames' bookkeeping on the way.
std::vector<std::uint8_t> round_trip(std::span<const std::uint8_t> raw, Segment segment) {
  archive::ChunkCoder coder(3);
  std::vector<std::uint8_t> stored;
  const auto frames = coder.encode(raw, segment, stored);
  CHECK(frames.size() == (segment.layout == Layout::planes ? segment.element_size : 1u));
  std::uint64_t end = 0;
  for (const auto& f : frames) {
    CHECK(f.offset == end);
    end += f.stored_size;
    CHECK(f.stored_size <= raw.size() / frames.size());
    CHECK(crc32(std::span<const std::uint8_t>(stored).subspan(f.offset, f.stored_size)) == f.crc32);
  }
  CHECK(end == stored.size());
  segment.frames = frames;
  std::vector<std::uint8_t> out(raw.size());
  coder.decode(segment, 0, stored, 0, out);
  return out;
}

// A one-file archive in memory: `content` cut into the given segments, each encoded chunk by chunk.
struct Built {
  std::string bytes;
  archive::Manifest manifest;
};

Built build_archive(const std::vector<std::uint8_t>& content, std::vector<Segment> segments,
                    std::uint64_t chunk_size = 4096) {
  Built b;
  archive::ChunkCoder coder(3);
  const auto header = archive::header_bytes();
  b.bytes.assign(header.begin(), header.end());
  std::uint64_t at = 0;
  for (auto& s : segments) {
    for (std::uint64_t c = 0; c < archive::chunk_count(s, chunk_size); ++c) {
      const auto len = archive::chunk_length(s, chunk_size, c);
      std::vector<std::uint8_t> stored;
      for (auto f : coder.encode(std::span(content).subspan(at + c * chunk_size, len), s, stored)) {
        f.offset += b.bytes.size();
        s.frames.push_back(f);
      }
      b.bytes.append(stored.begin(), stored.end());
    }
    at += s.size;
  }
  archive::File file;
  file.name = "weights/model.bin";
  file.size = content.size();
  file.segments = std::move(segments);
  b.manifest.checkpoint = "checkpoint-7";
  b.manifest.step = 7;
  b.manifest.chunk_size = chunk_size;
  b.manifest.trainer_state = nullptr;
  b.manifest.files.push_back(file);
  b.manifest.tensors.push_back({"w", DType::float32, {2, 3}, 0, 1, 0});
  const std::string text = archive::serialize_manifest(b.manifest);
  const std::uint64_t offset = b.bytes.size();
  b.bytes += text;
  const auto trailer = archive::trailer_bytes(offset, text);
  b.bytes.append(trailer.begin(), trailer.end());
  return b;
}

Built sample() {
  std::vector<std::uint8_t> content = random_bytes(100, 1);
  const auto floats = float_bytes(3000, 2);
  content.insert(content.end(), floats.begin(), floats.end());
  return build_archive(content, {planes_segment(100, 1, Transform::none), planes_segment(12000, 4, Transform::rotl1)});
}

// The archive with its manifest JSON changed by `edit` (and the trailer's offset, size and CRC made to match).
std::string with_manifest(const Built& b, const std::function<void(json::Json&)>& edit) {
  json::Json m = json::parse(archive::serialize_manifest(b.manifest));
  edit(m);
  const std::string text = json::dump(m);
  std::string out =
      b.bytes.substr(0, b.bytes.size() - archive::kTrailerSize - archive::serialize_manifest(b.manifest).size());
  const std::uint64_t offset = out.size();
  out += text;
  const auto trailer = archive::trailer_bytes(offset, text);
  out.append(trailer.begin(), trailer.end());
  return out;
}

Error read_error(const std::string& bytes) {
  try {
    archive::read_manifest(as_bytes(bytes));
  } catch (const Error& e) {
    return e;
  }
  FAIL("expected an error");
  return Error(ErrorKind::io, "", "", "");
}

}  // namespace

TEST_CASE("chunks round-trip through every plane width, with and without the float rotation, at every tail length") {
  for (std::uint32_t width : {1u, 2u, 4u, 8u}) {
    for (Transform t : {Transform::none, Transform::rotl1}) {
      if (width == 1 && t == Transform::rotl1) continue;
      // 0..40 elements cover the SIMD blocks of 16 and every scalar tail.
      for (std::size_t count = 1; count <= 40; ++count) {
        const auto raw = random_bytes(count * width, static_cast<std::uint32_t>(count * 31 + width));
        CHECK(round_trip(raw, planes_segment(raw.size(), width, t)) == raw);
      }
    }
  }
}

TEST_CASE(
    "float exponents compress, random mantissas are stored raw, and the rotation puts the exponent in the top plane") {
  const auto raw = float_bytes(1 << 16, 3);
  archive::ChunkCoder coder(3);
  std::vector<std::uint8_t> stored;
  const auto frames = coder.encode(raw, planes_segment(raw.size(), 4, Transform::rotl1), stored);
  REQUIRE(frames.size() == 4);
  CHECK(frames[0].codec == Codec::raw);  // low mantissa byte and the sign
  CHECK(frames[1].codec == Codec::raw);
  CHECK(frames[3].codec == Codec::rans);  // the exponent: skewed, without repeats
  CHECK(frames[3].stored_size < (1u << 16) / 2);
  // Plane 0 of the rotated floats holds their lowest mantissa bits above the sign.
  std::uint32_t first;
  std::memcpy(&first, raw.data(), 4);
  CHECK(stored[frames[0].offset] == static_cast<std::uint8_t>((first << 1) | (first >> 31)));
}

TEST_CASE("integer planes that repeat go to zstd even when each byte looks random") {
  std::vector<std::uint8_t> raw(8 * 100000);
  for (std::uint64_t i = 0; i < 100000; ++i) std::memcpy(raw.data() + 8 * i, &i, 8);  // torch.arange(100000)
  archive::ChunkCoder coder(3);
  std::vector<std::uint8_t> stored;
  const auto frames = coder.encode(raw, planes_segment(raw.size(), 8, Transform::none), stored);
  CHECK(frames[0].codec == Codec::zstd);
  CHECK(stored.size() < raw.size() / 50);
  CHECK(round_trip(raw, planes_segment(raw.size(), 8, Transform::none)) == raw);
}

TEST_CASE("a manifest reads back as written") {
  const Built b = sample();
  const auto m = archive::read_manifest(as_bytes(b.bytes));
  CHECK(m.checkpoint == "checkpoint-7");
  CHECK(m.step == 7);
  REQUIRE(m.files.size() == 1);
  CHECK(m.files[0].name == "weights/model.bin");
  CHECK(m.files[0].size == 12100);
  REQUIRE(m.files[0].segments.size() == 2);
  CHECK(m.files[0].segments[1].frames.size() == 3 * 4);  // 12000 bytes in chunks of 4096, four planes each
  CHECK(m.tensors.size() == 1);
  CHECK(m.original_size() == 12100);
  // Every chunk decodes from its extent.
  archive::ChunkCoder coder(3);
  for (const auto& s : m.files[0].segments) {
    for (std::uint64_t c = 0; c < archive::chunk_count(s, m.chunk_size); ++c) {
      const auto e = archive::chunk_extent(s, c);
      std::vector<std::uint8_t> out(archive::chunk_length(s, m.chunk_size, c));
      coder.decode(s, c, as_bytes(b.bytes).subspan(e.offset, e.size), e.offset, out);
    }
  }
}

TEST_CASE("damaged containers are refused with the byte offset") {
  const Built b = sample();
  std::string bytes = b.bytes;
  bytes[0] = 'X';
  CHECK(std::string(read_error(bytes).what()).find("no CKPTARC1 magic") != std::string::npos);
  bytes = b.bytes;
  bytes[8] = 2;
  CHECK(read_error(bytes).kind() == ErrorKind::unsupported);
  CHECK(std::string(read_error(b.bytes.substr(0, b.bytes.size() - 1)).what()).find("trailer") != std::string::npos);
  CHECK(read_error(b.bytes.substr(0, 40)).kind() == ErrorKind::corrupt);
  bytes = b.bytes;
  bytes[12] = 1;  // flags
  CHECK(read_error(bytes).kind() == ErrorKind::unsupported);
  bytes = b.bytes;
  bytes[bytes.size() - 12] = 2;  // the trailer's version
  CHECK(std::string(read_error(bytes).what()).find("version differs") != std::string::npos);
  bytes = b.bytes;
  bytes[bytes.size() - archive::kTrailerSize - 5] ^= 1;  // inside the manifest
  CHECK(std::string(read_error(bytes).what()).find("manifest checksum mismatch") != std::string::npos);
  bytes = b.bytes;
  bytes[bytes.size() - archive::kTrailerSize] ^= 1;  // the manifest offset
  CHECK(read_error(bytes).kind() == ErrorKind::corrupt);
}

TEST_CASE("manifests that would write outside the destination or read outside the archive are refused") {
  const Built b = sample();
  auto refused = [&](const std::function<void(json::Json&)>& edit, const char* expected) {
    const Error e = read_error(with_manifest(b, edit));
    CHECK(e.kind() == ErrorKind::corrupt);
    CHECK_MESSAGE(std::string(e.what()).find(expected) != std::string::npos, std::string(e.what()));
  };
  for (const char* name : {"../evil", "/etc/passwd", "a//b", "a/./b", "", "a/..", "x/"}) {
    refused([&](json::Json& m) { m["files"][0]["name"] = name; }, "not a safe relative path");
  }
  refused(
      [](json::Json& m) {
        json::Json twin = m["files"][0];
        twin["size"] = 0;
        twin["segments"] = json::Json::array();
        m["files"].push_back(twin);
      },
      "appears twice");
  refused([](json::Json& m) { m["files"][0]["segments"][1]["frames"][0][1] = 1u << 30; },
          "outside the archive's frames");
  refused([](json::Json& m) { m["files"][0]["segments"][1]["frames"][0][1] = 3; }, "outside the archive's frames");
  refused([](json::Json& m) { m["files"][0]["segments"][1]["frames"].erase(0); }, "frame count");
  refused([](json::Json& m) { m["files"][0]["size"] = 1; }, "do not cover");
  refused([](json::Json& m) { m["files"][0]["segments"][1]["size"] = 11999; }, "whole number of elements");
  refused([](json::Json& m) { m["files"][0]["segments"][1]["element_size"] = 3; }, "must be 1, 2, 4 or 8");
  refused([](json::Json& m) { m["files"][0]["segments"][0]["frames"][0][2] = 99; }, "larger than its plane");
  refused([](json::Json& m) { m["files"][0]["segments"][1]["frames"][0][0] = 7; }, "unknown codec");
  refused([](json::Json& m) { m["chunk_size"] = 1; }, "chunk_size");
  refused([](json::Json& m) { m["tensors"][0]["segment"] = 9; }, "outside the archive's files");
  refused([](json::Json& m) { m["tensors"][0]["dtype"] = "F33"; }, "unknown dtype");
  refused([](json::Json& m) { m["files"][0]["sha256"] = "00"; }, "sha256");
  refused([](json::Json& m) { m["files"][0]["segments"][1]["size"] = std::uint64_t{1} << 62; }, "frame count");
  refused([](json::Json& m) { m["tensors"][0]["shape"] = {1000000}; }, "extends past its segment");
  refused(
      [](json::Json& m) {
        m["tensors"][0]["shape"] = {std::int64_t{1} << 40, std::int64_t{1} << 40};
      },
      "too many elements");
  refused([](json::Json& m) { m["step"] = -3; }, "not a step");
  refused(
      [](json::Json& m) {
        json::Json inner = m["files"][0];
        inner["name"] = "weights/model.bin/inner";
        inner["size"] = 0;
        inner["segments"] = json::Json::array();
        m["files"].push_back(inner);
      },
      "both a file and a directory");
  // A frame of chunk 0 swapped with one of chunk 1: the chunk's extent would exceed its length.
  refused(
      [](json::Json& m) {
        auto& frames = m["files"][0]["segments"][1]["frames"];
        std::swap(frames[0], frames[4]);
      },
      "frames are stored in order, each once");
}

TEST_CASE(
    "an archive expands no further than its frames can: each frame is stored once, in order, and holds what its codec "
    "needs") {
  const Built b = sample();
  auto refused = [&](const std::function<void(json::Json&)>& edit, const char* expected) {
    const Error e = read_error(with_manifest(b, edit));
    CHECK(e.kind() == ErrorKind::corrupt);
    CHECK_MESSAGE(std::string(e.what()).find(expected) != std::string::npos, std::string(e.what()));
  };
  // Two chunks decoding the same stored bytes: a few bytes could otherwise restore any size.
  refused([](json::Json& m) { m["files"][0]["segments"][1]["frames"][4] = m["files"][0]["segments"][1]["frames"][0]; },
          "frames are stored in order, each once");
  refused([](json::Json& m) { m["files"][0]["segments"][0]["frames"][0][1] = 17; },
          "frames are stored in order, each once");
  // Bytes between the frames and the manifest that no frame holds.
  refused(
      [](json::Json& m) {
        m["files"][0]["segments"][1]["frames"].back()[2] =
            m["files"][0]["segments"][1]["frames"].back()[2].get<int>() - 1;
      },
      "not at the manifest");
  // The last frame declared as a zstd frame or a rANS block too small to decode to its 952-byte plane.
  refused(
      [](json::Json& m) {
        auto& last = m["files"][0]["segments"][1]["frames"].back();
        last[0] = 1;
        last[2] = 9;
      },
      "9 bytes cannot decode to 952 with its codec");
  refused(
      [](json::Json& m) {
        auto& last = m["files"][0]["segments"][1]["frames"].back();
        last[0] = 2;
        last[2] = 20;
      },
      "20 bytes cannot decode to 952 with its codec");
}

TEST_CASE(
    "archives of constant data, the most compressible there is, still read: zstd and rANS frames at their minimum "
    "sizes") {
  const std::vector<std::uint8_t> zeros(10u << 20, 0);
  const Built b = build_archive(
      zeros, {planes_segment(8u << 20, 4, Transform::rotl1), planes_segment(2u << 20, 1, Transform::none)},
      archive::kMaxChunkSize);
  const auto m = archive::read_manifest(as_bytes(b.bytes));
  std::set<Codec> codecs;
  for (const auto& s : m.files[0].segments) {
    for (const auto& f : s.frames) codecs.insert(f.codec);
  }
  CHECK(codecs == std::set<Codec>{Codec::zstd, Codec::rans});
  CHECK(b.bytes.size() < 2000);
}

TEST_CASE("a flipped bit in a frame is caught by its CRC before decompression") {
  Built b = sample();
  const auto& s = b.manifest.files[0].segments[1];
  std::string bytes = b.bytes;
  bytes[s.frames[3].offset] ^= 0x10;
  const auto m = archive::read_manifest(as_bytes(bytes));
  archive::ChunkCoder coder(3);
  const auto e = archive::chunk_extent(m.files[0].segments[1], 0);
  std::vector<std::uint8_t> out(4096);
  CHECK_THROWS_WITH_AS(
      coder.decode(m.files[0].segments[1], 0, as_bytes(bytes).subspan(e.offset, e.size), e.offset, out),
      doctest::Contains("checksum mismatch"), Error);
}
