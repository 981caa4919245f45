#include "worker/http_handler.h"

#include "worker/broker_message.h"
#include "worker/exec_handler.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <mutex>

namespace outbox {

namespace {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view text) {
    const auto is_space = [](char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n';
    };
    while (!text.empty() && is_space(text.front())) {
        text.remove_prefix(1);
    }
    while (!text.empty() && is_space(text.back())) {
        text.remove_suffix(1);
    }
    return text;
}

// Event ids and types come from the database; a control character in one must not be able to
// end a header line and start another.
std::string header_safe(std::string_view value) {
    std::string out(value);
    for (char& c : out) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
            c = ' ';
        }
    }
    return out;
}

struct CurlEasyDeleter {
    void operator()(CURL* easy) const { curl_easy_cleanup(easy); }
};

struct CurlSlistDeleter {
    void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using HeaderList = std::unique_ptr<curl_slist, CurlSlistDeleter>;

struct CurlUrlDeleter {
    void operator()(CURLU* url) const { curl_url_cleanup(url); }
};
using ParsedUrl = std::unique_ptr<CURLU, CurlUrlDeleter>;

ParsedUrl parse_url(const std::string& url) {
    ParsedUrl parsed(curl_url());
    if (parsed && curl_url_set(parsed.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) {
        parsed.reset();
    }
    return parsed;
}

std::optional<std::string> url_part(CURLU* url, CURLUPart part) {
    char* text = nullptr;
    if (curl_url_get(url, part, &text, 0) != CURLUE_OK || text == nullptr) {
        return std::nullopt;
    }
    std::string out(text);
    curl_free(text);
    return out;
}

// curl_global_init() is not thread-safe and must run once per process before any other libcurl
// call; the handler process is where it happens, on first use.
CURLcode global_init_once() {
    static std::once_flag once;
    static CURLcode result = CURLE_OK;
    std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
    return result;
}

// What one request collected through libcurl's callbacks.
struct Response {
    std::string body_start; // the first kHttpErrorBodyBytes of the body
    std::string retry_after;

    void clear() {
        body_start.clear();
        retry_after.clear();
    }
};

// The body is read to its end even though only its start is kept: a connection can be reused
// only once the previous response has been consumed entirely.
std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
    auto* response = static_cast<Response*>(user);
    const std::size_t bytes = size * count;
    if (response->body_start.size() < kHttpErrorBodyBytes) {
        response->body_start.append(
            data, std::min(bytes, kHttpErrorBodyBytes - response->body_start.size()));
    }
    return bytes;
}

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
    auto* response = static_cast<Response*>(user);
    const std::size_t bytes = size * count;
    std::string_view line(data, bytes);
    // libcurl passes the headers of every response it reads, interim ones (100 Continue)
    // included; only the final response's Retry-After counts.
    if (line.starts_with("HTTP/")) {
        response->retry_after.clear();
        return bytes;
    }
    const auto colon = line.find(':');
    if (colon != std::string_view::npos && iequals(trim(line.substr(0, colon)), "Retry-After")) {
        response->retry_after = std::string(trim(line.substr(colon + 1)));
    }
    return bytes;
}

// One http subscriber inside a handler process. It lives on the heap, shared by the copies of its
// Handler, and never moves, so libcurl may keep pointers to its members between requests.
class HttpDelivery {
  public:
    explicit HttpDelivery(HttpHandlerOptions options)
        : options_(std::move(options)), display_url_(redact_url(options_.url)) {
        for (const auto& [name, value] : options_.headers) {
            if (iequals(name, "Content-Type")) {
                custom_content_type_ = true;
            }
        }
    }
    HttpDelivery(const HttpDelivery&) = delete;
    HttpDelivery& operator=(const HttpDelivery&) = delete;

