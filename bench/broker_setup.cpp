// Small broker tool for bench/run.sh (part "brokers"): declares what a burn-down publishes into
// and counts what arrived, with each broker's own client library (never the service's sinks).
// Built by bench/run.sh with
//   g++ -std=c++20 -O2 bench/broker_setup.cpp -lnats -lrabbitmq -lrdkafka -o broker_setup
//
// broker_setup nats-stream URL STREAM SUBJECT
//     Creates the JetStream stream STREAM (file storage, every other setting the server's
//     default) capturing SUBJECT, after deleting it if it exists: every burn-down starts from an
//     empty stream.
// broker_setup nats-count URL STREAM
//     Prints the number of messages in STREAM.
// broker_setup amqp-queue URL EXCHANGE QUEUE BINDING_KEY
//     Declares the durable topic exchange EXCHANGE, deletes the queue QUEUE if it exists,
//     declares it again (durable, classic) and binds it to EXCHANGE with BINDING_KEY: the
//     sink's messages are mandatory, so without a bound queue every one would be unroutable.
// broker_setup amqp-count URL QUEUE
//     Prints the number of messages ready in QUEUE.
// broker_setup kafka-count BROKERS TOPIC
//     Prints the sum over TOPIC's partitions of their high watermarks: the records the
//     cluster acknowledged, counted without reading them.
//
// Errors go to stderr with exit status 1; usage errors exit 2.
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <librdkafka/rdkafka.h>
#include <nats/nats.h>

#include <sys/time.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "broker_setup: %s\n", what.c_str());
    std::exit(1);
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: broker_setup nats-stream URL STREAM SUBJECT\n"
                         "       broker_setup nats-count URL STREAM\n"
                         "       broker_setup amqp-queue URL EXCHANGE QUEUE BINDING_KEY\n"
                         "       broker_setup amqp-count URL QUEUE\n"
                         "       broker_setup kafka-count BROKERS TOPIC\n");
    std::exit(2);
}

// ---- NATS JetStream -------------------------------------------------------------------------

struct Nats {
    natsConnection* nc = nullptr;
    jsCtx* js = nullptr;

    explicit Nats(const std::string& url) {
        natsStatus s = natsConnection_ConnectTo(&nc, url.c_str());
        if (s != NATS_OK) {
            fail("nats: connect to " + url + ": " + natsStatus_GetText(s));
        }
        s = natsConnection_JetStream(&js, nc, nullptr);
        if (s != NATS_OK) {
            fail(std::string("nats: JetStream context: ") + natsStatus_GetText(s));
        }
    }
    ~Nats() {
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
    }
    Nats(const Nats&) = delete;
    Nats& operator=(const Nats&) = delete;
};

std::string nats_error(natsStatus s, jsErrCode code) {
    const char* last = nats_GetLastError(nullptr);
    return std::string(last && *last ? last : natsStatus_GetText(s)) + " (JetStream error code " +
           std::to_string(static_cast<int>(code)) + ")";
}

int nats_stream(const std::string& url, const std::string& stream, const std::string& subject) {
    Nats nats(url);
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = js_DeleteStream(nats.js, stream.c_str(), nullptr, &code);
    if (s != NATS_OK && s != NATS_NOT_FOUND && code != JSStreamNotFoundErr) {
        fail("nats: delete stream " + stream + ": " + nats_error(s, code));
    }
    jsStreamConfig config;
    jsStreamConfig_Init(&config);
    config.Name = stream.c_str();
    const char* subjects[] = {subject.c_str()};
    config.Subjects = subjects;
    config.SubjectsLen = 1;
    config.Storage = js_FileStorage;
    jsStreamInfo* info = nullptr;
    code = static_cast<jsErrCode>(0);
    s = js_AddStream(&info, nats.js, &config, nullptr, &code);
    if (s != NATS_OK) {
        fail("nats: add stream " + stream + ": " + nats_error(s, code));
    }
    jsStreamInfo_Destroy(info);
    return 0;
}

int nats_count(const std::string& url, const std::string& stream) {
    Nats nats(url);
    jsStreamInfo* info = nullptr;
    jsErrCode code = static_cast<jsErrCode>(0);
    natsStatus s = js_GetStreamInfo(&info, nats.js, stream.c_str(), nullptr, &code);
    if (s != NATS_OK) {
        fail("nats: stream info " + stream + ": " + nats_error(s, code));
    }
    std::printf("%llu\n", static_cast<unsigned long long>(info->State.Msgs));
    jsStreamInfo_Destroy(info);
    return 0;
}

// ---- RabbitMQ -------------------------------------------------------------------------------

amqp_bytes_t bytes_of(const std::string& text) {
    return amqp_bytes_t{text.size(), const_cast<char*>(text.data())};
}

struct Amqp {
    amqp_connection_state_t conn = amqp_new_connection();

