// The `outbox-worker` binary: the service and its command line, with the handlers of the
// handlers file (OUTBOX_HANDLERS) only. An application that registers handlers in code has its own
// main of the same shape (examples/app.cpp).
#include <outbox/outbox.h>

int main(int argc, char** argv) {
    outbox::Worker worker;
    return worker.main(argc, argv);
}
