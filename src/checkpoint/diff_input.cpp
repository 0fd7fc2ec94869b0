#include "checkpoint/diff_input.hpp"

#include <algorithm>
#include <filesystem>

#include "checkpoint/run_dir.hpp"
#include "util/fs.hpp"

namespace ckpt::checkpoint::diff_detail {
namespace fs = std::filesystem;

const char* to_string(InputKind kind) {
  switch (kind) {
    case InputKind::file:
      return "file";
    case InputKind::weights_index:
      return "weights_index";
    case InputKind::checkpoint:
      return "checkpoint";
    case InputKind::model_directory:
      return "model_directory";
    case InputKind::archive:
      return "archive";
  }
  return "file";
}

Input::Input(const std::string& path) : path_(path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) throw Error(ErrorKind::not_found, path, "", "no such file or directory");
  if (fs::is_directory(status)) {
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (fs_util::require_regular_file(entry.path().string())) names_.push_back(entry.path().filename().string());
    }
    if (ec) throw Error(ErrorKind::io, path, "", "cannot list directory: " + ec.message());
    std::sort(names_.begin(), names_.end());
    kind_ = is_model_directory(path) ? InputKind::model_directory : InputKind::checkpoint;
  } else if (is_archive(path)) {
    archive_ = std::make_unique<ArchiveFiles>(path);
    for (const auto& f : archive_->manifest().files) {
      if (f.name.find('/') == std::string::npos) names_.push_back(f.name);
    }
    std::sort(names_.begin(), names_.end());
    kind_ = InputKind::archive;
  } else {
    kind_ = path.ends_with(".index.json") ? InputKind::weights_index : InputKind::file;
  }
}

std::optional<std::string> Input::path_of(const std::string& name) {
  if (kind_ == InputKind::weights_index) {
    const fs::path index(path_);
    if (name == index.filename().string()) return path_;
    const fs::path beside = index.parent_path() / name;
    return fs::exists(beside) ? std::optional(beside.string()) : std::nullopt;
  }
  if (std::find(names_.begin(), names_.end(), name) == names_.end()) return std::nullopt;
  if (!archive_) return (fs::path(path_) / name).string();
  auto& copy = copies_[name];
  if (!copy) copy = archive_->metadata_copy(*archive_->find(name));
  return copy->path();
}

std::unique_ptr<LoadedFile> Input::load(const std::string& name) {
  auto loaded = std::make_unique<LoadedFile>();
  loaded->name = name;
  const std::string where = kind_ == InputKind::file ? path_ : *path_of(name);
  try {
    loaded->source = load_source(where);
  } catch (const Error& e) {
    throw renamed(e, name);
  }
  if (archive_) {
    loaded->bytes = Location{nullptr, archive_.get(), *archive_->find(name)};
  } else {
    loaded->bytes = Location{&loaded->source->file().file(), nullptr, 0};
  }
  return loaded;
}

json::Json Input::load_json(const std::string& name) {
  try {
    return json::parse_file(*path_of(name));
  } catch (const Error& e) {
    throw renamed(e, name);
  }
}

std::vector<std::unique_ptr<LoadedFile>> Input::load_weights() {
  std::vector<std::unique_ptr<LoadedFile>> loaded;
  if (kind_ == InputKind::file) {
    loaded.push_back(load(path_));
    return loaded;
  }
  std::optional<WeightsFiles> weights;
  try {
    weights = find_weights_in([this](const std::string& name) { return path_of(name); });
  } catch (const Error& e) {
    throw renamed(e, "");
  }
  if (!weights) return loaded;
  weights_name_ = weights->index ? *weights->index : weights->files.front();
  std::vector<std::string> files = weights->files;
  if (weights->index) std::sort(files.begin(), files.end());  // shard order, as load_index reads them
  for (const auto& file : files) {
    if (!path_of(file)) {
      throw Error(ErrorKind::corrupt, display(*weights->index), "weight_map", "shard '" + file + "' is missing");
    }
    loaded.push_back(load(file));
  }
  return loaded;
}

std::string Input::display(const std::string& name) const {
  if (kind_ == InputKind::file) return path_;
  if (kind_ == InputKind::weights_index) return (fs::path(path_).parent_path() / name).string();
  return archive_ ? archive_->path() + ": " + name : (fs::path(path_) / name).string();
}

Error Input::renamed(const Error& e, const std::string& name) const {
  if (!archive_) return e;
  for (const auto& [copy_name, copy] : copies_) {
    if (e.path() == copy->path())
      return Error(e.kind(), archive_->path(), e.where().empty() ? copy_name : copy_name + ": " + e.where(),
                   e.detail());
  }
  return name.empty() ? e : e.with_context(archive_->path(), name);
}

}  // namespace ckpt::checkpoint::diff_detail
