#include "tests/support/rabbitmq_server.h"

#include <catch2/catch.hpp>

#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sys/time.h>

namespace outbox::test {

namespace {

// The real start script. /usr/sbin/rabbitmq-server is a wrapper that, run as root, re-runs this
// one as the rabbitmq user through su, after a cd to /var/lib/rabbitmq: our temporary directory
// would then have to be readable by that user, and su would sit between us and the node.
constexpr const char* kStartScript = "/usr/lib/rabbitmq/bin/rabbitmq-server";
constexpr auto kStartTimeout = std::chrono::seconds(60);
constexpr auto kStopTimeout = std::chrono::seconds(60);

std::string tail_of(const std::string& text, size_t max) {
    return text.size() <= max ? text : "[...]" + text.substr(text.size() - max);
}

amqp_bytes_t bytes_of(const std::string& text) {
    return amqp_bytes_t{text.size(), const_cast<char*>(text.data())};
}

std::string string_of(amqp_bytes_t bytes) {
    return bytes.len == 0 ? std::string()
                          : std::string(static_cast<const char*>(bytes.bytes), bytes.len);
}

std::string describe(const amqp_rpc_reply_t& reply) {
    switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return "ok";
    case AMQP_RESPONSE_NONE:
        return "no reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return amqp_error_string2(reply.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            auto* close = static_cast<amqp_connection_close_t*>(reply.reply.decoded);
            return "connection closed: " + std::to_string(close->reply_code) + " " +
                   string_of(close->reply_text);
        }
        if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            auto* close = static_cast<amqp_channel_close_t*>(reply.reply.decoded);
            return "channel closed: " + std::to_string(close->reply_code) + " " +
                   string_of(close->reply_text);
        }
        return "server exception";
    }
    return "unknown reply";
}

// Opens and logs in, with short timeouts. nullptr and `error` set when it does not work (yet).
amqp_connection_state_t open_login(int port, const std::string& user, const std::string& password,
                                   std::string& error) {
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t* socket = amqp_tcp_socket_new(conn);
    timeval timeout{2, 0};
    int rc = amqp_socket_open_noblock(socket, "127.0.0.1", port, &timeout);
    if (rc != AMQP_STATUS_OK) {
        error = std::string("connect: ") + amqp_error_string2(rc);
        amqp_destroy_connection(conn);
        return nullptr;
    }
    amqp_set_handshake_timeout(conn, &timeout);
    amqp_rpc_reply_t reply =
        amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, user.c_str(), password.c_str());
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        error = "login: " + describe(reply);
        amqp_destroy_connection(conn);
        return nullptr;
    }
    timeval rpc_timeout{10, 0};
    amqp_set_rpc_timeout(conn, &rpc_timeout);
    return conn;
}

bool port_accepts(int port) {
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t* socket = amqp_tcp_socket_new(conn);
    timeval timeout{1, 0};
    bool ok = amqp_socket_open_noblock(socket, "127.0.0.1", port, &timeout) == AMQP_STATUS_OK;
    amqp_destroy_connection(conn);
    return ok;
}

std::string make_temp_dir() {
    const char* tmpdir = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/outbox-rabbitmq-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) {
        FAIL("mkdtemp failed: " << std::strerror(errno));
    }
    return pattern;
}

std::atomic<int> node_counter{0};

} // namespace

RabbitMqServer::RabbitMqServer() : RabbitMqServer(Options{}) {}

