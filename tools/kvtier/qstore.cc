// `kvtier qstore ingest|lookup|stats`: the precomputed query store from the shell.
//
// Input is JSON Lines. A bad line (invalid JSON, a missing or mistyped field, an embedding
// of the wrong dimension, a non-finite value) is reported on stderr with its line number
// and skipped: nothing of it is stored. With --strict the command stops at the first bad
// line (what came before it is stored). Exit codes: 0 all lines done, 1 a store error,
// 2 bad usage, 3 done but some lines were skipped.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <fstream>
#include <iostream>
#include <limits>

#include "commands.h"
#include "query_store/query_store.h"

namespace kvtier::cli {
namespace {

struct QstoreOptions {
  std::string db;
  std::string input;
  uint32_t dim = 0;
  uint32_t batch = 256;
  uint32_t k = 1;
  float threshold = 0.9f;
  std::string durability = "sync";
  bool strict = false;
  bool json = false;
  bool exact = false;
  bool verify = false;
};

using Json = nlohmann::json;

// Reads a required string field; returns an error text or "".
std::string GetString(const Json& j, const char* name, std::string* out, bool required = true) {
  auto it = j.find(name);
  if (it == j.end()) return required ? fmt::format("missing field '{}'", name) : "";
  if (!it->is_string()) return fmt::format("field '{}' is not a string", name);
  *out = it->get<std::string>();
  return "";
}

std::string GetEmbedding(const Json& j, std::vector<float>* out) {
  auto it = j.find("embedding");
  if (it == j.end()) return "missing field 'embedding'";
  if (!it->is_array()) return "field 'embedding' is not an array";
  out->clear();
  out->reserve(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& v = (*it)[i];
    if (!v.is_number()) return fmt::format("embedding[{}] is not a number", i);
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::fabs(d) > double(std::numeric_limits<float>::max())) {
      return fmt::format("embedding[{}] is not a finite float", i);
    }
    out->push_back(static_cast<float>(d));
  }
  return "";
}

std::string ParseChain(const std::string& hex, ChainHash* out) {
  if (hex.size() != 64) return "prefix_chain must be 64 hex digits";
  for (size_t i = 0; i < 32; ++i) {
    unsigned v = 0;
    if (std::sscanf(hex.c_str() + 2 * i, "%2x", &v) != 1) return "prefix_chain must be 64 hex digits";
    out->bytes[i] = static_cast<uint8_t>(v);
  }
  return "";
}

// One ingest line -> entry, or an error text.
std::string ParseEntry(const std::string& line, QueryEntry* e) {
  Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return "invalid JSON";
  if (!j.is_object()) return "not a JSON object";
  for (auto [name, out] : {std::pair{"id", &e->id}, std::pair{"query", &e->query}, std::pair{"response", &e->response}}) {
    if (std::string err = GetString(j, name, out); !err.empty()) return err;
  }
  if (std::string err = GetString(j, "source", &e->source, /*required=*/false); !err.empty()) return err;
  if (std::string err = GetEmbedding(j, &e->embedding); !err.empty()) return err;
  if (auto it = j.find("prefix_tokens"); it != j.end()) {
    if (!it->is_array()) return "field 'prefix_tokens' is not an array";
    for (size_t i = 0; i < it->size(); ++i) {
      const Json& t = (*it)[i];
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return fmt::format("prefix_tokens[{}] is not a token id", i);
      }
      e->prefix.tokens.push_back(static_cast<int32_t>(t.get<int64_t>()));
    }
  }
  std::string chain;
  if (std::string err = GetString(j, "prefix_chain", &chain, /*required=*/false); !err.empty()) return err;
  if (!chain.empty()) {
    ChainHash c;
    if (std::string err = ParseChain(chain, &c); !err.empty()) return err;
    e->prefix.chain = c;
  }
  return "";
}

Result<std::unique_ptr<QueryStore>> OpenStore(const QstoreOptions& o, OpenMode mode, uint32_t dim) {
  QueryStoreOptions so;
  so.dir = o.db;
  so.mode = mode;
  so.dim = dim;
  so.durability = o.durability == "buffered" ? Durability::kBuffered : Durability::kSync;
  return QueryStore::Open(so);
}

