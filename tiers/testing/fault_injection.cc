#include "fault_injection.h"

#include <fmt/format.h>

namespace kvtier {

bool FaultPlan::Draw(double p) {
  if (p <= 0.0) return false;
  std::lock_guard lock(mu_);
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < p;
}

std::chrono::microseconds FaultPlan::DrawDelay() {
  std::lock_guard lock(mu_);
  const auto max = options_.max_delay.count();
  if (max <= 0) return std::chrono::microseconds(0);
  return std::chrono::microseconds(std::uniform_int_distribution<int64_t>(0, max)(rng_));
}

Result<std::vector<SlotId>> FaultyTier::Reserve(uint32_t count) {
  if (plan_->Draw(plan_->options().reserve_failure)) {
    plan_->counters().reserve_failures.fetch_add(1, std::memory_order_relaxed);
    return Status::Exhausted(fmt::format("{}: injected reserve failure", inner_->name()));
  }
  return inner_->Reserve(count);
}

FaultyMover::FaultyMover(std::unique_ptr<Mover> inner, std::shared_ptr<FaultPlan> plan)
    : inner_(std::move(inner)), plan_(std::move(plan)) {
  delayer_ = std::thread([this] { DelayLoop(); });
}

FaultyMover::~FaultyMover() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  delayer_.join();
}

Fence FaultyMover::Submit(MoveBatch batch) {
  if (plan_->Draw(plan_->options().copy_failure)) {
    plan_->counters().copy_failures.fetch_add(1, std::memory_order_relaxed);
    return Fence::Failed(Status::IoError(fmt::format("{}: injected copy failure", inner_->name())));
  }
  if (batch.segments.size() >= 2 && plan_->Draw(plan_->options().partial_copy)) {
    plan_->counters().partial_copies.fetch_add(1, std::memory_order_relaxed);
    batch.segments.resize(batch.segments.size() / 2);
    Fence half = inner_->Submit(std::move(batch));
    auto [fence, signal] = Fence::Make();
    auto sig = std::make_shared<FenceSignal>(std::move(signal));
    std::string name(inner_->name());
    half.OnReady([sig, name](const Status&) {
      sig->Signal(Status::IoError(fmt::format("{}: injected failure after a partial copy", name)));
    });
    return Deliver(fence);
  }
  return Deliver(inner_->Submit(std::move(batch)));
}

Fence FaultyMover::Deliver(Fence inner) {
  if (!plan_->Draw(plan_->options().delay)) return inner;
  plan_->counters().delays.fetch_add(1, std::memory_order_relaxed);
  const auto wait = plan_->DrawDelay();
  auto [fence, signal] = Fence::Make();
  auto sig = std::make_shared<FenceSignal>(std::move(signal));
  {
    std::lock_guard lock(mu_);
    ++pending_;
  }
  inner.OnReady([this, sig, wait](const Status& s) {
    {
      std::lock_guard lock(mu_);
      delayed_.push(Delayed{std::chrono::steady_clock::now() + wait, sig, s});
    }
    cv_.notify_all();
  });
  return fence;
}

void FaultyMover::DelayLoop() {
  std::unique_lock lock(mu_);
  while (true) {
    if (delayed_.empty()) {
      if (stop_ && pending_ == 0) return;
      cv_.wait_for(lock, std::chrono::milliseconds(50));
      continue;
    }
    const auto due = delayed_.top().due;
    if (std::chrono::steady_clock::now() < due) {
      cv_.wait_until(lock, due);
      continue;
    }
    Delayed d = delayed_.top();
    delayed_.pop();
    --pending_;
    lock.unlock();
    d.signal->Signal(d.status);
    lock.lock();
  }
}

}  // namespace kvtier
