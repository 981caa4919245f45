// The container image and the orchestrator files, without a container engine: the Dockerfile's
// build stage builds as the Makefile does, its runtime stage carries every library the binary links
// and runs it as PID 1, and the stop timeouts of Kubernetes and Railway cover the drain.
//
// PID 1 is what a container adds: the kernel re-parents every orphan in the PID namespace to it,
// and it gets no default action for signals. The binary runs there for real, through
// `unshare --pid --fork --mount-proc`, with an exec handler that leaves an orphan behind per event;
// the supervisor must reap them all (its SIGCHLD handler calls waitpid(-1)) and still stop cleanly
// on SIGTERM.
#include "common/json.h"
#include "tests/integration/engine_support.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace outbox::test;

namespace {

const std::string kSourceDir = OUTBOX_SOURCE_DIR;

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        out.push_back(line);
    }
    return out;
}

std::vector<std::string> split_words(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string word;
    while (in >> word) {
        out.push_back(word);
    }
    return out;
}

std::string trim(const std::string& s) {
    size_t begin = s.find_first_not_of(" \t\r");
    if (begin == std::string::npos) {
        return "";
    }
    size_t end = s.find_last_not_of(" \t\r");
    return s.substr(begin, end - begin + 1);
}

std::string without_spaces(std::string s) {
    std::erase_if(s, [](char c) { return c == ' ' || c == '\t'; });
    return s;
}

std::string read_source(const std::string& relative) {
    std::string text = read_text_file(kSourceDir + "/" + relative);
    INFO(relative);
    REQUIRE(!text.empty());
    return text;
}

std::optional<std::string> find_program(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::stringstream dirs(std::string(path ? path : "") + ":/usr/bin:/bin:/usr/sbin:/sbin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        if (!dir.empty() && access((dir + "/" + name).c_str(), X_OK) == 0) {
            return dir + "/" + name;
        }
    }
    return std::nullopt;
}

// A tool the tests cannot do without fails them with the remedy, rather than skipping them.
std::string required_program(const std::string& name, const std::string& package) {
    auto found = find_program(name);
    if (!found) {
        FAIL(name << " is not installed: run `make deps` (it installs " << package
                  << ") and run the tests again");
    }
    return *found;
}

RunResult run_quietly(const std::string& program, std::vector<std::string> args) {
    SpawnOptions options;
    options.args = std::move(args);
    options.inherit_environment = false;
    return run_process(program, std::move(options), 60s);
}

// ---- Dockerfile and Makefile ----------------------------------------------------------------

struct Instruction {
    std::string keyword; // upper case: RUN, COPY, ...
    std::string args;
};

struct Stage {
    std::string image;
    std::string name;
    std::vector<Instruction> instructions;

    std::vector<std::string> all(const std::string& keyword) const {
        std::vector<std::string> out;
        for (const auto& i : instructions) {
            if (i.keyword == keyword) {
                out.push_back(i.args);
            }
        }
        return out;
    }
    std::string last(const std::string& keyword) const {
        auto found = all(keyword);
        INFO("the stage " << (name.empty() ? image : name) << " has no " << keyword);
        REQUIRE(!found.empty());
        return found.back();
    }
    std::string runs() const {
        std::string text;
        for (const auto& r : all("RUN")) {
            text += r + "\n";
        }
        return text;
    }
};

// Stages and instructions, with continuation lines joined. As in Docker, a comment line inside a
// continued instruction is dropped.
std::vector<Stage> parse_dockerfile(const std::string& text) {
    std::vector<std::string> logical;
    std::string current;
    for (const auto& raw : split_lines(text)) {
        std::string line = trim(raw);
        if (line.empty() || line[0] == '#') {
            continue;
        }
        bool continued = line.back() == '\\';
        if (continued) {
            line = trim(line.substr(0, line.size() - 1));
        }
        current += (current.empty() ? "" : " ") + line;
        if (!continued) {
            logical.push_back(current);
            current.clear();
        }
    }
    std::vector<Stage> stages;
    for (const auto& line : logical) {
        size_t space = line.find(' ');
        std::string keyword = line.substr(0, space);
        std::transform(keyword.begin(), keyword.end(), keyword.begin(), ::toupper);
        std::string args = space == std::string::npos ? "" : trim(line.substr(space + 1));
        if (keyword == "FROM") {
            auto words = split_words(args);
            Stage stage;
            stage.image = words.at(0);
            if (words.size() == 3) {
                stage.name = words[2];
            }
            stages.push_back(stage);
        } else {
            INFO("an instruction before the first FROM: " << line);
            REQUIRE(!stages.empty());
            stages.back().instructions.push_back({keyword, args});
        }
    }
    return stages;
}

