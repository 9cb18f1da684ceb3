// `kvtier bench score --gpu` in builds without CUDA.
#include "score_bench.h"

namespace kvtier::cli {

Status RunGpuScoreBench(const GpuScoreBenchOptions&) {
  return Status::Unimplemented("this build has no CUDA (configure with -DKVTIER_CUDA=ON on a machine with nvcc)");
}

}  // namespace kvtier::cli
