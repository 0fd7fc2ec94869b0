#include "checkpoint/named.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <iterator>

#include "checkpoint/archive.hpp"
#include "checkpoint/lock.hpp"
#include "checkpoint/rotation.hpp"
#include "util/error.hpp"
#include "util/fs.hpp"
#include "util/mapped_file.hpp"

namespace ckpt::checkpoint {
namespace fs = std::filesystem;
namespace {

// NAME_MAX is 255, and NAME must leave room for the hidden names it takes on the way in and out: the staging
// directory `.NAME.tmp-PID-TIME-N` and the trash `.ckpt-trash-NAME-PID-TIME-N`, about 40 bytes more.
constexpr std::size_t kMaxNameBytes = 200;

// What the Hugging Face Trainer (save_model, save_state, save_metrics, its TensorBoard logging_dir) and ckpt save
// write at the top of a run directory. Not exhaustive: a name already there is refused anyway; these are refused
// before they appear, so that no tag ever stands where a Trainer will write.
constexpr const char* kTrainerFileNames[] = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "adapter_config.json",
    "training_args.bin",
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "test_results.json",
    "predict_results.json",
    "README.md",
    "runs",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "preprocessor_config.json",
};

// Why `name` is not one visible entry of a directory, or nullopt. What creating and deleting a named checkpoint both
// require first: `../x`, `a/b` or `.` would reach entries ckpt must not touch.
std::optional<std::string> entry_name_problem(const std::string& name) {
  if (name.empty()) return std::string("a checkpoint name must not be empty");
  if (name.size() > kMaxNameBytes) {
    return "'" + name + "' is longer than " + std::to_string(kMaxNameBytes) +
           " bytes (the file system's 255 less room for its staging name)";
  }
  if (name.find('/') != std::string::npos)
    return "'" + name + "' is not one name: a named checkpoint is an entry of the run directory, without '/'";
  if (name.find('\0') != std::string::npos) return "'" + name + "' holds a NUL byte";
  if (name.front() == '.')
    return "'" + name + "' begins with '.': hidden names are ckpt's staging and trash directories";
  return std::nullopt;
}

// Why `name` (one visible entry) is not free for a named checkpoint whatever the run directory holds, or nullopt.
std::optional<std::string> reserved_name_problem(const std::string& name) {
  const auto begins = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
  if (begins("checkpoint-")) {
    return "'" + name +
           "' begins with checkpoint-: such names are rotation's (the Trainer's save_total_limit deletes checkpoint-* "
           "directories it reads a step from)";
  }
  if (begins("tmp-checkpoint-")) return "'" + name + "' begins with tmp-checkpoint-, the Trainer's staging name";
  if (name == kArchiveDirName) return "'" + name + "' is the run directory's archive directory";
  if (name.size() > std::string_view(kArchiveExtension).size() && name.ends_with(kArchiveExtension)) {
    return "'" + name + "' ends in " + kArchiveExtension + ", an archive's name";
  }
  if (std::find(std::begin(kTrainerFileNames), std::end(kTrainerFileNames), name) != std::end(kTrainerFileNames)) {
    return "'" + name + "' is a file the Trainer writes in the run directory";
  }
  return std::nullopt;
}

// What is at RUN_DIR/NAME, in words for a refusal; nullopt when nothing is.
std::optional<std::string> what_is_at(const std::string& run_dir, const std::string& name) {
  const std::string path = (fs::path(run_dir) / name).string();
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;  // no run directory (yet): nothing in the way
    fail_io(path, "stat", errno);
  }
  if (S_ISDIR(st.st_mode) && holds_named_checkpoint(path)) {
    return "a named checkpoint: `ckpt tag --delete " + shell_word(run_dir) + " " + shell_word(name) + "` deletes it";
  }
  return file_type_name(st.st_mode);
}

// Throws unless the checkpoint is complete: corrupt, or unsupported when ckpt cannot read something in it, naming
// `path` and the first problem.
void require_complete(const std::string& path, bool complete, bool unreadable,
                      const std::vector<std::string>& problems) {
  if (complete) return;
  std::string why = problems.empty() ? std::string("unreadable") : problems.front();
  if (problems.size() > 1) why += " (and " + std::to_string(problems.size() - 1) + " more)";
  throw Error(unreadable ? ErrorKind::unsupported : ErrorKind::corrupt, path, "", "not a complete checkpoint: " + why);
}

void require_complete(const std::string& path, const Completeness& c) {
  require_complete(path, c.complete, c.unreadable, c.problems);
}