// The value of a simple Makefile variable (NAME := ... or NAME ?= ...), continuation lines joined.
std::string makefile_variable(const std::string& makefile, const std::string& name) {
    auto lines = split_lines(makefile);
    for (size_t i = 0; i < lines.size(); ++i) {
        static const std::regex assignment(R"(^([A-Za-z_]+)\s*(:=|\?=|=)\s*(.*)$)");
        std::smatch m;
        if (std::regex_match(lines[i], m, assignment) && m[1] == name) {
            std::string value = m[3];
            while (!value.empty() && value.back() == '\\' && i + 1 < lines.size()) {
                value.pop_back();
                value += " " + trim(lines[++i]);
            }
            return trim(value);
        }
    }
    FAIL("the Makefile defines no " << name);
    return "";
}

// The recipe lines of a Makefile target.
std::vector<std::string> makefile_recipe(const std::string& makefile, const std::string& target) {
    std::vector<std::string> recipe;
    bool inside = false;
    for (const auto& line : split_lines(makefile)) {
        if (inside && !line.empty() && line[0] == '\t') {
            recipe.push_back(trim(line));
        } else {
            inside = line.rfind(target + ":", 0) == 0;
        }
    }
    return recipe;
}

std::vector<std::string> apt_installed_packages(const std::string& runs) {
    std::vector<std::string> packages;
    auto words = split_words(runs);
    for (size_t i = 0; i + 1 < words.size(); ++i) {
        if (words[i] == "apt-get" && words[i + 1] == "install") {
            for (size_t j = i + 2; j < words.size() && words[j] != "&&" && words[j] != ";"; ++j) {
                if (words[j][0] != '-') {
                    packages.push_back(words[j]);
                }
            }
        }
    }
    return packages;
}

std::map<std::string, std::string> default_configuration() {
    SpawnOptions options;
    options.args = {"check-config"};
    options.env = {{"DATABASE_URL", "postgresql://outbox@localhost:5432/app"}};
    options.inherit_environment = false;
    RunResult r = run_process(OUTBOX_BINARY, std::move(options), 60s);
    INFO(r.err);
    REQUIRE(r.status.exited_with(0));
    std::map<std::string, std::string> config;
    static const std::regex assignment(R"(^([A-Z][A-Z0-9_]*)=(.*)$)");
    for (const auto& line : split_lines(r.out)) {
        std::smatch m;
        if (std::regex_match(line, m, assignment)) {
            config[m[1]] = m[2];
        }
    }
    REQUIRE(config.count("OUTBOX_SHUTDOWN_TIMEOUT_MS") == 1);
    REQUIRE(config.count("OUTBOX_HTTP_PORT") == 1);
    return config;
}

// ---- processes ------------------------------------------------------------------------------

struct ProcessEntry {
    pid_t pid = 0;
    pid_t ppid = 0;
    char state = '?';
    std::string comm;
};

// Every process of the host, from /proc/<pid>/stat; a process that ends while it is read is left
// out. The command name is between the first '(' and the last ')', and may contain anything.
std::vector<ProcessEntry> process_table() {
    std::vector<ProcessEntry> table;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) {
            continue;
        }
        std::string stat = read_text_file(entry.path().string() + "/stat");
        size_t open = stat.find('(');
        size_t close = stat.rfind(')');
        if (open == std::string::npos || close == std::string::npos || close < open) {
            continue;
        }
        std::istringstream rest(stat.substr(close + 1));
        ProcessEntry p;
        p.pid = static_cast<pid_t>(std::stol(name));
        p.comm = stat.substr(open + 1, close - open - 1);
        if (rest >> p.state >> p.ppid) {
            table.push_back(p);
        }
    }
    return table;
}

// `root` and everything below it. Inside a PID namespace every orphan is re-parented to the
// namespace's PID 1, so the descendants of PID 1 are all the namespace's processes.
std::vector<ProcessEntry> process_tree(pid_t root) {
    auto table = process_table();
    std::vector<ProcessEntry> tree;
    for (const auto& p : table) {
        if (p.pid == root) {
            tree.push_back(p);
        }
    }
    std::deque<pid_t> queue{root};
    while (!queue.empty()) {
        pid_t parent = queue.front();
        queue.pop_front();
        for (const auto& p : table) {
            if (p.ppid == parent) {
                tree.push_back(p);
                queue.push_back(p.pid);
            }
        }
    }
    return tree;
}

