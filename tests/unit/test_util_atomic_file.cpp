#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

#include "util/atomic_file.hpp"
#include "util/direct_reader.hpp"
#include "util/error.hpp"

using namespace ckpt;

namespace {

std::vector<std::uint8_t> random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> v(n);
  for (auto& b : v) b = static_cast<std::uint8_t>(rng());
  return v;
}

std::vector<std::uint8_t> slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Writes `data` in pieces of the given sizes (cycled), mixing write() and copy_from() of a source file.
void write_pieces(AtomicFile& out, const std::vector<std::uint8_t>& data, const ReadOnlyFile& source,
                  std::vector<std::size_t> sizes) {
  std::size_t at = 0;
  for (std::size_t k = 0; at < data.size(); ++k) {
    const std::size_t n = std::min(sizes[k % sizes.size()], data.size() - at);
    if (k % 3 == 2)
      out.copy_from(source, at, n);
    else
      out.write(std::span(data).subspan(at, n));
    at += n;
  }
}

}  // namespace

TEST_CASE("AtomicFile in direct mode writes exactly the bytes given, whatever their sizes and alignment") {
  const auto dir = std::filesystem::temp_directory_path() / ("ckpt-direct-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto data = random_bytes((8u << 20) * 2 + 12345, 7);
  {
    std::ofstream(dir / "source", std::ios::binary)
        .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  }
  const ReadOnlyFile source((dir / "source").string());
  std::size_t k = 0;
  for (const auto& sizes :
       std::vector<std::vector<std::size_t>>{{1}, {4096}, {3, 5000, 1 << 20}, {9u << 20}, {(8u << 20) - 1, 2}}) {
    ++k;
    for (std::size_t length : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, std::size_t{70000}, data.size()}) {
      if (sizes == std::vector<std::size_t>{1} && length > 70000) continue;  // byte-at-a-time over megabytes is slow
      const std::vector<std::uint8_t> part(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(length));
      AtomicFile out((dir / "out").string(), {.direct = true, .durable = k % 2 == 0});
      write_pieces(out, part, source, sizes);
      CHECK(out.position() == length);
      out.commit();
      CHECK(slurp(dir / "out") == part);
      // and it reads back through the direct reader, from any offset
      const ReadOnlyFile written((dir / "out").string());
      DirectReader reader(written);
      for (std::size_t offset : {std::size_t{0}, std::size_t{1}, std::size_t{4095}, length / 2}) {
        if (offset > length) continue;
        std::vector<std::uint8_t> back(length - offset);
        reader.read_at(offset, back);
        CHECK(std::equal(back.begin(), back.end(), part.begin() + static_cast<std::ptrdiff_t>(offset)));
      }
      std::vector<std::uint8_t> one(1);
      CHECK_THROWS_AS(reader.read_at(length, one), Error);
    }
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("AtomicFile in direct mode falls back to the page cache where O_DIRECT is refused") {
  // /dev/shm is a tmpfs; whether it takes O_DIRECT depends on the kernel, and both paths must give the bytes.
  const std::filesystem::path dir = "/dev/shm/ckpt-direct-" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const auto data = random_bytes((8u << 20) + 999, 11);
  {
    AtomicFile out((dir / "out").string(), {.direct = true});
    out.write(data);
    out.commit();
  }
  CHECK(slurp(dir / "out") == data);
  const ReadOnlyFile written((dir / "out").string());
  DirectReader reader(written);
  std::vector<std::uint8_t> back(data.size() - 3);
  reader.read_at(3, back);
  CHECK(std::equal(back.begin(), back.end(), data.begin() + 3));
  std::filesystem::remove_all(dir);
}

TEST_CASE("DirectReader reads a file whose pages are partly in the page cache: cached runs and direct reads agree") {
  const auto dir = std::filesystem::temp_directory_path() / ("ckpt-cached-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto data = random_bytes((3u << 20) + 123, 12);
  {
    AtomicFile out((dir / "out").string(), {.direct = true});
    out.write(data);
    out.commit();
  }
  const ReadOnlyFile written((dir / "out").string());
  // Nothing cached, then two runs cached (one unaligned at both ends, one reaching the end of the file).
  ::posix_fadvise(written.fd(), 0, 0, POSIX_FADV_DONTNEED);
  std::vector<std::uint8_t> warm((1u << 20) + 77);
  written.read_at((1u << 20) + 4000, warm);
  std::vector<std::uint8_t> tail(5000);
  written.read_at(data.size() - tail.size(), tail);
  DirectReader reader(written);
  for (std::size_t offset : {std::size_t{0}, std::size_t{5}, std::size_t{(1u << 20) + 4096}, data.size() - 4999}) {
    std::vector<std::uint8_t> back(data.size() - offset);
    reader.read_at(offset, back);
    CHECK(std::equal(back.begin(), back.end(), data.begin() + static_cast<std::ptrdiff_t>(offset)));
  }
  std::filesystem::remove_all(dir);
}
