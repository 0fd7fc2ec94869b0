// `ckpt tag RUN_DIR CHECKPOINT NAME [--json]` and `ckpt tag --delete RUN_DIR NAME [--json]`: named checkpoints.
#include <fmt/format.h>

#include <iostream>
#include <optional>

#include "checkpoint/named.hpp"
#include "cli/cli.hpp"
#include "cli/text.hpp"

namespace ckpt::cli {
namespace {

struct TagOptions {
  std::string run_dir;
  // With --delete the one argument after RUN_DIR, CHECKPOINT's place, is the NAME to delete.
  std::optional<std::string> checkpoint;
  std::optional<std::string> name;
  bool remove = false;
  bool json = false;
};

json::Json optional_step(const std::optional<std::int64_t>& step) {
  return step ? json::Json(*step) : json::Json(nullptr);
}

int run_tag(const TagOptions& o) {
  if (o.remove && (!o.checkpoint || o.name))
    throw UsageError("--delete takes RUN_DIR and the NAME to delete (ckpt tag --delete RUN_DIR NAME)");
  if (!o.remove && !o.name)
    throw UsageError("tag takes RUN_DIR, CHECKPOINT and NAME (ckpt tag RUN_DIR CHECKPOINT NAME)");
  require_run_directory(o.run_dir);
  if (o.remove) {
    const auto deleted = checkpoint::delete_named_checkpoint(o.run_dir, *o.checkpoint);
    if (o.json) {
      std::cout << json::dump({{"name", deleted.name},
                               {"path", deleted.path},
                               {"step", optional_step(deleted.step)},
                               {"size_bytes", deleted.size_bytes}},
                              2)
                << "\n";
    } else {
      print_text("deleted " + printable(deleted.path) + "\n");
    }
    return exit_ok;
  }
  const auto tagged = checkpoint::tag_checkpoint(o.run_dir, *o.checkpoint, *o.name);
  if (o.json) {
    std::cout << json::dump({{"name", tagged.name},
                             {"path", tagged.path},
                             {"source", tagged.source},
                             {"source_path", tagged.source_path},
                             {"source_kind", checkpoint::to_string(tagged.source_kind)},
                             {"step", optional_step(tagged.step)},
                             {"files", tagged.files},
                             {"hard_linked", tagged.hard_linked}},
                            2)
              << "\n";
  } else {
    const std::string how = tagged.source_kind == checkpoint::EntryKind::archive
                                ? fmt::format("{} files restored", tagged.files)
                                : fmt::format("{} files, {} hard-linked", tagged.files, tagged.hard_linked);
    print_text(fmt::format("tagged {} as {} ({})\n", printable(tagged.source), printable(tagged.path), how));
  }
  return exit_ok;
}

}  // namespace

Action attach_tag(CLI::App& sub) {
  auto o = std::make_shared<TagOptions>();
  sub.add_option("RUN_DIR", o->run_dir, "The run directory")->required();
  sub.add_option("CHECKPOINT", o->checkpoint,
                 "The checkpoint to name, as list names it: checkpoint-N, or an archive of one "
                 "(archive/checkpoint-N.ckpt); with --delete, the NAME to delete");
  sub.add_option("NAME", o->name,
                 "The name: RUN_DIR/NAME becomes a complete copy of CHECKPOINT (hard links) that rotate never deletes");
  sub.add_flag("--delete", o->remove,
               "Delete the named checkpoint RUN_DIR/NAME (only a named checkpoint: a directory holding "
               "trainer_state.json that is no checkpoint-N)");
  sub.add_flag("--json", o->json, "Print the result as JSON");
  return [o] { return run_tag(*o); };
}

}  // namespace ckpt::cli