std::vector<ProcessEntry> zombies_under(pid_t root) {
    auto tree = process_tree(root);
    std::erase_if(tree, [](const ProcessEntry& p) { return p.state != 'Z'; });
    return tree;
}

std::string describe_processes(const std::vector<ProcessEntry>& processes) {
    std::string text;
    for (const auto& p : processes) {
        text += std::to_string(p.pid) + " ppid " + std::to_string(p.ppid) + " " + p.state + " " +
                p.comm + "\n";
    }
    return text.empty() ? "(none)" : text;
}

// The process `unshare --fork` started, i.e. PID 1 of the new namespace, as the host sees it:
// the child of `unshare`, and 1 in the last field of its NSpid line.
pid_t namespace_init(ChildProcess& unshare) {
    pid_t init = 0;
    bool found = wait_until(
        [&] {
            for (const auto& p : process_table()) {
                if (p.ppid == unshare.pid()) {
                    init = p.pid;
                    return true;
                }
            }
            return !unshare.is_running();
        },
        10s);
    INFO(unshare.describe());
    REQUIRE(found);
    REQUIRE(init != 0);
    std::string nspid;
    for (const auto& line :
         split_lines(read_text_file("/proc/" + std::to_string(init) + "/status"))) {
        if (line.rfind("NSpid:", 0) == 0) {
            nspid = line;
        }
    }
    INFO("NSpid line: " << nspid);
    auto fields = split_words(nspid);
    REQUIRE(fields.size() >= 3);
    REQUIRE(fields.back() == "1");
    return init;
}

// unshare needs CAP_SYS_ADMIN; an unprivileged user gets it inside a user namespace of its own.
std::vector<std::string> unshare_arguments(std::vector<std::string> command) {
    std::vector<std::string> args;
    if (geteuid() != 0) {
        args = {"--user", "--map-root-user"};
    }
    // --kill-child: should the test die, the namespace dies with unshare instead of lingering.
    for (const char* a : {"--pid", "--fork", "--mount-proc", "--kill-child"}) {
        args.push_back(a);
    }
    args.insert(args.end(), command.begin(), command.end());
    return args;
}

bool process_exists(pid_t pid) {
    return std::filesystem::exists("/proc/" + std::to_string(pid));
}

} // namespace

TEST_CASE("container: the image builds the way the Makefile does", "[ops][container]") {
    std::string makefile = read_source("Makefile");
    auto stages = parse_dockerfile(read_source("Dockerfile"));
    REQUIRE(stages.size() == 2);
    const Stage& build = stages[0];
    const Stage& runtime = stages[1];
    CHECK(build.image == "debian:12-slim");
    CHECK(build.name == "build");
    CHECK(runtime.image == "debian:12-slim");

    std::string runs = build.runs();
    INFO("build stage RUN instructions:\n" << runs);

    // The same packages as `make deps`: either by running it, or by listing every one of them.
    const std::string packages = makefile_variable(makefile, "DEB_PACKAGES");
    if (runs.find("make deps") != std::string::npos) {
        auto copies = build.all("COPY");
        CHECK(std::any_of(copies.begin(), copies.end(), [](const std::string& c) {
            return c.find("Makefile") != std::string::npos;
        }));
    } else {
        auto installed = apt_installed_packages(runs);
        for (const auto& p : split_words(packages)) {
            INFO("package " << p << " of DEB_PACKAGES is not installed by the build stage");
            CHECK(std::find(installed.begin(), installed.end(), p) != installed.end());
        }
    }

    // The same build command as the README's and the Makefile's: `make build`, whose recipe is
    // the CMake build in BUILD_DIR.
    static const std::regex make_build(R"(\bmake\s+build\b)");
    CHECK(std::regex_search(runs, make_build));
    auto recipe = makefile_recipe(makefile, "build");
    INFO("Makefile build recipe: " << recipe.size() << " lines");
    REQUIRE(!recipe.empty());
    CHECK(recipe.back().find("cmake --build $(BUILD_DIR)") != std::string::npos);
    CHECK(std::regex_search(runs, std::regex(R"(make deps[\s\S]*make build)")));

    // The binary the runtime stage gets is the one that build produced.
    const std::string build_dir = makefile_variable(makefile, "BUILD_DIR");
    CHECK(runs.find(build_dir + "/outbox-worker") != std::string::npos);
    auto copies = runtime.all("COPY");
    CHECK(std::any_of(copies.begin(), copies.end(), [](const std::string& c) {
        return c.rfind("--from=build ", 0) == 0 &&
               c.find("/usr/local/bin/outbox-worker") != std::string::npos;
    }));
}