RabbitMqServer::RabbitMqServer(Options options) : options_(std::move(options)) {
    if (access(kStartScript, X_OK) != 0) {
        FAIL(kStartScript << " is missing: install Debian's rabbitmq-server package");
    }
    dir_ = make_temp_dir();
    node_name_ = "outbox-test-" + std::to_string(getpid()) + "-" +
                 std::to_string(node_counter.fetch_add(1)) + "@localhost";
    std::set<int> ports;
    while (ports.size() < 3) {
        ports.insert(free_tcp_port());
    }
    auto port = ports.begin();
    amqp_port_ = *port++;
    dist_port_ = *port++;
    epmd_port_ = *port;

    namespace fs = std::filesystem;
    for (const char* sub : {"home", "mnesia", "log", "plugins-expand"}) {
        fs::create_directories(fs::path(dir_) / sub);
    }
    // The default user exists from the first boot on, with a password of our own; "guest"
    // would work too (it may log in over the loopback interface) but would hide a password
    // leaking into an error message.
    std::ofstream config(dir_ + "/rabbitmq.conf");
    config << "listeners.tcp.default = 127.0.0.1:" << amqp_port_ << "\n"
           << "default_user = " << user_ << "\n"
           << "default_pass = " << password_ << "\n"
           << "loopback_users = none\n"
           // A test machine's /tmp may be nearly full; the default limit (50 MB free) would
           // block publishers.
           << "disk_free_limit.absolute = 1MB\n"
           << "log.console = false\n"
           << "log.file.level = info\n";
    for (const auto& line : options_.config) {
        config << line << "\n";
    }
    config.close();
    std::ofstream(dir_ + "/enabled_plugins") << "[].\n";
    // An empty rabbitmq-env.conf of our own, so that /etc/rabbitmq/rabbitmq-env.conf is not read.
    std::ofstream(dir_ + "/rabbitmq-env.conf") << "";

    start();
}

RabbitMqServer::~RabbitMqServer() {
    // Gone before its directory is removed: a dying node may still write to it.
    if (node_) {
        kill_node();
    }
    epmd_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
}

std::string RabbitMqServer::url() const {
    return "amqp://" + user_ + ":" + password_ + "@127.0.0.1:" + std::to_string(amqp_port_) + "/";
}

void RabbitMqServer::launch() {
    // epmd in the foreground, as our child: started by the node itself it would daemonize and
    // outlive the test. The node is told not to start one (-start_epmd false).
    SpawnOptions epmd_options;
    epmd_options.args = {"-port", std::to_string(epmd_port_), "-address", "127.0.0.1"};
    epmd_ = std::make_unique<ChildProcess>("epmd", epmd_options);
    bool epmd_up = wait_until([&] { return port_accepts(epmd_port_) || !epmd_->is_running(); },
                              std::chrono::seconds(10));
    if (!epmd_up || !epmd_->is_running()) {
        FAIL("epmd did not start on port " << epmd_port_ << "\n" << epmd_->describe());
    }

    SpawnOptions spawn;
    spawn.cwd = dir_;
    spawn.env = {
        {"HOME", dir_ + "/home"},
        {"RABBITMQ_NODENAME", node_name_},
        {"RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1"},
        {"RABBITMQ_NODE_PORT", std::to_string(amqp_port_)},
        {"RABBITMQ_DIST_PORT", std::to_string(dist_port_)},
        {"ERL_EPMD_PORT", std::to_string(epmd_port_)},
        {"RABBITMQ_MNESIA_BASE", dir_ + "/mnesia"},
        {"RABBITMQ_LOG_BASE", dir_ + "/log"},
        {"RABBITMQ_CONFIG_FILE", dir_ + "/rabbitmq.conf"},
        {"RABBITMQ_ADVANCED_CONFIG_FILE", dir_ + "/advanced.config"},
        {"RABBITMQ_ENABLED_PLUGINS_FILE", dir_ + "/enabled_plugins"},
        {"RABBITMQ_PLUGINS_EXPAND_DIR", dir_ + "/plugins-expand"},
        {"RABBITMQ_CONF_ENV_FILE", dir_ + "/rabbitmq-env.conf"},
        {"RABBITMQ_PID_FILE", dir_ + "/rabbitmq.pid"},
        {"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-start_epmd false"},
        // The start script then exec()s the Erlang VM instead of running it in the background
        // and waiting for it (its mode for systemd and -detached), so that the VM is our child:
        // it inherits ChildProcess's "killed when the test dies", and a test process that is
        // killed or crashes leaves no node behind.
        {"detached", "1"},
        // Whatever the caller's environment says about another node must not leak in.
        {"RABBITMQ_NODE_ONLY", std::nullopt},
        {"RABBITMQ_ALLOW_INPUT", std::nullopt},
        {"NOTIFY_SOCKET", std::nullopt},
    };
    node_ = std::make_unique<ChildProcess>(kStartScript, spawn);
}

