// Fence and FenceSignal: one-shot completions carrying a Status (kvtier/fence.h).
#include "kvtier/fence.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <random>
#include <thread>
#include <utility>
#include <vector>

namespace kvtier {
namespace {

using namespace std::chrono_literals;

// Long enough that a missed wake-up fails the test instead of hanging it.
constexpr auto kGenerous = 30s;

// ---------------------------------------------------------------------------------------
// Basics

TEST(FenceTest, DefaultFenceIsReadyOk) {
  const Fence f;
  EXPECT_TRUE(f.ready());
  EXPECT_TRUE(f.Wait().ok());
  EXPECT_TRUE(f.WaitFor(0ns).ok());
}

TEST(FenceTest, FailedFenceIsReadyWithTheError) {
  const Fence f = Fence::Failed(Status::IoError("dma failed"));
  EXPECT_TRUE(f.ready());
  EXPECT_EQ(f.Wait(), Status::IoError("dma failed"));
  EXPECT_EQ(f.WaitFor(0ns), Status::IoError("dma failed"));
}

TEST(FenceTest, MadeFenceIsPendingUntilSignaled) {
  auto [fence, signal] = Fence::Make();
  EXPECT_FALSE(fence.ready());
  EXPECT_TRUE(signal.armed());
  signal.Signal(Status());
  EXPECT_FALSE(signal.armed());
  EXPECT_TRUE(fence.ready());
  EXPECT_TRUE(fence.Wait().ok());
}

TEST(FenceTest, SignalCarriesTheErrorToEveryCopy) {
  auto [fence, signal] = Fence::Make();
  const Fence copy = fence;
  signal.Signal(Status::DataLoss("checksum"));
  EXPECT_EQ(fence.Wait(), Status::DataLoss("checksum"));
  EXPECT_EQ(copy.Wait(), Status::DataLoss("checksum"));
  EXPECT_TRUE(copy.ready());
}

TEST(FenceTest, DefaultSignalIsNotArmed) {
  const FenceSignal s;
  EXPECT_FALSE(s.armed());
}

void SignalTwice() {
  std::pair<Fence, FenceSignal> made = Fence::Make();
  made.second.Signal(Status());
  made.second.Signal(Status());
}

TEST(FenceDeathTest, SignalingTwiceAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(SignalTwice(), "signaled twice");
}

// ---------------------------------------------------------------------------------------
// Waiting

TEST(FenceTest, WaitBlocksUntilAnotherThreadSignals) {
  auto [fence, signal] = Fence::Make();
  std::atomic<bool> returned{false};
  Status seen;
  std::thread waiter([&, f = fence] {
    seen = f.Wait();
    returned.store(true, std::memory_order_release);
  });
  std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(returned.load(std::memory_order_acquire)) << "Wait returned before the signal";
  signal.Signal(Status::Unavailable("late"));
  waiter.join();
  EXPECT_TRUE(returned.load(std::memory_order_acquire));
  EXPECT_EQ(seen, Status::Unavailable("late"));
}

TEST(FenceTest, ManyWaitersAllWakeWithTheSameOutcome) {
  auto [fence, signal] = Fence::Make();
  constexpr int kWaiters = 16;
  std::vector<Status> seen(kWaiters);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i, f = fence] { seen[static_cast<size_t>(i)] = f.Wait(); });
  }
  std::this_thread::sleep_for(5ms);
  signal.Signal(Status::Exhausted("full"));
  for (std::thread& t : threads) t.join();
  for (const Status& s : seen) EXPECT_EQ(s, Status::Exhausted("full"));
}

