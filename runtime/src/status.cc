#include "kvtier/status.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace kvtier {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "kOk";
    case StatusCode::kInvalidArgument: return "kInvalidArgument";
    case StatusCode::kNotFound: return "kNotFound";
    case StatusCode::kAlreadyExists: return "kAlreadyExists";
    case StatusCode::kFailedPrecondition: return "kFailedPrecondition";
    case StatusCode::kExhausted: return "kExhausted";
    case StatusCode::kUnavailable: return "kUnavailable";
    case StatusCode::kCancelled: return "kCancelled";
    case StatusCode::kDeadlineExceeded: return "kDeadlineExceeded";
    case StatusCode::kIoError: return "kIoError";
    case StatusCode::kNoSpace: return "kNoSpace";
    case StatusCode::kDataLoss: return "kDataLoss";
    case StatusCode::kPermissionDenied: return "kPermissionDenied";
    case StatusCode::kUnimplemented: return "kUnimplemented";
    case StatusCode::kInternal: return "kInternal";
  }
  return "kUnknown";
}

Status::Status(StatusCode code, std::string message) {
  if (code != StatusCode::kOk) rep_ = std::make_shared<const Rep>(Rep{code, std::move(message)});
}

Status Status::FromErrno(int err, std::string_view context) {
  StatusCode code;
  switch (err) {
    case 0: return Status();
    case EINVAL: case EBADF: case EFAULT: case ENAMETOOLONG: code = StatusCode::kInvalidArgument; break;
    case ENOENT: case ENODEV: case ENXIO: code = StatusCode::kNotFound; break;
    case EEXIST: code = StatusCode::kAlreadyExists; break;
    case ENOMEM: case EMFILE: case ENFILE: case EDQUOT: code = StatusCode::kExhausted; break;
    case EAGAIN: case EBUSY: case EINTR: code = StatusCode::kUnavailable; break;
    case ECANCELED: code = StatusCode::kCancelled; break;
    case ETIMEDOUT: code = StatusCode::kDeadlineExceeded; break;
    case ENOSPC: code = StatusCode::kNoSpace; break;
    case EPERM: case EACCES: case EROFS: code = StatusCode::kPermissionDenied; break;
    case ENOSYS: case EOPNOTSUPP: code = StatusCode::kUnimplemented; break;
    case EBADMSG: code = StatusCode::kDataLoss; break;
    default: code = StatusCode::kIoError; break;
  }
  return Status(code, fmt::format("{}: {} (errno {})", context, std::strerror(err), err));
}

Status Status::Annotate(std::string_view context) && {
  if (ok()) return Status();
  return Status(code(), fmt::format("{}: {}", context, message()));
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return fmt::format("{}: {}", StatusCodeName(code()), message());
}

void CheckFailed(const char* file, int line, const char* what, std::string_view detail) {
  std::fprintf(stderr, "kvtier: invariant broken at %s:%d: %s%s%.*s\n", file, line, what,
               detail.empty() ? "" : " -- ", static_cast<int>(detail.size()), detail.data());
  std::fflush(stderr);
  std::abort();
}

}  // namespace kvtier
