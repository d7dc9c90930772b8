/* mlcluster bench's closed loop, compiled: the Python type over the loop in
 * _engine_loop.c (see mlcluster/bench/engine.py for why and how it is used).
 *
 * Engine(family, address, port, timeout_s, pool_size)
 * begin(requests, concurrency, max_requests, end_ns, step, origin_ns)
 *     starts a closed-loop run on its own thread (max_requests -1, end_ns 0:
 *     no limit); requests: a tuple of bytes, each a whole HTTP request.
 * take(seconds) -> (records, finished, sent, in_flight)
 *     waits up to `seconds` (without the GIL) or until the run has finished,
 *     then hands over the requests finished meanwhile, as stats.RawRecord
 *     tuples (step, index, scheduled_s, sent_s, done_s, status, error, body),
 *     times in seconds from origin_ns, in the order they ended.
 * stop()   sends nothing new (what is in flight still ends)
 * abort()  ends the run now; what is in flight stays unanswered
 * close()  ends the run, if one goes, and closes every connection */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <time.h>

#include "_engine.h"

typedef struct {
    PyObject_HEAD
    Loop loop;
    int ready, thread_alive, taking, step_no;  /* taking: a thread is in take(), which joins the run */
    pthread_t thread;
    long long origin_ns;
    PyObject *requests;       /* the run's tuple of bytes: the loop reads their buffers */
    const char **req_data;
    size_t *req_len;
    Records spare;            /* swapped with loop.out by take() */
} Engine;

static void join_thread(Engine *e) {
    if (!e->thread_alive) return;
    Py_BEGIN_ALLOW_THREADS
    pthread_join(e->thread, NULL);
    Py_END_ALLOW_THREADS
    e->thread_alive = 0;
}

static void end_run(Engine *e) {  /* the thread has ended: the requests may go */
    join_thread(e);
    Py_CLEAR(e->requests);
    free(e->req_data), free(e->req_len);
    e->req_data = NULL, e->req_len = NULL;
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kw) {
    static char *names[] = {"family", "address", "port", "timeout_s", "pool_size", NULL};
    int family, port, pool_size;
    const char *address;
    double timeout_s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "isidi", names, &family, &address, &port, &timeout_s, &pool_size))
        return -1;
    if (e->ready) { PyErr_SetString(PyExc_RuntimeError, "an Engine is initialised once"); return -1; }
    if (timeout_s <= 0 || pool_size < 0 || port <= 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "a positive time-out, a pool size and a port are needed");
        return -1;
    }
    struct sockaddr_storage addr;
    socklen_t addrlen;
    memset(&addr, 0, sizeof addr);
    int ok = 0;
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&addr;
        a->sin_family = AF_INET, a->sin_port = htons(port), addrlen = sizeof *a;
        ok = inet_pton(AF_INET, address, &a->sin_addr) == 1;
    } else if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
        a->sin6_family = AF_INET6, a->sin6_port = htons(port), addrlen = sizeof *a;
        ok = inet_pton(AF_INET6, address, &a->sin6_addr) == 1;
    }
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "%s is not a numeric address of family %d", address, family);
        return -1;
    }
    if (loop_init(&e->loop, family, &addr, addrlen, timeout_s, pool_size) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        loop_free(&e->loop);
        return -1;
    }
    e->ready = 1;
    return 0;
}

static void Engine_dealloc(Engine *e) {
    if (e->ready) {
        __atomic_store_n(&e->loop.abort_flag, 1, __ATOMIC_RELAXED);
        loop_wake(&e->loop);
        end_run(e);
        loop_free(&e->loop);
    }
    free(e->spare.recs), free(e->spare.arena);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int check_ready(Engine *e) {
    if (!e->ready) PyErr_SetString(PyExc_RuntimeError, "the Engine is not initialised");
    return e->ready;
}

static PyObject *Engine_begin(Engine *e, PyObject *args) {
    PyObject *requests;
    Py_ssize_t concurrency, max_requests;
    long long end_ns, origin_ns;
    int step_no;
    if (!check_ready(e) || !PyArg_ParseTuple(args, "O!nnLiL", &PyTuple_Type, &requests, &concurrency,
                                             &max_requests, &end_ns, &step_no, &origin_ns))
        return NULL;
    if (e->thread_alive) { PyErr_SetString(PyExc_RuntimeError, "a run is already going"); return NULL; }
    Py_ssize_t n = PyTuple_GET_SIZE(requests);
    if (n == 0 || concurrency <= 0 || concurrency > 1000000) {
        PyErr_SetString(PyExc_ValueError, "requests and a concurrency are needed");
        return NULL;
    }
    end_run(e);
    e->req_data = malloc(n * sizeof(char *)), e->req_len = malloc(n * sizeof(size_t));
    if (!e->req_data || !e->req_len) { end_run(e); return PyErr_NoMemory(); }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(requests, i);
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) == 0) {
            end_run(e);
            PyErr_SetString(PyExc_TypeError, "each request is non-empty bytes");
            return NULL;
        }
        e->req_data[i] = PyBytes_AS_STRING(item), e->req_len[i] = PyBytes_GET_SIZE(item);
    }
    Py_INCREF(requests);
    e->requests = requests, e->step_no = step_no, e->origin_ns = origin_ns;
    loop_begin(&e->loop, e->req_data, e->req_len, n, concurrency, max_requests, end_ns);
    int err = pthread_create(&e->thread, NULL, loop_main, &e->loop);
    if (err) { end_run(e); errno = err; return PyErr_SetFromErrno(PyExc_OSError); }
    e->thread_alive = 1;
    Py_RETURN_NONE;
}

