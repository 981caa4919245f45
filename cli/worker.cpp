// outbox::Worker (include/outbox/outbox.h): the subscribers registered in code, `run`, and the
// dispatch of the whole `outbox-worker` command line to the subcommands of cli/commands.h.
#include "cli/args.h"
#include "cli/commands.h"
#include "common/log.h"
#include "supervisor/service.h"
#include "worker/subscriber.h"
#include <outbox/outbox.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#ifndef OUTBOX_VERSION
#error "OUTBOX_VERSION must be defined by the build (CMakeLists.txt)"
#endif

namespace outbox {

struct Worker::Impl {
    std::vector<Subscription> subscriptions;
};

namespace {

const char* const kRunUsage = R"(usage: outbox-worker [run]

Runs the service: claims due events and delivers them to the handlers registered in code and in
the handlers file (OUTBOX_HANDLERS), until SIGTERM or SIGINT. `run` is the default command.

Environment: DATABASE_URL (required) and the OUTBOX_* variables; see `outbox-worker check-config`.
Exit codes: 0 after a clean shutdown, 1 on failure, 78 on a configuration error.
)";

std::string top_usage() {
    std::string out = "usage: outbox-worker [COMMAND] [OPTIONS]\n\n"
                      "The transactional-outbox relay for PostgreSQL.\n\nCommands:\n";
    auto line = [&](const char* name, const char* summary) {
        char buf[256];
        std::snprintf(buf, sizeof buf, "  %-14s %s\n", name, summary);
        out += buf;
    };
    line("run", "serve: deliver events to the handlers (the default)");
    for (const auto& c : cli::commands()) {
        line(c.name, c.summary);
    }
    out += "\n`outbox-worker COMMAND --help` describes a command; `outbox-worker --version` prints "
           "the version.\nConfiguration comes from the environment (DATABASE_URL, OUTBOX_*, "
           "LOG_LEVEL, ...).\nExit codes: 0 success, 1 failure, 64 usage error, 78 configuration "
           "error.\n";
    return out;
}

// A handler process must get a Result whatever the handler does (SPEC 4: throwing is a retryable
// failure with the exception's message), so the wrapper lets nothing escape.
Handler never_throwing(Handler handler) {
    return [handler = std::move(handler)](const Event& event) -> Result {
        try {
            return handler(event);
        } catch (const std::exception& e) {
            return Result::retry(e.what());
        } catch (...) {
            return Result::retry("the handler threw an exception that is not a std::exception");
        }
    };
}

// Turns the code subscriptions into Subscribers; an unusable one is a configuration error.
bool build_subscribers(const std::vector<Subscription>& subscriptions, const Config& config,
                       std::vector<Subscriber>& out, std::string& error) {
    for (size_t i = 0; i < subscriptions.size(); ++i) {
        const Subscription& s = subscriptions[i];
        std::string name = s.name.empty() ? "code#" + std::to_string(i) : s.name;
        if (!s.handler) {
            error = "subscriber " + name + " has no handler";
            return false;
        }
        if (s.eventTypes.empty()) {
            error = "subscriber " + name + " has no event types";
            return false;
        }
        for (const auto& pattern : s.eventTypes) {
            if (pattern.empty()) {
                error = "subscriber " + name + " has an empty event type";
                return false;
            }
        }
        if (s.timeoutMs < 0) {
            error = "subscriber " + name + " has a negative timeoutMs (" +
                    std::to_string(s.timeoutMs) + ")";
            return false;
        }
        Subscriber sub;
        sub.name_given = !s.name.empty();
        sub.name = std::move(name);
        sub.patterns = s.eventTypes;
        sub.timeout_ms = s.timeoutMs > 0 ? s.timeoutMs : config.handler_timeout_ms;
        sub.handler = never_throwing(s.handler);
        out.push_back(std::move(sub));
    }
    return true;
}

} // namespace

Worker::Worker() : impl_(std::make_unique<Impl>()) {}
Worker::~Worker() = default;

Worker& Worker::subscribe(Subscription subscription) {
    impl_->subscriptions.push_back(std::move(subscription));
    return *this;
}

int Worker::run() {
    // A stop signal that arrives before the supervisor's loop watches for it would kill the
    // process by its default action, which systemd, a container runtime or a test would see as a
    // crash rather than a clean stop. Held back until the loop's handlers are in place
    // (supervisor/service.cpp), it is delivered to them then, and the service drains and exits 0.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) {
        sigaddset(&stop_signals, sig);
    }
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    ConfigResult loaded = load_config(process_environment());
    if (!loaded.config) {
        std::fprintf(stderr, "%s: %s\n", cli::kProgram, loaded.error.c_str());
        return kExitConfig;
    }
    const Config& config = *loaded.config;
    std::vector<Subscriber> subscribers;
    std::string error;
    if (!build_subscribers(impl_->subscriptions, config, subscribers, error)) {
        std::fprintf(stderr, "%s: %s\n", cli::kProgram, error.c_str());
        return kExitConfig;
    }
    setup_logging(log_settings_for(config));
    set_log_process_name("supervisor");
    return run_service(config, std::move(subscribers));
}

int Worker::main(int argc, char** argv) {
    std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
    if (args.empty()) {
        return run();
    }
    const std::string& first = args[0];
    if (first == "--version" || first == "-V") {
        std::printf("outbox-worker %s\n", OUTBOX_VERSION);
        return kExitOk;
    }
    if (first == "--help" || first == "-h") {
        std::fputs(top_usage().c_str(), stdout);
        return kExitOk;
    }
    std::vector<std::string> rest(args.begin() + 1, args.end());
    if (first == "help") {
        if (rest.empty()) {
            std::fputs(top_usage().c_str(), stdout);
            return kExitOk;
        }
        // `outbox-worker help emit` is `outbox-worker emit --help`.
        args = {rest[0], "--help"};
        rest = {"--help"};
    }
    const std::string& command = args[0];
    if (command == "run") {
        cli::ParseResult parsed = cli::parse_args(rest, {});
        if (!parsed.error.empty()) {
            return cli::usage_error("run", parsed.error, kRunUsage);
        }
        if (parsed.args.help) {
            std::fputs(kRunUsage, stdout);
            return kExitOk;
        }
        return run();
    }
    for (const auto& c : cli::commands()) {
        if (command == c.name) {
            return c.run(rest);
        }
    }
    std::string problem = command.rfind("-", 0) == 0 ? "unknown option " + command
                                                     : "unknown command \"" + command + "\"";
    std::fprintf(stderr, "%s: %s\n\n%s", cli::kProgram, problem.c_str(), top_usage().c_str());
    return kExitUsage;
}

} // namespace outbox
