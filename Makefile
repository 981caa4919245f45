# outbox-worker: the front door. Every target works on a fresh Debian 12 machine: whatever builds
# (`make`, `make test`, `make demo`, ...) installs the missing Debian packages first (`make deps`,
# which costs one dpkg-query when nothing is missing), so any of them can be the first command run.
#
#   make deps           install the missing Debian packages (apt-get; sudo when not root)
#   make / make build   configure (when not yet done, or CMAKE_ARGS changed) and build in build/
#   make test           build, start a private PostgreSQL, run every test (ctest)
#   make test-sanitize  the same with AddressSanitizer and UBSan, in build-sanitize/
#   make demo           run the service end to end on a private database (scripts/demo.sh)
#   make bench          throughput benchmark (bench/run.sh)
#   make chaos          the chaos test, longer (CHAOS_SECONDS, default 180)
#   make fuzz           libFuzzer targets for a bounded time each (fuzz/run.sh)
#   make format         clang-format every C++ source in place; format-check only reports
#   make install        install the binary under $(DESTDIR)$(PREFIX)
#   make clean          remove the build directories
#
# Extra CMake arguments go in CMAKE_ARGS (`make build CMAKE_ARGS=-DOUTBOX_BUILD_TESTS=OFF`).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

BUILD_DIR ?= build
SANITIZE_BUILD_DIR ?= build-sanitize
BUILD_TYPE ?= RelWithDebInfo
CMAKE_ARGS ?=
NPROC := $(shell nproc 2>/dev/null || echo 2)
JOBS ?= $(NPROC)
# Tests run one at a time by default. Each works in its own database and on its own ports, but
# some restart the shared PostgreSQL cluster on purpose (tags [restart] and [chaos]), which cuts
# the connections of whatever runs beside them. `make test CTEST_JOBS=4` runs in parallel anyway.
CTEST_JOBS ?= 1
CTEST_ARGS ?=
PREFIX ?= /usr/local
DESTDIR ?=

# What building, testing and the demo need. systemd provides systemd-analyze, which the tests use
# to check the unit files; util-linux provides runuser, with which tests/run_with_postgres.sh
# starts PostgreSQL as the postgres user when run as root.
DEB_PACKAGES := build-essential cmake pkg-config libpq-dev libuv1-dev libcjson-dev libspdlog-dev \
	catch2 libcurl4-openssl-dev libmicrohttpd-dev postgresql postgresql-contrib clang-format \
	python3 python3-prometheus-client curl procps util-linux systemd \
	librdkafka-dev libnats-dev librabbitmq-dev libhiredis-dev nats-server rabbitmq-server \
	redis-server kcat chromium

# Directories holding the project's C++ sources (format and format-check); build trees excluded.
CXX_SOURCE_DIRS := common supervisor worker cli include tests examples bench
CXX_SOURCES = $(shell find $(CXX_SOURCE_DIRS) -type f \( -name '*.cpp' -o -name '*.h' \) 2>/dev/null | sort)

.PHONY: all build deps test test-sanitize demo bench chaos fuzz format format-check clean install

all: build

deps:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
	    echo "deps: not a Debian system (no dpkg-query): install the equivalents of $(DEB_PACKAGES)"; \
	    exit 0; \
	fi; \
	missing=(); \
	for p in $(DEB_PACKAGES); do \
	    if ! dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed'; then \
	        missing+=("$$p"); \
	    fi; \
	done; \
	if [ $${#missing[@]} -eq 0 ]; then \
	    echo "deps: all $(words $(DEB_PACKAGES)) Debian packages are installed"; \
	else \
	    echo "deps: installing $${missing[*]}"; \
	    sudo=; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	    $$sudo apt-get update; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$${missing[@]}"; \
	fi