void RabbitMqServer::start() {
    REQUIRE(node_ == nullptr);
    auto started = std::chrono::steady_clock::now();
    launch();
    std::string last_error;
    bool up = wait_until(
        [&] {
            if (!node_->is_running()) {
                return true;
            }
            amqp_connection_state_t conn = open_login(amqp_port_, user_, password_, last_error);
            if (conn == nullptr) {
                return false;
            }
            amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
            amqp_destroy_connection(conn);
            return true;
        },
        kStartTimeout, std::chrono::milliseconds(100));
    if (!node_->is_running()) {
        FAIL("rabbitmq-server exited during start-up (" << node_->status()->describe() << ")\n"
                                                        << log_tail());
    }
    if (!up) {
        FAIL("rabbitmq-server did not accept an AMQP login within "
             << kStartTimeout.count() << " s (last error: " << last_error << ")\n"
             << log_tail());
    }
    last_start_duration_ = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
}

void RabbitMqServer::stop(StopMode mode) {
    REQUIRE(node_ != nullptr);
    if (mode == StopMode::shutdown) {
        // RabbitMQ stops in order on SIGTERM.
        node_->send_signal(SIGTERM);
        if (!node_->wait_exit(kStopTimeout)) {
            FAIL("rabbitmq-server did not stop on SIGTERM\n" << log_tail());
        }
    }
    if (!kill_node()) {
        FAIL("port " << amqp_port_ << " still accepts connections after the node was killed");
    }
    epmd_.reset();
}

bool RabbitMqServer::kill_node() {
    // The Erlang VM's group. Its port programs (erl_child_setup and what that starts) run in
    // sessions of their own and end when the VM does.
    node_->signal_group(SIGKILL);
    node_->wait_exit(std::chrono::seconds(10));
    node_.reset();
    // Reaped means its sockets are closed; the check costs nothing and says so in the failure
    // message if it ever is not so.
    return wait_until([&] { return !port_accepts(amqp_port_); }, std::chrono::seconds(10));
}

void RabbitMqServer::pause() {
    REQUIRE(node_ != nullptr);
    // Waits for the Erlang VM's threads to stop: until then one of them could still confirm a
    // publication.
    stop_and_wait(node_->pid(), /*group=*/true);
}

void RabbitMqServer::resume() {
    REQUIRE(node_ != nullptr);
    node_->signal_group(SIGCONT);
}

std::string RabbitMqServer::log_tail(size_t max_bytes) const {
    std::string out = "--- " + dir_ + "/log/" + node_name_ + ".log:\n" +
                      tail_of(read_text_file(dir_ + "/log/" + node_name_ + ".log"), max_bytes);
    if (node_) {
        out += "\n--- stdout:\n" + tail_of(node_->stdout_text(), max_bytes / 2) +
               "\n--- stderr:\n" + tail_of(node_->stderr_text(), max_bytes / 2);
    }
    return out;
}

AmqpTestClient::AmqpTestClient(const RabbitMqServer& server) {
    std::string error;
    conn_ = open_login(server.port(), server.user(), server.password(), error);
    if (conn_ == nullptr) {
        FAIL("test client cannot connect to " << server.host_port() << ": " << error);
    }
    amqp_channel_open(conn_, 1);
    require_ok("channel.open");
}

AmqpTestClient::~AmqpTestClient() {
    if (conn_ != nullptr) {
        timeval timeout{2, 0};
        amqp_set_rpc_timeout(conn_, &timeout);
        amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(conn_);
    }
}

void AmqpTestClient::require_ok(const char* what) {
    amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn_);
    INFO(what << ": " << describe(reply));
    REQUIRE(reply.reply_type == AMQP_RESPONSE_NORMAL);
}

void AmqpTestClient::declare_exchange(const std::string& name, const std::string& type) {
    amqp_exchange_declare(conn_, 1, bytes_of(name), bytes_of(type), /*passive=*/0,
                          /*durable=*/1, /*auto_delete=*/0, /*internal=*/0, amqp_empty_table);
    require_ok("exchange.declare");
}

