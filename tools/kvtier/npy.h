// A small reader of NumPy .npy files (format versions 1.0, 2.0, 3.0): float32 little-endian
// ('<f4'), C order, any rank. Everything else is refused with a message that names the file
// and the problem — this reader is the binding layer of `kvtier score`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::cli {

struct NpyArray {
  std::vector<uint64_t> shape;
  std::vector<float> data;  // C order
};

// kNotFound / kPermissionDenied / kIoError for the file; kInvalidArgument naming the file
// for: not an .npy file, an unsupported version, a malformed header, a dtype other than
// '<f4', Fortran order, a data size that does not match the shape, a non-finite value.
Result<NpyArray> ReadNpyFloat32(const std::string& path);

// Writes `a` as a version 1.0 '<f4' C-order file (tests and benchmarks).
Status WriteNpyFloat32(const std::string& path, const NpyArray& a);

}  // namespace kvtier::cli
