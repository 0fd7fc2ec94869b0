#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>

#include "bytes.hpp"
#include "checkpoint/convert.hpp"
#include "format/zip.hpp"
#include "format/zip_writer.hpp"
#include "util/atomic_file.hpp"
#include "util/crc32.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::test;

TEST_CASE("written archives read back: 64-byte aligned data, CRCs, descriptors, zip64 end records") {
  const auto dir = std::filesystem::temp_directory_path() / ("ckpt-zip-writer-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "x.pt").string();
  {
    AtomicFile out(path);
    zip::Writer zip(out);
    zip.add("x/data.pkl", std::string_view("pickle bytes"));
    zip.begin("x/data/0");
    zip.append(as_bytes("abc"));
    zip.append(as_bytes(std::string(1000, 'z')));
    zip.end();
    zip.add("x/version", std::string_view("3\n"));
    zip.finish();
    out.commit();
  }
  const std::string file = read_file(path);
  zip::Archive archive(as_bytes(file));
  REQUIRE(archive.entries().size() == 3);
  for (const auto& e : archive.entries()) {
    CHECK(e.data_offset % 64 == 0);
    CHECK(archive.crc_matches(e));
  }
  const auto* data = archive.find("x/data/0");
  REQUIRE(data != nullptr);
  CHECK(data->size == 1003);
  CHECK(file.find("PK\x06\x06") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("an AtomicFile destroyed without commit leaves nothing") {
  const auto dir = std::filesystem::temp_directory_path() / ("ckpt-atomic-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    AtomicFile out((dir / "never.bin").string());
    out.write(std::string_view("partial"));
  }
  CHECK(std::filesystem::is_empty(dir));
  std::filesystem::remove_all(dir);
}

TEST_CASE("shard sizes in Hugging Face's units") {
  CHECK(checkpoint::parse_size("5GB") == 5'000'000'000ull);
  CHECK(checkpoint::parse_size("500MiB") == 500ull << 20);
  CHECK(checkpoint::parse_size("100KB") == 100'000ull);
  CHECK(checkpoint::parse_size("1024") == 1024ull);
  CHECK_FALSE(checkpoint::parse_size("lots").has_value());
  CHECK_FALSE(checkpoint::parse_size("GB").has_value());
}
