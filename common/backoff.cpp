#include "common/backoff.h"

#include <algorithm>
#include <cmath>

namespace outbox {

long Backoff::nominal_delay_ms(int attempt) const {
    int exponent = std::max(attempt, 1) - 1;
    // pow() overflows to inf for large exponents, which min() then turns into the cap.
    double raw = static_cast<double>(policy_.initial_ms) * std::pow(policy_.multiplier, exponent);
    return static_cast<long>(std::min(raw, static_cast<double>(policy_.max_ms)));
}

long Backoff::delay_ms(int attempt) {
    double base = static_cast<double>(nominal_delay_ms(attempt));
    double factor = 1.0;
    if (policy_.jitter > 0) {
        std::uniform_real_distribution<double> dist(1.0 - policy_.jitter, 1.0 + policy_.jitter);
        factor = dist(rng_);
    }
    double jittered = std::min(base * factor, static_cast<double>(policy_.max_ms));
    return std::max(0L, std::lround(jittered));
}

} // namespace outbox