TEST_CASE("container: the runtime stage runs the service as a non-root PID 1", "[ops][container]") {
    auto stages = parse_dockerfile(read_source("Dockerfile"));
    REQUIRE(stages.size() == 2);
    const Stage& runtime = stages[1];
    auto defaults = default_configuration();

    std::string user = runtime.last("USER");
    CHECK(user != "root");
    CHECK(user.rfind("0", 0) != 0);
    CHECK(without_spaces(runtime.last("ENTRYPOINT")) == R"(["outbox-worker"])");
    CHECK(without_spaces(runtime.last("CMD")) == R"(["run"])");
    CHECK(
        without_spaces(runtime.last("HEALTHCHECK")).ends_with(R"(CMD["outbox-worker","health"])"));
    CHECK(runtime.last("STOPSIGNAL") == "SIGTERM");
    CHECK(runtime.last("EXPOSE") == defaults.at("OUTBOX_HTTP_PORT"));
    auto envs = runtime.all("ENV");
    CHECK(std::find(envs.begin(), envs.end(), "OUTBOX_HTTP_HOST=0.0.0.0") != envs.end());
    auto copies = runtime.all("COPY");
    CHECK(std::any_of(copies.begin(), copies.end(), [](const std::string& c) {
        return c.rfind("examples/handlers.json ", 0) == 0;
    }));
}

TEST_CASE("container: the runtime stage installs every library the binary links",
          "[ops][container]") {
    // The image cannot be built here, so this is the check that it would start: each shared
    // library the binary names must come from a package the runtime stage installs, from one of
    // their dependencies, or from debian:12-slim itself (libc6, libgcc-s1, and libstdc++6, which
    // apt needs).
    std::string readelf = required_program("readelf", "binutils, with build-essential");
    std::string dpkg = required_program("dpkg", "dpkg");
    std::string ldd = required_program("ldd", "libc-bin");
    auto stages = parse_dockerfile(read_source("Dockerfile"));
    REQUIRE(stages.size() == 2);
    auto runtime_packages = apt_installed_packages(stages[1].runs());
    REQUIRE(!runtime_packages.empty());

    std::set<std::string> available = {"libc6", "libgcc-s1", "libstdc++6"};
    for (const auto& package : runtime_packages) {
        available.insert(package);
        RunResult depends = run_quietly("dpkg-query", {"-W", "-f=${Depends}", package});
        INFO(package << ": " << depends.err);
        REQUIRE(depends.status.exited_with(0));
        // "libc6 (>= 2.34), libfmt9 (>= 9.0.0+ds1) | libfmt-alt, ..."
        static const std::regex name(R"((^|[,|]\s*)([a-z0-9][a-z0-9+.-]*))");
        for (std::sregex_iterator it(depends.out.begin(), depends.out.end(), name), end; it != end;
             ++it) {
            available.insert((*it)[2]);
        }
    }

    RunResult dynamic = run_quietly(readelf, {"-d", OUTBOX_BINARY});
    RunResult resolved = run_quietly(ldd, {OUTBOX_BINARY});
    REQUIRE(dynamic.status.exited_with(0));
    REQUIRE(resolved.status.exited_with(0));
    std::map<std::string, std::string> paths; // "libpq.so.5" -> "/lib/x86_64-linux-gnu/libpq.so.5"
    static const std::regex ldd_line(R"(^\s*(\S+) => (/\S+))");
    for (const auto& line : split_lines(resolved.out)) {
        std::smatch m;
        if (std::regex_search(line, m, ldd_line)) {
            paths[m[1]] = m[2];
        }
    }
    static const std::regex needed(R"(\(NEEDED\)\s+Shared library: \[([^\]]+)\])");
    int checked = 0;
    for (const auto& line : split_lines(dynamic.out)) {
        std::smatch m;
        if (!std::regex_search(line, m, needed)) {
            continue;
        }
        const std::string library = m[1];
        // A sanitizer build links the sanitizer runtimes, which no release image carries.
        if (library.rfind("libasan", 0) == 0 || library.rfind("libubsan", 0) == 0) {
            continue;
        }
        INFO(library);
        REQUIRE(paths.count(library) == 1);
        // With merged /usr, dpkg knows a library under /lib or /usr/lib, whichever its package
        // shipped; ask for both.
        std::string path = paths[library];
        std::string other = path.rfind("/usr/", 0) == 0 ? path.substr(4) : "/usr" + path;
        RunResult owner = run_quietly(dpkg, {"-S", path});
        if (!owner.status.exited_with(0)) {
            owner = run_quietly(dpkg, {"-S", other});
        }
        INFO(owner.out << owner.err);
        REQUIRE(owner.status.exited_with(0));
        std::string package = owner.out.substr(0, owner.out.find_first_of(":,"));
        INFO("package " << package);
        CHECK(available.count(package) == 1);
        ++checked;
    }
    CHECK(checked >= 5);
}

