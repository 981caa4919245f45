// The systemd units in systemd/: `systemd-analyze verify` accepts both (the template instantiated),
// the sandbox stays tight, the two units agree with each other and with the binary (its default
// shutdown timeout, its configuration-error exit code), and the example environment file lists
// every variable with its true default.
//
// No systemd runs here, so the units are checked statically. verify needs the programs the units
// name to exist: the tests work on copies with the built binary and a temporary environment file
// substituted for the installed paths.
#include "tests/support/process.h"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using outbox::test::read_text_file;
using outbox::test::run_process;
using outbox::test::RunResult;
using outbox::test::SpawnOptions;

namespace {

const std::string kSourceDir = OUTBOX_SOURCE_DIR;
const std::string kUnit = kSourceDir + "/systemd/outbox-worker.service";
const std::string kTemplate = kSourceDir + "/systemd/outbox-worker@.service";
const std::string kEnvExample = kSourceDir + "/systemd/outbox-worker.env.example";
const std::string kInstalledBinary = "/usr/local/bin/outbox-worker";
// check-config connects to nothing, so any well-formed connection string will do.
const std::string kSomeDatabaseUrl = "postgresql://outbox@localhost:5432/app";

// A directory removed with everything in it when the test ends.
class TempDir {
  public:
    TempDir() {
        std::string tmpl =
            (std::filesystem::temp_directory_path() / "outbox-systemd-XXXXXX").string();
        REQUIRE(mkdtemp(tmpl.data()) != nullptr);
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }

  private:
    std::string path_;
};

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

// The tests check the units with systemd's own tools; without them they would prove nothing, so
// they fail (rather than skip) and say how to get them.
std::string systemd_analyze() {
    auto found = find_program("systemd-analyze");
    if (!found) {
        FAIL("systemd-analyze is not installed, so the systemd units cannot be checked: run "
             "`make deps` (it installs the systemd package) and run the tests again");
    }
    return *found;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
    for (size_t pos = text.find(from); pos != std::string::npos;
         pos = text.find(from, pos + to.size())) {
        text.replace(pos, from.size(), to);
    }
    return text;
}

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        out.push_back(line);
    }
    return out;
}

void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    REQUIRE(out.good());
}

RunResult run(const std::string& program, std::vector<std::string> args,
              std::map<std::string, std::optional<std::string>> env = {}) {
    SpawnOptions options;
    options.args = std::move(args);
    options.env = std::move(env);
    options.inherit_environment = false;
    return run_process(program, std::move(options), std::chrono::seconds(60));
}

// A copy of a unit in `dir`, named `name`, runnable by verify: the installed binary's path becomes
// the built binary's and the environment file one in `dir`.
std::string installable_copy(const std::string& unit_path, const std::string& dir,
                             const std::string& name, const std::string& extra_service_line = "") {
    std::string text = read_text_file(unit_path);
    REQUIRE(!text.empty());
    REQUIRE(text.find(kInstalledBinary) != std::string::npos);
    text = replace_all(text, kInstalledBinary, OUTBOX_BINARY);
    text = replace_all(text, "EnvironmentFile=/etc/outbox-worker/", "EnvironmentFile=" + dir + "/");
    if (!extra_service_line.empty()) {
        text = replace_all(text, "[Service]\n", "[Service]\n" + extra_service_line + "\n");
    }
    std::string path = dir + "/" + name;
    write_file(path, text);
    return path;
}

// What verify said about our units: its output mentions other units too (the targets ours refer
// to), whose warnings are the host's business, not ours.
std::vector<std::string> warnings_about_our_units(const RunResult& r, const std::string& dir) {
    std::vector<std::string> ours;
    for (const auto& line : split_lines(r.out + "\n" + r.err)) {
        if (line.find("outbox-worker") != std::string::npos ||
            line.find(dir) != std::string::npos) {
            ours.push_back(line);
        }
    }
    return ours;
}

RunResult verify(const std::string& unit_path) {
    return run(systemd_analyze(), {"verify", "--man=no", unit_path});
}