    explicit Amqp(const std::string& url) {
        // amqp_parse_url writes into the string it parses.
        std::vector<char> buffer(url.begin(), url.end());
        buffer.push_back('\0');
        amqp_connection_info info;
        amqp_default_connection_info(&info);
        if (amqp_parse_url(buffer.data(), &info) != AMQP_STATUS_OK) {
            fail("amqp: cannot parse the URL");
        }
        amqp_socket_t* socket = amqp_tcp_socket_new(conn);
        timeval timeout{10, 0};
        int rc = amqp_socket_open_noblock(socket, info.host, info.port, &timeout);
        if (rc != AMQP_STATUS_OK) {
            fail(std::string("amqp: connect: ") + amqp_error_string2(rc));
        }
        // "amqp://host/" has an empty path, which the AMQP URI spec reads as the vhost "": what
        // everyone who writes it means is the default vhost "/", as the service's sink takes it.
        const char* vhost = *info.vhost == '\0' ? "/" : info.vhost;
        amqp_rpc_reply_t reply =
            amqp_login(conn, vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, info.user, info.password);
        check(reply, "login");
        amqp_set_rpc_timeout(conn, &timeout);
        amqp_channel_open(conn, 1);
        check(amqp_get_rpc_reply(conn), "channel.open");
    }
    ~Amqp() {
        amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(conn);
    }
    Amqp(const Amqp&) = delete;
    Amqp& operator=(const Amqp&) = delete;

    static void check(const amqp_rpc_reply_t& reply, const char* what) {
        if (reply.reply_type == AMQP_RESPONSE_NORMAL) {
            return;
        }
        std::string why = "server exception";
        if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
            why = amqp_error_string2(reply.library_error);
        } else if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
                   reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            auto* close = static_cast<amqp_channel_close_t*>(reply.reply.decoded);
            why = std::to_string(close->reply_code) + " " +
                  std::string(static_cast<const char*>(close->reply_text.bytes),
                              close->reply_text.len);
        }
        fail(std::string("amqp: ") + what + ": " + why);
    }
};

int amqp_queue(const std::string& url, const std::string& exchange, const std::string& queue,
               const std::string& binding_key) {
    Amqp amqp(url);
    amqp_exchange_declare(amqp.conn, 1, bytes_of(exchange), bytes_of("topic"), /*passive=*/0,
                          /*durable=*/1, /*auto_delete=*/0, /*internal=*/0, amqp_empty_table);
    Amqp::check(amqp_get_rpc_reply(amqp.conn), "exchange.declare");
    // Deleting a queue that does not exist is not an error in RabbitMQ.
    amqp_queue_delete(amqp.conn, 1, bytes_of(queue), /*if_unused=*/0, /*if_empty=*/0);
    Amqp::check(amqp_get_rpc_reply(amqp.conn), "queue.delete");
    amqp_queue_declare(amqp.conn, 1, bytes_of(queue), /*passive=*/0, /*durable=*/1,
                       /*exclusive=*/0, /*auto_delete=*/0, amqp_empty_table);
    Amqp::check(amqp_get_rpc_reply(amqp.conn), "queue.declare");
    amqp_queue_bind(amqp.conn, 1, bytes_of(queue), bytes_of(exchange), bytes_of(binding_key),
                    amqp_empty_table);
    Amqp::check(amqp_get_rpc_reply(amqp.conn), "queue.bind");
    return 0;
}

int amqp_count(const std::string& url, const std::string& queue) {
    Amqp amqp(url);
    amqp_queue_declare_ok_t* ok =
        amqp_queue_declare(amqp.conn, 1, bytes_of(queue), /*passive=*/1, 0, 0, 0, amqp_empty_table);
    Amqp::check(amqp_get_rpc_reply(amqp.conn), "queue.declare (passive)");
    std::printf("%u\n", ok->message_count);
    return 0;
}

// ---- Kafka ----------------------------------------------------------------------------------

int kafka_count(const std::string& brokers, const std::string& topic) {
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers.c_str(), errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        fail(std::string("kafka: ") + errstr);
    }
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == nullptr) {
        fail(std::string("kafka: rd_kafka_new: ") + errstr);
    }
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
    const rd_kafka_metadata_t* metadata = nullptr;
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &metadata, 10000);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fail("kafka: metadata of " + topic + ": " + rd_kafka_err2str(err));
    }
    if (metadata->topic_cnt != 1 || metadata->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fail("kafka: no topic " + topic);
    }
    int64_t total = 0;
    for (int i = 0; i < metadata->topics[0].partition_cnt; ++i) {
        int32_t partition = metadata->topics[0].partitions[i].id;
        int64_t low = 0;
        int64_t high = 0;
        err = rd_kafka_query_watermark_offsets(rk, topic.c_str(), partition, &low, &high, 10000);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fail("kafka: watermarks of " + topic + "[" + std::to_string(partition) +
                 "]: " + rd_kafka_err2str(err));
        }
        total += high;
    }
    rd_kafka_metadata_destroy(metadata);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    std::printf("%lld\n", static_cast<long long>(total));
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        usage();
    }
    const std::string& command = args[0];
    if (command == "nats-stream" && args.size() == 4) {
        return nats_stream(args[1], args[2], args[3]);
    }
    if (command == "nats-count" && args.size() == 3) {
        return nats_count(args[1], args[2]);
    }
    if (command == "amqp-queue" && args.size() == 5) {
        return amqp_queue(args[1], args[2], args[3], args[4]);
    }
    if (command == "amqp-count" && args.size() == 3) {
        return amqp_count(args[1], args[2]);
    }
    if (command == "kafka-count" && args.size() == 3) {
        return kafka_count(args[1], args[2]);
    }
    usage();
}
