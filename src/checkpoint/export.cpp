#include "checkpoint/export.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr const char* model_extras[] = {"config.json", "generation_config.json"};

// Whether `dir` can be replaced whole by a new export: a directory of its own (not `.`, not a mount point, not
// reached through a symlink) that holds an earlier export and nothing else but its temporaries. Anything
// else there (a `.git`, the run's files) belongs to someone: then files are placed one by one.
bool replaceable_export(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(dir, ec)) || !dir.has_filename() || dir.filename() == "." || dir.filename() == "..") return false;
  struct stat own {}, parent {};
  const fs::path above = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  if (::stat(dir.c_str(), &own) != 0 || ::stat(above.c_str(), &parent) != 0 || own.st_dev != parent.st_dev) return false;
  const auto weights = find_weights(dir.string());
  if (!weights) return false;
  std::vector<std::string> expected = weights->files;
  if (weights->index) expected.push_back(*weights->index);
  expected.insert(expected.end(), std::begin(model_extras), std::end(model_extras));
  const auto is_expected = [&](const std::string& name) {
    return std::find(expected.begin(), expected.end(), name) != expected.end();
  };
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const auto temporary = name.find(".tmp-");
    if (is_expected(name) || (name.front() == '.' && temporary != std::string::npos && is_expected(name.substr(1, temporary - 1)))) continue;
    return false;
  }
  if (ec) throw Error(ErrorKind::io, dir.string(), "", "cannot list directory: " + ec.message());
  return true;
}

}  // namespace

ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_as_given) {
  const auto weights = find_weights(checkpoint_dir);
  if (!weights) throw Error(ErrorKind::not_found, checkpoint_dir, "", "no weights to export");
  std::vector<std::string> names = weights->files;
  if (weights->index) names.push_back(*weights->index);
  for (const char* extra : model_extras) {
    if (fs::exists(fs::path(checkpoint_dir) / extra)) names.push_back(extra);
  }
  const fs::path dest = fs_util::entry_path(dest_as_given);
  ExportResult result;
  const auto place_files = [&](const std::string& dir) {
    for (const auto& name : names) {
      if (fs_util::link_or_copy((fs::path(checkpoint_dir) / name).string(), (fs::path(dir) / name).string())) ++result.hardlinked;
      result.files.push_back(name);
    }
  };
  std::error_code ec;
  if (!dest.parent_path().empty()) {
    fs::create_directories(dest.parent_path(), ec);
    if (ec) throw Error(ErrorKind::io, dest.parent_path().string(), "", "cannot create directory: " + ec.message());
  }
  const auto status = fs::symlink_status(dest, ec);
  if (!fs::exists(status) || replaceable_export(dest)) {
    fs_util::build_directory(dest.string(), place_files);
  } else if (!fs::is_directory(fs::status(dest, ec))) {
    throw Error(ErrorKind::invalid_argument, dest.string(), "", "not a directory");
  } else {
    fs_util::clear_abandoned_temporaries_of(dest.string());  // an earlier export's staging, killed
    for (const auto& name : names) fs_util::clear_abandoned_temporaries(dest.string(), name);
    place_files(dest.string());
    fs_util::fsync_directory(dest.string());
  }
  return result;
}

}  // namespace ckpt::checkpoint
