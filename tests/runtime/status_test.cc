// Status and Result<T>: the one error channel of kvtier (runtime/include/kvtier/status.h).
#include "kvtier/status.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

// Counts global allocations so the tests can check that OK never allocates and that copying
// a Status never allocates. Only this binary replaces operator new.
namespace {
std::atomic<long> g_allocations{0};
}  // namespace

// Out of line, so GCC does not pair the inlined malloc and free across new and delete.
[[gnu::noinline]] void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (size == 0) size = 1;
  if (void* p = std::malloc(size)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace kvtier {
namespace {

long AllocationsDuring(const auto& fn) {
  const long before = g_allocations.load(std::memory_order_relaxed);
  fn();
  return g_allocations.load(std::memory_order_relaxed) - before;
}

constexpr StatusCode kAllErrorCodes[] = {
    StatusCode::kInvalidArgument, StatusCode::kNotFound,       StatusCode::kAlreadyExists,
    StatusCode::kFailedPrecondition, StatusCode::kExhausted,   StatusCode::kUnavailable,
    StatusCode::kCancelled,       StatusCode::kDeadlineExceeded, StatusCode::kIoError,
    StatusCode::kNoSpace,         StatusCode::kDataLoss,       StatusCode::kPermissionDenied,
    StatusCode::kUnimplemented,   StatusCode::kInternal,
};

// ---------------------------------------------------------------------------------------
// OK and allocation

TEST(StatusTest, DefaultConstructedIsOkWithEmptyMessage) {
  const Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_TRUE(s.message().empty());
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_EQ(s, Status::Ok());
}

TEST(StatusTest, OkCodeWithMessageIsPlainOkAndDropsTheMessage) {
  const Status s(StatusCode::kOk, "this text is not kept");
  EXPECT_TRUE(s.ok());
  EXPECT_TRUE(s.message().empty());
  EXPECT_EQ(s, Status());
}

TEST(StatusTest, OkIsOnePointerWideAtMost) {
  // The representation is a shared_ptr; OK is a null one. Guard against someone adding
  // inline fields (a code, a std::string) that make every Status fat.
  EXPECT_LE(sizeof(Status), sizeof(std::shared_ptr<int>));
}

TEST(StatusTest, CreatingCopyingAndMovingOkNeverAllocates) {
  bool all_ok = false;
  const long n = AllocationsDuring([&] {
    Status a;
    Status b = Status::Ok();
    Status c = b;
    Status d = std::move(c);
    Status e(StatusCode::kOk, std::string());
    a = d;
    Status annotated = std::move(a).Annotate("context");
    all_ok = b.ok() && d.ok() && e.ok() && annotated.ok();
  });
  EXPECT_TRUE(all_ok);
  EXPECT_EQ(n, 0);
}

TEST(StatusTest, CopyingAnErrorSharesTheRepresentationWithoutAllocating) {
  const Status original = Status::IoError(std::string(200, 'x'));  // beyond any SSO buffer
  Status copy, copy2;
  const long n = AllocationsDuring([&] {
    copy = original;
    Status tmp(copy);
    copy2 = std::move(tmp);
  });
  EXPECT_EQ(n, 0);
  EXPECT_EQ(copy2, original);
  // The same bytes, shared rather than duplicated.
  EXPECT_EQ(static_cast<const void*>(copy.message().data()),
            static_cast<const void*>(original.message().data()));
}

TEST(StatusTest, CopiesOutliveTheOriginal) {
  Status copy;
  {
    const Status original = Status::NotFound("slot 7");
    copy = original;
  }
  EXPECT_EQ(copy.code(), StatusCode::kNotFound);
  EXPECT_EQ(copy.message(), "slot 7");
}

// ---------------------------------------------------------------------------------------
// Codes, names and factories

TEST(StatusTest, EachFactoryCarriesItsCodeAndMessage) {
  const std::pair<Status, StatusCode> cases[] = {
      {Status::InvalidArgument("m"), StatusCode::kInvalidArgument},
      {Status::NotFound("m"), StatusCode::kNotFound},
      {Status::AlreadyExists("m"), StatusCode::kAlreadyExists},
      {Status::FailedPrecondition("m"), StatusCode::kFailedPrecondition},
      {Status::Exhausted("m"), StatusCode::kExhausted},
      {Status::Unavailable("m"), StatusCode::kUnavailable},
      {Status::Cancelled("m"), StatusCode::kCancelled},
      {Status::DeadlineExceeded("m"), StatusCode::kDeadlineExceeded},
      {Status::IoError("m"), StatusCode::kIoError},
      {Status::NoSpace("m"), StatusCode::kNoSpace},
      {Status::DataLoss("m"), StatusCode::kDataLoss},
      {Status::PermissionDenied("m"), StatusCode::kPermissionDenied},
      {Status::Unimplemented("m"), StatusCode::kUnimplemented},
      {Status::Internal("m"), StatusCode::kInternal},
  };
  for (const auto& [status, code] : cases) {
    SCOPED_TRACE(StatusCodeName(code));
    EXPECT_FALSE(status.ok());
    EXPECT_EQ(status.code(), code);
    EXPECT_EQ(status.message(), "m");
  }
}

TEST(StatusTest, ErrorWithEmptyMessageIsStillAnError) {
  const Status s = Status::Internal("");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s, Status());
}

TEST(StatusTest, CodeNamesAreDistinctAndSpelledLikeTheEnumerators) {
  EXPECT_EQ(StatusCodeName(StatusCode::kOk), "kOk");
  EXPECT_EQ(StatusCodeName(StatusCode::kExhausted), "kExhausted");
  EXPECT_EQ(StatusCodeName(StatusCode::kPermissionDenied), "kPermissionDenied");
  std::vector<std::string_view> names;
  for (StatusCode c : kAllErrorCodes) {
    const std::string_view name = StatusCodeName(c);
    EXPECT_EQ(name.substr(0, 1), "k");
    for (std::string_view seen : names) EXPECT_NE(name, seen);
    names.push_back(name);
  }
}

TEST(StatusTest, ToStringIsCodeNameColonMessage) {
  EXPECT_EQ(Status::Exhausted("hbm tier full").ToString(), "kExhausted: hbm tier full");
  EXPECT_EQ(Status::DataLoss("crc mismatch").ToString(), "kDataLoss: crc mismatch");
}

TEST(StatusTest, EqualityComparesCodeAndMessage) {
  EXPECT_EQ(Status::NotFound("a"), Status::NotFound("a"));
  EXPECT_NE(Status::NotFound("a"), Status::NotFound("b"));
  EXPECT_NE(Status::NotFound("a"), Status::IoError("a"));
  EXPECT_NE(Status::NotFound(""), Status());
}

TEST(StatusTest, OnlyExhaustedUnavailableAndNoSpaceAreRetryable) {
  EXPECT_FALSE(Status().retryable());
  for (StatusCode c : kAllErrorCodes) {
    const bool expected =
        c == StatusCode::kExhausted || c == StatusCode::kUnavailable || c == StatusCode::kNoSpace;
    EXPECT_EQ(Status(c, "x").retryable(), expected) << StatusCodeName(c);
  }
}

// ---------------------------------------------------------------------------------------
// Annotate

TEST(StatusTest, AnnotatePrefixesTheMessageAndKeepsTheCode) {
  Status s = Status::IoError("short read").Annotate("reading block 3");
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_EQ(s.message(), "reading block 3: short read");
  s = std::move(s).Annotate("onboard");
  EXPECT_EQ(s.message(), "onboard: reading block 3: short read");
  EXPECT_EQ(s.code(), StatusCode::kIoError);
}

TEST(StatusTest, AnnotateLeavesOkUntouched) {
  const Status s = Status().Annotate("this must not appear");
  EXPECT_TRUE(s.ok());
  EXPECT_TRUE(s.message().empty());
}

TEST(StatusTest, AnnotatingACopyDoesNotChangeTheOriginal) {
  const Status original = Status::NotFound("key");
  Status copy = original;
  Status annotated = std::move(copy).Annotate("lookup");
  EXPECT_EQ(original.message(), "key");
  EXPECT_EQ(annotated.message(), "lookup: key");
}

// ---------------------------------------------------------------------------------------
// FromErrno

TEST(StatusTest, FromErrnoMapsEachErrnoToItsCode) {
  const std::pair<int, StatusCode> cases[] = {
      {ENOENT, StatusCode::kNotFound},
      {ENODEV, StatusCode::kNotFound},
      {ENXIO, StatusCode::kNotFound},
      {ENOSPC, StatusCode::kNoSpace},
      {EPERM, StatusCode::kPermissionDenied},
      {EACCES, StatusCode::kPermissionDenied},
      {EROFS, StatusCode::kPermissionDenied},
      {EIO, StatusCode::kIoError},
      {EINVAL, StatusCode::kInvalidArgument},
      {EBADF, StatusCode::kInvalidArgument},
      {EFAULT, StatusCode::kInvalidArgument},
      {ENAMETOOLONG, StatusCode::kInvalidArgument},
      {EEXIST, StatusCode::kAlreadyExists},
      {ENOMEM, StatusCode::kExhausted},
      {EMFILE, StatusCode::kExhausted},
      {ENFILE, StatusCode::kExhausted},
      {EAGAIN, StatusCode::kUnavailable},
      {EBUSY, StatusCode::kUnavailable},
      {EINTR, StatusCode::kUnavailable},
      {ECANCELED, StatusCode::kCancelled},
      {ETIMEDOUT, StatusCode::kDeadlineExceeded},
      {ENOSYS, StatusCode::kUnimplemented},
      {EOPNOTSUPP, StatusCode::kUnimplemented},
      {EBADMSG, StatusCode::kDataLoss},
  };
  for (const auto& [err, code] : cases) {
    const Status s = Status::FromErrno(err, "ctx");
    EXPECT_EQ(s.code(), code) << "errno " << err << " gave " << s.ToString();
  }
}

TEST(StatusTest, FromErrnoMapsUnlistedErrorsToIoError) {
  for (int err : {EIO, EPIPE, ECONNRESET, ENOTDIR, EXDEV}) {
    EXPECT_EQ(Status::FromErrno(err, "ctx").code(), StatusCode::kIoError) << "errno " << err;
  }
}

TEST(StatusTest, FromErrnoOfZeroIsOk) {
  EXPECT_TRUE(Status::FromErrno(0, "nothing went wrong").ok());
}

TEST(StatusTest, FromErrnoMessageNamesTheContextAndTheErrno) {
  const Status s = Status::FromErrno(ENOENT, "open /dev/nvme9n1");
  const std::string m(s.message());
  EXPECT_EQ(m.rfind("open /dev/nvme9n1", 0), 0u) << m;  // context first
  EXPECT_NE(m.find("errno " + std::to_string(ENOENT)), std::string::npos) << m;
}

TEST(StatusTest, FromErrnoRetryabilityFollowsTheCode) {
  EXPECT_TRUE(Status::FromErrno(EAGAIN, "x").retryable());
  EXPECT_TRUE(Status::FromErrno(ENOSPC, "x").retryable());
  EXPECT_TRUE(Status::FromErrno(ENOMEM, "x").retryable());
  EXPECT_FALSE(Status::FromErrno(EIO, "x").retryable());
  EXPECT_FALSE(Status::FromErrno(EINVAL, "x").retryable());
  EXPECT_FALSE(Status::FromErrno(EPERM, "x").retryable());
}

// ---------------------------------------------------------------------------------------
// Result<T>

TEST(ResultTest, HoldsAValue) {
  Result<int> r = 42;
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.value(), 42);
  EXPECT_EQ(*r, 42);
  EXPECT_TRUE(r.status().ok());
  r.value() = 7;
  EXPECT_EQ(*r, 7);
}

TEST(ResultTest, HoldsAnError) {
  const Result<int> r = Status::NotFound("no such block");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(r.status().message(), "no such block");
}

TEST(ResultTest, BuiltFromAnOkStatusBecomesInternal) {
  const Result<int> r = Status();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  const Result<std::string> r2 = Status::Ok();
  EXPECT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), StatusCode::kInternal);
}