int RunIngest(const QstoreOptions& o) {
  std::ifstream in(o.input);
  if (!in) {
    fmt::print(stderr, "kvtier qstore ingest: cannot read {}\n", o.input);
    return 2;
  }
  if (o.durability != "sync" && o.durability != "buffered") {
    fmt::print(stderr, "kvtier qstore ingest: --durability must be sync or buffered\n");
    return 2;
  }
  std::unique_ptr<QueryStore> store;
  std::vector<QueryEntry> batch;
  std::vector<size_t> batch_lines;
  uint64_t lines = 0, bad = 0, counts[3] = {0, 0, 0};
  auto flush = [&]() -> Status {
    if (batch.empty()) return Status::Ok();
    KVT_ASSIGN_OR_RETURN(std::vector<IngestResult> results, store->Ingest(batch));
    for (size_t i = 0; i < results.size(); ++i) counts[static_cast<size_t>(results[i].outcome)] += 1;
    batch.clear();
    batch_lines.clear();
    return Status::Ok();
  };
  auto fail = [&](const Status& s) {
    fmt::print(stderr, "kvtier qstore ingest: {}\n", s.ToString());
    return 1;
  };
  std::string line;
  bool stopped = false;
  while (std::getline(in, line)) {
    ++lines;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines are not entries
    QueryEntry e;
    std::string err = ParseEntry(line, &e);
    if (err.empty() && !store) {
      // The first valid line opens the store; a new store takes --dim or this line's size.
      auto opened = OpenStore(o, OpenMode::kOpenOrCreate, o.dim ? o.dim : static_cast<uint32_t>(e.embedding.size()));
      if (!opened.ok() && opened.status().code() == StatusCode::kInvalidArgument && o.dim == 0) {
        opened = OpenStore(o, OpenMode::kOpenExisting, 0);  // an existing store of another dimension
      }
      if (!opened.ok()) return fail(opened.status());
      store = std::move(opened).value();
    }
    if (err.empty()) {
      if (Status v = ValidateEntry(e, store->dim()); !v.ok()) err = std::string(v.message());
    }
    if (!err.empty()) {
      ++bad;
      fmt::print(stderr, "{}:{}: {}{}\n", o.input, lines, err, o.strict ? "" : " (line skipped)");
      if (o.strict) {
        stopped = true;
        break;
      }
      continue;
    }
    batch.push_back(std::move(e));
    batch_lines.push_back(lines);
    if (batch.size() >= o.batch) {
      if (Status s = flush(); !s.ok()) return fail(s);
    }
  }
  if (store) {
    if (Status s = flush(); !s.ok()) return fail(s);
  }
  QueryStoreStats st;
  if (store) {
    st = store->Stats();
    if (Status s = store->Close(); !s.ok()) return fail(s);
  }
  if (o.json) {
    fmt::print("{}\n", Json{{"lines", lines}, {"inserted", counts[0]}, {"replaced", counts[1]}, {"duplicates", counts[2]},
                            {"bad_lines", bad}, {"stopped", stopped}, {"entries", st.entries}}
                           .dump());
  } else {
    fmt::print("{} lines: {} inserted, {} replaced, {} duplicates skipped, {} bad{}; the store holds {} entries\n", lines,
               counts[0], counts[1], counts[2], bad, stopped ? " (stopped at the first bad line: --strict)" : "",
               st.entries);
  }
  return bad > 0 ? 3 : 0;
}

int RunLookup(const QstoreOptions& o) {
  std::ifstream in(o.input);
  if (!in) {
    fmt::print(stderr, "kvtier qstore lookup: cannot read {}\n", o.input);
    return 2;
  }
  auto store = OpenStore(o, OpenMode::kOpenExisting, 0);
  if (!store.ok()) {
    fmt::print(stderr, "kvtier qstore lookup: {}\n", store.status().ToString());
    return 1;
  }
  LookupOptions lo;
  lo.threshold = o.threshold;
  lo.k = o.k;
  lo.mode = o.exact ? SearchMode::kExact : SearchMode::kAuto;
  if (Status v = lo.Validate(); !v.ok()) {
    fmt::print(stderr, "kvtier qstore lookup: {}\n", v.message());
    return 2;
  }
  std::string line;
  uint64_t lines = 0, bad = 0, hits = 0, queries = 0;
  while (std::getline(in, line)) {
    ++lines;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json j = Json::parse(line, nullptr, false);
    std::string err, id;
    std::vector<float> emb;
    if (j.is_discarded()) err = "invalid JSON";
    else if (!j.is_object()) err = "not a JSON object";
    else if (err = GetString(j, "id", &id); err.empty()) err = GetEmbedding(j, &emb);
    const auto t0 = std::chrono::steady_clock::now();
    Result<LookupResult> r = Status::InvalidArgument(err);
    if (err.empty()) {
      r = (*store)->Lookup(emb, lo);
      if (!r.ok() && r.status().code() != StatusCode::kInvalidArgument) {
        fmt::print(stderr, "kvtier qstore lookup: {}\n", r.status().ToString());
        return 1;
      }
      if (!r.ok()) err = std::string(r.status().message());
    }
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    if (!err.empty()) {
      ++bad;
      fmt::print(stderr, "{}:{}: {}{}\n", o.input, lines, err, o.strict ? "" : " (line skipped)");
      if (o.strict) break;
      continue;
    }
    ++queries;
    hits += r->hit() ? 1 : 0;
    const Match* best = r->hit() ? &r->matches[0] : nullptr;
    if (o.json) {
      Json out{{"id", id}, {"hit", best != nullptr}, {"match_id", best ? Json(best->id) : Json(nullptr)},
               {"similarity", best ? Json(best->similarity) : Json(nullptr)}, {"latency_us", us}};
      if (best) out["response"] = best->response;
      if (o.k > 1) {
        Json all = Json::array();
        for (const Match& m : r->matches) all.push_back(Json{{"id", m.id}, {"similarity", m.similarity}});
        out["matches"] = std::move(all);
      }
      fmt::print("{}\n", out.dump());
    } else if (best) {
      fmt::print("{}: hit {} (similarity {:.4f}, {:.0f} us)\n", id, best->id, best->similarity, us);
    } else {
      fmt::print("{}: miss ({:.0f} us)\n", id, us);
    }
  }
  if (!o.json) fmt::print("{} queries: {} hits, {} misses, {} bad lines\n", queries, hits, queries - hits, bad);
  if (Status s = (*store)->Close(); !s.ok()) {
    fmt::print(stderr, "kvtier qstore lookup: {}\n", s.ToString());
    return 1;
  }
  return bad > 0 ? 3 : 0;
}