std::string describe(const RunResult& r) {
    return "status: " + r.status.describe() + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// The key=value entries of one section of a unit file, in order, comments and blank lines left
// out. Our units have no continuation lines.
std::vector<std::pair<std::string, std::string>> section_entries(const std::string& text,
                                                                 const std::string& section) {
    std::vector<std::pair<std::string, std::string>> entries;
    std::string current;
    for (const auto& line : split_lines(text)) {
        if (line.empty() || line[0] == '#' || line[0] == ';') {
            continue;
        }
        if (line.front() == '[' && line.back() == ']') {
            current = line.substr(1, line.size() - 2);
            continue;
        }
        size_t eq = line.find('=');
        if (current == section && eq != std::string::npos) {
            entries.emplace_back(line.substr(0, eq), line.substr(eq + 1));
        }
    }
    return entries;
}

std::string single_value(const std::string& text, const std::string& section,
                         const std::string& key) {
    std::vector<std::string> values;
    for (const auto& [k, v] : section_entries(text, section)) {
        if (k == key) {
            values.push_back(v);
        }
    }
    INFO(section << "/" << key);
    REQUIRE(values.size() == 1);
    return values.front();
}

// The variables `check-config` prints, i.e. the effective configuration, as name -> value.
std::map<std::string, std::string> effective_configuration(const RunResult& r) {
    std::map<std::string, std::string> config;
    for (const auto& line : split_lines(r.out)) {
        static const std::regex assignment(R"(^([A-Z][A-Z0-9_]*)=(.*)$)");
        std::smatch m;
        if (std::regex_match(line, m, assignment)) {
            config[m[1]] = m[2];
        }
    }
    return config;
}

std::map<std::string, std::string> default_configuration() {
    RunResult r = run(OUTBOX_BINARY, {"check-config"}, {{"DATABASE_URL", kSomeDatabaseUrl}});
    INFO(describe(r));
    REQUIRE(r.status.exited_with(0));
    auto config = effective_configuration(r);
    REQUIRE(config.count("OUTBOX_SHUTDOWN_TIMEOUT_MS") == 1);
    return config;
}

// TimeoutStopSec= as milliseconds; our units write plain seconds or "<n>s".
long stop_timeout_ms(const std::string& value) {
    static const std::regex seconds(R"(^(\d+)s?$)");
    std::smatch m;
    INFO("TimeoutStopSec=" << value);
    REQUIRE(std::regex_match(value, m, seconds));
    return std::stol(m[1]) * 1000;
}

} // namespace

TEST_CASE("systemd: systemd-analyze verify accepts both units", "[ops][systemd]") {
    TempDir dir;
    write_file(dir.path() + "/outbox-worker.env", "DATABASE_URL=" + kSomeDatabaseUrl + "\n");
    write_file(dir.path() + "/demo.env", "DATABASE_URL=" + kSomeDatabaseUrl + "\n");

    SECTION("outbox-worker.service") {
        std::string unit = installable_copy(kUnit, dir.path(), "outbox-worker.service");
        RunResult r = verify(unit);
        INFO(describe(r));
        CHECK(r.status.exited_with(0));
        CHECK(warnings_about_our_units(r, dir.path()).empty());
    }
    SECTION("outbox-worker@.service, as the instance outbox-worker@demo") {
        std::string unit = installable_copy(kTemplate, dir.path(), "outbox-worker@demo.service");
        RunResult r = verify(unit);
        INFO(describe(r));
        CHECK(r.status.exited_with(0));
        CHECK(warnings_about_our_units(r, dir.path()).empty());
    }
    SECTION("a mistake in a unit is reported, so the checks above can fail") {
        std::string unit =
            installable_copy(kUnit, dir.path(), "outbox-worker.service", "Restrt=on-failure");
        RunResult r = verify(unit);
        INFO(describe(r));
        auto warnings = warnings_about_our_units(r, dir.path());
        REQUIRE(!warnings.empty());
        CHECK(warnings.front().find("Restrt") != std::string::npos);
    }
}

TEST_CASE("systemd: the sandbox keeps the exposure level low", "[ops][systemd]") {
    // `systemd-analyze security` rates a unit's sandbox from 0 (locked down) to 10; --threshold
    // takes ten times that and makes the command fail above it. The units rate about 1.5 ("OK")
    // today: this catches a setting dropped by accident.
    TempDir dir;
    for (const auto& [source, name] :
         {std::pair{kUnit, std::string("outbox-worker.service")},
          std::pair{kTemplate, std::string("outbox-worker@demo.service")}}) {
        std::string unit = installable_copy(source, dir.path(), name);
        RunResult r =
            run(systemd_analyze(), {"security", "--offline=true", "--threshold=25", unit});
        INFO(name << "\n" << describe(r));
        CHECK(r.status.exited_with(0));
        CHECK(r.out.find("Overall exposure level for " + name) != std::string::npos);
    }
}