TEST(ResultTest, ArrowReachesTheValue) {
  Result<std::string> r = std::string("abc");
  EXPECT_EQ(r->size(), 3u);
  r->push_back('d');
  EXPECT_EQ(*r, "abcd");
}

TEST(ResultTest, MoveOnlyValueMovesOut) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(5);
  ASSERT_TRUE(r.ok());
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 5);

  Result<std::unique_ptr<int>> r2 = std::make_unique<int>(6);
  std::unique_ptr<int> p2 = *std::move(r2);
  ASSERT_NE(p2, nullptr);
  EXPECT_EQ(*p2, 6);
}

TEST(ResultTest, ResultItselfMoves) {
  Result<std::unique_ptr<int>> a = std::make_unique<int>(9);
  Result<std::unique_ptr<int>> b = std::move(a);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(**b, 9);
}

TEST(ResultTest, StatusMovesOutOfAnErrorAndIsOkForAValue) {
  Result<std::vector<int>> err = Status::Exhausted("dram full");
  const Status s = std::move(err).status();
  EXPECT_EQ(s.code(), StatusCode::kExhausted);
  EXPECT_EQ(s.message(), "dram full");

  Result<std::vector<int>> val = std::vector<int>{1, 2};
  EXPECT_TRUE(std::move(val).status().ok());
}

