#include <doctest/doctest.h>

#include "bytes.hpp"
#include "format/zip.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::test;

// tests/data/tiny_state_dict.pt is written by torch.save (tests/data/make_data.py); the member names,
// sizes, CRCs and header offsets below are what Python's zipfile reports for it.
TEST_CASE("reads the members of a torch.save archive") {
  const std::string file = read_file(data_path("tiny_state_dict.pt"));
  zip::Archive archive(as_bytes(file));
  REQUIRE(archive.entries().size() == 6);
  const zip::Entry* pkl = archive.find("tiny_state_dict/data.pkl");
  REQUIRE(pkl != nullptr);
  CHECK(pkl->size == 490);
  CHECK(pkl->crc32 == 0x20367f87u);
  CHECK(pkl->header_offset == 0);
  const zip::Entry* storage = archive.find("tiny_state_dict/data/0");
  REQUIRE(storage != nullptr);
  CHECK(storage->size == 48);
  CHECK(storage->header_offset == 570);
  CHECK(storage->data_offset % 64 == 0);  // torch aligns record data to 64 bytes
  for (const auto& e : archive.entries()) CHECK(archive.crc_matches(e));
}

TEST_CASE("bytes in front of the archive shift every offset") {
  const std::string file = std::string(100, 'J') + read_file(data_path("tiny_state_dict.pt"));
  zip::Archive archive(as_bytes(file));
  const zip::Entry* storage = archive.find("tiny_state_dict/data/0");
  REQUIRE(storage != nullptr);
  CHECK(storage->header_offset == 670);
  CHECK(archive.crc_matches(*storage));
}

TEST_CASE("a flipped data byte fails the CRC check") {
  std::string file = read_file(data_path("tiny_state_dict.pt"));
  zip::Archive clean(as_bytes(file));
  const auto offset = clean.find("tiny_state_dict/data/0")->data_offset;
  file[offset] ^= 0x01;
  zip::Archive archive(as_bytes(file));
  CHECK_FALSE(archive.crc_matches(*archive.find("tiny_state_dict/data/0")));
  CHECK(archive.crc_matches(*archive.find("tiny_state_dict/data.pkl")));
}

TEST_CASE("every truncation is an error naming a byte offset or member") {
  const std::string file = read_file(data_path("tiny_state_dict.pt"));
  for (std::size_t n = 0; n < file.size(); ++n) {
    try {
      zip::Archive archive(as_bytes(std::string_view(file).substr(0, n)));
      // A truncation can leave a parseable directory only if it still describes the data; it never can here
      // because the end record is the last thing in the file.
      FAIL("truncated to " << n << " bytes but parsed");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::corrupt);
      CHECK_FALSE(e.where().empty());
    }
  }
}

TEST_CASE("hostile directories") {
  const std::string file = read_file(data_path("tiny_state_dict.pt"));
  zip::Archive clean(as_bytes(file));
  SUBCASE("entry count larger than the directory") {
    std::string bad = file;
    const std::size_t end = bad.rfind("PK\x05\x06");
    bad[end + 10] = '\xff';  // n_total (u16) = 0xffxx; the zip64 record disagrees and wins only when 0xffff
    bad[end + 11] = '\x7f';
    CHECK_THROWS_AS(zip::Archive(as_bytes(bad)), Error);
  }
  SUBCASE("local header offset past the directory") {
    std::string bad = file;
    const std::size_t central = bad.find("PK\x01\x02");
    bad.replace(central + 42, 4, le32(0x7fffffff));
    CHECK_THROWS_AS(zip::Archive(as_bytes(bad)), Error);
  }
  SUBCASE("member size past the end") {
    std::string bad = file;
    const std::size_t central = bad.find("PK\x01\x02");
    bad.replace(central + 20, 4, le32(0x7fffffff));
    bad.replace(central + 24, 4, le32(0x7fffffff));
    CHECK_THROWS_AS(zip::Archive(as_bytes(bad)), Error);
  }
}
