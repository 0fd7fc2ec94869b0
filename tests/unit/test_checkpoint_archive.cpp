#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "bytes.hpp"
#include "checkpoint/archive.hpp"
#include "format/safetensors.hpp"
#include "util/error.hpp"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

struct ArchivedDir {
  fs::path dir;
  std::string weights;  // model.safetensors's bytes
  std::string notes;
  std::string archive;

  ArchivedDir() : dir(fs::temp_directory_path() / ("ckpt-archive-files-" + std::to_string(::getpid()))) {
    fs::remove_all(dir);
    fs::create_directories(dir / "checkpoint-7");
    // An F32 tensor spanning several 4 KiB chunks (stored as byte planes) and a U8 one (stored as bytes).
    std::mt19937 random(7);
    std::string floats(40000, '\0');
    for (auto& c : floats) c = static_cast<char>(random());
    const std::string small = "0123456789";
    const std::string header =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[10000],\"data_offsets\":[0,40000]},"
        "\"b\":{\"dtype\":\"U8\",\"shape\":[10],\"data_offsets\":[40000,40010]}}      ";
    weights = test::le64(header.size()) + header + floats + small;
    std::ofstream(dir / "checkpoint-7" / "model.safetensors", std::ios::binary) << weights;
    notes = std::string(9000, 'n');
    std::ofstream(dir / "checkpoint-7" / "notes.txt", std::ios::binary) << notes;
    archive = (dir / "checkpoint-7.ckpt").string();
    checkpoint::ArchiveOptions options;
    options.chunk_size = 4096;
    options.threads = 1;
    checkpoint::archive_checkpoint((dir / "checkpoint-7").string(), archive, options);
  }
  ~ArchivedDir() { fs::remove_all(dir); }
};

std::string read_range(const checkpoint::ArchiveFiles& files, std::size_t file, std::uint64_t offset, std::size_t n,
                       checkpoint::ArchiveFiles::ChunkCache& cache) {
  std::string out(n, '\0');
  files.read(file, offset, {reinterpret_cast<std::uint8_t*>(out.data()), n}, cache);
  return out;
}

}  // namespace

TEST_CASE("an archive's files read in place, any range across chunks and segments") {
  ArchivedDir a;
  checkpoint::ArchiveFiles files(a.archive);
  const auto weights = files.find("model.safetensors");
  const auto notes = files.find("notes.txt");
  REQUIRE(weights);
  REQUIRE(notes);
  CHECK_FALSE(files.find("optimizer.pt"));
  checkpoint::ArchiveFiles::ChunkCache cache;
  CHECK(read_range(files, *weights, 0, a.weights.size(), cache) == a.weights);
  std::mt19937 random(1);
  for (int i = 0; i < 200; ++i) {
    const std::uint64_t offset = random() % a.weights.size();
    const std::size_t n = random() % (a.weights.size() - offset + 1);
    REQUIRE(read_range(files, *weights, offset, n, cache) == a.weights.substr(offset, n));
  }
  CHECK(read_range(files, *notes, 8990, 10, cache) == a.notes.substr(8990));
  CHECK_THROWS_AS(read_range(files, *notes, 8990, 11, cache), Error);
}

TEST_CASE("an archived file's metadata copy: every byte but the byte planes of wide tensors") {
  ArchivedDir a;
  checkpoint::ArchiveFiles files(a.archive);
  const auto copy = files.metadata_copy(*files.find("model.safetensors"));
  const std::string bytes = test::read_file(copy->path());
  REQUIRE(bytes.size() == a.weights.size());
  const auto header = safetensors::parse(test::as_bytes(bytes));
  const std::size_t data = header.buffer_offset;
  CHECK(bytes.substr(0, data) == a.weights.substr(0, data));            // the header, for parsers
  CHECK(bytes.substr(data, 40000) == std::string(40000, '\0'));         // the F32 tensor: read() gives it
  CHECK(bytes.substr(data + 40000) == a.weights.substr(data + 40000));  // the U8 tensor, stored as bytes
  CHECK(test::read_file(files.metadata_copy(*files.find("notes.txt"))->path()) == a.notes);
}
