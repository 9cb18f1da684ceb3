// RequestId: the engine's name for one request (one sequence being served). The sparse path
// (slice cache protection, working-set estimates, admission) keys its per-request state by
// it. kvtier never interprets the value.
#pragma once

#include <cstdint>

#include "kvtier/types.h"

namespace kvtier {

struct RequestIdTag {};
using RequestId = StrongInt<RequestIdTag, uint64_t>;

}  // namespace kvtier
