// PayloadWriter: stands in for an engine's kernels in the demo — writes self-verifying
// payloads (payload.h) into blocks and counts blocks whose bytes are wrong, wherever the
// blocks live: host memory (emulated HBM) or device memory (the GPU tier).
#pragma once

#include <memory>
#include <span>

#include "kvtier/block_key.h"
#include "kvtier/status.h"

namespace kvtier::cli {

class PayloadWriter {  // thread-safe
 public:
  virtual ~PayloadWriter() = default;
  virtual Status Fill(std::span<const BlockKey> keys, std::span<std::byte* const> blocks, uint64_t bytes) = 0;
  virtual Result<uint64_t> CountWrong(std::span<const BlockKey> keys, std::span<std::byte* const> blocks,
                                      uint64_t bytes) = 0;
};

std::unique_ptr<PayloadWriter> MakeHostPayloadWriter();
// kUnimplemented in builds without CUDA.
Result<std::unique_ptr<PayloadWriter>> MakeCudaPayloadWriter(int device);

}  // namespace kvtier::cli