TEST(FenceTest, WaitForTimesOutWhilePendingAndSucceedsOnceSignaled) {
  auto [fence, signal] = Fence::Make();
  const auto start = std::chrono::steady_clock::now();
  const Status timed_out = fence.WaitFor(10ms);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 10ms);
  EXPECT_EQ(timed_out.code(), StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(fence.ready()) << "a timeout must leave the fence pending";
  EXPECT_EQ(fence.WaitFor(0ns).code(), StatusCode::kDeadlineExceeded);

  signal.Signal(Status());
  EXPECT_TRUE(fence.WaitFor(10ms).ok());
  EXPECT_TRUE(fence.WaitFor(0ns).ok());
}

TEST(FenceTest, WaitForReturnsTheErrorOfTheFenceNotATimeout) {
  auto [fence, signal] = Fence::Make();
  signal.Signal(Status::Cancelled("stop"));
  EXPECT_EQ(fence.WaitFor(0ns), Status::Cancelled("stop"));
}

TEST(FenceTest, WaitForWakesAsSoonAsAnotherThreadSignals) {
  auto [fence, signal] = Fence::Make();
  std::thread producer([s = std::move(signal)]() mutable {
    std::this_thread::sleep_for(10ms);
    s.Signal(Status());
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(fence.WaitFor(kGenerous).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, kGenerous / 2);
  producer.join();
}

// ---------------------------------------------------------------------------------------
// OnReady

TEST(FenceTest, OnReadyRunsInlineWhenAlreadySignaled) {
  for (const Fence& f : {Fence(), Fence::Failed(Status::NotFound("x"))}) {
    bool ran = false;
    std::thread::id ran_on;
    Status seen = Status::Internal("not run");
    f.OnReady([&](const Status& s) {
      ran = true;
      ran_on = std::this_thread::get_id();
      seen = s;
    });
    EXPECT_TRUE(ran) << "the callback must run before OnReady returns";
    EXPECT_EQ(ran_on, std::this_thread::get_id());
    EXPECT_EQ(seen, f.Wait());
  }
}

TEST(FenceTest, OnReadyRunsOnTheSignalingThreadWhenPending) {
  auto [fence, signal] = Fence::Make();
  std::atomic<int> runs{0};
  std::thread::id ran_on;
  Status seen;
  fence.OnReady([&](const Status& s) {
    ran_on = std::this_thread::get_id();
    seen = s;
    runs.fetch_add(1, std::memory_order_release);
  });
  EXPECT_EQ(runs.load(), 0) << "ran before the signal";

  std::thread::id signaler_id;
  int runs_when_signal_returned = -1;
  std::thread signaler([&, s = std::move(signal)]() mutable {
    signaler_id = std::this_thread::get_id();
    s.Signal(Status::IoError("eio"));
    runs_when_signal_returned = runs.load(std::memory_order_acquire);
  });
  signaler.join();
  EXPECT_EQ(runs_when_signal_returned, 1) << "Signal must run the callbacks before returning";
  EXPECT_EQ(ran_on, signaler_id);
  EXPECT_NE(ran_on, std::this_thread::get_id());
  EXPECT_EQ(seen, Status::IoError("eio"));
}

TEST(FenceTest, EveryOnReadyCallbackRunsExactlyOnce) {
  auto [fence, signal] = Fence::Make();
  std::vector<int> runs(10, 0);
  for (size_t i = 0; i < runs.size(); ++i) {
    fence.OnReady([&runs, i](const Status&) { ++runs[i]; });
  }
  signal.Signal(Status());
  // Registered after the signal: inline.
  int late = 0;
  fence.OnReady([&late](const Status&) { ++late; });
  for (int r : runs) EXPECT_EQ(r, 1);
  EXPECT_EQ(late, 1);
}

TEST(FenceTest, OnReadyRacingWithSignalRunsExactlyOnce) {
  for (int round = 0; round < 200; ++round) {
    auto [fence, signal] = Fence::Make();
    std::atomic<int> runs{0};
    std::thread registrar([&, f = fence] {
      for (int i = 0; i < 8; ++i) f.OnReady([&runs](const Status&) { runs.fetch_add(1); });
    });
    signal.Signal(Status());
    registrar.join();
    ASSERT_EQ(runs.load(), 8) << "round " << round;
  }
}

// ---------------------------------------------------------------------------------------
// Dropped and moved signals

TEST(FenceTest, DroppingAnUnsignaledSignalCancelsTheFence) {
  Fence fence;
  Status seen_by_callback;
  {
    auto [f, signal] = Fence::Make();
    fence = f;
    fence.OnReady([&](const Status& s) { seen_by_callback = s; });
  }
  ASSERT_TRUE(fence.ready());
  EXPECT_EQ(fence.Wait().code(), StatusCode::kCancelled);
  EXPECT_EQ(seen_by_callback.code(), StatusCode::kCancelled);
}

TEST(FenceTest, DroppingASignaledSignalKeepsItsOutcome) {
  Fence fence;
  {
    auto [f, signal] = Fence::Make();
    fence = f;
    signal.Signal(Status());
  }
  EXPECT_TRUE(fence.Wait().ok());
}

TEST(FenceTest, MovingASignalTransfersTheDutyToSignal) {
  auto [fence, signal] = Fence::Make();
  FenceSignal moved(std::move(signal));
  EXPECT_FALSE(signal.armed());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_TRUE(moved.armed());
  { FenceSignal dropped = std::move(signal); }  // NOLINT(bugprone-use-after-move)
  EXPECT_FALSE(fence.ready()) << "dropping a moved-from signal must not cancel the fence";
  moved.Signal(Status());
  EXPECT_TRUE(fence.Wait().ok());
}

TEST(FenceTest, MoveAssigningOverAnArmedSignalCancelsItsFence) {
  auto [first, first_signal] = Fence::Make();
  auto [second, second_signal] = Fence::Make();
  first_signal = std::move(second_signal);
  ASSERT_TRUE(first.ready());
  EXPECT_EQ(first.Wait().code(), StatusCode::kCancelled);
  EXPECT_FALSE(second.ready());
  EXPECT_TRUE(first_signal.armed());
  first_signal.Signal(Status());
  EXPECT_TRUE(second.Wait().ok());
}

TEST(FenceTest, FenceOutlivesItsSignalAndSignalOutlivesItsFence) {
  FenceSignal signal;
  {
    auto [fence, s] = Fence::Make();
    signal = std::move(s);
  }  // every Fence copy gone
  signal.Signal(Status());  // must not crash
  EXPECT_FALSE(signal.armed());
}

// ---------------------------------------------------------------------------------------
// Fence::All

TEST(FenceAllTest, OfNoFencesIsReadyOk) {
  const Fence all = Fence::All({});
  EXPECT_TRUE(all.ready());
  EXPECT_TRUE(all.Wait().ok());
}

TEST(FenceAllTest, OfReadyOkFencesIsReadyOk) {
  auto [made, signal] = Fence::Make();
  signal.Signal(Status());
  const std::vector<Fence> fences = {Fence(), made, Fence()};
  const Fence all = Fence::All(fences);
  EXPECT_TRUE(all.ready());
  EXPECT_TRUE(all.Wait().ok());
}

TEST(FenceAllTest, OfReadyFencesCarriesTheFirstError) {
  const std::vector<Fence> fences = {Fence(), Fence::Failed(Status::IoError("first")),
                                     Fence::Failed(Status::DataLoss("second"))};
  const Fence all = Fence::All(fences);
  EXPECT_TRUE(all.ready());
  EXPECT_EQ(all.Wait(), Status::IoError("first"));
}

TEST(FenceAllTest, WaitsForEveryPendingFence) {
  auto [a, sa] = Fence::Make();
  auto [b, sb] = Fence::Make();
  auto [c, sc] = Fence::Make();
  const std::vector<Fence> fences = {a, Fence(), b, c};
  const Fence all = Fence::All(fences);
  EXPECT_FALSE(all.ready());
  sb.Signal(Status());
  EXPECT_FALSE(all.ready());
  sa.Signal(Status());
  EXPECT_FALSE(all.ready());
  sc.Signal(Status());
  EXPECT_TRUE(all.ready());
  EXPECT_TRUE(all.Wait().ok());
}

TEST(FenceAllTest, OfOnePendingFenceFollowsIt) {
  auto [a, sa] = Fence::Make();
  const std::vector<Fence> fences = {Fence(), a};
  const Fence all = Fence::All(fences);
  EXPECT_FALSE(all.ready());
  sa.Signal(Status::Unavailable("busy"));
  EXPECT_EQ(all.Wait(), Status::Unavailable("busy"));
}

TEST(FenceAllTest, AnErrorDoesNotSignalBeforeTheOtherPendingFences) {
  // A slot released on All(copies) must stay in use until every copy is done, even if one
  // copy already failed: the others may still be writing into it.
  auto [a, sa] = Fence::Make();
  auto [b, sb] = Fence::Make();
  const std::vector<Fence> fences = {a, b};
  const Fence all = Fence::All(fences);
  sa.Signal(Status::IoError("copy a failed"));
  EXPECT_FALSE(all.ready()) << "signaled while b was still pending";
  sb.Signal(Status());
  EXPECT_EQ(all.Wait(), Status::IoError("copy a failed"));
}

TEST(FenceAllTest, AnAlreadyFailedFenceDoesNotSignalBeforeThePendingOnes) {
  // Same as above, with the failure already known when All is called.
  for (bool failed_first : {true, false}) {
    SCOPED_TRACE(failed_first ? "failed fence first" : "failed fence last");
    auto [pending, signal] = Fence::Make();
    const Fence failed = Fence::Failed(Status::IoError("copy failed"));
    const std::vector<Fence> fences =
        failed_first ? std::vector<Fence>{failed, pending} : std::vector<Fence>{pending, failed};
    const Fence all = Fence::All(fences);
    EXPECT_FALSE(all.ready()) << "signaled while a fence was still pending";
    signal.Signal(Status());
    ASSERT_TRUE(all.ready());
    EXPECT_EQ(all.Wait(), Status::IoError("copy failed"));
  }
}

TEST(FenceAllTest, AnAlreadyFailedFenceBeatsALaterPendingError) {
  auto [a, sa] = Fence::Make();
  auto [b, sb] = Fence::Make();
  const std::vector<Fence> fences = {a, Fence::Failed(Status::NotFound("known at call")), b};
  const Fence all = Fence::All(fences);
  sa.Signal(Status::IoError("later"));
  sb.Signal(Status());
  EXPECT_EQ(all.Wait(), Status::NotFound("known at call"));
}

TEST(FenceAllTest, CarriesTheFirstErrorToBeSignaled) {
  auto [a, sa] = Fence::Make();
  auto [b, sb] = Fence::Make();
  auto [c, sc] = Fence::Make();
  const std::vector<Fence> fences = {a, b, c};
  const Fence all = Fence::All(fences);
  sc.Signal(Status::IoError("c first"));
  sa.Signal(Status::DataLoss("a second"));
  sb.Signal(Status());
  EXPECT_EQ(all.Wait(), Status::IoError("c first"));
}

TEST(FenceAllTest, ACancelledInputCancelsTheJoin) {
  auto [a, sa] = Fence::Make();
  Fence all;
  {
    auto [b, sb] = Fence::Make();
    const std::vector<Fence> fences = {a, b};
    all = Fence::All(fences);
  }  // sb dropped unsignaled
  sa.Signal(Status());
  EXPECT_EQ(all.Wait().code(), StatusCode::kCancelled);
}

TEST(FenceAllTest, OutlivesItsInputVector) {
  auto [a, sa] = Fence::Make();
  auto [b, sb] = Fence::Make();
  Fence all;
  {
    std::vector<Fence> fences = {a, b};
    all = Fence::All(fences);
  }
  sa.Signal(Status());
  sb.Signal(Status());
  EXPECT_TRUE(all.Wait().ok());
}

TEST(FenceAllTest, NestedJoinsPropagate) {
  auto [a, sa] = Fence::Make();
  auto [b, sb] = Fence::Make();
  auto [c, sc] = Fence::Make();
  const std::vector<Fence> inner = {a, b};
  const std::vector<Fence> outer = {Fence::All(inner), c};
  const Fence all = Fence::All(outer);
  sc.Signal(Status());
  sa.Signal(Status());
  EXPECT_FALSE(all.ready());
  sb.Signal(Status::Exhausted("b"));
  EXPECT_EQ(all.Wait(), Status::Exhausted("b"));
}

// ---------------------------------------------------------------------------------------
// Concurrency

TEST(FenceAllTest, ManyThreadsSignalingManyFencesJoinOnce) {
  constexpr size_t kThreads = 16;
  constexpr size_t kPerThread = 500;
  std::vector<Fence> fences;
  std::vector<std::vector<FenceSignal>> signals(kThreads);
  for (size_t t = 0; t < kThreads; ++t) {
    for (size_t i = 0; i < kPerThread; ++i) {
      auto [f, s] = Fence::Make();
      fences.push_back(std::move(f));
      signals[t].push_back(std::move(s));
    }
  }
  const Fence all = Fence::All(fences);
  std::atomic<int> all_callbacks{0};
  all.OnReady([&](const Status&) { all_callbacks.fetch_add(1); });
  EXPECT_FALSE(all.ready());

  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      for (FenceSignal& s : signals[t]) s.Signal(Status());
    });
  }
  // Waiters on the joined fence from other threads, too.
  std::vector<Status> waited(4);
  std::vector<std::thread> waiters;
  for (size_t w = 0; w < waited.size(); ++w) {
    waiters.emplace_back([&, w] { waited[w] = all.WaitFor(kGenerous); });
  }
  go.store(true, std::memory_order_release);
  for (std::thread& th : threads) th.join();
  for (std::thread& th : waiters) th.join();
  EXPECT_TRUE(all.ready());
  EXPECT_TRUE(all.Wait().ok());
  for (const Status& s : waited) EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(all_callbacks.load(), 1);
  for (const Fence& f : fences) EXPECT_TRUE(f.ready());
}

