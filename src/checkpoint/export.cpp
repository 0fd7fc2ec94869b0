#include "checkpoint/export.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr const char* model_extras[] = {"config.json", "generation_config.json"};

// What an earlier output of ckpt in `dir` holds by name: its weights as find_weights sees them and the model's
// config files. An index that does not read names no shards.
std::set<std::string> earlier_output_names(const fs::path& dir) {
  std::set<std::string> names(std::begin(model_extras), std::end(model_extras));
  try {
    if (const auto weights = find_weights(dir.string())) {
      names.insert(weights->files.begin(), weights->files.end());
      if (weights->index) names.insert(*weights->index);
    }
  } catch (const Error&) {}
  return names;
}

// Every regular file and directory below `dir`, as relative paths, symlinks not followed.
std::set<std::string> relative_entries(const std::string& dir) {
  std::set<std::string> names;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    names.insert(it->path().lexically_relative(dir).generic_string());
  }
  if (ec) throw Error(ErrorKind::io, dir, "", "cannot list directory: " + ec.message());
  return names;
}

bool is_checkpoint_name(const std::string& name) {
  return checkpoint_step(name) || name.rfind("tmp-checkpoint-", 0) == 0 || name.rfind(kStagingPrefix, 0) == 0 ||
         name.rfind(kTrashPrefix, 0) == 0;
}

}  // namespace

std::optional<std::string> why_not_replaceable(const std::string& dir_as_given,
                                               const std::set<std::string>& new_names) {
  const fs::path dir = fs_util::entry_path(dir_as_given);
  struct stat own {};
  if (::lstat(dir.c_str(), &own) != 0) {
    if (errno == ENOENT) return std::nullopt;
    fail_io(dir.string(), "stat", errno);
  }
  if (!S_ISDIR(own.st_mode)) return std::string("is ") + file_type_name(own.st_mode) + ", not a directory ckpt wrote";
  if (!dir.has_filename() || dir.filename() == "." || dir.filename() == "..")
    return std::string("is the current or the parent directory");
  struct stat parent {};
  const fs::path above = dir.parent_path().empty() ? fs::path(".") : dir.parent_path();
  if (::stat(above.c_str(), &parent) != 0 || own.st_dev != parent.st_dev) return std::string("is a mount point");
  std::set<std::string> allowed = earlier_output_names(dir);
  allowed.insert(new_names.begin(), new_names.end());
  const auto is_allowed_directory = [&](const std::string& relative) {
    return std::any_of(allowed.begin(), allowed.end(),
                       [&](const std::string& name) { return name.rfind(relative + "/", 0) == 0; });
  };
  // A temporary of an allowed file, `.NAME.tmp-*` beside it (AtomicFile's, a killed writer's).
  const auto is_allowed_temporary = [&](const fs::path& relative) {
    const std::string name = relative.filename().string();
    const auto marker = name.find(".tmp-");
    return name.size() > 1 && name.front() == '.' && marker != std::string::npos && marker > 1 &&
           allowed.count((relative.parent_path() / name.substr(1, marker - 1)).generic_string()) > 0;
  };
  for (const auto& relative : relative_entries(dir.string())) {
    struct stat st {};
    if (::lstat((dir / relative).c_str(), &st) != 0) continue;  // gone meanwhile: not in the way
    const bool fits = S_ISDIR(st.st_mode)
                          ? is_allowed_directory(relative)
                          : S_ISREG(st.st_mode) && (allowed.count(relative) > 0 || is_allowed_temporary(relative));
    if (!fits) {
      return "holds " + relative +
             (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) ? "" : std::string(" (") + file_type_name(st.st_mode) + ")") +
             ", which no earlier output of ckpt there has";
    }
  }
  return std::nullopt;
}

void require_replaceable(const std::string& dir, const std::set<std::string>& new_names) {
  if (const auto why = why_not_replaceable(dir, new_names)) {
    throw Error(ErrorKind::invalid_argument, fs_util::entry_path(dir).string(), "",
                *why + "; only an earlier output of ckpt is replaced (move it away, or choose another destination)");
  }
}

void build_output_directory(const std::string& destination, const std::set<std::string>& also,
                            const std::function<void(const std::string& staging)>& fill) {
  std::string staging;
  fs_util::build_directory(
      destination,
      [&](const std::string& out) {
        staging = out;
        fill(out);
      },
      [&] {
        std::set<std::string> names = relative_entries(staging);
        names.insert(also.begin(), also.end());
        require_replaceable(destination, names);
      });
}

void refuse_destination_in_checkpoint(const std::string& destination) {
  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(fs::absolute(fs_util::entry_path(destination)), ec);
  if (ec) throw Error(ErrorKind::io, destination, "", "cannot resolve the path: " + ec.message());
  for (fs::path p = resolved; p.has_relative_path(); p = p.parent_path()) {
    bool checkpoint = is_checkpoint_name(p.filename().string());
    if (!checkpoint && fs::exists(p / "trainer_state.json", ec)) {
      try {
        checkpoint = discover_checkpoints(p.string()).empty();
      } catch (const Error&) {
        checkpoint = true;  // cannot tell it from a checkpoint: as good as one
      }
    }
    if (checkpoint) {
      throw Error(ErrorKind::invalid_argument, destination, "",
                  (p == resolved ? std::string("is the checkpoint ") : "lies inside the checkpoint ") + p.string() +
                      ", whose files it would replace; choose a directory outside every checkpoint");
    }
  }
}

ExportResult export_model(const std::string& checkpoint_dir, const std::string& dest_as_given) {
  const auto weights = find_weights(checkpoint_dir);
  if (!weights) throw Error(ErrorKind::not_found, checkpoint_dir, "", "no weights to export");
  std::vector<std::string> names = weights->files;
  if (weights->index) names.push_back(*weights->index);
  for (const char* extra : model_extras) {
    if (fs::exists(fs::path(checkpoint_dir) / extra)) names.push_back(extra);
  }
  const fs::path dest = fs_util::entry_path(dest_as_given);
  refuse_destination_in_checkpoint(dest.string());
  ExportResult result;
  const auto place_files = [&](const std::string& dir) {
    for (const auto& name : names) {
      if (fs_util::link_or_copy((fs::path(checkpoint_dir) / name).string(), (fs::path(dir) / name).string()))
        ++result.hardlinked;
      result.files.push_back(name);
    }
  };
  fs_util::create_parent_directories(dest.string());
  std::error_code ec;
  // An earlier export may have had the config files this checkpoint lacks.
  std::set<std::string> replaceable(names.begin(), names.end());
  replaceable.insert(std::begin(model_extras), std::end(model_extras));
  const auto status = fs::symlink_status(dest, ec);
  if (!fs::exists(status) || !why_not_replaceable(dest.string(), replaceable)) {
    build_output_directory(dest.string(), replaceable, place_files);
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