// The checkpoint or archive of the run that list names `source`.
const RunEntry& source_entry(const RunScan& scan, const std::string& source) {
  for (const auto& e : scan.entries) {
    if (e.name != source) continue;
    if (e.kind == EntryKind::checkpoint || e.kind == EntryKind::archive) return e;
    const std::string what = e.named ? "a named checkpoint" : std::string("a ") + to_string(e.kind) + " directory";
    throw Error(ErrorKind::invalid_argument, e.path, "",
                "is " + what + ", not a checkpoint-N or an archive of one, which is what tag takes");
  }
  throw Error(ErrorKind::not_found, scan.path, "",
              "no checkpoint or archive named '" + source +
                  "' (the names ckpt list shows: checkpoint-N, archive/checkpoint-N.ckpt)");
}

}  // namespace

void check_new_checkpoint_name(const std::string& run_dir, const std::string& name) {
  if (const auto problem = entry_name_problem(name)) throw Error(ErrorKind::invalid_argument, "", "", *problem);
  if (const auto problem = reserved_name_problem(name)) throw Error(ErrorKind::invalid_argument, "", "", *problem);
  if (const auto what = what_is_at(run_dir, name)) {
    throw Error(ErrorKind::invalid_argument, (fs::path(run_dir) / name).string(), "", "already exists (" + *what + ")");
  }
}

TagResult tag_checkpoint(const std::string& run_dir, const std::string& source, const std::string& name) {
  fs_util::require_directory(run_dir);
  check_new_checkpoint_name(run_dir, name);
  const RunScan scan = scan_run(run_dir);
  const RunEntry& from = source_entry(scan, source);
  require_complete(from.path, from.complete, from.unreadable, from.problems);
  TagResult result;
  result.name = name;
  result.path = (fs::path(run_dir) / name).string();
  result.source = from.name;
  result.source_path = from.path;
  result.source_kind = from.kind;
  result.step = from.step;
  // Held from when the source is read (a live checkpoint) or once it is restored (an archive, whose open file a
  // rotate cannot take away) until NAME is published: rotate deletes and other tags publish under it too.
  std::optional<RunLock> lock;
  fs_util::build_directory(
      result.path,
      [&](const std::string& staging) {
        if (from.kind == EntryKind::archive) {
          result.files = extract_archive(from.path, staging, {}, true).files;
          require_complete(from.path, assess_completeness(staging));
          lock.emplace(run_dir, true);
          return;
        }
        lock.emplace(run_dir, true);
        struct stat st {};
        if (::lstat(from.path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
          throw Error(ErrorKind::not_found, from.path, "",
                      "no longer there (deleted while tag waited for the run directory's lock)");
        }
        require_complete(from.path, assess_completeness(from.path));  // the trainer may have replaced it meanwhile
        const auto linked = fs_util::link_tree(from.path, staging);
        result.files = linked.files;
        result.hard_linked = linked.hard_linked;
      },
      [&] { check_new_checkpoint_name(run_dir, name); });  // throws: something took the name meanwhile
  return result;
}

UntagResult delete_named_checkpoint(const std::string& run_dir, const std::string& name) {
  if (const auto problem = entry_name_problem(name)) throw Error(ErrorKind::invalid_argument, "", "", *problem);
  fs_util::require_directory(run_dir);
  const std::string path = (fs::path(run_dir) / name).string();
  RunLock lock(run_dir, true);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) throw Error(ErrorKind::not_found, path, "", "no such named checkpoint");
    fail_io(path, "stat", errno);
  }
  if (!S_ISDIR(st.st_mode)) {
    throw Error(
        ErrorKind::invalid_argument, path, "",
        std::string("is ") + file_type_name(st.st_mode) + ", not a named checkpoint; tag --delete deletes only those");
  }
  const RunScan scan = scan_run(run_dir);
  const auto entry = std::find_if(scan.entries.begin(), scan.entries.end(),
                                  [&](const RunEntry& e) { return e.name == name && e.kind != EntryKind::archive; });
  if (entry == scan.entries.end() || !entry->named) {
    const bool checkpoint = entry != scan.entries.end() && entry->kind == EntryKind::checkpoint;
    throw Error(ErrorKind::invalid_argument, path, "",
                checkpoint ? "is a checkpoint of the run, not a named one (rotate deletes those)"
                           : "holds no trainer_state.json: not a named checkpoint, which is all tag --delete deletes");
  }
  RotationResult deletion;
  deletion.plan.decisions.push_back(
      {entry->name, entry->path, entry->kind, entry->step, true, "tag --delete", "", entry->size_bytes});
  if (const auto error = delete_planned(run_dir, RotateOptions{}, deletion)) throw *error;
  return {name, path, entry->step, entry->size_bytes};
}

}  // namespace ckpt::checkpoint
