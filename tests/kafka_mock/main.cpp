// outbox-test-kafka-mock: a Kafka cluster for the tests, from librdkafka's built-in mock cluster
// (rd_kafka_mock_cluster_new). Kafka has no Debian server package; the mock cluster speaks the real
// Kafka protocol on real sockets (Metadata, InitProducerId, Produce with idempotence checks,
// Fetch), so the sink under test and the consumer that reads back are ordinary librdkafka clients.
//
//     outbox-test-kafka-mock [--brokers N] TOPIC[:PARTITIONS] ...
//
// Creates the cluster (3 brokers unless --brokers says otherwise) and the topics (4 partitions
// unless a count follows the name), prints the bootstrap servers on one stdout line, then runs one
// command per stdin line and answers each with one line, "ok" or "error <why>", once it has taken
// effect (so a test that waits for the answer knows the cluster is in the new state):
//
//     down [ID]                      all brokers (or broker ID) down: connections are closed and
//                                    new ones refused, as when the server stops
//     up [ID]                        all brokers (or broker ID) up again, on the same ports
//     rtt MS [ID]                    all brokers (or broker ID) answer every request MS
//                                    milliseconds late
//     topic NAME PARTITIONS          creates a topic
//     topic-error NAME CODE          metadata requests for topic NAME answer with the Kafka error
//                                    CODE (3 = UNKNOWN_TOPIC_OR_PART: "there is no such topic")
//     produce-errors CODE COUNT      the next COUNT Produce requests, on any broker, fail with the
//                                    Kafka error CODE (e.g. 10 = MESSAGE_TOO_LARGE)
//
// It exits on EOF on stdin, so it never outlives the test that started it.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <sys/prctl.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr int16_t kProduceApiKey = 0;

void usage() {
    std::cerr << "usage: outbox-test-kafka-mock [--brokers N] TOPIC[:PARTITIONS] ...\n";
    std::exit(2);
}

int parse_count(const std::string& text) {
    try {
        size_t used = 0;
        int value = std::stoi(text, &used);
        if (used == text.size() && value > 0) {
            return value;
        }
    } catch (const std::exception&) {
    }
    usage();
    return 0;
}

// Sets one broker, or every broker (ids 1..count) when `id` is 0, up or down.
std::string set_state(rd_kafka_mock_cluster_t* cluster, int broker_count, int id, bool up) {
    for (int b = 1; b <= broker_count; ++b) {
        if (id != 0 && b != id) {
            continue;
        }
        rd_kafka_resp_err_t err = up ? rd_kafka_mock_broker_set_up(cluster, b)
                                     : rd_kafka_mock_broker_set_down(cluster, b);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            return std::string("error broker ") + std::to_string(b) + ": " + rd_kafka_err2str(err);
        }
    }
    return "ok";
}

std::string run_command(rd_kafka_mock_cluster_t* cluster, int broker_count,
                        const std::string& line) {
    std::istringstream words(line);
    std::string command;
    words >> command;
    if (command == "down" || command == "up") {
        int id = 0;
        if (!(words >> id)) {
            id = 0;
        }
        return set_state(cluster, broker_count, id, command == "up");
    }
    if (command == "rtt") {
        int rtt_ms = -1;
        int id = 0;
        if (!(words >> rtt_ms) || rtt_ms < 0) {
            return "error usage: rtt MS [ID]";
        }
        if (!(words >> id)) {
            id = 0;
        }
        for (int b = 1; b <= broker_count; ++b) {
            if (id == 0 || b == id) {
                rd_kafka_resp_err_t err = rd_kafka_mock_broker_set_rtt(cluster, b, rtt_ms);
                if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                    return std::string("error broker ") + std::to_string(b) + ": " +
                           rd_kafka_err2str(err);
                }
            }
        }
        return "ok";
    }
    if (command == "topic") {
        std::string name;
        int partitions = 0;
        if (!(words >> name >> partitions) || partitions <= 0) {
            return "error usage: topic NAME PARTITIONS";
        }
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(cluster, name.c_str(), partitions,
                                                             std::min(3, broker_count));
        return err ? std::string("error ") + rd_kafka_err2str(err) : "ok";
    }
    if (command == "topic-error") {
        // The mock cluster creates topics on demand (it answers metadata requests of versions
        // that cannot ask for no auto-creation), so a topic the cluster does not know is played
        // by a topic whose metadata carries the error.
        std::string name;
        int code = 0;
        if (!(words >> name >> code)) {
            return "error usage: topic-error NAME CODE";
        }
        rd_kafka_mock_topic_set_error(cluster, name.c_str(),
                                      static_cast<rd_kafka_resp_err_t>(code));
        return "ok";
    }
    if (command == "produce-errors") {
        int code = 0;
        int count = 0;
        if (!(words >> code >> count) || count <= 0) {
            return "error usage: produce-errors CODE COUNT";
        }
        std::vector<rd_kafka_resp_err_t> errors(static_cast<size_t>(count),
                                                static_cast<rd_kafka_resp_err_t>(code));
        rd_kafka_mock_push_request_errors_array(cluster, kProduceApiKey, errors.size(),
                                                errors.data());
        return "ok";
    }
    return "error unknown command: " + command;
}

} // namespace

int main(int argc, char** argv) {
    // The test that started this program may die without closing our stdin (SIGKILL); the
    // kernel then ends us too.
    prctl(PR_SET_PDEATHSIG, SIGKILL);

    int broker_count = 3;
    std::vector<std::pair<std::string, int>> topics;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--brokers" && i + 1 < argc) {
            broker_count = parse_count(argv[++i]);
        } else if (arg.empty() || arg[0] == '-') {
            usage();
        } else {
            size_t colon = arg.rfind(':');
            if (colon == std::string::npos) {
                topics.emplace_back(arg, 4);
            } else {
                topics.emplace_back(arg.substr(0, colon), parse_count(arg.substr(colon + 1)));
            }
        }
    }

    // The mock cluster runs on a client instance of its own, which no test ever produces with.
    char errstr[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    // Not a warning about the missing bootstrap.servers that this instance never needs.
    rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == nullptr) {
        std::cerr << "rd_kafka_new: " << errstr << "\n";
        return 1;
    }
    rd_kafka_mock_cluster_t* cluster = rd_kafka_mock_cluster_new(rk, broker_count);
    if (cluster == nullptr) {
        std::cerr << "rd_kafka_mock_cluster_new failed\n";
        return 1;
    }
    for (const auto& [name, partitions] : topics) {
        rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(cluster, name.c_str(), partitions,
                                                             std::min(3, broker_count));
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            std::cerr << "cannot create topic " << name << ": " << rd_kafka_err2str(err) << "\n";
            return 1;
        }
    }

    std::cout << rd_kafka_mock_cluster_bootstraps(cluster) << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty()) {
            continue;
        }
        std::cout << run_command(cluster, broker_count, line) << std::endl;
    }

    rd_kafka_mock_cluster_destroy(cluster);
    rd_kafka_destroy(rk);
    return 0;
}
