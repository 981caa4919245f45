#include "common/backoff.h"

#include <algorithm>
#include <cmath>

namespace outbox {

long Backoff::nominal_delay_ms(int attempt) const {
    // An initial delay of 0 (allowed by the configuration) stays 0. It must not reach the product
    // below: for a large attempt pow() is infinite, and 0 * inf is NaN, whose conversion to long
    // is undefined (on x86 it gives LONG_MIN).
    if (policy_.initial_ms <= 0) {
        return 0;
    }
    int exponent = std::max(attempt, 1) - 1;
    double raw = static_cast<double>(policy_.initial_ms) * std::pow(policy_.multiplier, exponent);
    // pow() overflows to inf for large exponents, which becomes the cap here; so would a NaN.
    if (!(raw < static_cast<double>(policy_.max_ms))) {
        return policy_.max_ms;
    }
    return static_cast<long>(raw);
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
