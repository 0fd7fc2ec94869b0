#include <doctest/doctest.h>

#include "checkpoint/run_dir.hpp"

using namespace ckpt;

TEST_CASE("the resume command shown in messages is one a POSIX shell reads back word for word") {
  CHECK(checkpoint::resume_command("runs/mlp-1") == "ckpt resume runs/mlp-1");
  CHECK(checkpoint::resume_command("/data/runs/mlp", std::string("checkpoint-150")) == "ckpt resume /data/runs/mlp --from checkpoint-150");
  CHECK(checkpoint::resume_command("my run") == "ckpt resume 'my run'");
  CHECK(checkpoint::resume_command("it's $HOME", std::string("a;b")) == "ckpt resume 'it'\\''s $HOME' --from 'a;b'");
  CHECK(checkpoint::resume_command("") == "ckpt resume ''");
  CHECK(checkpoint::resume_command("r\xc3\xa9sum\xc3\xa9") == "ckpt resume 'r\xc3\xa9sum\xc3\xa9'");
}
