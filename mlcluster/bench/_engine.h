/* The bench's compiled closed loop: shared by _engine_loop.c (the loop) and
 * _engine_http.c (reading answers), plain C and POSIX with no Python, and
 * _engine.c (the Python type over them). */
#ifndef MLCLUSTER_ENGINE_H
#define MLCLUSTER_ENGINE_H

#include <pthread.h>
#include <stddef.h>
#include <sys/socket.h>

enum { ERR_NONE, ERR_CONNECTION, ERR_TIMEOUT };

typedef struct Conn {
    int fd, pos;              /* pos: index in Loop.all */
    int connecting, busy, want_out, idle;
    long index;               /* the request in flight */
    long long sent_ns;
    const char *out;
    size_t out_len, out_off;
    char *buf;
    size_t len, cap;
    struct Conn *next_dead;
} Conn;

typedef struct {              /* one request's end */
    long index;
    long long sent_ns, done_ns;
    int status, error;        /* error: ERR_*; status 0 then */
    size_t body_off, body_len;
} Rec;

typedef struct {              /* finished requests, their bodies in one arena */
    Rec *recs;
    size_t n, cap;
    char *arena;
    size_t len, arena_cap;
} Records;

typedef struct {
    int ep, wake_fd;          /* wake_fd: an eventfd in the epoll set, written by loop_wake */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int family, pool_size;
    long long timeout_ns, connect_timeout_ns, sweep_every_ns, next_sweep_ns;
    Conn **all; int n_all, cap_all;   /* every open connection */
    Conn **idle; int n_idle;          /* open, no request, kept for the next one */
    Conn *dead;                       /* closed during an epoll batch, freed after it */
    /* the run */
    const char **req_data; size_t *req_len; long n_req;
    long issued, max_requests, sent;  /* max_requests < 0: no limit */
    long long end_ns;                 /* 0: no end time */
    int slots, in_flight, pending;    /* pending: slots owed a next request */
    int stop_flag, abort_flag;        /* set from other threads: atomics */
    int oom, failed_errno, finished;
    Records out;
    /* `mu` is held by the loop's thread except while it waits in epoll_wait;
     * `cv` is signalled when the run has finished. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} Loop;

typedef struct {              /* a whole answer, as http_answer read it */
    int status, keep_alive, chunked;
    size_t body_off, body_len;        /* chunked: where the chunks start, and their decoded size */
    size_t msg_len;                   /* the bytes it took, interim answers included */
} Answer;

/* _engine_http.c: 1 and `a` when buf[0:len] starts with a whole answer, 0 when
 * more is needed, -1 when it cannot be read; `eof`: nothing more will come. */
int http_answer(const char *buf, size_t len, int eof, Answer *a);
/* The decoded body of chunks from `p` that http_answer found whole, into `out`. */
size_t http_dechunk(const char *p, const char *end, char *out);

int loop_init(Loop *l, int family, const struct sockaddr_storage *addr, socklen_t addrlen, double timeout_s,
              int pool_size);        /* 0, or -1 with errno */
void loop_begin(Loop *l, const char **data, size_t *len, long n, long concurrency, long max_requests,
                long long end_ns);
void *loop_main(void *loop);         /* the run, on its own thread, until every slot has ended */
void loop_wake(Loop *l);
void loop_close_all(Loop *l);        /* only while no run is going */
void loop_free(Loop *l);
long long loop_now_ns(void);         /* CLOCK_MONOTONIC: Python's time.perf_counter_ns */

#endif
