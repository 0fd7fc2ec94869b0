#include <doctest/doctest.h>

#include <set>

#include "checkpoint/rotation.hpp"
#include "util/error.hpp"

using namespace ckpt;
using namespace ckpt::checkpoint;

namespace {

constexpr double kNow = 1'000'000;

RunEntry checkpoint_entry(std::int64_t step, double age = 7200, bool complete = true) {
  RunEntry e;
  e.name = "checkpoint-" + std::to_string(step);
  e.path = "/run/" + e.name;
  e.kind = EntryKind::checkpoint;
  e.step = step;
  e.mtime = kNow - age;
  e.dir_mtime = e.mtime;
  e.complete = complete;
  if (complete) e.state = TrainerStateSummary{};
  return e;
}

RunScan scan_of(std::vector<RunEntry> entries, std::optional<std::string> best_path = std::nullopt) {
  RunScan scan;
  scan.path = "/run";
  scan.entries = std::move(entries);
  // The newest complete checkpoint's trainer_state names the best.
  for (auto it = scan.entries.rbegin(); it != scan.entries.rend(); ++it) {
    if (it->kind == EntryKind::checkpoint && it->complete) {
      it->state->best_model_checkpoint = best_path;
      break;
    }
  }
  return scan;
}

std::set<std::string> deleted(const RotationPlan& plan) {
  std::set<std::string> names;
  for (const auto& d : plan.decisions) {
    if (d.remove) names.insert(d.name);
  }
  return names;
}

RotateOptions keep(std::int64_t n) {
  RotateOptions o;
  o.keep = n;
  return o;
}

}  // namespace

TEST_CASE("save_total_limit keeps the newest N") {
  auto scan = scan_of({checkpoint_entry(10), checkpoint_entry(20), checkpoint_entry(30), checkpoint_entry(40)});
  CHECK(deleted(plan_rotation(scan, keep(2), kNow)) == std::set<std::string>{"checkpoint-10", "checkpoint-20"});
  CHECK(deleted(plan_rotation(scan, keep(4), kNow)).empty());
  CHECK(deleted(plan_rotation(scan, keep(9), kNow)).empty());
}

TEST_CASE("the best moves to second-to-last before the oldest are cut (Hugging Face)") {
  // HF: sorted [10,20,30,40], best 10 bubbles to index 2 -> [20,30,10,40]; limit 2 deletes 20 and 30.
  auto scan = scan_of({checkpoint_entry(10), checkpoint_entry(20), checkpoint_entry(30), checkpoint_entry(40)},
                      "/elsewhere/old-run/checkpoint-10");
  CHECK(deleted(plan_rotation(scan, keep(2), kNow)) == std::set<std::string>{"checkpoint-20", "checkpoint-30"});
  // limit 1 with the best not the newest keeps two
  CHECK(deleted(plan_rotation(scan, keep(1), kNow)) == std::set<std::string>{"checkpoint-20", "checkpoint-30"});
  // best is the newest: limit 1 keeps one
  scan = scan_of({checkpoint_entry(10), checkpoint_entry(20)}, "run/checkpoint-20");
  CHECK(deleted(plan_rotation(scan, keep(1), kNow)) == std::set<std::string>{"checkpoint-10"});
}

TEST_CASE("a stale best path that names no checkpoint protects nothing extra") {
  auto scan = scan_of({checkpoint_entry(10), checkpoint_entry(20), checkpoint_entry(30)}, "/old/checkpoint-5");
  CHECK(deleted(plan_rotation(scan, keep(1), kNow)) == std::set<std::string>{"checkpoint-10", "checkpoint-20"});
}

TEST_CASE("incomplete and staging directories: young kept, stale removed, never counted") {
  auto young = checkpoint_entry(50, 60, false);
  auto old = checkpoint_entry(5, 7200, false);
  RunEntry staging;
  staging.name = "tmp-checkpoint-60";
  staging.kind = EntryKind::staging;
  staging.mtime = kNow - 10;
  RunEntry custom;
  custom.name = "milestone";
  custom.kind = EntryKind::custom;
  custom.mtime = kNow - 1e6;
  auto scan = scan_of({old, checkpoint_entry(10), checkpoint_entry(20), young, staging, custom});
  const auto plan = plan_rotation(scan, keep(2), kNow);
  CHECK(deleted(plan) == std::set<std::string>{"checkpoint-5"});
  RotateOptions short_stale = keep(2);
  short_stale.stale_after_seconds = 5;
  CHECK(deleted(plan_rotation(scan, short_stale, kNow)) ==
        std::set<std::string>{"checkpoint-5", "checkpoint-50", "tmp-checkpoint-60"});
}

TEST_CASE("--keep-every keeps milestones outside the count") {
  auto scan = scan_of({checkpoint_entry(100), checkpoint_entry(200), checkpoint_entry(300), checkpoint_entry(400),
                       checkpoint_entry(500)});
  RotateOptions o = keep(1);
  o.keep_every = 200;
  CHECK(deleted(plan_rotation(scan, o, kNow)) == std::set<std::string>{"checkpoint-100", "checkpoint-300"});
}

TEST_CASE("mtime order, with Hugging Face's fallback to steps when mtimes lie within a second") {
  // checkpoint-30 was written first (restored from elsewhere): by mtime it is the oldest.
  auto scan = scan_of({checkpoint_entry(10, 300), checkpoint_entry(20, 200), checkpoint_entry(30, 400)});
  RotateOptions o = keep(1);
  o.by_mtime = true;
  // by mtime [30, 10, 20]: delete 30 and 10, but 30 is the newest complete checkpoint, which always stays
  CHECK(deleted(plan_rotation(scan, o, kNow)) == std::set<std::string>{"checkpoint-10"});
  scan = scan_of({checkpoint_entry(10, 100.5), checkpoint_entry(20, 100.2), checkpoint_entry(30, 100.9)});
  CHECK(deleted(plan_rotation(scan, o, kNow)) == std::set<std::string>{"checkpoint-10", "checkpoint-20"});
}

TEST_CASE("invalid limits are refused") {
  auto scan = scan_of({checkpoint_entry(10)});
  CHECK_THROWS_AS(plan_rotation(scan, keep(0), kNow), Error);
}

TEST_CASE("a checkpoint ckpt cannot read (a newer format) is never deleted, however old") {
  auto unreadable = checkpoint_entry(5, 1e6, false);
  unreadable.unreadable = true;
  auto scan = scan_of({unreadable, checkpoint_entry(10), checkpoint_entry(20)});
  CHECK(deleted(plan_rotation(scan, keep(1), kNow)) == std::set<std::string>{"checkpoint-10"});
}

TEST_CASE("mtime order uses the directories' own times, not their files' (Hugging Face's getmtime)") {
  // checkpoint-10's directory is the oldest, though a file inside it was touched last.
  auto a = checkpoint_entry(10, 10);
  a.dir_mtime = kNow - 500;
  auto scan = scan_of({a, checkpoint_entry(20, 300), checkpoint_entry(30, 200)});
  RotateOptions o = keep(1);
  o.by_mtime = true;
  CHECK(deleted(plan_rotation(scan, o, kNow)) == std::set<std::string>{"checkpoint-10", "checkpoint-20"});
}
