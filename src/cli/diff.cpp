// `ckpt diff A B [--tolerance X] [--rtol X] [--only PATTERN]... [--all] [--json] [-q]`: two weights files,
// checkpoints or archives compared; exit status 0 when they are the same within the tolerances, 1 when not.
#include <fmt/format.h>

#include <cmath>
#include <iostream>

#include "checkpoint/diff.hpp"
#include "cli/cli.hpp"
#include "cli/text.hpp"
#include "format/json.hpp"

namespace ckpt::cli {
namespace {

using checkpoint::DiffResult;
using checkpoint::DiffSection;
using checkpoint::TensorDiff;
using checkpoint::TensorStatus;
using checkpoint::ValueDiff;

struct DiffOptions {
  std::string a;
  std::string b;
  double tolerance = 0;
  double rtol = 0;
  std::vector<std::string> only;
  bool all = false;
  bool json = false;
  bool quiet = false;
};

// A metric as people read it: six significant digits, "inf", "nan".
std::string metric_text(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return fmt::format("{:.6g}", value);
}

std::string dtype_text(const TensorDiff& t) {
  if (!t.dtype_a || !t.dtype_b) return std::string(torch_name(t.dtype_a ? *t.dtype_a : *t.dtype_b));
  if (*t.dtype_a == *t.dtype_b) return std::string(torch_name(*t.dtype_a));
  return std::string(torch_name(*t.dtype_a)) + " -> " + std::string(torch_name(*t.dtype_b));
}

std::string shape_cell(const TensorDiff& t) {
  if (!t.shape_a || !t.shape_b) return shape_text(t.shape_a ? *t.shape_a : *t.shape_b);
  if (*t.shape_a == *t.shape_b) return shape_text(*t.shape_a);
  return shape_text(*t.shape_a) + " -> " + shape_text(*t.shape_b);
}

std::string status_text(TensorStatus status) {
  switch (status) {
    case TensorStatus::identical:
      return "identical";
    case TensorStatus::within_tolerance:
      return "within tolerance";
    case TensorStatus::different:
      return "different";
    case TensorStatus::dtype_changed:
      return "dtype changed";
    case TensorStatus::shape_changed:
      return "shape changed";
    case TensorStatus::only_in_a:
      return "only in A";
    case TensorStatus::only_in_b:
      return "only in B";
  }
  return "different";
}

// A value as JSON on one line, cut short for the table (--json has it whole).
std::string value_text(bool in, const json::Json& value) {
  if (!in) return "(absent)";
  std::string text = json::dump(value);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

struct Counts {
  std::size_t tensors = 0, identical = 0, within = 0, different = 0, only_a = 0, only_b = 0, changed = 0;
  std::size_t values = 0, values_different = 0;
  std::size_t files_missing = 0;

  void add(const DiffSection& s) {
    if (!s.file_a || !s.file_b) ++files_missing;
    for (const auto& t : s.tensors) {
      ++tensors;
      switch (t.status) {
        case TensorStatus::identical:
          ++identical;
          break;
        case TensorStatus::within_tolerance:
          ++within;
          break;
        case TensorStatus::different:
          ++different;
          break;
        case TensorStatus::only_in_a:
          ++only_a;
          break;
        case TensorStatus::only_in_b:
          ++only_b;
          break;
        case TensorStatus::dtype_changed:
        case TensorStatus::shape_changed:
          ++changed;
          break;
      }
    }
    values += s.values.size();
    for (const auto& v : s.values) values_different += v.same ? 0 : 1;
  }

  // "240 identical, 3 different, 1 only in A": the non-zero counts.
  std::string tensor_summary() const {
    std::vector<std::string> parts;
    const auto part = [&](std::size_t n, const char* what) {
      if (n) parts.push_back(grouped(n) + " " + what);
    };
    part(identical, "identical");
    part(within, "within tolerance");
    part(different, "different");
    part(changed, "with dtype or shape changed");
    part(only_a, "only in A");
    part(only_b, "only in B");
    std::string text;
    for (const auto& p : parts) text += (text.empty() ? "" : ", ") + p;
    return text;
  }
};

std::string section_line(const DiffSection& s) {
  if (!s.file_a) return s.name + ": only in B (" + *s.file_b + ")";
  if (!s.file_b) return s.name + ": only in A (" + *s.file_a + ")";
  Counts c;
  c.add(s);
  std::string line = s.name + " (" + (*s.file_a == *s.file_b ? *s.file_a : *s.file_a + " | " + *s.file_b) + "):";
  if (c.tensors) line += " " + grouped(c.tensors) + (c.tensors == 1 ? " tensor: " : " tensors: ") + c.tensor_summary();
  if (c.values) {
    line += std::string(c.tensors ? ";" : "") + " " + grouped(c.values) + (c.values == 1 ? " value" : " values") +
            (c.values_different ? ", " + grouped(c.values_different) + " different" : " equal");
  }
  if (!c.tensors && !c.values) line += " nothing to compare";
  return line;
}

void render_text(const DiffResult& r, const DiffOptions& o) {
  std::string out = "A: " + r.a.path + " (" + r.a.kind + ")\nB: " + r.b.path + " (" + r.b.kind + ")\n";
  Counts total;
  for (const auto& s : r.sections) {
    total.add(s);
    out += "\n" + printable(section_line(s)) + "\n";
    Table tensors({"tensor", "status", "dtype", "shape", "differing", "max_abs_diff", "max_rel_diff", "l2_diff", "l2_a",
                   "cosine"});
    bool any_tensor = false;
    for (const auto& t : s.tensors) {
      if (t.status == TensorStatus::identical && !o.all) continue;
      any_tensor = true;
      std::vector<std::string> row = {t.name, status_text(t.status), dtype_text(t), shape_cell(t)};
      if (t.stats) {
        const auto& m = *t.stats;
        row.insert(row.end(), {grouped(m.differing) + " of " + grouped(m.elements), metric_text(m.max_abs_diff),
                               metric_text(m.max_rel_diff), metric_text(m.l2_diff()), metric_text(m.l2_a()),
                               metric_text(m.cosine())});
      } else {
        row.insert(row.end(), {t.status == TensorStatus::identical ? "0" : "-", "-", "-", "-", "-", "-"});
      }
      tensors.add(std::move(row));
    }
    if (any_tensor) out += tensors.render("  ");
    // Without --all only the values that differ are listed; with it, a column says which.
    Table values(o.all ? std::vector<std::string>{"value", "status", "A", "B"}
                       : std::vector<std::string>{"value", "A", "B"});
    bool any_value = false;
    for (const auto& v : s.values) {
      if (v.same && !o.all) continue;
      any_value = true;
      std::vector<std::string> row = {v.name, value_text(v.in_a, v.a), value_text(v.in_b, v.b)};
      if (o.all) row.insert(row.begin() + 1, v.same ? "equal" : "different");
      values.add(std::move(row));
    }
    if (any_value) out += values.render("  ");
  }
  if (!r.notes.empty()) out += "\n";
  for (const auto& note : r.notes) out += "note: " + printable(note) + "\n";
  const std::string tolerance =
      o.tolerance || o.rtol ? fmt::format(" (tolerance {}, rtol {})", metric_text(o.tolerance), metric_text(o.rtol))
                            : "";
  std::string verdict;
  if (r.same()) {
    verdict = "same" + tolerance + ": " + grouped(total.tensors) + (total.tensors == 1 ? " tensor " : " tensors ") +
              (total.within ? "within tolerance" : "identical");
    if (total.values) verdict += ", " + grouped(total.values) + (total.values == 1 ? " value equal" : " values equal");
  } else {
    std::vector<std::string> parts;
    const std::size_t tensors_differing = total.tensors - total.identical - total.within;
    if (tensors_differing)
      parts.push_back(grouped(tensors_differing) + " of " + grouped(total.tensors) + " tensors differ");
    if (total.values_different)
      parts.push_back(grouped(total.values_different) + " of " + grouped(total.values) + " values differ");
    if (total.files_missing)
      parts.push_back(grouped(total.files_missing) + (total.files_missing == 1 ? " file" : " files") +
                      " only on one side");
    verdict = "different" + tolerance + ":";
    for (std::size_t i = 0; i < parts.size(); ++i) verdict += (i ? ", " : " ") + parts[i];
  }
  out += "\n" + verdict + "\n";
  print_text(printable(out, true));
}

json::Json shape_json(const std::optional<std::vector<std::int64_t>>& shape) {
  return shape ? json::Json(*shape) : json::Json(nullptr);
}

json::Json dtype_json(const std::optional<DType>& dtype) {
  return dtype ? json::Json(std::string(torch_name(*dtype))) : json::Json(nullptr);
}

json::Json tensor_json(const TensorDiff& t) {
  json::Json j = {{"name", t.name},
                  {"status", to_string(t.status)},
                  {"same", t.same()},
                  {"dtype_a", dtype_json(t.dtype_a)},
                  {"dtype_b", dtype_json(t.dtype_b)},
                  {"shape_a", shape_json(t.shape_a)},
                  {"shape_b", shape_json(t.shape_b)}};
  if (t.stats) {
    const auto& m = *t.stats;
    j.update({{"elements", m.elements},
              {"differing_elements", m.differing},
              {"outside_tolerance", m.outside_tolerance},
              {"max_abs_diff", m.max_abs_diff},
              {"max_rel_diff", m.max_rel_diff},
              {"l2_diff", m.l2_diff()},
              {"l2_a", m.l2_a()},
              {"cosine", m.cosine()}});
  }
  return j;
}

void render_json(const DiffResult& r, const DiffOptions& o) {
  json::Json sections = json::Json::array();
  for (const auto& s : r.sections) {
    json::Json tensors = json::Json::array();
    for (const auto& t : s.tensors) tensors.push_back(tensor_json(t));
    json::Json values = json::Json::array();
    for (const auto& v : s.values) {
      values.push_back(
          {{"name", v.name}, {"same", v.same}, {"in_a", v.in_a}, {"in_b", v.in_b}, {"a", v.a}, {"b", v.b}});
    }
    sections.push_back({{"name", s.name},
                        {"file_a", s.file_a ? json::Json(*s.file_a) : json::Json(nullptr)},
                        {"file_b", s.file_b ? json::Json(*s.file_b) : json::Json(nullptr)},
                        {"same", s.same()},
                        {"tensors", std::move(tensors)},
                        {"values", std::move(values)}});
  }
  const json::Json doc = {{"a", {{"path", r.a.path}, {"kind", r.a.kind}}},
                          {"b", {{"path", r.b.path}, {"kind", r.b.kind}}},
                          {"tolerance", o.tolerance},
                          {"rtol", o.rtol},
                          {"only", o.only},
                          {"same", r.same()},
                          {"sections", std::move(sections)},
                          {"notes", r.notes}};
  std::cout << json::dump(doc, 2) << "\n";
}

int run_diff(const DiffOptions& o) {
  checkpoint::DiffOptions options;
  options.tolerance = {o.tolerance, o.rtol};
  options.only = o.only;
  const DiffResult result = with_progress(!o.quiet && !o.json, "comparing", [&](ProgressLine& progress) {
    options.progress = [&progress](std::uint64_t done, std::uint64_t total) { progress.update(done, total); };
    return checkpoint::diff(o.a, o.b, options);
  });
  if (o.json)
    render_json(result, o);
  else if (!o.quiet)
    render_text(result, o);
  return result.same() ? exit_ok : exit_failure;
}

}  // namespace

Action attach_diff(CLI::App& sub) {
  auto o = std::make_shared<DiffOptions>();
  sub.add_option(
         "A", o->a,
         "A weights file (.bin, .safetensors, an index .json), checkpoint or model directory, or archive (.ckpt)")
      ->required();
  sub.add_option("B", o->b, "What to compare it with: any of the same, in any mix")->required();
  sub.add_option(
         "--tolerance", o->tolerance,
         "Elements count as the same when |a - b| <= tolerance + rtol * |b| (torch.allclose's atol) [default: 0]")
      ->transform(non_negative_number());
  sub.add_option("--rtol", o->rtol, "The relative part of that bound (torch.allclose's rtol) [default: 0]")
      ->transform(non_negative_number());
  sub.add_option("--only", o->only,
                 "Compare only tensors and values whose name matches this glob (repeatable: any matches), e.g. "
                 "'layers.*', 'optimizer.*'")
      ->expected(1)
      ->allow_extra_args(false)  // one pattern per --only: `--only 'x*' A B` leaves A and B alone
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub.add_flag("--all", o->all, "List identical tensors and equal values too, not only their count");
  sub.add_flag("--json", o->json, "Print every tensor and value compared as JSON");
  sub.add_flag("-q,--quiet", o->quiet, "Print nothing: the exit status says (0 the same, 1 different)");
  return [o] { return run_diff(*o); };
}

}  // namespace ckpt::cli
