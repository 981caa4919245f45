// Broken invariants abort loudly, always (not only in debug builds), as Node's CHECK does: a
// supervisor that carries on with corrupted state could lose or repeat events.
#pragma once

#include <cstdio>
#include <cstdlib>

#define OUTBOX_CHECK(condition)                                                                    \
    do {                                                                                           \
        if (!(condition)) {                                                                        \
            std::fprintf(stderr, "%s:%d: invariant violated: %s\n", __FILE__, __LINE__,            \
                         #condition);                                                              \
            std::abort();                                                                          \
        }                                                                                          \
    } while (0)
