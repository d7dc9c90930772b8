/* The bench's closed loop: keep-alive HTTP/1.1 connections on one epoll set,
 * each carrying one request at a time, each slot sending its next request as
 * soon as its last one is answered (what wrk does). Plain C and POSIX, on its
 * own thread (loop_main), holding Loop.mu except while it waits for events;
 * the Python side (_engine.c) takes the finished records under that lock. */
#define _GNU_SOURCE
#include "_engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_READ (65536 + (64 << 20))  /* the most an answer may take: as _engine_http.c's limits */

long long loop_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* -- records ------------------------------------------------------------- */
static int reserve(Loop *e, size_t more) {  /* room for one more record and `more` body bytes */
    if (e->out.n == e->out.cap) {
        size_t cap = e->out.cap ? 2 * e->out.cap : 4096;
        Rec *r = realloc(e->out.recs, cap * sizeof(Rec));
        if (!r) return e->oom = 1, -1;
        e->out.recs = r, e->out.cap = cap;
    }
    if (e->out.len + more > e->out.arena_cap) {
        size_t cap = e->out.arena_cap ? e->out.arena_cap : 1 << 20;
        while (cap < e->out.len + more) cap *= 2;
        char *a = realloc(e->out.arena, cap);
        if (!a) return e->oom = 1, -1;
        e->out.arena = a, e->out.arena_cap = cap;
    }
    return 0;
}

/* Records a request's end; its body, `blen` bytes, is already at the arena's end. */
static void add_rec(Loop *e, long index, long long sent, long long done, int status, int error, size_t blen) {
    e->out.recs[e->out.n++] = (Rec){index, sent, done, status, error, e->out.len, blen};
    e->out.len += blen;
}

static void add_error(Loop *e, long index, long long sent, long long done, int error) {
    if (reserve(e, 0) == 0) add_rec(e, index, sent, done, 0, error, 0);
}

/* -- connections ----------------------------------------------------------- */
static void conn_close(Loop *e, Conn *c) {
    if (c->fd < 0) return;
    close(c->fd);                       /* also leaves the epoll set */
    c->fd = -1;
    Conn *last = e->all[--e->n_all];    /* swap-remove from `all` */
    e->all[c->pos] = last, last->pos = c->pos;
    if (c->idle) {
        for (int i = 0; i < e->n_idle; i++)
            if (e->idle[i] == c) { e->idle[i] = e->idle[--e->n_idle]; break; }
    }
    c->next_dead = e->dead, e->dead = c;  /* freed after the epoll batch that may still name it */
}

static void free_dead(Loop *e) {
    while (e->dead) {
        Conn *c = e->dead;
        e->dead = c->next_dead;
        free(c->buf);
        free(c);
    }
}

static int watch(Loop *e, Conn *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    c->want_out = out;
    return epoll_ctl(e->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static Conn *conn_open(Loop *e) {
    if (e->n_all == e->cap_all) {
        int cap = e->cap_all ? 2 * e->cap_all : 128;
        Conn **all = realloc(e->all, cap * sizeof(Conn *));
        if (!all) return NULL;
        e->all = all, e->cap_all = cap;
    }
    Conn *c = calloc(1, sizeof(Conn));
    if (!c) return NULL;
    c->fd = socket(e->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { free(c); return NULL; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&e->addr, e->addrlen) < 0) {
        if (errno != EINPROGRESS) { close(c->fd); free(c); return NULL; }
        c->connecting = 1;
    }
    struct epoll_event ev = {.events = EPOLLIN | (c->connecting ? EPOLLOUT : 0), .data.ptr = c};
    c->want_out = c->connecting;
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) { close(c->fd); free(c); return NULL; }
    c->pos = e->n_all;
    e->all[e->n_all++] = c;
    return c;
}

static Conn *take_idle(Loop *e) {
    return e->n_idle ? e->idle[--e->n_idle] : NULL;
}

static void give_back(Loop *e, Conn *c) {
    if (c->fd < 0 || c->busy) return;
    if (e->n_idle < e->pool_size) {
        c->idle = 1;
        e->idle[e->n_idle++] = c;
    } else {
        conn_close(e, c);
    }
}

/* -- the closed loop ------------------------------------------------------- */
static void slot_next(Loop *e, Conn *c, long long now);

/* Ends the request in flight on `c` with `error` and drops `c`; its slot goes
 * on from the event loop (`pending`), not from here: no recursion however
 * often connections fail. */
static void fail(Loop *e, Conn *c, int error) {
    int busy = c->busy;
    c->busy = 0;
    conn_close(e, c);
    if (busy) {
        e->in_flight--;
        add_error(e, c->index, c->sent_ns, loop_now_ns(), error);
        e->pending++;
    }
}

/* Writes what is left of the request; 0, or -1 when the connection failed (handled). */
static int flush_out(Loop *e, Conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) { c->out_off += n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return c->want_out ? 0 : (watch(e, c, 1) < 0 ? (fail(e, c, ERR_CONNECTION), -1) : 0);
        }
        fail(e, c, ERR_CONNECTION);
        return -1;
    }
    if (c->want_out && watch(e, c, 0) < 0) { fail(e, c, ERR_CONNECTION); return -1; }
    return 0;
}

