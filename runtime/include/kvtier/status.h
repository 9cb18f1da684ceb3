// Status and Result<T>: the one error channel of every fallible kvtier call.
//
// A Status is a [[nodiscard]] value: OK costs one null pointer (no allocation); an error
// carries a code and a message. No exception crosses a kvtier API. A broken internal
// invariant is not a Status: it is KVT_CHECK, which logs and aborts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace kvtier {

enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,     // the caller passed something wrong; retrying the same call fails again
  kNotFound,            // an unknown key, slot or file
  kAlreadyExists,       // a key that is already indexed
  kFailedPrecondition,  // the object is in the wrong state for this call (e.g. pinned)
  kExhausted,           // a tier, pool or quota is full; retryable once space is freed
  kUnavailable,         // transiently unable (queue full, device busy); retryable
  kCancelled,           // the caller cancelled the operation
  kDeadlineExceeded,    // a wait ran out of time
  kIoError,             // an I/O or device transfer failed
  kNoSpace,             // the filesystem is full (ENOSPC)
  kDataLoss,            // stored bytes failed verification: the data is gone, never served
  kPermissionDenied,    // the OS refused (EPERM, EACCES, memlock limits)
  kUnimplemented,       // not available in this build or on this machine
  kInternal,            // a bug in kvtier
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message);

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
  static Status Exhausted(std::string m) { return {StatusCode::kExhausted, std::move(m)}; }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
  static Status DeadlineExceeded(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
  static Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status NoSpace(std::string m) { return {StatusCode::kNoSpace, std::move(m)}; }
  static Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
  static Status PermissionDenied(std::string m) { return {StatusCode::kPermissionDenied, std::move(m)}; }
  static Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  // Converts an errno value (positive) into the matching code, with `context` and strerror.
  static Status FromErrno(int err, std::string_view context);

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  std::string_view message() const { return rep_ ? std::string_view(rep_->message) : std::string_view(); }
  // True for codes where the same call may succeed later without the caller changing it.
  bool retryable() const {
    return code() == StatusCode::kExhausted || code() == StatusCode::kUnavailable ||
           code() == StatusCode::kNoSpace;
  }

  // Prefixes the message with `context` ("context: message"); OK stays OK.
  Status Annotate(std::string_view context) &&;
  std::string ToString() const;  // "OK" or "kExhausted: message"

  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct Rep {
    StatusCode code;
    std::string message;
  };
  std::shared_ptr<const Rep> rep_;  // shared: copying a Status never allocates
};

// Result<T>: a T or a non-OK Status.
template <class T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<T, Status>, "Result<Status> is meaningless");

 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (std::get<Status>(v_).ok()) v_ = Status::Internal("Result constructed from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const& {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  Status status() && { return ok() ? Status() : std::get<Status>(std::move(v_)); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  std::variant<Status, T> v_;
};

// Aborts the process after logging `what` at `file:line`. Used by KVT_CHECK.
[[noreturn]] void CheckFailed(const char* file, int line, const char* what, std::string_view detail);

}  // namespace kvtier

#define KVT_CONCAT_INNER_(a, b) a##b
#define KVT_CONCAT_(a, b) KVT_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define KVT_RETURN_IF_ERROR(expr)                        \
  do {                                                   \
    ::kvtier::Status kvt_status_ = (expr);               \
    if (!kvt_status_.ok()) return kvt_status_;           \
  } while (0)

// `KVT_ASSIGN_OR_RETURN(T x, ResultExpr)`: declares x from the value or returns the error.
#define KVT_ASSIGN_OR_RETURN(lhs, rexpr) \
  KVT_ASSIGN_OR_RETURN_IMPL_(KVT_CONCAT_(kvt_result_, __LINE__), lhs, rexpr)
#define KVT_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                               \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()

// A broken invariant: logs and aborts. Never used for bad input.
#define KVT_CHECK(cond)                                                        \
  do {                                                                         \
    if (!(cond)) [[unlikely]] ::kvtier::CheckFailed(__FILE__, __LINE__, #cond, {}); \
  } while (0)
#define KVT_CHECK_MSG(cond, detail)                                                 \
  do {                                                                              \
    if (!(cond)) [[unlikely]] ::kvtier::CheckFailed(__FILE__, __LINE__, #cond, detail); \
  } while (0)
