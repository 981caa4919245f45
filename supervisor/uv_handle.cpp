#include "supervisor/uv_handle.h"

#include "common/check.h"

#include <map>

namespace outbox {

Timer::Timer(uv_loop_t* loop, std::function<void()> on_fire) {
    Block* b = adopt(std::move(on_fire));
    OUTBOX_CHECK(uv_timer_init(loop, &b->raw) == 0);
}

void Timer::start(uint64_t timeout_ms, uint64_t repeat_ms) {
    if (block_ == nullptr) {
        return;
    }
    uv_timer_start(
        &block_->raw,
        [](uv_timer_t* t) noexcept {
            Block* b = block_of(t);
            if (!b->closed && b->callback) {
                b->callback();
            }
        },
        timeout_ms, repeat_ms);
}

void Timer::stop() {
    if (block_ != nullptr) {
        uv_timer_stop(&block_->raw);
    }
}

bool Timer::active() const {
    return block_ != nullptr && uv_is_active(reinterpret_cast<const uv_handle_t*>(&block_->raw));
}

uint64_t Timer::due_in() const {
    if (!active()) {
        return 0;
    }
    uint64_t due = uv_timer_get_due_in(&block_->raw);
    return due;
}

Signal::Signal(uv_loop_t* loop, int signum, std::function<void(int)> on_signal) {
    Block* b = adopt(std::move(on_signal));
    OUTBOX_CHECK(uv_signal_init(loop, &b->raw) == 0);
    OUTBOX_CHECK(uv_signal_start(
                     &b->raw,
                     [](uv_signal_t* s, int sig) noexcept {
                         Block* blk = block_of(s);
                         if (!blk->closed && blk->callback) {
                             blk->callback(sig);
                         }
                     },
                     signum) == 0);
}

Check::Check(uv_loop_t* loop, std::function<void()> on_check) {
    Block* b = adopt(std::move(on_check));
    OUTBOX_CHECK(uv_check_init(loop, &b->raw) == 0);
    OUTBOX_CHECK(uv_check_start(&b->raw, [](uv_check_t* c) noexcept {
                     Block* blk = block_of(c);
                     if (!blk->closed && blk->callback) {
                         blk->callback();
                     }
                 }) == 0);
}

int Poll::open(uv_loop_t* loop, int fd, std::function<void(int, int)> on_event) {
    close();
    Block* b = adopt(std::move(on_event));
    int rc = uv_poll_init_socket(loop, &b->raw, fd);
    if (rc != 0) {
        // Never initialised: libuv holds no pointer to it, so it is freed here, not closed.
        delete std::exchange(block_, nullptr);
        return rc;
    }
    fd_ = fd;
    return 0;
}

void Poll::start(int events) {
    if (block_ == nullptr) {
        return;
    }
    uv_poll_start(&block_->raw, events, [](uv_poll_t* p, int status, int ev) noexcept {
        Block* blk = block_of(p);
        if (!blk->closed && blk->callback) {
            blk->callback(status, ev);
        }
    });
}

namespace {

// One write in flight: libuv keeps pointers to the request and to the bytes until the write
// callback, which frees both.
struct PipeWrite {
    uv_write_t req{};
    std::string bytes;
    std::function<void(int status)> on_written;
};

} // namespace

int Pipe::open(uv_loop_t* loop, int fd) {
    close();
    Block* b = adopt({});
    int rc = uv_pipe_init(loop, &b->raw, 0);
    if (rc != 0) {
        // Never initialised: libuv holds no pointer to it, so it is freed here, not closed.
        delete std::exchange(block_, nullptr);
        return rc;
    }
    rc = uv_pipe_open(&b->raw, fd);
    if (rc != 0) {
        // Initialised, so it must be closed; it never took `fd`, so closing leaves that alone.
        close();
        return rc;
    }
    return 0;
}

int Pipe::read_start(size_t buffer_size, std::function<void(ssize_t, const char*)> on_read) {
    if (block_ == nullptr) {
        return UV_EBADF;
    }
    detail::PipeCallbacks& cb = block_->callback;
    cb.on_read = std::move(on_read);
    if (cb.buffer_size != buffer_size) {
        cb.buffer = std::make_unique<char[]>(buffer_size);
        cb.buffer_size = buffer_size;
    }
    return uv_read_start(
        reinterpret_cast<uv_stream_t*>(&block_->raw),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) noexcept {
            Block* blk = static_cast<Block*>(h->data);
            *buf = uv_buf_init(blk->callback.buffer.get(),
                               static_cast<unsigned>(blk->callback.buffer_size));
        },
        [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) noexcept {
            Block* blk = static_cast<Block*>(s->data);
            if (nread != 0 && !blk->closed && blk->callback.on_read) {
                blk->callback.on_read(nread, buf->base);
            }
        });
}

void Pipe::read_stop() {
    if (block_ != nullptr) {
        uv_read_stop(reinterpret_cast<uv_stream_t*>(&block_->raw));
    }
}

int Pipe::write(std::string bytes, std::function<void(int)> on_written) {
    if (block_ == nullptr) {
        return UV_EBADF;
    }
    auto w = std::make_unique<PipeWrite>();
    w->bytes = std::move(bytes);
    w->on_written = std::move(on_written);
    w->req.data = w.get();
    uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
    int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&block_->raw), &buf, 1,
                      [](uv_write_t* req, int status) noexcept {
                          std::unique_ptr<PipeWrite> done(static_cast<PipeWrite*>(req->data));
                          // The handle's block outlives every write callback: libuv cancels the
                          // queued writes while closing, before it runs the close callback.
                          Block* blk = static_cast<Block*>(req->handle->data);
                          if (!blk->closed && done->on_written) {
                              done->on_written(status);
                          }
                      });
    if (rc == 0) {
        static_cast<void>(w.release()); // the write callback owns it now
    }
    return rc;
}

int Pipe::fd() const {
    uv_os_fd_t fd = -1;
    if (block_ == nullptr ||
        uv_fileno(reinterpret_cast<const uv_handle_t*>(&block_->raw), &fd) != 0) {
        return -1;
    }
    return fd;
}

std::string close_loop(uv_loop_t* loop) {
    // Close callbacks of handles closed during the last iteration run in the next one.
    uv_run(loop, UV_RUN_NOWAIT);
    if (uv_loop_close(loop) == 0) {
        return {};
    }
    std::map<std::string, int> open;
    uv_walk(
        loop,
        [](uv_handle_t* h, void* arg) noexcept {
            auto& m = *static_cast<std::map<std::string, int>*>(arg);
            m[uv_handle_type_name(uv_handle_get_type(h))] += uv_is_closing(h) ? 0 : 1;
        },
        &open);
    std::string what;
    for (const auto& [type, n] : open) {
        if (!what.empty()) {
            what += ", ";
        }
        what += std::to_string(n) + " " + type;
    }
    return what.empty() ? "handles still closing" : what;
}

} // namespace outbox
