// `kvtier bench decode`'s text table (tools/kvtier/decode_table.h): every row the bench makes
// formats without a GPU, a row without the fields a note uses prints without them (the table
// once threw on such a row and aborted the bench), and failed checks are marked.
#include <gtest/gtest.h>

#include <sstream>
#include <string>

#include "decode_table.h"

namespace kvtier::cli {
namespace {

TEST(DecodeTableTest, DenseRowShowsTheCopyRatioAndTheTarget) {
  const DecodeRow row{"dense", "attention over every block", 60.1, 2230.0, 134e6, {{"vs_copy", 0.7712}}};
  const std::string line = FormatDecodeRow(row, 16);
  EXPECT_NE(line.find("dense"), std::string::npos);
  EXPECT_NE(line.find("60.1 us"), std::string::npos) << line;
  EXPECT_NE(line.find("0.77x copy (target >= 0.9)"), std::string::npos) << line;
  EXPECT_EQ(line.find("MISMATCH"), std::string::npos);
}

TEST(DecodeTableTest, RowsWithoutTheFieldsOfTheirNoteStillFormat) {
  // select_per_head has no vs_dense_over_block_tokens (its ratio is against `select`); a
  // `copy` row has no fields at all; a row may carry a field of another type.
  const DecodeRow per_head{"select_per_head", "Quest select as one launch pair per KV head", 85.8, 0, 0,
                           {{"vs_select", 6.37}, {"matches_select", true}}};
  const DecodeRow copy{"copy", "cudaMemcpyAsync D2D", 92.0, 2900.0, 268e6, {}};
  const DecodeRow odd{"sparse_graph", "odd", 1, 1, 1, {{"speedup", "fast"}, {"ideal_speedup", nullptr}}};
  std::string a, b, c;
  ASSERT_NO_THROW(a = FormatDecodeRow(per_head, 16));
  ASSERT_NO_THROW(b = FormatDecodeRow(copy, 16));
  ASSERT_NO_THROW(c = FormatDecodeRow(odd, 16));
  EXPECT_NE(a.find("6.37x the select's time"), std::string::npos) << a;
  EXPECT_EQ(a.find("dense/"), std::string::npos) << a;
  EXPECT_EQ(DecodeRowNote(copy, 16), "");
  EXPECT_EQ(c.find("speedup"), std::string::npos) << c;
}

TEST(DecodeTableTest, SparseStepShowsSpeedupAndEveryRatioItHas) {
  const DecodeRow row{"sparse_graph_split2", "two groups", 60.6, 1670.0, 101e6,
                      {{"speedup", 6.2}, {"ideal_speedup", 10.67}, {"vs_sparse_graph", 1.088},
                       {"matches_sparse_graph", true}, {"selection_matches", true}}};
  const std::string note = DecodeRowNote(row, 16);
  EXPECT_NE(note.find("speedup 6.20x (ideal 10.7x; target >= 8x at 32K)"), std::string::npos) << note;
  EXPECT_NE(note.find("1.088x sparse_graph"), std::string::npos) << note;
  EXPECT_EQ(note.find("MISMATCH"), std::string::npos) << note;
}

TEST(DecodeTableTest, StepBoundsShowTheMostSpeedupAndWhat8xNeeds) {
  const DecodeRow row{"step_bound", "read bound", 9.0, 1400.0, 12.6e6,
                      {{"speedup", 6.664}, {"eight_x_needs_us", 7.514}, {"vs_sparse_graph", 1.975},
                       {"matches_host", true}}};
  const std::string note = DecodeRowNote(row, 16);
  EXPECT_NE(note.find("at most 6.66x dense (8x needs <= 7.5 us)"), std::string::npos) << note;
  EXPECT_NE(note.find("1.975x sparse_graph"), std::string::npos) << note;
  EXPECT_EQ(note.find("MISMATCH"), std::string::npos) << note;
  DecodeRow bad = row;
  bad.extra["matches_host"] = false;  // a checksum that differs from the host's is marked
  EXPECT_NE(DecodeRowNote(bad, 16).find("MISMATCH"), std::string::npos);
}

TEST(DecodeTableTest, DenseVariantsShowTheirPlan) {
  const DecodeRow r9d{"dense_r9d", "r9d", 73.7, 1820, 134e6,
                      {{"vs_copy", 0.63}, {"vs_dense", 0.851}, {"heads_per_cta", 4}, {"chunk_pages", 21}, {"splits", 98},
                       {"waves", 1.86}, {"applied", true}, {"matches_dense", true}}};
  EXPECT_EQ(DecodeRowNote(r9d, 16), "0.63x copy; 0.851x dense; 4 heads, 21 pages x 98, 1.86 waves");
  const DecodeRow bulk{"dense_bulk", "bulk", 67.1, 2000, 134e6,
                       {{"vs_copy", 0.70}, {"vs_dense", 0.935}, {"heads_per_cta", 4}, {"chunk_pages", 42}, {"splits", 49},
                        {"bit_equal", true}, {"matches_dense", true}}};
  EXPECT_EQ(DecodeRowNote(bulk, 16), "0.70x copy; 0.935x dense; 4 heads, 42 pages x 49; bit-equal");
  const DecodeRow step{"sparse_graph_bulk", "bulk", 25.9, 488, 12e6,
                       {{"speedup", 2.42}, {"ideal_speedup", 10.6}, {"speedup_vs_dense_bulk", 2.59}}};
  EXPECT_NE(DecodeRowNote(step, 16).find("2.59x dense_bulk"), std::string::npos) << DecodeRowNote(step, 16);
}

TEST(DecodeTableTest, AnyFailedCheckIsMarkedButBitEqualIsNotACheck) {
  DecodeRow row{"dense_streamed", "round-6 kernel", 61.7, 2170.0, 134e6,
                {{"vs_copy", 0.75}, {"vs_dense", 0.975}, {"matches_dense", true}, {"bit_equal", false}}};
  EXPECT_EQ(DecodeRowNote(row, 16).find("MISMATCH"), std::string::npos);
  row.extra["matches_dense"] = false;
  EXPECT_NE(DecodeRowNote(row, 16).find("MISMATCH"), std::string::npos);
  DecodeRow selection{"sparse_graph_r8", "round 8's rule", 68.0, 0, 0,
                      {{"selection_matches", false}, {"preset", "r8"}, {"applied", false}}};
  const std::string note = DecodeRowNote(selection, 16);
  EXPECT_NE(note.find("MISMATCH"), std::string::npos) << note;
  EXPECT_NE(note.find("falls back to r8"), std::string::npos) << note;
}

TEST(DecodeTableTest, ScoresRowShowsItsGridAndSweepErrorsShowWhy) {
  const DecodeRow scores{"scores", "Quest scores alone", 21.4, 1560.0, 33.5e6,
                         {{"score_preset", "r9w"}, {"score_rule_applied", true}, {"stages", 2},
                          {"tiles_per_cta", 6}, {"ctas_per_row", 6}}};
  EXPECT_EQ(DecodeRowNote(scores, 16), "r9w: 2 buffers, 6 tiles x 6 CTAs/row");
  const DecodeRow tc{"scores", "Quest scores alone", 17.4, 1930.0, 33.5e6,
                     {{"score_kernel", "tensor-core"}, {"stages", 2}, {"tiles_per_cta", 3}, {"ctas_per_row", 11}}};
  EXPECT_EQ(DecodeRowNote(tc, 16), "tensor core: 2 buffers, 3 tiles x 11 CTAs/row");
  const DecodeRow failed{"sweep_scores", "4 slices x 6 buffers", 0, 0, 0, {{"error", "too much shared memory"}}};
  EXPECT_EQ(DecodeRowNote(failed, 16), "not launched: too much shared memory");
  // Sweep rows get the wider description column.
  EXPECT_GT(FormatDecodeRow(failed, 16).size(), FormatDecodeRow(DecodeRow{"scores", "4 slices x 6 buffers"}, 16).size());
}

// The rows of another score kernel (scores_fp32, sparse_graph_fp32): a score difference and a
// different selection on near ties are reported, not marked; a failed attention check is.
TEST(DecodeTableTest, ScoreKernelRowsReportTheirDifferenceWithoutMarkingIt) {
  const DecodeRow scores{"scores_fp32", "pipelined", 20.7, 1620, 33.5e6,
                         {{"vs_scores", 0.84}, {"max_diff_over_peak", 3.1e-7}, {"tensor_core", false}}};
  EXPECT_EQ(DecodeRowNote(scores, 16), "0.840x scores; max |diff| 3.1e-07 of the peak score");
  DecodeRow step{"sparse_graph_fp32", "pipelined", 48.0, 0, 0, {{"vs_sparse_graph", 1.19}, {"same_selection", false}}};
  std::string note = DecodeRowNote(step, 16);
  EXPECT_NE(note.find("selection differs (near ties)"), std::string::npos) << note;
  EXPECT_EQ(note.find("MISMATCH"), std::string::npos) << note;
  step.extra["same_selection"] = true;
  step.extra["matches_sparse_graph"] = false;
  note = DecodeRowNote(step, 16);
  EXPECT_NE(note.find("same selection"), std::string::npos) << note;
  EXPECT_NE(note.find("MISMATCH"), std::string::npos) << note;
}

TEST(DecodeTableTest, JsonLinesMakeATableAndABadLineIsReportedNotFatal) {
  std::istringstream in(
      "{\"device\":\"H100\",\"context\":32768,\"batch\":1,\"budget\":2048,\"layers\":17,\"method\":\"copy\","
      "\"what\":\"D2D\",\"us\":92.0,\"gbps\":2900}\n"
      "stderr text from the bench\n"
      "\n"
      "{\"device\":\"H100\",\"context\":32768,\"batch\":1,\"budget\":2048,\"layers\":17,\"method\":\"dense\","
      "\"us\":60.1,\"gbps\":2230,\"vs_copy\":0.77}\n"
      "{\"context\":32768,\"batch\":1,\"method\":\"topk\",\"us\":\"fast\",\"gbps\":0}\n"
      "{not json\n"
      "[1, 2]\n"
      "{\"device\":\"H100\",\"context\":32768,\"batch\":8,\"budget\":2048,\"layers\":3,\"method\":\"dense\","
      "\"us\":377.5,\"gbps\":2840,\"vs_copy\":0.94}\n");
  const DecodeTable t = DecodeTableFromJsonLines(in);
  // Two points, each with its header once; the rows in order.
  EXPECT_NE(t.text.find("H100: context 32768 x batch 1 (budget 2048 tokens; 17 KV copies cycled)\n"), std::string::npos)
      << t.text;
  EXPECT_NE(t.text.find("H100: context 32768 x batch 8"), std::string::npos) << t.text;
  EXPECT_LT(t.text.find("copy "), t.text.find("0.77x copy"));
  EXPECT_NE(t.text.find("0.94x copy (target >= 0.9)"), std::string::npos) << t.text;
  EXPECT_EQ(t.text.find("topk"), std::string::npos) << t.text;
  // "[1, 2]" does not start with '{': not a row, not an error. The others are, by line number.
  ASSERT_EQ(t.errors.size(), 2u);
  EXPECT_EQ(t.errors[0], "line 5: a row needs method, context, batch, us and gbps");
  EXPECT_EQ(t.errors[1], "line 6: not a JSON object");
}

}  // namespace
}  // namespace kvtier::cli
