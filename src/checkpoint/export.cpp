#include "checkpoint/export.hpp"

#include <algorithm>
#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr const char* model_extras[] = {"config.json", "generation_config.json"};

// Whether every visible entry of `dir` is a file an export writes (hidden temporaries are ignored).
bool holds_only_an_export(const std::string& dir) {
  const auto weights = find_weights(dir);
  std::vector<std::string> expected = weights ? weights->files : std::vector<std::string>{};
  if (weights && weights->index) expected.push_back(*weights->index);
  expected.insert(expected.end(), std::begin(model_extras), std::end(model_extras));
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.front() == '.') continue;
    if (std::find(expected.begin(), expected.end(), name) == expected.end()) return false;
  }
  if (ec) throw Error(ErrorKind::io, dir, "", "cannot list directory: " + ec.message());
  return true;
}

}  // namespace

ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_dir) {
  const auto weights = find_weights(checkpoint_dir);
  if (!weights) throw Error(ErrorKind::not_found, checkpoint_dir, "", "no weights to export");
  std::vector<std::string> names = weights->files;
  if (weights->index) names.push_back(*weights->index);
  for (const char* extra : model_extras) {
    if (fs::exists(fs::path(checkpoint_dir) / extra)) names.push_back(extra);
  }
  ExportResult result;
  const auto place_files = [&](const std::string& dir) {
    for (const auto& name : names) {
      if (fs_util::link_or_copy((fs::path(checkpoint_dir) / name).string(), (fs::path(dir) / name).string())) ++result.hardlinked;
      result.files.push_back(name);
    }
  };
  fs_util::clear_abandoned_temporaries_of(dest_dir);
  std::error_code ec;
  const auto status = fs::symlink_status(dest_dir, ec);
  if (!fs::exists(status)) {
    fs_util::build_directory(dest_dir, place_files);
  } else if (!fs::is_directory(fs::status(dest_dir, ec))) {
    throw Error(ErrorKind::invalid_argument, dest_dir, "", "not a directory");
  } else if (!fs::is_symlink(status) && holds_only_an_export(dest_dir)) {
    fs_util::build_directory(dest_dir, place_files);
  } else {
    for (const auto& name : names) fs_util::clear_abandoned_temporaries(dest_dir, name);
    place_files(dest_dir);
    fs_util::fsync_directory(dest_dir);
  }
  return result;
}

}  // namespace ckpt::checkpoint
