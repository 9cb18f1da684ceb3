#include "decode_table.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvtier::cli {
namespace {

std::optional<double> Number(const nlohmann::json& extra, const char* key) {
  const auto it = extra.find(key);
  if (it == extra.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

std::optional<std::string> Text(const nlohmann::json& extra, const char* key) {
  const auto it = extra.find(key);
  if (it == extra.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// A check the row failed: a `matches*` or `selection_matches` field that is false. (`bit_equal`
// is not a check: other kernels sum in another order.)
bool FailedCheck(const nlohmann::json& extra) {
  for (const auto& [key, value] : extra.items()) {
    const bool check = key.starts_with("matches") || key == "selection_matches";
    if (check && value.is_boolean() && !value.get<bool>()) return true;
  }
  return false;
}

// The score grid of a `scores` row (the default rule, or what --score-* set).
std::optional<std::string> ScoreGrid(const nlohmann::json& extra) {
  const auto rule = Text(extra, "score_preset");
  const auto stages = Number(extra, "stages"), tiles = Number(extra, "tiles_per_cta"),
             ctas = Number(extra, "ctas_per_row");
  if (Text(extra, "score_kernel") == "tensor-core" && stages && tiles && ctas) {  // one fixed shape, no rule
    return fmt::format("tensor core: {:.0f} buffers, {:.0f} tiles x {:.0f} CTAs/row", *stages, *tiles, *ctas);
  }
  if (!rule || !stages || !tiles || !ctas) return std::nullopt;
  const auto applied = extra.find("score_rule_applied");
  const bool fell_back =
      *rule != "explicit" && applied != extra.end() && applied->is_boolean() && !applied->get<bool>();
  return fmt::format("{}: {:.0f} buffers, {:.0f} tiles x {:.0f} CTAs/row{}", *rule, *stages, *tiles, *ctas,
                     fell_back ? " (falls back to r8)" : "");
}

// The grid of a row run with another score rule (`preset`: scores_r8, sparse_graph_r8).
std::optional<std::string> PresetGrid(const nlohmann::json& extra) {
  const auto applied = extra.find("applied");
  if (!extra.contains("preset") || applied == extra.end() || !applied->is_boolean()) return std::nullopt;
  if (!applied->get<bool>()) return std::string("falls back to r8");
  const auto stages = Number(extra, "score_stages"), tiles = Number(extra, "score_tiles_per_cta"),
             ctas = Number(extra, "score_ctas_per_row");
  if (!stages || !tiles || !ctas) return std::nullopt;
  return fmt::format("{:.0f} buffers, {:.0f} tiles x {:.0f} CTAs/row", *stages, *tiles, *ctas);
}

}  // namespace

std::string DecodeRowNote(const DecodeRow& row, uint32_t block_tokens) {
  const nlohmann::json& x = row.extra;
  std::vector<std::string> parts;
  if (auto e = Text(x, "error")) return fmt::format("not launched: {}", *e);
  if (row.method == "scores") {
    if (auto grid = ScoreGrid(x)) parts.push_back(*grid);
  }
  if (auto v = Number(x, "vs_copy")) {
    parts.push_back(fmt::format("{:.2f}x copy{}", *v, row.method == "dense" ? " (target >= 0.9)" : ""));
  }
  if (auto v = Number(x, "vs_dense")) parts.push_back(fmt::format("{:.3f}x dense", *v));
  if (row.method.starts_with("dense_")) {  // the plan of a dense variant
    const auto heads = Number(x, "heads_per_cta"), pages = Number(x, "chunk_pages"), splits = Number(x, "splits");
    if (heads && pages && splits) {
      std::string plan = fmt::format("{:.0f} heads, {:.0f} pages x {:.0f}", *heads, *pages, *splits);
      if (auto w = Number(x, "waves")) plan += fmt::format(", {:.2f} waves", *w);
      if (const auto a = x.find("applied"); a != x.end() && a->is_boolean() && !a->get<bool>()) plan += " (as dense)";
      parts.push_back(plan);
    }
    if (const auto b = x.find("bit_equal"); b != x.end() && b->is_boolean() && b->get<bool>()) parts.push_back("bit-equal");
  }
  if (auto v = Number(x, "vs_dense_over_block_tokens")) {
    parts.push_back(fmt::format("{:.2f}x dense/{} (target <= 1.1)", *v, block_tokens));
  }
  if (auto v = Number(x, "vs_select")) parts.push_back(fmt::format("{:.2f}x the select's time", *v));
  if (auto s = Number(x, "speedup"), ideal = Number(x, "ideal_speedup"); s && ideal) {
    parts.push_back(fmt::format("speedup {:.2f}x (ideal {:.1f}x; target >= 8x at 32K)", *s, *ideal));
  }
  if (auto s = Number(x, "speedup"), need = Number(x, "eight_x_needs_us"); s && need) {  // the step bounds
    parts.push_back(fmt::format("at most {:.2f}x dense (8x needs <= {:.1f} us)", *s, *need));
  }
  for (const auto& [key, value] : x.items()) {  // speedup_vs_dense_<variant>
    if (key.starts_with("speedup_vs_dense_") && value.is_number()) {
      parts.push_back(fmt::format("{:.2f}x {}", value.get<double>(), key.substr(std::string_view("speedup_vs_").size())));
    }
  }
  if (auto v = Number(x, "vs_scores")) parts.push_back(fmt::format("{:.3f}x scores", *v));
  if (auto v = Number(x, "vs_sparse_graph")) parts.push_back(fmt::format("{:.3f}x sparse_graph", *v));
  if (auto v = Number(x, "vs_default")) parts.push_back(fmt::format("{:.2f}x default", *v));
  if (auto v = Number(x, "max_diff_over_peak")) parts.push_back(fmt::format("max |diff| {:.1e} of the peak score", *v));
  if (const auto same = x.find("same_selection"); same != x.end() && same->is_boolean()) {
    parts.push_back(same->get<bool>() ? "same selection" : "selection differs (near ties)");
  }
  if (auto grid = PresetGrid(x)) parts.push_back(*grid);
  std::string note = fmt::format("{}", fmt::join(parts, "; "));
  if (FailedCheck(x)) note += "  MISMATCH";
  return note;
}

std::string FormatDecodeRow(const DecodeRow& row, uint32_t block_tokens) {
  // Sweep rows carry long descriptions (the setting).
  const size_t what_width = row.method.starts_with("sweep_") ? 70 : 46;
  return fmt::format("  {:<19} {:<{}} {:>10.1f} us {:>8.1f} GB/s  {}", row.method, row.what, what_width, row.us,
                     row.gbps, DecodeRowNote(row, block_tokens));
}

DecodeTable DecodeTableFromJsonLines(std::istream& in) {
  DecodeTable table;
  std::string line, point;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line.front() != '{') continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      table.errors.push_back(fmt::format("line {}: not a JSON object", number));
      continue;
    }
    const auto text = [&](const char* key) { return Text(j, key); };
    const auto number_of = [&](const char* key) { return Number(j, key); };
    const auto method = text("method");
    const auto context = number_of("context"), batch = number_of("batch"), us = number_of("us"),
               gbps = number_of("gbps");
    if (!method || !context || !batch || !us || !gbps) {
      table.errors.push_back(fmt::format("line {}: a row needs method, context, batch, us and gbps", number));
      continue;
    }
    const std::string here = fmt::format("{}: context {:.0f} x batch {:.0f} (budget {:.0f} tokens; {:.0f} KV copies cycled)",
                                         text("device").value_or("?"), *context, *batch,
                                         number_of("budget").value_or(0), number_of("layers").value_or(0));
    if (here != point) {
      table.text += here + "\n";
      point = here;
    }
    DecodeRow row{*method, text("what").value_or(""), *us, *gbps, number_of("bytes").value_or(0), j};
    table.text += FormatDecodeRow(row, static_cast<uint32_t>(number_of("block_tokens").value_or(16))) + "\n";
  }
  return table;
}

}  // namespace kvtier::cli