static PyObject *records_list(Engine *e) {
    static const char *errors[] = {"", "connection", "timeout"};
    Records *r = &e->spare;
    PyObject *list = PyList_New(r->n), *step = PyLong_FromLong(e->step_no);
    if (!list || !step) goto fail;
    for (size_t i = 0; i < r->n; i++) {
        Rec *x = &r->recs[i];
        double sent = (x->sent_ns - e->origin_ns) * 1e-9, done = (x->done_ns - e->origin_ns) * 1e-9;
        PyObject *status = x->error ? Py_NewRef(Py_None) : PyLong_FromLong(x->status);
        PyObject *t = status ? Py_BuildValue("(OldddNsy#)", step, x->index, sent, sent, done, status,
                                             errors[x->error], r->arena + x->body_off, (Py_ssize_t)x->body_len)
                             : NULL;
        if (!t) goto fail;
        PyList_SET_ITEM(list, i, t);
    }
    Py_DECREF(step);
    r->n = r->len = 0;
    return list;
fail:
    Py_XDECREF(list), Py_XDECREF(step);
    r->n = r->len = 0;
    return NULL;
}

static PyObject *Engine_take(Engine *e, PyObject *args) {
    double seconds;
    if (!check_ready(e) || !PyArg_ParseTuple(args, "d", &seconds)) return NULL;
    if (e->taking) { PyErr_SetString(PyExc_RuntimeError, "take() is already running"); return NULL; }
    Loop *l = &e->loop;
    int finished, oom, failed_errno, in_flight;
    e->taking = 1;
    long sent;
    Py_BEGIN_ALLOW_THREADS
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long long ns = until.tv_nsec + (long long)(seconds * 1e9);
    until.tv_sec += ns / 1000000000LL, until.tv_nsec = ns % 1000000000LL;
    pthread_mutex_lock(&l->mu);
    while (e->thread_alive && !l->finished && pthread_cond_timedwait(&l->cv, &l->mu, &until) == 0) {}
    Records taken = l->out;  /* swapped: the loop goes on filling the other buffers */
    l->out = e->spare, l->out.n = l->out.len = 0;
    e->spare = taken;
    finished = l->finished || !e->thread_alive, oom = l->oom, failed_errno = l->failed_errno;
    sent = l->sent, in_flight = l->in_flight;
    pthread_mutex_unlock(&l->mu);
    Py_END_ALLOW_THREADS
    if (finished) end_run(e);
    e->taking = 0;
    PyObject *records = records_list(e);
    if (!records) return NULL;
    if (oom) { Py_DECREF(records); return PyErr_NoMemory(); }
    if (failed_errno) { Py_DECREF(records); errno = failed_errno; return PyErr_SetFromErrno(PyExc_OSError); }
    return Py_BuildValue("(NOli)", records, finished ? Py_True : Py_False, sent, in_flight);
}

static PyObject *Engine_stop(Engine *e, PyObject *unused) {
    if (e->ready) __atomic_store_n(&e->loop.stop_flag, 1, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *Engine_abort(Engine *e, PyObject *unused) {
    if (e->ready) {
        __atomic_store_n(&e->loop.stop_flag, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&e->loop.abort_flag, 1, __ATOMIC_RELAXED);
        loop_wake(&e->loop);
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_close(Engine *e, PyObject *unused) {
    if (!e->ready) Py_RETURN_NONE;
    Engine_abort(e, NULL);
    while (e->taking) {  /* that thread joins the run: wait for it (take() returns within its `seconds`) */
        Py_BEGIN_ALLOW_THREADS
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        Py_END_ALLOW_THREADS
    }
    end_run(e);
    loop_close_all(&e->loop);
    Py_RETURN_NONE;
}

static PyObject *count(Engine *e, int idle) {
    if (!check_ready(e)) return NULL;
    int n;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->loop.mu);
    n = idle ? e->loop.n_idle : e->loop.n_all;
    pthread_mutex_unlock(&e->loop.mu);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(n);
}
static PyObject *Engine_get_open(Engine *e, void *unused) { return count(e, 0); }
static PyObject *Engine_get_idle(Engine *e, void *unused) { return count(e, 1); }
static PyObject *Engine_get_running(Engine *e, void *unused) { return PyBool_FromLong(e->thread_alive); }

static PyMethodDef Engine_methods[] = {
    {"begin", (PyCFunction)Engine_begin, METH_VARARGS,
     "begin(requests, concurrency, max_requests, end_ns, step, origin_ns): start a closed-loop run"},
    {"take", (PyCFunction)Engine_take, METH_VARARGS, "take(seconds) -> (records, finished, sent, in_flight)"},
    {"stop", (PyCFunction)Engine_stop, METH_NOARGS, "send nothing new"},
    {"abort", (PyCFunction)Engine_abort, METH_NOARGS, "end the run now, leaving what is in flight"},
    {"close", (PyCFunction)Engine_close, METH_NOARGS, "end the run, if one goes, and close every connection"},
    {NULL}};

static PyGetSetDef Engine_getset[] = {
    {"open", (getter)Engine_get_open, NULL, "open connections", NULL},
    {"idle", (getter)Engine_get_idle, NULL, "idle connections kept for the next run", NULL},
    {"running", (getter)Engine_get_running, NULL, "a run's thread is alive", NULL},
    {NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mlcluster.bench._engine.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A closed-loop HTTP/1.1 load engine on one epoll set, on its own thread.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

static struct PyModuleDef engine_module = {PyModuleDef_HEAD_INIT, "_engine",
                                           "mlcluster bench's compiled closed loop.", -1, NULL};

PyMODINIT_FUNC PyInit__engine(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&engine_module);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType), Py_DECREF(m);
        return NULL;
    }
    return m;
}