/* The slot that held `c` (NULL: none any more) sends its next request, or ends. */
static void slot_next(Loop *e, Conn *c, long long now) {
    if (__atomic_load_n(&e->stop_flag, __ATOMIC_RELAXED) || (e->max_requests >= 0 && e->issued >= e->max_requests)
            || (e->end_ns && now >= e->end_ns)) {
        if (c) give_back(e, c);
        e->slots--;
        return;
    }
    long index = e->issued++;
    if (!c || c->fd < 0) c = take_idle(e);
    if (!c) c = conn_open(e);
    e->sent++;
    if (!c) {  /* no socket: the request fails now, and the slot goes on with the next */
        add_error(e, index, now, now, ERR_CONNECTION);
        e->pending++;
        return;
    }
    e->in_flight++;
    c->idle = 0, c->busy = 1, c->index = index, c->sent_ns = now, c->len = 0;
    c->out = e->req_data[index % e->n_req], c->out_len = e->req_len[index % e->n_req], c->out_off = 0;
    if (!c->connecting) flush_out(e, c);
}

/* Reads what `c` has read; completes its request when the answer is whole.
 * `eof`: the peer closed, so an answer without a length ends here. */
static void parse(Loop *e, Conn *c, int eof) {
    if (!c->busy) { conn_close(e, c); return; }  /* bytes nobody asked for, or an idle close */
    Answer a;
    int whole = http_answer(c->buf, c->len, eof, &a);
    if (whole < 0 || (whole && reserve(e, a.body_len) < 0)) { fail(e, c, ERR_CONNECTION); return; }
    if (!whole) return;
    char *body = e->out.arena + e->out.len;
    if (a.chunked) http_dechunk(c->buf + a.body_off, c->buf + a.msg_len, body);
    else memcpy(body, c->buf + a.body_off, a.body_len);
    long long done = loop_now_ns();
    c->busy = 0;
    e->in_flight--;
    add_rec(e, c->index, c->sent_ns, done, a.status, ERR_NONE, a.body_len);
    if (!a.keep_alive || a.msg_len != c->len || eof) {  /* closed, or bytes beyond the answer: not reusable */
        conn_close(e, c);
        slot_next(e, NULL, done);
    } else {
        c->len = 0;
        slot_next(e, c, done);
    }
}

static void on_event(Loop *e, Conn *c, uint32_t events) {
    if (c->fd < 0) return;
    if (c->connecting && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err) { fail(e, c, ERR_CONNECTION); return; }
        c->connecting = 0;
        if (c->busy) { if (flush_out(e, c) < 0) return; }
        else if (watch(e, c, 0) < 0) { fail(e, c, ERR_CONNECTION); return; }
    } else if (events & EPOLLOUT) {
        if (flush_out(e, c) < 0) return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    size_t before = c->len;
    for (;;) {  /* read until the socket is drained, then parse what came */
        if (c->cap - c->len < 16384) {
            size_t cap = c->cap ? 2 * c->cap : 32768;
            char *buf = realloc(c->buf, cap);
            if (!buf) { e->oom = 1; fail(e, c, ERR_CONNECTION); return; }
            c->buf = buf, c->cap = cap;
        }
        size_t room = c->cap - c->len;
        ssize_t n = recv(c->fd, c->buf + c->len, room, 0);
        if (n > 0) {
            c->len += n;
            if ((size_t)n < room) break;  /* less than asked for: nothing more is waiting */
            if (c->len > MAX_READ) { fail(e, c, ERR_CONNECTION); return; }
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n == 0) parse(e, c, 1);
        else fail(e, c, ERR_CONNECTION);
        return;
    }
    if (c->len > before) parse(e, c, 0);
}

/* Fails every request in flight for longer than its time-out. Backwards:
 * closing a connection moves the last one, already looked at, into its place. */
static void sweep(Loop *e, long long now) {
    for (int i = e->n_all - 1; i >= 0; i--) {
        Conn *c = e->all[i];
        if (c->busy && now - c->sent_ns > (c->connecting ? e->connect_timeout_ns : e->timeout_ns))
            fail(e, c, ERR_TIMEOUT);
    }
}

