// Retry delays (SPEC 2): failed attempt n waits min(INITIAL * MULTIPLIER^(n-1), MAX) times a
// jitter factor drawn from [1 - J, 1 + J], capped at MAX again. Every configuration the
// environment allows (SPEC 3 and common/config.cpp: INITIAL 0 to 86400000 ms, MAX 1 to 604800000 ms
// and at least INITIAL, MULTIPLIER 1 to 100, J 0 to 1) must give a delay in range for any attempt
// number the database can hold ("retryCount" is an int).
#include "common/backoff.h"

#include <catch2/catch.hpp>

#include <climits>
#include <cmath>
#include <vector>

namespace {

using outbox::Backoff;
using outbox::BackoffPolicy;

// Attempt numbers from the first to the largest an int holds, with the ones around the point where
// MULTIPLIER^(n-1) leaves the range of a double for the largest multiplier (100^154 is finite,
// 100^155 is not) and for the default one (2^1023 is finite, 2^1024 is not).
const std::vector<int> kAttempts{1,    2,    3,       10,          31,          32,     33,   63,
                                 64,   65,   154,     155,         156,         1023,   1024, 1025,
                                 1026, 5000, 1 << 20, INT_MAX / 2, INT_MAX - 1, INT_MAX};

} // namespace

TEST_CASE("backoff: without jitter the delays are exactly INITIAL * MULTIPLIER^(n-1), capped",
          "[backoff]") {
    Backoff defaults(BackoffPolicy{1000, 60000, 2.0, 0.0});
    const long expected[] = {1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000};
    for (int n = 1; n <= 9; ++n) {
        INFO("attempt " << n);
        CHECK(defaults.delay_ms(n) == expected[n - 1]);
        CHECK(defaults.nominal_delay_ms(n) == expected[n - 1]);
    }

    // A multiplier that is not a whole number, and a cap that is not a power of it.
    Backoff decimal(BackoffPolicy{100, 1000, 1.5, 0.0});
    const long expected_decimal[] = {100, 150, 225, 337, 506, 759, 1000, 1000};
    for (int n = 1; n <= 8; ++n) {
        INFO("attempt " << n);
        // 337.5 and 506.25 have no exact millisecond; either neighbour is fine.
        CHECK(std::labs(decimal.delay_ms(n) - expected_decimal[n - 1]) <= 1);
    }
}

TEST_CASE("backoff: multiplier 1 keeps every delay at INITIAL", "[backoff]") {
    Backoff constant(BackoffPolicy{750, 60000, 1.0, 0.0});
    for (int n : kAttempts) {
        INFO("attempt " << n);
        CHECK(constant.delay_ms(n) == 750);
    }
    // With jitter the factor still applies around the constant centre.
    Backoff jittered(BackoffPolicy{1000, 60000, 1.0, 0.5}, 7);
    for (int n : kAttempts) {
        long d = jittered.delay_ms(n);
        CHECK(d >= 500);
        CHECK(d <= 1500);
    }
}

TEST_CASE("backoff: huge attempt numbers give MAX, never an overflow", "[backoff]") {
    for (double multiplier : {1.0001, 1.5, 2.0, 10.0, 100.0}) {
        for (long initial : {0L, 1L, 1000L, 86400000L}) {
            const long max = 604800000;
            Backoff b(BackoffPolicy{initial, max, multiplier, 0.0});
            for (int n : kAttempts) {
                INFO("initial " << initial << ", multiplier " << multiplier << ", attempt " << n);
                long nominal = b.nominal_delay_ms(n);
                long delay = b.delay_ms(n);
                CHECK(nominal >= 0);
                CHECK(nominal <= max);
                CHECK(delay == nominal);
                if (initial == 0) {
                    // Zero grows to nothing, however far the multiplier's power runs off.
                    CHECK(delay == 0);
                } else if (n >= 1 << 20) {
                    CHECK(delay == max);
                }
            }
        }
    }
}

TEST_CASE("backoff: attempts below 1 are treated as the first", "[backoff]") {
    Backoff b(BackoffPolicy{1000, 60000, 2.0, 0.0});
    CHECK(b.delay_ms(0) == 1000);
    CHECK(b.delay_ms(-5) == 1000);
    CHECK(b.delay_ms(INT_MIN) == 1000);
}

TEST_CASE("backoff: jitter stays within [1 - J, 1 + J] of the nominal delay and uses the range",
          "[backoff]") {
    for (double jitter : {0.1, 0.5, 1.0}) {
        Backoff b(BackoffPolicy{1000, 1000000, 2.0, jitter}, 12345);
        for (int n = 1; n <= 8; ++n) {
            const double nominal = 1000.0 * std::pow(2.0, n - 1);
            const long low = std::lround(std::floor(nominal * (1.0 - jitter)));
            const long high = std::lround(std::ceil(nominal * (1.0 + jitter)));
            long seen_low = LONG_MAX;
            long seen_high = LONG_MIN;
            double sum = 0;
            const int draws = 2000;
            for (int i = 0; i < draws; ++i) {
                long d = b.delay_ms(n);
                INFO("jitter " << jitter << ", attempt " << n << ", delay " << d);
                REQUIRE(d >= low);
                REQUIRE(d <= high);
                seen_low = std::min(seen_low, d);
                seen_high = std::max(seen_high, d);
                sum += static_cast<double>(d);
            }
            INFO("jitter " << jitter << ", attempt " << n);
            // Uniform draws: 2000 of them reach within 1% of the range's ends on each side (the
            // chance of missing one end is 0.99^2000, about 2e-9) and average near the centre.
            const double width = nominal * 2 * jitter;
            CHECK(static_cast<double>(seen_low) < nominal * (1.0 - jitter) + width * 0.01 + 1);
            CHECK(static_cast<double>(seen_high) > nominal * (1.0 + jitter) - width * 0.01 - 1);
            CHECK(std::abs(sum / draws - nominal) < width * 0.05);
        }
    }
}

TEST_CASE("backoff: a jittered delay is capped at MAX again", "[backoff]") {
    // The nominal delay is MAX from attempt 7 on, so every upward draw must be cut back to MAX;
    // downward draws stay below it.
    Backoff b(BackoffPolicy{1000, 60000, 2.0, 0.5}, 99);
    int at_max = 0;
    int below_max = 0;
    for (int i = 0; i < 1000; ++i) {
        long d = b.delay_ms(10);
        REQUIRE(d >= 30000);
        REQUIRE(d <= 60000);
        (d == 60000 ? at_max : below_max) += 1;
    }
    // About half the draws land at the cap and half below it.
    CHECK(at_max > 400);
    CHECK(below_max > 400);

    // The same holds for huge attempts, where the uncapped power would be infinite.
    Backoff huge(BackoffPolicy{1000, 60000, 100.0, 1.0}, 5);
    for (int i = 0; i < 1000; ++i) {
        long d = huge.delay_ms(INT_MAX);
        REQUIRE(d >= 0);
        REQUIRE(d <= 60000);
    }
}

TEST_CASE("backoff: the same seed gives the same delays", "[backoff]") {
    Backoff a(BackoffPolicy{1000, 60000, 2.0, 0.3}, 42);
    Backoff b(BackoffPolicy{1000, 60000, 2.0, 0.3}, 42);
    Backoff other(BackoffPolicy{1000, 60000, 2.0, 0.3}, 43);
    bool differs = false;
    for (int n = 1; n <= 20; ++n) {
        long da = a.delay_ms(n);
        CHECK(da == b.delay_ms(n));
        differs = differs || da != other.delay_ms(n);
    }
    CHECK(differs);
}