TEST(ResultTest, CopyKeepsValueAndError) {
  const Result<std::string> v = std::string("x");
  const Result<std::string> v2 = v;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(*v2, "x");
  EXPECT_EQ(*v, "x");
  const Result<std::string> e = Status::IoError("bad");
  const Result<std::string> e2 = e;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(e2.status(), Status::IoError("bad"));
}

// ---------------------------------------------------------------------------------------
// Propagation macros

Status Step(bool fail, int* calls) {
  ++*calls;
  return fail ? Status::Unavailable("step failed") : Status();
}

Status TwoSteps(bool fail_first, bool fail_second, int* calls, bool* reached_end) {
  KVT_RETURN_IF_ERROR(Step(fail_first, calls));
  KVT_RETURN_IF_ERROR(Step(fail_second, calls));
  *reached_end = true;
  return Status();
}

TEST(StatusMacrosTest, ReturnIfErrorContinuesOnOk) {
  int calls = 0;
  bool reached_end = false;
  EXPECT_TRUE(TwoSteps(false, false, &calls, &reached_end).ok());
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(reached_end);
}

TEST(StatusMacrosTest, ReturnIfErrorReturnsTheFirstErrorAndStops) {
  int calls = 0;
  bool reached_end = false;
  const Status s = TwoSteps(true, false, &calls, &reached_end);
  EXPECT_EQ(s, Status::Unavailable("step failed"));
  EXPECT_EQ(calls, 1);  // the expression is evaluated once and the second step never runs
  EXPECT_FALSE(reached_end);

  calls = 0;
  EXPECT_EQ(TwoSteps(false, true, &calls, &reached_end).code(), StatusCode::kUnavailable);
  EXPECT_EQ(calls, 2);
  EXPECT_FALSE(reached_end);
}

