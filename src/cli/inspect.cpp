// `ckpt inspect PATH [--json] [--verify]`: renders checkpoint::inspect_* results as text or JSON.
#include <fmt/format.h>

#include <algorithm>
#include <iostream>

#include "checkpoint/inspect.hpp"
#include "cli/cli.hpp"
#include "cli/list.hpp"
#include "checkpoint/tensor_scan.hpp"
#include "cli/text.hpp"

namespace ckpt::cli {
namespace {

using checkpoint::CheckpointReport;
using checkpoint::FileKind;
using checkpoint::FileReport;
using checkpoint::Verification;

struct InspectOptions {
  std::string path;
  bool json = false;
  bool verify = false;
  bool summary = false;
};

// ---- JSON (docs/inspect-json.md) ----

json::Json verification_json(const Verification& v) {
  return {{"ok", v.ok()}, {"checks", v.checks}, {"errors", v.errors}};
}

json::Json file_json(const FileReport& f) {
  json::Json out{{"path", f.path},
                 {"file", f.file},
                 {"size_bytes", f.size_bytes},
                 {"format", f.format},
                 {"kind", kind_name(f.kind)}};
  if (f.error) {
    out["error"] = f.error->what();
    return out;
  }
  if (f.kind == FileKind::weights || f.kind == FileKind::archive) {
    json::Json tensors = json::Json::array();
    for (const auto& t : f.tensors) {
      json::Json j{{"name", t.name},
                   {"dtype", torch_name(t.dtype)},
                   {"shape", t.shape},
                   {"nbytes", t.nbytes},
                   {"storage", t.storage ? json::Json(*t.storage) : json::Json(nullptr)},
                   {"storage_offset", t.storage_offset},
                   {"stride", t.stride}};
      if (t.tied_to) j["tied_to"] = *t.tied_to;
      if (t.nonfinite) {
        j["nan"] = t.nonfinite->nan;
        j["inf"] = t.nonfinite->inf;
      }
      tensors.push_back(std::move(j));
    }
    out["tensors"] = std::move(tensors);
  }
  for (const auto& [key, value] : f.fields.items()) out[key] = value;
  if (f.verify) out["verify"] = verification_json(*f.verify);
  return out;
}

json::Json summary_json(const checkpoint::CheckpointSummary& s, const std::vector<FileReport>& files) {
  auto optional = [](const auto& v) { return v ? json::Json(*v) : json::Json(nullptr); };
  json::ObjectBuilder metrics;
  for (const auto& [name, value] : s.metrics) metrics.set(name, value);
  json::Json dtypes = json::Json::object();
  for (const auto& d : s.dtypes)
    dtypes[std::string(torch_name(d.dtype))] = {{"count", d.tensors}, {"numel", d.parameters}, {"nbytes", d.bytes}};
  json::ObjectBuilder kinds(files.size());
  for (const auto& f : files) kinds.set(f.file, std::string(kind_name(f.kind)));
  json::Json best = nullptr;
  if (s.best_checkpoint)
    best = {{"checkpoint", *s.best_checkpoint},
            {"metric", optional(s.best_metric_name)},
            {"value", optional(s.best_metric)}};
  return {
      {"step", optional(s.step)},           {"epoch", optional(s.epoch)}, {"loss", optional(s.loss)},
      {"eval_step", optional(s.eval_step)}, {"metrics", metrics.take()},  {"best", std::move(best)},
      {"size_bytes", s.size_bytes},         {"num_files", files.size()},  {"num_parameters", optional(s.parameters)},
      {"dtypes", std::move(dtypes)},        {"files", kinds.take()}};
}

json::Json checkpoint_json(const CheckpointReport& c) {
  json::Json files = json::Json::array();
  for (const auto& f : c.files) files.push_back(file_json(f));
  json::Json out{{"path", c.path},
                 {"kind", "checkpoint"},
                 {"name", c.name},
                 {"step", c.step ? json::Json(*c.step) : json::Json(nullptr)},
                 {"layout", c.model_directory  ? "model"
                            : c.layout.empty() ? "checkpoint"
                                               : c.layout},
                 {"complete", c.complete},
                 {"problems", c.problems},
                 {"world_size", c.world_size},
                 {"optimizer_sharded", c.optimizer_sharded},
                 {"files", std::move(files)},
                 {"summary", summary_json(c.summary, c.files)},
                 {"deepspeed", c.deepspeed},
                 {"fsdp", c.fsdp}};
  if (c.verify) out["verify"] = verification_json(*c.verify);
  return out;
}

// ---- text ----

// Compact text for a value copied from a file; the tagged objects of to_data read as Python would print them.
// Its strings are printable(): one line whatever the file holds.
std::string value_text(const json::Json& v) {
  if (v.is_null()) return "-";
  if (v.is_string()) return printable(v.get<std::string>());
  if (v.is_array()) {
    std::string out = "[";
    for (const auto& item : v) out += (out.size() > 1 ? ", " : "") + value_text(item);
    return out + "]";
  }
  if (v.is_object() && v.contains("type") && v["type"].is_string()) {
    const std::string type = v["type"].get<std::string>();
    if (type == "global") return value_text(v["name"]);
    if (type == "device") return "device(" + value_text(v["device"]) + ")";
    if (type == "bytes") return "bytes[" + value_text(v["length"]) + "]";
    if (type == "tensor" || type == "ndarray")
      return type + "(" + value_text(v["dtype"]) + ", " + value_text(v["shape"]) + ")";
    if (type == "object") return value_text(v["class"]) + "(...)";
  }
  return printable(json::dump(v));
}

// "a, b, c" for a list of names read from a file (whatever their JSON types).
std::string names_text(const json::Json& names) {
  std::vector<std::string> shown;
  for (const auto& name : names) shown.push_back(value_text(name));
  return fmt::format("{}", fmt::join(shown, ", "));
}

std::string fields_text(const json::Json& object, const std::vector<std::string>& skip = {}) {
  std::string out;
  for (const auto& [key, value] : object.items()) {
    if (std::find(skip.begin(), skip.end(), key) != skip.end()) continue;
    out += fmt::format("{}{}={}", out.empty() ? "" : ", ", printable(key), value_text(value));
  }
  return out;
}

std::string weights_text(const FileReport& f, bool detail) {
  std::string out = fmt::format("  {} tensors, {} parameters, {} of tensor data\n", f.tensors.size(),
                                grouped(f.fields["num_parameters"].get<std::uint64_t>()),
                                human_bytes(f.fields["storage_bytes"].get<std::uint64_t>()));
  if (!detail) return out;
  const bool verified = !f.tensors.empty() && f.tensors.front().nonfinite.has_value();
  std::vector<std::string> header = {"name", "dtype", "shape", "bytes"};
  if (verified) header.push_back("nan/inf");
  header.push_back("");
  Table table(header);
  for (const auto& t : f.tensors) {
    std::vector<std::string> row = {t.name, std::string(torch_name(t.dtype)), shape_text(t.shape),
                                    human_bytes(t.nbytes)};
    if (verified) row.push_back(t.nonfinite ? fmt::format("{}/{}", t.nonfinite->nan, t.nonfinite->inf) : "");
    std::string note;
    if (t.tied_to)
      note = "tied to " + *t.tied_to;
    else if (t.storage && t.stride != checkpoint::contiguous_strides(t.shape))
      note = "strided view";
    row.push_back(note);
    table.add(std::move(row));
  }
  out += table.render("  ");
  Table totals({"dtype", "tensors", "parameters", "bytes"});
  for (const auto& [dtype, total] : f.fields["dtypes"].items()) {
    totals.add({dtype, grouped(total["count"].get<std::uint64_t>()), grouped(total["numel"].get<std::uint64_t>()),
                human_bytes(total["nbytes"].get<std::uint64_t>())});
  }
  out += "  by dtype:\n" + totals.render("    ");
  for (const auto& [key, value] : f.fields["metadata"].items()) {
    std::string text = value_text(value);
    if (text.size() > 120)
      text = text.substr(0, 100) + fmt::format("... ({} characters; --json shows all)", text.size());
    out += fmt::format("  metadata {}: {}\n", printable(key), text);
  }
  return out;
}

std::string optimizer_text(const FileReport& f) {
  std::string out =
      fmt::format("  {} parameter states ({}), step {}, {} of state\n",
                  f.fields["num_param_states"].get<std::uint64_t>(), names_text(f.fields["state_keys"]),
                  value_text(f.fields["step"]), human_bytes(f.fields["state_bytes"].get<std::uint64_t>()));
  if (f.fields.contains("shard")) {
    const auto& shard = f.fields["shard"];
    out += fmt::format("  shard: rank {} of {}, state indices {}\n", value_text(shard.value("rank", json::Json())),
                       value_text(shard.value("world_size", json::Json())),
                       value_text(shard.value("params", json::Json())));
  }
  std::size_t i = 0;
  for (const auto& group : f.fields["param_groups"]) {
    const std::size_t params = group.contains("params") && group["params"].is_array() ? group["params"].size() : 0;
    out += fmt::format("  group {}: {} params; {}\n", i++, params, fields_text(group, {"params"}));
  }
  if (f.fields.contains("param_shape_check")) {
    const auto& check = f.fields["param_shape_check"];
    out += fmt::format("  state shapes vs weights: {} (by {}, {} checked)\n", value_text(check["status"]),
                       value_text(check["method"]), value_text(check["checked"]));
    for (const auto& m : check["mismatches"]) out += "    mismatch: " + printable(json::dump(m)) + "\n";
  }
  return out;
}

// `detail` false (--summary) leaves out the tables that grow with the file: weights' tensors, training_args' fields.
std::string file_text(const FileReport& f, bool detail) {
  std::string out =
      fmt::format("{}: {} ({}, {})\n", printable(f.path), kind_name(f.kind), f.format, human_bytes(f.size_bytes));
  if (f.error) return fmt::format("{}: error: {}\n", printable(f.path), printable(f.error->what()));
  const json::Json& x = f.fields;
  switch (f.kind) {
    case FileKind::weights: {
      out += weights_text(f, detail);
      break;
    }
    case FileKind::optimizer: {
      out += optimizer_text(f);
      break;
    }
    case FileKind::scheduler: {
      out += fmt::format("  last_epoch {}, last lr {}\n", value_text(x["last_epoch"]), value_text(x["last_lr"]));
      out += "  " + fields_text(x["state"], {"last_epoch", "_last_lr"}) + "\n";
      break;
    }
    case FileKind::scaler: {
      out +=
          x["enabled"].get<bool>() ? "  enabled: " + fields_text(x, {"enabled"}) + "\n" : "  disabled (empty state)\n";
      break;
    }
    case FileKind::rng_state: {
      out += fmt::format("  generators: {}\n", names_text(x["generators"]));
      for (const char* g : {"python", "numpy", "cpu", "cuda"}) {
        if (x.contains(g)) out += fmt::format("  {}: {}\n", g, fields_text(x[g]));
      }
      break;
    }
    case FileKind::trainer_state: {
      out += "  " + fields_text(x, {"last_train_log", "last_eval_log"}) + "\n";
      out += "  last train log: " + value_text(x["last_train_log"]) + "\n";
      out += "  last eval log: " + value_text(x["last_eval_log"]) + "\n";
      break;
    }
    case FileKind::training_args: {
      out += x["class"].is_null() ? "  a plain dict\n" : "  class " + value_text(x["class"]) + "\n";
      if (!detail) {
        out += fmt::format("  {} fields\n", x["fields"].size());
      } else if (x["fields"].is_object()) {
        Table table({"field", "value"});
        for (const auto& [key, value] : x["fields"].items()) table.add({key, value_text(value)});
        out += table.render("  ");
      } else {
        out += "  state: " + value_text(x["fields"]) + "\n";
      }
      break;
    }
    case FileKind::config: {
      out += "  " + fields_text(x, {"config"}) + "\n";
      break;
    }
    case FileKind::archive: {
      out += fmt::format("  {} (step {}): {} files, {} tensors, {} archived at {:.3f}x\n", value_text(x["checkpoint"]),
                         value_text(x["step"]), x["files"].size(), f.tensors.size(),
                         human_bytes(x["original_bytes"].get<std::uint64_t>()), x["ratio"].get<double>());
      Table table({"file", "size", "sha256"});
      for (const auto& file : x["files"]) {
        table.add({file["name"].get<std::string>(), human_bytes(file["size_bytes"].get<std::uint64_t>()),
                   file["sha256"].get<std::string>()});
      }
      out += table.render("  ");
      break;
    }
    case FileKind::weights_index: {
      out += fmt::format("  {} tensors in {} shards, total_size {}\n", value_text(x["num_tensors"]), x["shards"].size(),
                         value_text(x["total_size"]));
      break;
    }
    case FileKind::json:
    case FileKind::pickle: {
      out += "  " + printable(json::dump(x["value"])) + "\n";
      break;
    }
    case FileKind::deepspeed:  // the checkpoint's summary tells what they hold
    case FileKind::other:
    case FileKind::error:
      break;
  }
  return out;
}

std::string verification_text(const std::string& subject, const Verification& v) {
  std::string out = fmt::format("  verify {}: {} ({})\n", printable(subject), v.ok() ? "ok" : "FAILED",
                                printable(fmt::format("{}", fmt::join(v.checks, "; "))));
  for (const auto& e : v.errors) out += "    error: " + printable(e) + "\n";
  return out;
}

// A metric's value as a person reads it; HF's *_runtime metrics are seconds.
std::string metric_text(const std::string& name, double value) {
  return number_text(value) + (name.ends_with("_runtime") ? " s" : "");
}

// The block a directory's report starts with: all of it with --summary. `verify_errors` with --verify.
std::string summary_text(const CheckpointReport& c, const std::vector<std::string>* verify_errors) {
  const auto& s = c.summary;
  std::vector<std::vector<std::string>> rows;
  if (s.step) rows.push_back({"step", std::to_string(*s.step)});
  if (s.epoch) rows.push_back({"epoch", number_text(s.epoch)});
  if (s.loss) rows.push_back({"loss", number_text(s.loss)});
  if (s.eval_step) rows.push_back({"evaluated", fmt::format("at step {}", *s.eval_step)});
  for (const auto& [name, value] : s.metrics) rows.push_back({name, metric_text(name, value)});
  if (s.best_checkpoint) {
    const std::string metric = s.best_metric_name.value_or("best_metric");
    rows.push_back(
        {"best", *s.best_checkpoint +
                     (s.best_metric ? fmt::format(" ({} {})", metric, metric_text(metric, *s.best_metric)) : "")});
  }
  rows.push_back({"size", fmt::format("{} in {} file{}", human_bytes(s.size_bytes), c.files.size(),
                                      c.files.size() == 1 ? "" : "s")});
  if (!c.deepspeed.is_null()) {
    const json::Json& d = c.deepspeed;
    rows.push_back(
        {"deepspeed",
         fmt::format("ZeRO stage {}, {} ranks, tag {}, ds_version {}, global_steps {}", d["stage"].get<int>(),
                     d["world_size"].get<int>(), printable(d["tag"].get<std::string>()),
                     printable(d["ds_version"].get<std::string>()), d["global_steps"].get<std::int64_t>())});
    rows.push_back(
        {"", fmt::format("{} trainable and {} frozen parameters, {} buffers; fp32 master weights",
                         grouped(d["trainable_parameters"].get<std::uint64_t>()),
                         grouped(d["frozen_parameters"].get<std::uint64_t>()), d["buffers"].get<std::size_t>())});
    for (std::size_t g = 0; g < d["param_groups"].size(); ++g) {
      const json::Json& group = d["param_groups"][g];
      std::vector<std::string> hyper;
      for (const auto& [key, value] : group["hyperparameters"].items()) hyper.push_back(key + " " + value_text(value));
      rows.push_back({g == 0 ? "param groups" : "",
                      fmt::format("{}: {} parameters, {} elements; {}", g, group["parameters"].get<std::size_t>(),
                                  grouped(group["numel"].get<std::uint64_t>()), fmt::join(hyper, ", "))});
    }
    for (const auto& rank : d["ranks"]) {
      rows.push_back({rank["rank"].get<std::size_t>() == 0 ? "ranks" : "",
                      fmt::format("{}: {} fp32 elements, {}", rank["rank"].get<std::size_t>(),
                                  grouped(rank["partition_numel"].get<std::uint64_t>()),
                                  human_bytes(rank["size_bytes"].get<std::uint64_t>()))});
    }
    if (d.contains("nonfinite")) {
      rows.push_back(
          {"nan/inf", fmt::format("{}/{} in the fp32 master weights", d["nonfinite"]["nan"].get<std::uint64_t>(),
                                  d["nonfinite"]["inf"].get<std::uint64_t>())});
    }
  }
  if (!c.fsdp.is_null()) {
    const json::Json& f = c.fsdp;
    std::vector<std::string> dtypes;
    for (const auto& d : f["dtypes"]) dtypes.push_back(d.get<std::string>());
    rows.push_back(
        {"fsdp", fmt::format("sharded over {} ranks, {} model tensors ({}), {} optimizer tensors, {} DCP files",
                             value_text(f["world_size"]), f["tensors"].get<std::size_t>(), fmt::join(dtypes, ", "),
                             f["optimizer_tensors"].get<std::size_t>(), f["files"].size())});
  }
  if (s.parameters) {
    std::vector<std::string> dtypes;
    for (const auto& d : s.dtypes) {
      dtypes.push_back(s.dtypes.size() == 1 ? std::string(torch_name(d.dtype))
                                            : fmt::format("{} {}", torch_name(d.dtype), grouped(d.parameters)));
    }
    rows.push_back({"parameters", fmt::format("{} ({})", grouped(*s.parameters), fmt::join(dtypes, ", "))});
  }
  for (std::size_t i = 0; i < c.files.size(); ++i) {
    const FileReport& f = c.files[i];
    rows.push_back(
        {i == 0 ? "files" : "", fmt::format("{} ({}, {})", f.file, kind_name(f.kind), human_bytes(f.size_bytes))});
  }
  if (verify_errors) {
    const auto& errors = *verify_errors;
    rows.push_back(
        {"verify", errors.empty()
                       ? "ok"
                       : fmt::format("FAILED: {}{}", errors.front(),
                                     errors.size() > 1 ? fmt::format(" (and {} more)", errors.size() - 1) : "")});
  }
  Table table(rows.front());
  for (std::size_t i = 1; i < rows.size(); ++i) table.add(std::move(rows[i]));
  return table.render("  ");
}

// ---- running ----

bool all_ok(const CheckpointReport& c) {
  if (c.verify && !c.verify->ok()) return false;
  return std::all_of(c.files.begin(), c.files.end(),
                     [](const FileReport& f) { return !f.error && (!f.verify || f.verify->ok()); });
}

// A failed verification is reported on stdout in full and summarised as the one error line on stderr.
int verification_status(const std::string& path, const std::vector<std::string>& errors) {
  if (errors.empty()) return exit_ok;
  print_error(path + ": verification failed: " + errors.front() +
              (errors.size() > 1 ? fmt::format(" (and {} more)", errors.size() - 1) : ""));
  return exit_bad_input;
}

int inspect_file_path(const InspectOptions& o, const checkpoint::InspectOptions& core) {
  const FileReport f = checkpoint::inspect_file(o.path, core);
  const bool ok = !f.verify || f.verify->ok();
  if (o.json) {
    json::Json out = file_json(f);
    if (o.verify) out["ok"] = ok;
    std::cout << json::dump(out, 2) << "\n";
  } else {
    print_text(file_text(f, !o.summary) + (f.verify ? verification_text(f.file, *f.verify) : ""));
  }
  return verification_status(o.path, f.verify ? f.verify->errors : std::vector<std::string>{});
}

int inspect_checkpoint_path(const InspectOptions& o, const checkpoint::InspectOptions& core) {
  const CheckpointReport c = checkpoint::inspect_checkpoint(o.path, core);
  const bool ok = all_ok(c);
  // Unreadable member files fail a directory like a single bad file would.
  std::vector<std::string> errors = checkpoint::verification_errors(c);
  if (!ok && errors.empty()) errors.push_back("a file could not be read");
  if (o.json) {
    json::Json out = checkpoint_json(c);
    if (o.verify) out["ok"] = ok;
    std::cout << json::dump(out, 2) << "\n";
  } else {
    std::string text = fmt::format(
        "{}: {}{}, {}, {} file{}{}{}\n", printable(c.path),
        c.model_directory  ? "model directory"
        : c.layout.empty() ? "checkpoint"
                           : c.layout + " checkpoint",
        c.step ? fmt::format(" at step {}", *c.step) : "", c.complete ? "complete" : "INCOMPLETE", c.files.size(),
        c.files.size() == 1 ? "" : "s", c.world_size > 1 ? fmt::format(", written by {} processes", c.world_size) : "",
        c.optimizer_sharded ? ", optimizer sharded" : "");
    for (const auto& p : c.problems) text += "  problem: " + printable(p) + "\n";
    text += summary_text(c, o.verify ? &errors : nullptr);
    if (!o.summary) {
      for (const auto& f : c.files) {
        text += "\n" + file_text(f, true);
        if (f.verify) text += verification_text(f.file, *f.verify);
      }
      if (c.verify) text += "\n" + verification_text("across files", *c.verify);
      if (o.verify) text += ok ? "verify: ok\n" : "verify: FAILED\n";
    }
    print_text(text);
  }
  return verification_status(o.path, errors);
}

int inspect_run_path(const InspectOptions& o, const checkpoint::InspectOptions& core) {
  const auto listing = checkpoint::list_run(o.path, {});
  json::Json rows = listing_json(listing);
  std::vector<std::string> errors;
  std::string verify_text;
  if (o.verify) {
    for (std::size_t i = 0; i < listing.rows.size(); ++i) {
      const auto& row = listing.rows[i];
      if (row.kind != checkpoint::EntryKind::checkpoint) continue;
      const auto report = checkpoint::inspect_run_checkpoint(row.path, core);
      if (!report) {
        rows[i]["verify"] = {{"ok", true}, {"errors", json::Json::array()}, {"gone", true}};
        verify_text +=
            fmt::format("  verify {}: gone (deleted or replaced while being checked, as by a rotate)\n", row.name);
        continue;
      }
      const auto row_errors = checkpoint::verification_errors(*report);
      rows[i]["verify"] = {{"ok", row_errors.empty()}, {"errors", row_errors}};
      verify_text += fmt::format("  verify {}: {}\n", printable(row.name), row_errors.empty() ? "ok" : "FAILED");
      for (const auto& e : row_errors) {
        verify_text += "    error: " + printable(e) + "\n";
        errors.push_back(row.name + ": " + e);
      }
    }
  }
  if (o.json) {
    json::Json out{{"path", o.path}, {"kind", "run"}, {"checkpoints", std::move(rows)}};
    if (o.verify) out["ok"] = errors.empty();
    std::cout << json::dump(out, 2) << "\n";
  } else {
    print_text(fmt::format("{}: run directory\n", printable(o.path)) + listing_text(listing) + verify_text +
               (!o.verify        ? ""
                : errors.empty() ? "verify: ok\n"
                                 : "verify: FAILED\n"));
  }
  return verification_status(o.path, errors);
}

int run_inspect(const InspectOptions& o) {
  checkpoint::InspectOptions core;
  core.verify = o.verify;
  switch (checkpoint::classify_path(o.path)) {
    case checkpoint::PathKind::file:
      return inspect_file_path(o, core);
    case checkpoint::PathKind::checkpoint:
      return inspect_checkpoint_path(o, core);
    case checkpoint::PathKind::run:
      return inspect_run_path(o, core);
  }
  return exit_failure;
}

}  // namespace

Action attach_inspect(CLI::App& sub) {
  auto options = std::make_shared<InspectOptions>();
  sub.add_option(
         "PATH", options->path,
         "A checkpoint file (type detected from its content), a checkpoint or model directory, or a run directory")
      ->required();
  sub.add_flag("--json", options->json, "Print one JSON document on stdout (shape: man ckpt, INSPECT JSON)");
  sub.add_flag(
      "--summary", options->summary,
      "Text: print only the summary a directory's report starts with (a file's without its tensor and field tables); "
      "--json always has it as \"summary\"");
  sub.add_flag("--verify", options->verify,
               "Also check CRC-32s, safetensors rules, tensor extents, consistency across files; count NaN/Inf per "
               "floating tensor. Exit 3 if any check fails");
  return [options] { return run_inspect(*options); };
}

}  // namespace ckpt::cli
