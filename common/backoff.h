// Retry delays (SPEC 2): attempt n (1-based) that failed waits
//     min(INITIAL * MULTIPLIER^(n-1), MAX) * U[1 - J, 1 + J], capped at MAX again.
#pragma once

#include <random>

namespace outbox {

struct BackoffPolicy {
    long initial_ms = 1000;
    long max_ms = 60000;
    double multiplier = 2.0;
    double jitter = 0.1;
};

class Backoff {
  public:
    explicit Backoff(BackoffPolicy policy, unsigned seed = std::random_device{}())
        : policy_(policy), rng_(seed) {}

    // The delay before the next attempt after failed attempt `attempt` (1-based).
    long delay_ms(int attempt);

    // Without jitter: the centre of the range, for tests and documentation.
    long nominal_delay_ms(int attempt) const;

  private:
    BackoffPolicy policy_;
    std::mt19937_64 rng_;
};

} // namespace outbox