Result<int> ReturnIfErrorInResultFunction(bool fail) {
  int calls = 0;
  KVT_RETURN_IF_ERROR(Step(fail, &calls));
  return 10;
}

TEST(StatusMacrosTest, ReturnIfErrorWorksInAFunctionReturningResult) {
  EXPECT_EQ(*ReturnIfErrorInResultFunction(false), 10);
  const Result<int> r = ReturnIfErrorInResultFunction(true);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
}

Status ReturnIfErrorAsUnbracedIfBody(bool take_branch, bool fail) {
  int calls = 0;
  // The macro is one statement: it must not capture the else.
  if (take_branch)
    KVT_RETURN_IF_ERROR(Step(fail, &calls));
  else
    return Status::Cancelled("else branch");
  return Status();
}

TEST(StatusMacrosTest, ReturnIfErrorIsASingleStatement) {
  EXPECT_TRUE(ReturnIfErrorAsUnbracedIfBody(true, false).ok());
  EXPECT_EQ(ReturnIfErrorAsUnbracedIfBody(true, true).code(), StatusCode::kUnavailable);
  EXPECT_EQ(ReturnIfErrorAsUnbracedIfBody(false, false).code(), StatusCode::kCancelled);
}

Result<std::unique_ptr<int>> MakeBox(bool fail, int v, int* calls) {
  ++*calls;
  if (fail) return Status::Exhausted("no boxes left");
  return std::make_unique<int>(v);
}

Result<int> SumOfBoxes(bool fail_first, bool fail_second, int* calls) {
  KVT_ASSIGN_OR_RETURN(std::unique_ptr<int> a, MakeBox(fail_first, 3, calls));
  KVT_ASSIGN_OR_RETURN(auto b, MakeBox(fail_second, 4, calls));
  return *a + *b;
}

TEST(StatusMacrosTest, AssignOrReturnDeclaresTheValue) {
  int calls = 0;
  const Result<int> r = SumOfBoxes(false, false, &calls);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, 7);
  EXPECT_EQ(calls, 2);
}

TEST(StatusMacrosTest, AssignOrReturnPropagatesTheErrorAndStops) {
  int calls = 0;
  Result<int> r = SumOfBoxes(true, false, &calls);
  EXPECT_EQ(r.status(), Status::Exhausted("no boxes left"));
  EXPECT_EQ(calls, 1);

  calls = 0;
  r = SumOfBoxes(false, true, &calls);
  EXPECT_EQ(r.status().code(), StatusCode::kExhausted);
  EXPECT_EQ(calls, 2);
}

Status AssignToExisting(bool fail, int* out) {
  int calls = 0;
  std::unique_ptr<int> box;
  KVT_ASSIGN_OR_RETURN(box, MakeBox(fail, 11, &calls));
  *out = *box;
  return Status();
}

TEST(StatusMacrosTest, AssignOrReturnAssignsToAnExistingVariableInAStatusFunction) {
  int out = 0;
  EXPECT_TRUE(AssignToExisting(false, &out).ok());
  EXPECT_EQ(out, 11);
  out = 0;
  EXPECT_EQ(AssignToExisting(true, &out).code(), StatusCode::kExhausted);
  EXPECT_EQ(out, 0);
}

TEST(StatusDeathTest, CheckAbortsWithTheConditionText) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int two = 2;
  EXPECT_DEATH(KVT_CHECK(two == 3), "invariant broken.*two == 3");
  EXPECT_DEATH(KVT_CHECK_MSG(two < 0, "the detail"), "two < 0 -- the detail");
}

TEST(StatusDeathTest, CheckThatHoldsDoesNothing) {
  const int two = 2;
  KVT_CHECK(two == 2);
  KVT_CHECK_MSG(two > 0, "never printed");
  SUCCEED();
}

}  // namespace
}  // namespace kvtier
