#include "payload.h"
#include "payload_writer.h"

namespace kvtier::cli {
namespace {

class HostPayloadWriter final : public PayloadWriter {
 public:
  Status Fill(std::span<const BlockKey> keys, std::span<std::byte* const> blocks, uint64_t bytes) override {
    for (size_t i = 0; i < keys.size(); ++i) FillPayload(keys[i], blocks[i], bytes);
    return Status();
  }
  Result<uint64_t> CountWrong(std::span<const BlockKey> keys, std::span<std::byte* const> blocks,
                              uint64_t bytes) override {
    uint64_t wrong = 0;
    for (size_t i = 0; i < keys.size(); ++i) wrong += CheckPayload(keys[i], blocks[i], bytes) ? 0 : 1;
    return wrong;
  }
};

}  // namespace

std::unique_ptr<PayloadWriter> MakeHostPayloadWriter() { return std::make_unique<HostPayloadWriter>(); }

#ifndef KVTIER_HAVE_CUDA
Result<std::unique_ptr<PayloadWriter>> MakeCudaPayloadWriter(int) {
  return Status::Unimplemented("this build has no CUDA");
}
#endif

}  // namespace kvtier::cli