TEST(FenceAllTest, ConcurrentErrorsYieldExactlyOneOfThem) {
  std::mt19937 rng(42);
  for (int round = 0; round < 50; ++round) {
    constexpr size_t kThreads = 8;
    constexpr size_t kPerThread = 64;
    std::vector<Fence> fences;
    std::vector<std::vector<FenceSignal>> signals(kThreads);
    std::vector<std::vector<bool>> fails(kThreads);
    for (size_t t = 0; t < kThreads; ++t) {
      for (size_t i = 0; i < kPerThread; ++i) {
        auto [f, s] = Fence::Make();
        fences.push_back(std::move(f));
        signals[t].push_back(std::move(s));
        fails[t].push_back(rng() % 50 == 0);
      }
    }
    fails[round % kThreads][0] = true;  // at least one error
    const Fence all = Fence::All(fences);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (size_t i = 0; i < kPerThread; ++i) {
          signals[t][i].Signal(fails[t][i] ? Status::IoError("t" + std::to_string(t) + "i" + std::to_string(i))
                                           : Status());
        }
      });
    }
    for (std::thread& th : threads) th.join();
    ASSERT_TRUE(all.ready()) << "round " << round;
    const Status s = all.Wait();
    ASSERT_EQ(s.code(), StatusCode::kIoError) << "round " << round;
    bool matches_an_input = false;
    for (const Fence& f : fences) matches_an_input |= f.Wait() == s;
    EXPECT_TRUE(matches_an_input) << s.ToString();
  }
}

}  // namespace
}  // namespace kvtier
