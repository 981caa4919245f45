// libuv handles owned once, closed through one path (uvw's Handle<T> is the model).
//
// libuv keeps a pointer to a handle until its close callback has run, so a handle must not live
// in memory that is freed or moved before then. Each wrapper here therefore owns its uv handle
// on the heap together with the C++ callback it calls; the wrapper object itself is only an
// owner. Closing (explicitly, or by destroying the wrapper) calls uv_close(), and the heap block
// is freed in the close callback, never earlier. The wrapper can be destroyed at any time: a
// callback that was due but had not run is not run.
//
// Callbacks from C go through `noexcept` trampolines: an exception escaping a callback is a bug
// (errors are values inside the supervisor), and it terminates the process loudly instead of
// unwinding through libuv's C frames.
//
// A handle still open when the loop is closed is a leak; close_loop() reports every one of them by
// type and fails, which makes each engine test a leak test (libuv's MAKE_VALGRIND_HAPPY).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

namespace outbox {

namespace detail {

template <typename Raw, typename Callback>
struct HandleBlock {
    Raw raw{};
    Callback callback;
    // Set by close(). The callback object is destroyed only with the block, in the close
    // callback, because close() may be called from inside the callback itself.
    bool closed = false;
};

// Owns one heap block holding a uv handle. Not copyable; movable (the block does not move).
template <typename Raw, typename Callback>
class UvHandle {
  public:
    using Block = HandleBlock<Raw, Callback>;

    UvHandle() = default;
    ~UvHandle() { close(); }
    UvHandle(const UvHandle&) = delete;
    UvHandle& operator=(const UvHandle&) = delete;
    UvHandle(UvHandle&& other) noexcept : block_(std::exchange(other.block_, nullptr)) {}
    UvHandle& operator=(UvHandle&& other) noexcept {
        if (this != &other) {
            close();
            block_ = std::exchange(other.block_, nullptr);
        }
        return *this;
    }

    // Closes the handle (idempotent). Its memory is freed once libuv has let go of it.
    void close() noexcept {
        if (block_ == nullptr) {
            return;
        }
        Block* b = std::exchange(block_, nullptr);
        b->closed = true; // nothing runs any more, even a callback already due
        uv_close(reinterpret_cast<uv_handle_t*>(&b->raw),
                 [](uv_handle_t* h) noexcept { delete static_cast<Block*>(h->data); });
    }
    bool is_open() const { return block_ != nullptr; }

  protected:
    Block* block_ = nullptr;

    Block* adopt(Callback callback) {
        block_ = new Block;
        block_->callback = std::move(callback);
        block_->raw.data = block_;
        return block_;
    }
    static Block* block_of(Raw* raw) { return static_cast<Block*>(raw->data); }
};

// What a Pipe's block holds besides the handle: the read callback and the one read buffer.
struct PipeCallbacks {
    std::function<void(ssize_t nread, const char* data)> on_read;
    std::unique_ptr<char[]> buffer;
    size_t buffer_size = 0;
};

} // namespace detail

// A uv_timer_t. start() re-arms it (replacing any pending expiry); on a closed timer it does
// nothing, so that work finishing while the service closes cannot re-arm what is gone.
class Timer : public detail::UvHandle<uv_timer_t, std::function<void()>> {
  public:
    Timer() = default;
    Timer(uv_loop_t* loop, std::function<void()> on_fire);

    void start(uint64_t timeout_ms, uint64_t repeat_ms = 0);
    void stop();
    // Whether the timer is armed.
    bool active() const;
    // Milliseconds until it fires (0 when not armed or overdue).
    uint64_t due_in() const;
};

// A uv_signal_t watching one signal; the callback receives the signal number.
class Signal : public detail::UvHandle<uv_signal_t, std::function<void(int)>> {
  public:
    Signal() = default;
    Signal(uv_loop_t* loop, int signum, std::function<void(int)> on_signal);
};

// A uv_check_t: runs once per loop iteration, after the iteration's I/O.
class Check : public detail::UvHandle<uv_check_t, std::function<void()>> {
  public:
    Check() = default;
    Check(uv_loop_t* loop, std::function<void()> on_check);
};

// A uv_poll_t watching a socket it does not own: close the Poll before the socket, since libuv
// must stop watching a descriptor before it is closed (and possibly reused).
class Poll : public detail::UvHandle<uv_poll_t, std::function<void(int status, int events)>> {
  public:
    Poll() = default;
    // Watches `fd`; 0, or a negative libuv error with the Poll left closed.
    [[nodiscard]] int open(uv_loop_t* loop, int fd,
                           std::function<void(int status, int events)> on_event);
    void start(int events);
    int fd() const { return fd_; }

  private:
    int fd_ = -1;
};

// A uv_pipe_t over a stream socket it owns from open() on: closing the Pipe closes the descriptor.
//
// Reads go through one buffer, allocated by read_start() and reused for every read: libuv asks for
// a buffer right before each read and hands it back in the read callback. The buffer lives in the
// heap block, so it stays valid through a read callback that closes the Pipe.
//
// Each write owns its bytes until libuv's write callback has run. Closing the Pipe cancels the
// writes still queued (libuv calls their write callbacks with UV_ECANCELED, before the close
// callback), and their bytes are freed then; so a Pipe may be closed, or destroyed, with writes in
// flight. As with every callback here, on_written does not run once the Pipe is closed.
class Pipe : public detail::UvHandle<uv_pipe_t, detail::PipeCallbacks> {
  public:
    Pipe() = default;
    // Takes `fd` over: 0, or a negative libuv error with the Pipe left closed and `fd` still the
    // caller's to close.
    [[nodiscard]] int open(uv_loop_t* loop, int fd);
    // Starts reading into a buffer of `buffer_size` bytes. on_read receives nread > 0 bytes at
    // `data` (valid only during the call), or a negative libuv error (UV_EOF at end of file; the
    // Pipe goes on reading until it is stopped or closed). Empty reads, libuv's way of saying
    // EAGAIN, are not passed on. 0, or a negative libuv error. Not from inside on_read.
    [[nodiscard]] int read_start(size_t buffer_size,
                                 std::function<void(ssize_t nread, const char* data)> on_read);
    void read_stop();
    // Queues `bytes` for writing after the writes already queued. on_written, if given, receives
    // the outcome (0 or a negative libuv error). Returns 0, or a negative libuv error when nothing
    // was queued (then on_written does not run); UV_EBADF on a closed Pipe.
    [[nodiscard]] int write(std::string bytes, std::function<void(int status)> on_written = {});
    // The descriptor, to read synchronously outside a read callback; -1 when the Pipe is closed.
    int fd() const;
};

// Closes `loop` after running it until every closing handle's callback has run. Returns an empty
// string when the loop closed, or a description of the handles still open (a leak) otherwise.
[[nodiscard]] std::string close_loop(uv_loop_t* loop);

} // namespace outbox