TEST_CASE("systemd: the template differs from the plain unit only where it must",
          "[ops][systemd]") {
    // Both units carry the same long list of settings; an improvement made to one and forgotten in
    // the other shows up here.
    std::string unit = read_text_file(kUnit);
    std::string tmpl = read_text_file(kTemplate);
    REQUIRE(!unit.empty());
    REQUIRE(!tmpl.empty());
    const std::set<std::string> per_instance = {"Description", "Environment", "EnvironmentFile",
                                                "SyslogIdentifier"};
    for (const char* section : {"Unit", "Service", "Install"}) {
        auto strip = [&](std::vector<std::pair<std::string, std::string>> entries) {
            std::erase_if(entries, [&](const auto& e) { return per_instance.count(e.first) != 0; });
            return entries;
        };
        INFO("[" << section << "]");
        CHECK(strip(section_entries(unit, section)) == strip(section_entries(tmpl, section)));
    }
    CHECK(single_value(unit, "Service", "EnvironmentFile") ==
          "/etc/outbox-worker/outbox-worker.env");
    CHECK(single_value(tmpl, "Service", "EnvironmentFile") == "/etc/outbox-worker/%i.env");
    CHECK(single_value(tmpl, "Service", "Environment") == "OUTBOX_INSTANCE_ID=%H-%i");
}

TEST_CASE("systemd: the units agree with the binary", "[ops][systemd]") {
    auto defaults = default_configuration();
    long shutdown_ms = std::stol(defaults.at("OUTBOX_SHUTDOWN_TIMEOUT_MS"));

    // A configuration error must be the exit code systemd is told not to restart on.
    RunResult bad = run(OUTBOX_BINARY, {"check-config"},
                        {{"DATABASE_URL", kSomeDatabaseUrl}, {"OUTBOX_WORKERS", "many"}});
    INFO(describe(bad));
    REQUIRE(bad.status.exited());

    for (const std::string& path : {kUnit, kTemplate}) {
        std::string text = read_text_file(path);
        INFO(path);
        CHECK(single_value(text, "Service", "Type") == "notify");
        CHECK(single_value(text, "Service", "ExecStart") == kInstalledBinary + " run");
        CHECK(single_value(text, "Service", "ExecStartPre") == kInstalledBinary + " check-config");
        CHECK(single_value(text, "Service", "KillMode") == "mixed");
        CHECK(single_value(text, "Service", "RestartPreventExitStatus") ==
              std::to_string(bad.status.code));
        // The drain takes up to OUTBOX_SHUTDOWN_TIMEOUT_MS, then the handler processes get 5 s to
        // quit; systemd must not SIGKILL the service before both are over.
        CHECK(stop_timeout_ms(single_value(text, "Service", "TimeoutStopSec")) >
              shutdown_ms + 5000);
    }
}

TEST_CASE("systemd: the example environment file shows every variable with its default",
          "[ops][systemd]") {
    auto defaults = default_configuration();

    // "#NAME=value" lines are the settings; prose comments start with "# ".
    std::map<std::string, std::string> example;
    static const std::regex setting(R"(^#([A-Z][A-Z0-9_]*)=(.*)$)");
    for (const auto& line : split_lines(read_text_file(kEnvExample))) {
        std::smatch m;
        if (std::regex_match(line, m, setting)) {
            INFO(line);
            CHECK(example.count(m[1]) == 0);
            example[m[1]] = m[2];
        }
    }
    for (const auto& [name, value] : defaults) {
        INFO(name << " is missing from " << kEnvExample);
        CHECK(example.count(name) == 1);
    }

    // Every value shown, uncommented, must give exactly the defaults. The database URL and the
    // handlers file are examples of what to fill in, not defaults; the instance id defaults to
    // one containing the pid, which differs between the two runs.
    std::map<std::string, std::optional<std::string>> env = {{"DATABASE_URL", kSomeDatabaseUrl}};
    for (const auto& [name, value] : example) {
        if (name != "DATABASE_URL" && name != "OUTBOX_HANDLERS") {
            env[name] = value;
        }
    }
    RunResult r = run(OUTBOX_BINARY, {"check-config"}, env);
    INFO(describe(r));
    REQUIRE(r.status.exited_with(0));
    auto shown = effective_configuration(r);
    for (const auto& [name, value] : defaults) {
        if (name == "OUTBOX_INSTANCE_ID") {
            continue;
        }
        INFO(name);
        CHECK(shown[name] == value);
    }
}
