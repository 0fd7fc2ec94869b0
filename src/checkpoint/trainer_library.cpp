#include "checkpoint/trainer_library.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <vector>

#include "util/error.hpp"

#ifndef CKPT_TRAIN_LIBDIR
#error "CKPT_TRAIN_LIBDIR (the library's install directory relative to the binary's) must be defined by the build"
#endif

namespace ckpt::checkpoint {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("CKPT_TRAIN_LIBRARY"); env && *env) paths.emplace_back(env);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path dir = exe.parent_path();
    paths.push_back((dir / train::kLibraryName).string());
    paths.push_back((dir / CKPT_TRAIN_LIBDIR / train::kLibraryName).lexically_normal().string());
  }
  return paths;
}

// The library stays loaded for the life of the process: LibTorch registers global state that does not
// survive dlclose.
train::EntryFunction load_entry() {
  static train::EntryFunction entry = nullptr;
  if (entry) return entry;
  std::string looked;
  for (const auto& path : candidates()) {
    std::error_code ec;
    if (!fs::exists(path, ec)) {
      looked += (looked.empty() ? "" : ", ") + path;
      continue;
    }
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle)
      throw Error(ErrorKind::unsupported, path, "", std::string("cannot load the trainer library: ") + dlerror());
    auto* symbol = dlsym(handle, train::kEntryPoint);
    if (!symbol)
      throw Error(ErrorKind::unsupported, path, "",
                  std::string("not a ckpt trainer library (no ") + train::kEntryPoint + ")");
    entry = reinterpret_cast<train::EntryFunction>(symbol);
    return entry;
  }
  throw Error(ErrorKind::not_found, train::kLibraryName, "",
              "the trainer library was not found (looked for " + looked + "; set CKPT_TRAIN_LIBRARY to its path)");
}

}  // namespace

train::TrainResult run_trainer(const train::TrainRequest& request) {
  const train::EntryFunction entry = load_entry();
  train::TrainRequest checked = request;
  checked.request_size = sizeof(train::TrainRequest);
  checked.result_size = sizeof(train::TrainResult);
  train::TrainResult result;
  entry(checked, result);
  if (result.error) {
    const auto& e = *result.error;
    throw Error(static_cast<ErrorKind>(e.kind), e.path, e.where, e.what);
  }
  return result;
}

}  // namespace ckpt::checkpoint