    Result deliver(const Event& event) {
        if (CURLcode code = global_init_once(); code != CURLE_OK) {
            return Result::retry(std::string("libcurl initialisation failed: ") +
                                 curl_easy_strerror(code));
        }
        if (!easy_) {
            if (auto problem = create_handle()) {
                return Result::retry(*problem);
            }
        }
        CURL* easy = easy_.get();

        HeaderList headers = build_headers(event);
        if (!headers) {
            return Result::retry("out of memory building the request headers");
        }
        response_.clear();
        error_buffer_[0] = '\0';
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers.get());
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, event.json().data());
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         static_cast<curl_off_t>(event.json().size()));

        CURLcode code;
        {
            ScopedSigpipeBlock sigpipe_block;
            code = curl_easy_perform(easy);
        }
        // The list dies with this call; the handle must not keep pointing at it.
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, nullptr);

        if (code != CURLE_OK) {
            return Result::retry(transfer_error(code));
        }
        long status = 0;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        const Outcome outcome = classify_http_status(status);
        if (outcome == Outcome::success) {
            return Result::ok();
        }
        std::string message = "HTTP " + std::to_string(status) + " from " + display_url_;
        std::string body = error_text_from_output(response_.body_start);
        if (!body.empty()) {
            message += ": ";
            message += body;
        }
        if (outcome == Outcome::permanent) {
            return Result::permanent(std::move(message));
        }
        return Result::retry(std::move(message),
                             parse_retry_after_ms(response_.retry_after, std::time(nullptr)));
    }

  private:
    // Everything that is the same for every request is set once, on the handle's creation.
    std::optional<std::string> create_handle() {
        std::unique_ptr<CURL, CurlEasyDeleter> easy(curl_easy_init());
        if (!easy) {
            return "libcurl could not create a handle";
        }
        CURL* handle = easy.get();
        const long timeout_ms = options_.timeout_ms;
        const long connect_timeout_ms = std::min(timeout_ms, 10000L);
        CURLcode code = CURLE_OK;
        auto set = [&](CURLoption option, auto value) {
            if (code == CURLE_OK) {
                code = curl_easy_setopt(handle, option, value);
            }
        };
        set(CURLOPT_URL, options_.url.c_str());
        // No signals: the default resolver would otherwise time DNS lookups out with SIGALRM.
        set(CURLOPT_NOSIGNAL, 1L);
        set(CURLOPT_TIMEOUT_MS, timeout_ms);
        set(CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
        set(CURLOPT_FOLLOWLOCATION, 0L);
        set(CURLOPT_PROTOCOLS_STR, "http,https");
        set(CURLOPT_SSL_VERIFYPEER, 1L);
        set(CURLOPT_SSL_VERIFYHOST, 2L);
        set(CURLOPT_USERAGENT, "outbox-worker");
        set(CURLOPT_ERRORBUFFER, error_buffer_);
        set(CURLOPT_WRITEFUNCTION, on_body);
        set(CURLOPT_WRITEDATA, static_cast<void*>(&response_));
        set(CURLOPT_HEADERFUNCTION, on_header);
        set(CURLOPT_HEADERDATA, static_cast<void*>(&response_));
        set(CURLOPT_POST, 1L);
        if (options_.method != "POST") {
            // With a body set through POSTFIELDS, a custom request sends the same body under the
            // other method name.
            set(CURLOPT_CUSTOMREQUEST, options_.method.c_str());
        }
        if (code != CURLE_OK) {
            return std::string("libcurl rejected an option: ") + curl_easy_strerror(code);
        }
        easy_ = std::move(easy);
        return std::nullopt;
    }

    HeaderList build_headers(const Event& event) const {
        HeaderList list;
        bool failed = false;
        auto add = [&](const std::string& line) {
            if (failed) {
                return;
            }
            curl_slist* extended = curl_slist_append(list.get(), line.c_str());
            if (extended == nullptr) {
                failed = true;
                return;
            }
            (void)list.release();
            list.reset(extended);
        };
        if (!custom_content_type_) {
            add("Content-Type: application/json");
        }
        // libcurl would otherwise send "Expect: 100-continue" with larger bodies and wait for an
        // interim response that many servers never send, costing a second per event.
        add("Expect:");
        add("Idempotency-Key: " + header_safe(event.id));
        add("X-Outbox-Event-Type: " + header_safe(event.event_type));
        add("X-Outbox-Attempt: " + std::to_string(event.attempt));
        // SPEC 4, "Trace context": the event's W3C trace context, validated (printable ASCII), so
        // it needs no header_safe.
        if (std::optional<TraceContext> trace = trace_context_of(event.metadata_json)) {
            add("traceparent: " + trace->traceparent);
            if (trace->tracestate) {
                add("tracestate: " + *trace->tracestate);
            }
        }
        for (const auto& [name, value] : options_.headers) {
            // "Name:" would remove a header in libcurl; "Name;" is its way to send an empty one.
            add(value.empty() ? name + ";" : name + ": " + value);
        }
        if (failed) {
            list.reset();
        }
        return list;
    }

    std::string transfer_error(CURLcode code) const {
        std::string detail = error_buffer_[0] != '\0' ? std::string(error_buffer_)
                                                      : std::string(curl_easy_strerror(code));
        // libcurl's text says "Couldn't connect to server" whether the port was closed, the host
        // unreachable or the network down; the system's error tells them apart.
        long os_error = 0;
        if (curl_easy_getinfo(easy_.get(), CURLINFO_OS_ERRNO, &os_error) == CURLE_OK &&
            os_error != 0) {
            detail += " (";
            detail += std::strerror(static_cast<int>(os_error));
            detail += ")";
        }
        if (code == CURLE_OPERATION_TIMEDOUT) {
            return "timed out after " + std::to_string(options_.timeout_ms) +
                   " ms: " + options_.method + " " + display_url_ + " (" + detail + ")";
        }
        return options_.method + " " + display_url_ + " failed: " + detail;
    }

    HttpHandlerOptions options_;
    std::string display_url_;
    bool custom_content_type_ = false;
    std::unique_ptr<CURL, CurlEasyDeleter> easy_;
    Response response_;
    char error_buffer_[CURL_ERROR_SIZE] = {};
};

} // namespace