void AmqpTestClient::delete_exchange(const std::string& name) {
    amqp_exchange_delete(conn_, 1, bytes_of(name), /*if_unused=*/0);
    require_ok("exchange.delete");
}

void AmqpTestClient::declare_queue(const std::string& name) {
    amqp_queue_declare(conn_, 1, bytes_of(name), /*passive=*/0, /*durable=*/1, /*exclusive=*/0,
                       /*auto_delete=*/0, amqp_empty_table);
    require_ok("queue.declare");
}

void AmqpTestClient::bind(const std::string& queue, const std::string& exchange,
                          const std::string& binding_key) {
    amqp_queue_bind(conn_, 1, bytes_of(queue), bytes_of(exchange), bytes_of(binding_key),
                    amqp_empty_table);
    require_ok("queue.bind");
}

uint32_t AmqpTestClient::queue_length(const std::string& queue) {
    amqp_queue_declare_ok_t* ok =
        amqp_queue_declare(conn_, 1, bytes_of(queue), /*passive=*/1, 0, 0, 0, amqp_empty_table);
    require_ok("queue.declare (passive)");
    return ok->message_count;
}

std::vector<ReceivedAmqpMessage> AmqpTestClient::consume(const std::string& queue, size_t count,
                                                         std::chrono::milliseconds timeout) {
    std::vector<ReceivedAmqpMessage> received;
    received.reserve(count);
    amqp_basic_consume_ok_t* consuming =
        amqp_basic_consume(conn_, 1, bytes_of(queue), amqp_empty_bytes, /*no_local=*/0,
                           /*no_ack=*/1, /*exclusive=*/0, amqp_empty_table);
    require_ok("basic.consume");
    std::string consumer_tag = string_of(consuming->consumer_tag);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (received.size() < count) {
        auto left = std::chrono::duration_cast<std::chrono::microseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            break;
        }
        timeval wait{static_cast<time_t>(left.count() / 1000000),
                     static_cast<suseconds_t>(left.count() % 1000000)};
        amqp_maybe_release_buffers(conn_);
        amqp_envelope_t envelope;
        amqp_rpc_reply_t reply = amqp_consume_message(conn_, &envelope, &wait, 0);
        if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            reply.library_error == AMQP_STATUS_TIMEOUT) {
            break;
        }
        INFO("consuming from " << queue << ": " << describe(reply));
        REQUIRE(reply.reply_type == AMQP_RESPONSE_NORMAL);
        ReceivedAmqpMessage message;
        message.exchange = string_of(envelope.exchange);
        message.routing_key = string_of(envelope.routing_key);
        message.body = string_of(envelope.message.body);
        const amqp_basic_properties_t& properties = envelope.message.properties;
        if (properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
            message.message_id = string_of(properties.message_id);
        }
        if (properties._flags & AMQP_BASIC_CONTENT_TYPE_FLAG) {
            message.content_type = string_of(properties.content_type);
        }
        if (properties._flags & AMQP_BASIC_TYPE_FLAG) {
            message.type = string_of(properties.type);
        }
        if (properties._flags & AMQP_BASIC_DELIVERY_MODE_FLAG) {
            message.delivery_mode = properties.delivery_mode;
        }
        if (properties._flags & AMQP_BASIC_HEADERS_FLAG) {
            for (int i = 0; i < properties.headers.num_entries; ++i) {
                const amqp_table_entry_t& entry = properties.headers.entries[i];
                std::string value = entry.value.kind == AMQP_FIELD_KIND_UTF8 ||
                                            entry.value.kind == AMQP_FIELD_KIND_BYTES
                                        ? string_of(entry.value.value.bytes)
                                        : "<kind " + std::to_string(entry.value.kind) + ">";
                message.headers.emplace_back(string_of(entry.key), std::move(value));
            }
        }
        amqp_destroy_envelope(&envelope);
        received.push_back(std::move(message));
    }
    // Deliveries that arrive before cancel-ok are kept by rabbitmq-c and never looked at.
    amqp_basic_cancel(conn_, 1, bytes_of(consumer_tag));
    require_ok("basic.cancel");
    INFO("received " << received.size() << " of " << count << " messages from " << queue);
    REQUIRE(received.size() == count);
    return received;
}

} // namespace outbox::test
