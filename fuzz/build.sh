#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.cpp) with clang, AddressSanitizer and UBSan.
#
#   fuzz/build.sh                      build every target into build-fuzz/
#   FUZZ_BUILD_DIR=/tmp/f fuzz/build.sh frames http
#
# The project's library sources are compiled here directly rather than through CMake, because
# every object must carry libFuzzer's coverage instrumentation and the sanitizers. Objects are
# rebuilt only when their source or a header they include changed. Needs clang-14 and its
# runtime (Debian: apt-get install clang-14 libclang-rt-14-dev) besides the project's own
# dependencies (`make deps`).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
CXX=${FUZZ_CXX:-clang++-14}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
ALL_TARGETS=(frames handlers_file config http)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=("${ALL_TARGETS[@]}")
fi
for target in "${TARGETS[@]}"; do
    if [ ! -f "fuzz/fuzz_$target.cpp" ]; then
        echo "build.sh: unknown target '$target' (known: ${ALL_TARGETS[*]})" >&2
        exit 64
    fi
done

if ! command -v "$CXX" >/dev/null; then
    echo "build.sh: $CXX not found; install clang-14 and libclang-rt-14-dev" >&2
    exit 1
fi

# -fno-sanitize-recover makes undefined behaviour abort, so that libFuzzer records it as a crash
# instead of printing a warning and going on.
# shellcheck disable=SC2054 # the commas belong to the flag's value
SANITIZE=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
# shellcheck disable=SC2207
PKG_CFLAGS=($(pkg-config --cflags libpq libuv libcurl libcjson spdlog rdkafka libnats librabbitmq hiredis libmicrohttpd))
# shellcheck disable=SC2207
PKG_LIBS=($(pkg-config --libs libpq libuv libcurl libcjson spdlog rdkafka libnats librabbitmq hiredis libmicrohttpd))
CXXFLAGS=(-std=c++20 -g -O1 -Wall -Wextra -I"$ROOT" -I"$ROOT/include" "${PKG_CFLAGS[@]}"
          -DOUTBOX_VERSION='"fuzz"' "${SANITIZE[@]}")
LIBS=("${PKG_LIBS[@]}" -lfmt -lpthread)

# Everything the targets can reach. common/migrations.cpp is left out: it needs the file CMake
# generates from sql/migrations, and nothing fuzzed here runs migrations.
SOURCES=()
for source in common/*.cpp worker/*.cpp supervisor/http_server.cpp supervisor/uv_handle.cpp; do
    [ "$source" = common/migrations.cpp ] || SOURCES+=("$source")
done

OBJ_DIR=$BUILD_DIR/obj
mkdir -p "$OBJ_DIR"

# Stale when the object is missing or older than anything its dependency file names.
is_stale() {
    local object=$1 depfile=$2 dependency
    [ -f "$object" ] && [ -f "$depfile" ] || return 0
    # A depfile lists its paths separated by blanks and backslash-newlines; the project's paths
    # hold no blanks, so splitting into words yields them.
    # shellcheck disable=SC2013
    for dependency in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$depfile"); do
        [ "$dependency" -nt "$object" ] && return 0
    done
    return 1
}

compile() {
    local source=$1 object=$2 instrument=$3
    if is_stale "$object" "${object%.o}.d"; then
        echo "  CXX $source"
        "$CXX" "${CXXFLAGS[@]}" "$instrument" -MMD -MP -c "$source" -o "$object"
    fi
}

# Compiles in parallel, at most JOBS at a time; any failure fails the build.
pids=()
wait_all() {
    local pid status=0
    for pid in "${pids[@]}"; do
        wait "$pid" || status=1
    done
    pids=()
    return $status
}
spawn() {
    "$@" &
    pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait_all
    fi
}

echo "Building fuzz targets into $BUILD_DIR"
OBJECTS=()
for source in "${SOURCES[@]}"; do
    object=$OBJ_DIR/$(echo "${source%.cpp}" | tr / _).o
    OBJECTS+=("$object")
    # The library is instrumented for coverage; only a target's own file links libFuzzer's main.
    spawn compile "$source" "$object" -fsanitize=fuzzer-no-link
done
for target in "${TARGETS[@]}"; do
    spawn compile "fuzz/fuzz_$target.cpp" "$OBJ_DIR/fuzz_$target.o" -fsanitize=fuzzer-no-link
done
wait_all

# An archive, so that each target links only the objects it uses.
rm -f "$OBJ_DIR/libproject.a"
ar rcs "$OBJ_DIR/libproject.a" "${OBJECTS[@]}"
for target in "${TARGETS[@]}"; do
    echo "  LINK fuzz_$target"
    "$CXX" "${SANITIZE[@]}" -fsanitize=fuzzer "$OBJ_DIR/fuzz_$target.o" "$OBJ_DIR/libproject.a" \
        "${LIBS[@]}" -o "$BUILD_DIR/fuzz_$target"
done