int RunStats(const QstoreOptions& o) {
  auto store = OpenStore(o, OpenMode::kOpenExisting, 0);
  if (!store.ok()) {
    fmt::print(stderr, "kvtier qstore stats: {}\n", store.status().ToString());
    return 1;
  }
  Status verified = o.verify ? (*store)->Verify() : Status::Ok();
  const QueryStoreStats s = (*store)->Stats();
  Json j{{"dim", s.dim}, {"entries", s.entries}, {"duplicates_total", s.duplicates_total}, {"epoch", s.epoch},
         {"index_origin", std::string(IndexOriginName(s.index_origin))}, {"index_origin_reason", s.index_origin_reason},
         {"index_caught_up", s.index_caught_up}, {"index_live", s.index_live}, {"index_deleted_nodes", s.index_deleted_nodes},
         {"index_open_s", s.index_open_seconds}, {"db_bytes", s.db_bytes}, {"index_bytes", s.index_bytes}};
  if (o.verify) j["verify"] = verified.ToString();
  if (o.json) {
    fmt::print("{}\n", j.dump());
  } else {
    for (auto& [k, v] : j.items()) fmt::print("{:<20} {}\n", k, v.is_string() ? v.get<std::string>() : v.dump());
  }
  if (Status c = (*store)->Close(); !c.ok()) {
    fmt::print(stderr, "kvtier qstore stats: {}\n", c.ToString());
    return 1;
  }
  if (!verified.ok()) {
    fmt::print(stderr, "kvtier qstore stats: verify: {}\n", verified.ToString());
    return 1;
  }
  return 0;
}

}  // namespace

void AddQstoreCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<QstoreOptions>();
  CLI::App* q = app.add_subcommand("qstore", "the precomputed query store (query -> response pairs with embeddings)");
  q->require_subcommand(1);

  CLI::App* ingest = q->add_subcommand("ingest", "add JSONL pairs {id, query, response, embedding[, prefix_tokens]}");
  ingest->add_option("--db", o->db, "store directory")->required();
  ingest->add_option("--input", o->input, "JSON Lines file")->required();
  ingest->add_option("--dim", o->dim, "dimension of a new store (default: the first line's)");
  ingest->add_option("--batch", o->batch, "entries per atomic write (default 256)")->check(CLI::Range(1u, 1u << 20));
  ingest->add_option("--durability", o->durability, "sync (default: fsync each batch) or buffered");
  ingest->add_flag("--strict", o->strict, "stop at the first bad line");
  ingest->add_flag("--json", o->json, "print the summary as JSON");
  ingest->callback([o, exit_code] { *exit_code = RunIngest(*o); });

  CLI::App* lookup = q->add_subcommand("lookup", "look up JSONL queries {id, embedding}; one result line each");
  lookup->add_option("--db", o->db, "store directory")->required();
  lookup->add_option("--input", o->input, "JSON Lines file")->required();
  lookup->add_option("--threshold", o->threshold, "a hit needs cosine similarity >= this")->required();
  lookup->add_option("--k", o->k, "matches per query (default 1)");
  lookup->add_flag("--exact", o->exact, "exact search (a scan) instead of the ANN index");
  lookup->add_flag("--strict", o->strict, "stop at the first bad line");
  lookup->add_flag("--json", o->json, "one JSON object per query");
  lookup->callback([o, exit_code] { *exit_code = RunLookup(*o); });

  CLI::App* stats = q->add_subcommand("stats", "entries, dimension, index state and size on disk");
  stats->add_option("--db", o->db, "store directory")->required();
  stats->add_flag("--verify", o->verify, "read everything back and check it (checksums, index == data)");
  stats->add_flag("--json", o->json, "print as JSON");
  stats->callback([o, exit_code] { *exit_code = RunStats(*o); });
}

}  // namespace kvtier::cli