# $(call configure,DIR,CMAKE ARGUMENTS): runs CMake's configure step in DIR unless the last
# successful one there had the same source directory and arguments. A stamp file holding them is
# written as the last step, so a configure that failed or was interrupted never counts as done. A
# failed one also removes CMakeCache.txt: CMake would otherwise start the next run from what it
# cached (a wrong -D, a library not found), and a cache without generated build files is what
# `cmake --build` trips over. The recipe runs after `deps`, so the packages are in place before
# CMake looks for them.
CONFIGURE_STAMP := .make-configured
configure = \
	args='$(strip $(2))'; \
	if [ "$$(cat "$(1)/$(CONFIGURE_STAMP)" 2>/dev/null || true)" != "$(CURDIR) $$args" ]; then \
	    rm -f "$(1)/$(CONFIGURE_STAMP)"; \
	    echo "cmake -S . -B $(1) $$args"; \
	    if ! cmake -S . -B "$(1)" $$args; then \
	        rm -f "$(1)/CMakeCache.txt"; \
	        echo "make: configuring $(1) failed (CMake says why above; \`make deps\` installs the Debian packages); its CMakeCache.txt is removed, so the next run configures afresh" >&2; \
	        exit 1; \
	    fi; \
	    printf '%s\n' "$(CURDIR) $$args" >"$(1)/$(CONFIGURE_STAMP)"; \
	fi

build: deps
	@$(call configure,$(BUILD_DIR),-DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS))
	cmake --build $(BUILD_DIR) -j$(JOBS)

test: build
	tests/run_with_postgres.sh ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(CTEST_JOBS) $(CTEST_ARGS)

test-sanitize: deps
	@$(call configure,$(SANITIZE_BUILD_DIR),-DCMAKE_BUILD_TYPE=Debug -DOUTBOX_SANITIZE=ON $(CMAKE_ARGS))
	cmake --build $(SANITIZE_BUILD_DIR) -j$(JOBS)
	tests/run_with_postgres.sh ctest --test-dir $(SANITIZE_BUILD_DIR) --output-on-failure -j$(CTEST_JOBS) $(CTEST_ARGS)

demo: build
	bash scripts/demo.sh

bench: build
	bash bench/run.sh

# The chaos test for longer than the 20 s of its short form in `make test` (CHAOS_SECONDS).
CHAOS_SECONDS ?= 180
chaos: build
	CHAOS_SECONDS=$(CHAOS_SECONDS) tests/run_with_postgres.sh $(BUILD_DIR)/integration-tests "[chaos]"

# libFuzzer targets (clang from Debian), each for FUZZ_SECONDS.
fuzz: deps
	bash fuzz/run.sh

format:
	clang-format -i $(CXX_SOURCES)

format-check:
	clang-format --dry-run --Werror $(CXX_SOURCES)

# Where `make install` puts the systemd units. $(PREFIX)/lib/systemd/system is on systemd's search
# path for both PREFIX=/usr/local (the default) and PREFIX=/usr, and leaves /etc/systemd/system to the
# administrator's own units and drop-ins, which override ours. With another PREFIX, point this at a
# directory systemd searches (`systemd-analyze unit-paths`).
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
# Configuration lives in /etc whatever the PREFIX, as the units' EnvironmentFile= expects.
SYSCONF_DIR ?= /etc/outbox-worker

# The binary into $(PREFIX)/bin (cmake --install), the units with their /usr/local/bin paths
# rewritten to $(PREFIX)/bin, the example environment file (never the real one: an existing
# outbox-worker.env is not touched; its /usr/local/share paths rewritten likewise) and the example
# handlers. Everything goes under $(DESTDIR), for packaging; after a real install, run
# `systemctl daemon-reload`.
install: build
	DESTDIR="$(DESTDIR)" cmake --install $(BUILD_DIR) --prefix "$(PREFIX)"
	install -d "$(DESTDIR)$(SYSTEMD_UNIT_DIR)" "$(DESTDIR)$(SYSCONF_DIR)" "$(DESTDIR)$(PREFIX)/share/outbox-worker"
	for unit in outbox-worker.service outbox-worker@.service; do \
	    sed 's|/usr/local/bin/outbox-worker|$(PREFIX)/bin/outbox-worker|g' "systemd/$$unit" \
	        >"$(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$unit"; \
	    chmod 0644 "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$unit"; \
	done
	sed 's|/usr/local/share/outbox-worker|$(PREFIX)/share/outbox-worker|g' systemd/outbox-worker.env.example \
	    >"$(DESTDIR)$(SYSCONF_DIR)/outbox-worker.env.example"
	chmod 0644 "$(DESTDIR)$(SYSCONF_DIR)/outbox-worker.env.example"
	install -m 0644 examples/handlers.json "$(DESTDIR)$(PREFIX)/share/outbox-worker/handlers.json"

clean:
	rm -rf $(BUILD_DIR) $(SANITIZE_BUILD_DIR)