TEST_CASE("container: as PID 1 the supervisor reaps orphans and stops cleanly",
          "[ops][container]") {
    std::string unshare_program = required_program("unshare", "util-linux");
    TestDatabase db;
    db.migrate();
    constexpr int kEvents = 20;
    write_events(db, "orphan.spawn", kEvents);

    // Each event leaves a process behind. The command starts a background child that moves to a
    // session of its own (so that the handler's kill of the command's process group spares it),
    // waits until the child reports on a pipe that it has, and exits. The child, now an orphan, is
    // re-parented to PID 1, sleeps, records its parent pid as the namespace sees it, and exits
    // into a zombie that only PID 1 can reap.
    std::string ppids = temp_path("orphan-ppids.txt");
    std::string orphan = "echo detached; exec >/dev/null; sleep 0.3; "
                         "read -r a b c ppid rest </proc/$$/stat; echo $ppid >>" +
                         ppids;
    std::string handlers = write_handlers_file(
        R"([{"eventTypes": ["orphan.*"], "exec": {"command": ["sh", "-c",
             "cat >/dev/null; { setsid sh -c ')" +
        orphan + R"(' </dev/null 2>/dev/null & } | head -n 1 >/dev/null; exit 0"]}}])");

    // As in the image: the endpoint on the wildcard address, asked by `outbox-worker health`.
    const std::string port = std::to_string(free_tcp_port());
    EnvMap http = {{"OUTBOX_HTTP_HOST", "0.0.0.0"}, {"OUTBOX_HTTP_PORT", port}};
    SpawnOptions options = Service::options(db, {{"OUTBOX_HANDLERS", handlers},
                                                 {"OUTBOX_HTTP_HOST", "0.0.0.0"},
                                                 {"OUTBOX_HTTP_PORT", port}});
    options.args = unshare_arguments({OUTBOX_BINARY, "run"});
    ChildProcess unshare(unshare_program, options);
    // Catch2 renders an INFO when it is declared, so each failure below carries the log as it
    // was at that point.
    auto log_so_far = [&] {
        return unshare.describe();
    };

    const pid_t init = namespace_init(unshare);
    {
        bool ready = wait_until(
            [&] {
                return unshare.stderr_text().find("ready:") != std::string::npos ||
                       !unshare.is_running();
            },
            20s);
        INFO(log_so_far());
        REQUIRE(ready);
        REQUIRE(unshare.is_running());
    }
    {
        // The image's HEALTHCHECK command against the running instance.
        RunResult health;
        bool healthy = wait_until(
            [&] {
                health = run_process(OUTBOX_BINARY, command({"health"}, http), 10s);
                return health.status.exited_with(0);
            },
            15s, 200ms);
        INFO("health: " << health.status.describe() << "\n"
                        << health.out << health.err << "\n"
                        << log_so_far());
        REQUIRE(healthy);
    }
    {
        bool completed = wait_for_count(
            db, R"(SELECT count(*) FROM "Outbox" WHERE status = 'COMPLETED')", kEvents);
        INFO(log_so_far());
        REQUIRE(completed);
    }
    auto recorded = [&] {
        return static_cast<int>(split_lines(read_text_file(ppids)).size());
    };
    {
        bool all_recorded = wait_until([&] { return recorded() == kEvents; }, 30s);
        INFO("orphans that recorded their parent: " << recorded() << "\n" << log_so_far());
        REQUIRE(all_recorded);
    }
    // Every orphan was PID 1's child, so the test exercised the reaping it means to.
    for (const auto& line : split_lines(read_text_file(ppids))) {
        CHECK(line == "1");
    }

    // The orphans have all exited; none may be left a zombie.
    std::vector<ProcessEntry> zombies;
    bool reaped = wait_until(
        [&] {
            zombies = zombies_under(init);
            return zombies.empty();
        },
        10s);
    INFO("zombies in the namespace:\n" << describe_processes(zombies));
    INFO("processes in the namespace:\n" << describe_processes(process_tree(init)));
    CHECK(reaped);

    // SIGTERM to PID 1 itself: it has no default action there, so only a handler can stop it.
    REQUIRE(::kill(init, SIGTERM) == 0);
    auto status = unshare.wait_exit(40s);
    INFO(log_so_far());
    REQUIRE(status.has_value());
    CHECK(status->exited_with(0));
    CHECK(count_status(db, "COMPLETED") == kEvents);
    CHECK(count_status(db, "PROCESSING") == 0);
    // PID 1's exit ends the namespace: nothing of it is left.
    CHECK(wait_until([&] { return !process_exists(init); }, 5s));
}

