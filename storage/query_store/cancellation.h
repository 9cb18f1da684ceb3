// Cooperative cancellation for work that runs beside inference (QueryStore::LookupAsync).
//
// A CancelSource owns the flag and may raise it once; CancelTokens observe it. Copies are
// cheap (one shared_ptr) and every method is thread-safe. A default CancelToken is never
// cancelled.
#pragma once

#include <atomic>
#include <memory>

namespace kvtier {

class CancelToken {
 public:
  CancelToken() = default;
  // acquire: pairs with Cancel()'s release, so whatever the canceller wrote before
  // cancelling is visible to the code that sees the flag.
  bool cancelled() const { return flag_ != nullptr && flag_->load(std::memory_order_acquire); }

 private:
  friend class CancelSource;
  explicit CancelToken(std::shared_ptr<const std::atomic<bool>> flag) : flag_(std::move(flag)) {}
  std::shared_ptr<const std::atomic<bool>> flag_;
};

class CancelSource {
 public:
  CancelSource() : flag_(std::make_shared<std::atomic<bool>>(false)) {}
  void Cancel() { flag_->store(true, std::memory_order_release); }
  bool cancelled() const { return flag_->load(std::memory_order_acquire); }
  CancelToken token() const { return CancelToken(flag_); }

 private:
  std::shared_ptr<std::atomic<bool>> flag_;
};

}  // namespace kvtier
