// `kvtier bench decode` in builds without CUDA.
#include "decode_bench.h"

namespace kvtier::cli {

Status RunDecodeBench(const DecodeBenchOptions&) {
  return Status::Unimplemented(
      "needs a CUDA build and a GPU (this build has no CUDA: configure with -DKVTIER_CUDA=ON on a machine with nvcc)");
}

}  // namespace kvtier::cli