static void run_pending(Loop *e, long long until) {
    while (e->pending > 0 && !__atomic_load_n(&e->abort_flag, __ATOMIC_RELAXED)) {
        e->pending--;
        long long now = loop_now_ns();
        slot_next(e, NULL, now);
        if (now >= until) break;
    }
}


/* -- the loop's life ------------------------------------------------------- */
int loop_init(Loop *l, int family, const struct sockaddr_storage *addr, socklen_t addrlen, double timeout_s,
              int pool_size) {
    memset(l, 0, sizeof *l);
    l->ep = l->wake_fd = -1;
    l->family = family, l->addr = *addr, l->addrlen = addrlen, l->pool_size = pool_size;
    l->timeout_ns = (long long)(timeout_s * 1e9);
    l->connect_timeout_ns = timeout_s < 5.0 ? l->timeout_ns : 5000000000LL;  /* as wire.Target.connect */
    l->sweep_every_ns = (long long)((timeout_s / 4 < 0.25 ? timeout_s / 4 : 0.25) * 1e9);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&l->mu, NULL);
    l->idle = calloc(pool_size > 0 ? pool_size : 1, sizeof(Conn *));
    if (!l->idle) return errno = ENOMEM, -1;
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->ep < 0 || l->wake_fd < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    return epoll_ctl(l->ep, EPOLL_CTL_ADD, l->wake_fd, &ev);
}

void loop_begin(Loop *l, const char **data, size_t *len, long n, long concurrency, long max_requests,
                long long end_ns) {
    l->req_data = data, l->req_len = len, l->n_req = n;
    l->issued = l->sent = 0, l->max_requests = max_requests, l->end_ns = end_ns;
    l->in_flight = 0, l->oom = l->failed_errno = l->finished = 0;
    l->slots = l->pending = (int)concurrency;
    __atomic_store_n(&l->stop_flag, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&l->abort_flag, 0, __ATOMIC_RELAXED);
    l->next_sweep_ns = loop_now_ns() + l->sweep_every_ns;
}

void *loop_main(void *arg) {
    Loop *e = arg;
    struct epoll_event events[256];
    pthread_mutex_lock(&e->mu);
    /* First what happened while no run went: kept connections the server has closed since. */
    int ready = epoll_wait(e->ep, events, 256, 0);
    for (int i = 0; i < ready; i++)
        if (events[i].data.ptr) on_event(e, events[i].data.ptr, events[i].events);
    free_dead(e);
    for (;;) {
        long long now = loop_now_ns();
        run_pending(e, now + 10000000LL);  /* at most 10 ms at a time: the lock is let go in between */
        free_dead(e);
        if (e->slots <= 0 || e->oom || __atomic_load_n(&e->abort_flag, __ATOMIC_RELAXED)) break;
        int timeout_ms = e->pending ? 0 : (int)((e->next_sweep_ns - now + 999999) / 1000000);
        pthread_mutex_unlock(&e->mu);
        int n = epoll_wait(e->ep, events, 256, timeout_ms < 0 ? 0 : timeout_ms);
        pthread_mutex_lock(&e->mu);
        if (n < 0 && errno != EINTR) { e->failed_errno = errno; break; }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr) {
                on_event(e, events[i].data.ptr, events[i].events);
            } else {
                uint64_t count;
                if (read(e->wake_fd, &count, sizeof count) < 0) { /* nothing to drain */ }
            }
        }
        free_dead(e);
        now = loop_now_ns();
        if (now >= e->next_sweep_ns) {
            sweep(e, now);
            free_dead(e);
            e->next_sweep_ns = now + e->sweep_every_ns;
        }
    }
    if (e->slots > 0) {  /* aborted or failed: what is in flight stays unanswered */
        for (int i = e->n_all - 1; i >= 0; i--)
            if (e->all[i]->busy) conn_close(e, e->all[i]);
        free_dead(e);
    }
    e->finished = 1;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

void loop_wake(Loop *l) {
    uint64_t one = 1;
    if (write(l->wake_fd, &one, sizeof one) < 0) { /* the counter is full: it is awake anyway */ }
}

void loop_close_all(Loop *l) {
    while (l->n_all) conn_close(l, l->all[l->n_all - 1]);
    free_dead(l);
    l->n_idle = 0;
}

void loop_free(Loop *l) {
    loop_close_all(l);
    if (l->ep >= 0) close(l->ep);
    if (l->wake_fd >= 0) close(l->wake_fd);
    l->ep = l->wake_fd = -1;
    free(l->all), free(l->idle), free(l->out.recs), free(l->out.arena);
    l->all = l->idle = NULL, l->out.recs = NULL, l->out.arena = NULL;
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
}