TEST_CASE("container: the zombie check sees zombies under a PID 1 that does not reap",
          "[ops][container]") {
    // The control experiment for the test above: `sleep` as PID 1 never calls wait, so the orphan
    // it inherits stays a zombie, and the same check must see it.
    std::string unshare_program = required_program("unshare", "util-linux");
    SpawnOptions options;
    options.args = unshare_arguments(
        {"sh", "-c", "setsid sh -c 'exit 0' </dev/null >/dev/null 2>&1 & exec sleep 30"});
    ChildProcess unshare(unshare_program, options);
    const pid_t init = namespace_init(unshare);
    std::vector<ProcessEntry> zombies;
    bool seen = wait_until(
        [&] {
            zombies = zombies_under(init);
            return !zombies.empty();
        },
        10s);
    INFO("processes in the namespace:\n"
         << describe_processes(process_tree(init)) << unshare.describe());
    CHECK(seen);
    // Only SIGKILL stops a PID 1 without handlers. (unshare then reports a failure of its own
    // rather than the signal, so its status says nothing here.)
    REQUIRE(::kill(init, SIGKILL) == 0);
    CHECK(unshare.wait_exit(10s).has_value());
}

TEST_CASE("container: orchestrators wait for the drain", "[ops][container]") {
    // SIGTERM drains for up to OUTBOX_SHUTDOWN_TIMEOUT_MS, then the handler processes get 5 s to
    // quit; a kill timeout shorter than both cuts the drain short.
    auto defaults = default_configuration();
    long shutdown_ms = std::stol(defaults.at("OUTBOX_SHUTDOWN_TIMEOUT_MS"));

    std::string deployment = read_source("deploy/kubernetes/deployment.yaml");
    std::smatch m;
    REQUIRE(
        std::regex_search(deployment, m, std::regex(R"(terminationGracePeriodSeconds:\s*(\d+))")));
    long grace_ms = std::stol(m[1]) * 1000;
    if (std::regex_search(
            deployment, m,
            std::regex(R"(name:\s*OUTBOX_SHUTDOWN_TIMEOUT_MS\s*\n\s*value:\s*\"?(\d+))"))) {
        shutdown_ms = std::stol(m[1]);
    }
    CHECK(grace_ms > shutdown_ms + 5000);
    CHECK(std::regex_search(deployment, std::regex(R"(fieldPath:\s*metadata\.name)")));
    CHECK(std::regex_search(read_source("deploy/kubernetes/job-migrate.yaml"),
                            std::regex(R"(args:\s*\[\s*\"migrate\"\s*\])")));

    outbox::Json railway = outbox::json_parse(read_source("railway.json"));
    REQUIRE(railway != nullptr);
    const cJSON* build = cJSON_GetObjectItemCaseSensitive(railway.get(), "build");
    const cJSON* deploy = cJSON_GetObjectItemCaseSensitive(railway.get(), "deploy");
    REQUIRE(build != nullptr);
    REQUIRE(deploy != nullptr);
    auto text = [](const cJSON* object, const char* key) {
        const cJSON* item = cJSON_GetObjectItemCaseSensitive(object, key);
        return cJSON_IsString(item) ? std::string(item->valuestring) : std::string();
    };
    CHECK(text(build, "builder") == "DOCKERFILE");
    CHECK(std::filesystem::exists(kSourceDir + "/" + text(build, "dockerfilePath")));
    CHECK(text(deploy, "startCommand").find("exec outbox-worker run") != std::string::npos);
    std::string probe = text(deploy, "healthcheckPath");
    CHECK((probe == "/ready" || probe == "/health"));
    CHECK(text(deploy, "restartPolicyType") == "ON_FAILURE");
}
