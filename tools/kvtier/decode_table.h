// `kvtier bench decode`'s rows and their text table (every build: the CUDA bench fills the
// rows, this formats them, and a unit test checks the formatting without a GPU).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

namespace kvtier::cli {

// One output row: a method, what it is, µs per step, the rate it is judged by and extra
// JSON fields (ratios, the plan, checks).
struct DecodeRow {
  std::string method, what;
  double us = 0, gbps = 0, bytes = 0;
  nlohmann::json extra = nlohmann::json::object();
};

// The note the table prints after a row's figures (ratios, targets, plans, MISMATCH). Built
// from the fields the row has: a field the row lacks, or one of another type, leaves its part
// of the note out instead of failing.
std::string DecodeRowNote(const DecodeRow& row, uint32_t block_tokens);

// One line of the table: method, what, µs, GB/s and the note (no newline).
std::string FormatDecodeRow(const DecodeRow& row, uint32_t block_tokens);

// What a table of JSON lines came to: the table's text, and one message per line that was
// not a row (line number and why). Such a line is skipped; the rest is still printed.
struct DecodeTable {
  std::string text;
  std::vector<std::string> errors;
};

// The table of rows written by `kvtier bench decode --json` (`kvtier bench decode --table
// FILE`): a header per (context, batch) point, then its rows in the order given. Lines that
// are empty or do not start with `{` (the bench's stderr mixed in) are ignored; a `{` line
// that is not a JSON object with the row's fields is an error.
DecodeTable DecodeTableFromJsonLines(std::istream& in);

}  // namespace kvtier::cli
