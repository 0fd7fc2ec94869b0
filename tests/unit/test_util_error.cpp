#include <doctest/doctest.h>

#include "util/error.hpp"

using namespace ckpt;

TEST_CASE("an error about a staging directory's file is named in the destination") {
  const Error e(ErrorKind::io, "run/.ckpt-staging-checkpoint-40-x1/optimizer.pt", "", "write: File too large");
  const Error named = e.named_in("run/.ckpt-staging-checkpoint-40-x1", "run/checkpoint-40");
  CHECK(named.path() == "run/checkpoint-40/optimizer.pt");
  CHECK(named.kind() == ErrorKind::io);
  CHECK(std::string(named.what()) == "run/checkpoint-40/optimizer.pt: write: File too large");
  CHECK(Error(ErrorKind::io, "run/.ckpt-staging-checkpoint-40-x1", "", "fsync")
            .named_in("run/.ckpt-staging-checkpoint-40-x1", "run/checkpoint-40")
            .path() == "run/checkpoint-40");
  // Only that directory: a sibling whose name begins alike, and other paths, stay as they are.
  CHECK(Error(ErrorKind::io, "run/.ckpt-staging-checkpoint-40-x10/a", "", "w")
            .named_in("run/.ckpt-staging-checkpoint-40-x1", "run/checkpoint-40")
            .path() == "run/.ckpt-staging-checkpoint-40-x10/a");
  CHECK(Error(ErrorKind::io, "elsewhere", "", "w")
            .named_in("run/.ckpt-staging-checkpoint-40-x1", "run/checkpoint-40")
            .path() == "elsewhere");
}
