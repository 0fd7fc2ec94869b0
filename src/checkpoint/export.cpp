#include "checkpoint/export.hpp"

#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_dir) {
  const auto weights = find_weights(checkpoint_dir);
  if (!weights) throw Error(ErrorKind::not_found, checkpoint_dir, "", "no weights to export");
  std::vector<std::string> names = weights->files;
  if (weights->index) names.insert(names.begin(), *weights->index);
  for (const char* extra : {"config.json", "generation_config.json"}) {
    if (fs::exists(fs::path(checkpoint_dir) / extra)) names.push_back(extra);
  }
  std::error_code ec;
  fs::create_directories(dest_dir, ec);
  if (ec) throw Error(ErrorKind::io, dest_dir, "", "cannot create directory: " + ec.message());
  ExportResult result;
  for (const auto& name : names) {
    if (fs_util::link_or_copy((fs::path(checkpoint_dir) / name).string(), (fs::path(dest_dir) / name).string())) ++result.hardlinked;
    result.files.push_back(name);
  }
  fs_util::fsync_directory(dest_dir);
  return result;
}

}  // namespace ckpt::checkpoint