Handler make_http_handler(HttpHandlerOptions options) {
    auto delivery = std::make_shared<HttpDelivery>(std::move(options));
    return [delivery](const Event& event) {
        return delivery->deliver(event);
    };
}

Outcome classify_http_status(long status) {
    if (status >= 200 && status <= 299) {
        return Outcome::success;
    }
    if (status == 408 || status == 429 || status >= 500) {
        return Outcome::retry;
    }
    // 3xx (redirects are not followed: a moved endpoint needs a configuration change), the other
    // 4xx, and the interim 1xx that cannot be final.
    return Outcome::permanent;
}

std::optional<std::string> http_url_problem(const std::string& url) {
    ParsedUrl parsed = parse_url(url);
    if (!parsed) {
        return "is not a valid URL";
    }
    // Without CURLU_GUESS_SCHEME libcurl insists on an explicit scheme, and reports it lowercased.
    auto scheme = url_part(parsed.get(), CURLUPART_SCHEME);
    if (!scheme || (*scheme != "http" && *scheme != "https")) {
        return "must start with http:// or https://";
    }
    auto host = url_part(parsed.get(), CURLUPART_HOST);
    if (!host || host->empty()) {
        return "has no host";
    }
    return std::nullopt;
}

std::string redact_url(const std::string& url) {
    ParsedUrl parsed = parse_url(url);
    if (!parsed) {
        return "(invalid URL)";
    }
    for (CURLUPart part : {CURLUPART_USER, CURLUPART_PASSWORD, CURLUPART_OPTIONS, CURLUPART_QUERY,
                           CURLUPART_FRAGMENT}) {
        curl_url_set(parsed.get(), part, nullptr, 0);
    }
    return url_part(parsed.get(), CURLUPART_URL).value_or("(invalid URL)");
}

long parse_retry_after_ms(std::string_view value, std::time_t now) {
    value = trim(value);
    if (value.empty()) {
        return 0;
    }
    constexpr long kMaxSeconds = kHttpMaxRetryAfterMs / 1000;
    if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        long seconds = 0;
        for (char c : value) {
            seconds = std::min(kMaxSeconds, seconds * 10 + (c - '0'));
        }
        return seconds * 1000;
    }
    const std::time_t when = curl_getdate(std::string(value).c_str(), nullptr);
    if (when == -1 || when <= now) {
        return 0;
    }
    return static_cast<long>(std::min<std::time_t>(when - now, kMaxSeconds)) * 1000;
}

} // namespace outbox
