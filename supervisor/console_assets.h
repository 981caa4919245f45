// The console's page, script and style sheet (docs/console.md), embedded in the binary at build
// time from console/ by cmake/embed_assets.cmake, as the SQL migrations are: the service needs
// nothing beside its executable to serve them, and works offline.
#pragma once

#include <string_view>

namespace outbox {

struct ConsoleAsset {
    std::string_view path;         // the URL path it is served at: "/", "/console.js", ...
    std::string_view content_type; // with charset for text
    std::string_view body;
};

// The asset served at `path`, or nullptr.
const ConsoleAsset* find_console_asset(std::string_view path);

} // namespace outbox
