/* plexus.sidecar._direct_log: the access log's file written with O_DIRECT by a thread of its own.

Why (issue 5, bench/RESULTS.md): through the page cache the access log cost the sidecar about 2 µs a
request (two sidecars, ~1 KB of lines), far more than the copy itself: on this VM every page the growing
file takes is memory the host has to hand the guest anew (5-9 µs a 4 KiB page, against under 1 µs for a
page used before). With O_DIRECT the device reads the lines from two buffers that are used over and over,
and no page-cache page is taken for them.

How: the loop's thread hands whole lines to ``DirectLog.write`` (a copy into the filling buffer, under a
mutex, never blocking on I/O). The writer thread gathers GATHER_BYTES, or waits GATHER_NS after the first
byte came (each write costs a wake-up, a device round trip and an interrupt on the loop's CPU, so fewer
and larger is cheaper), then takes the filling buffer and writes its whole 4 KiB blocks at their offsets
with O_DIRECT. What completes the file's partial last block before them, and what follows the last whole
block, it writes through the page cache (less than two pages a write), so the file ends on a whole line
after each write, as with O_APPEND; that last partial block is carried to the start of the other buffer,
and the next direct write starts on the block after it.

The thread never touches a Python object and never holds the GIL. What it cannot do with O_DIRECT it
does as any appender would: if the file's size is not where its own writes left it (another process
appended, or logrotate's copytruncate emptied it), or a write fails, it writes from then on with plain
O_APPEND writes. A failed write loses its bytes; their lines are counted (``lines_lost``) and the errno
kept (``last_errno``) for the sidecar to report. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096                  /* offset and memory alignment of a direct write (covers 512-byte disks) */
#define GATHER_BYTES (512 * 1024)   /* a write waits for this much ... */
#define GATHER_NS 50000000L         /* ... or 50 ms after its first byte came (lines show within 0.15 s) */

enum { MODE_DIRECT, MODE_APPEND };

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    pthread_cond_t wake;   /* the writer waits on it for bytes, or to close */
    pthread_cond_t drained;  /* drain() waits on it */
    int direct_fd;         /* O_DIRECT, written at offsets */
    int plain_fd;          /* the same file through the page cache: tails, reads, and O_APPEND mode */
    char *buffers[2];
    size_t capacity;       /* of each buffer */
    /* guarded by lock: */
    char *filling;         /* what write() appends to; its byte 0 is at file offset `base` */
    size_t filled;
    size_t on_file;        /* filling's first bytes that the file already holds (a carried tail written) */
    off_t base;
    int mode;
    int closing;
    int hurry;             /* drain() waits: no gathering */
    int gathering;         /* the writer waits for GATHER_BYTES, or until GATHER_NS after pending_since */
    struct timespec pending_since;  /* (CLOCK_MONOTONIC) when the oldest byte not yet taken came */
    int writing;           /* the thread holds bytes it took from filling */
    unsigned long long lines_lost;
    int last_errno;
    /* set once */
    pthread_t thread;
    int started;
} DirectLog;

static unsigned long long newlines(const char *data, size_t size) {
    unsigned long long count = 0;
    const char *end = data + size;
    while (data < end && (data = memchr(data, '\n', (size_t)(end - data))) != NULL) {
        count++;
        data++;
    }
    return count;
}

static int write_all(int fd, const char *data, size_t size, off_t at, int positional) {
    while (size > 0) {
        ssize_t done = positional ? pwrite(fd, data, size, at) : write(fd, data, size);
        if (done < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        if (done == 0) {
            return EIO;
        }
        data += done;
        size -= (size_t)done;
        at += done;
    }
    return 0;
}

/* The file still ends where this writer's writes left it (called by the writer, lock not held). */
static int file_is_ours(DirectLog *self, off_t expected) {
    struct stat st;
    return fstat(self->plain_fd, &st) == 0 && st.st_size == expected;
}

static void lost(DirectLog *self, const char *data, size_t size, int error) {
    pthread_mutex_lock(&self->lock);
    self->lines_lost += newlines(data, size);
    self->last_errno = error;
    pthread_mutex_unlock(&self->lock);
}

/* Write out[from, size), which belongs at file offset `at` + its index (`at` is on a block, and the file
holds out[0, from) already): what completes the file's partial last block and what follows the last whole
block through the page cache, the whole blocks between them with O_DIRECT. The file ends on a line after
each write, as with O_APPEND (a reader may see it end inside a line only while the direct write runs).
Returns 0, an errno, -1 when nothing was written because the file is not where this writer left it, or -2
when the file system refused O_DIRECT and the bytes were appended instead. */
static int write_direct(DirectLog *self, const char *out, size_t from, size_t size, off_t at) {
    if (!file_is_ours(self, at + (off_t)from)) {
        return -1;
    }
    size_t whole = size & ~(size_t)(BLOCK - 1);
    /* the file's partial block, completed (so the direct write starts on a block: BLOCK, or 0) */
    size_t head_end = from > 0 ? (size < BLOCK ? size : BLOCK) : 0;
    size_t direct_from = head_end;
    int error = head_end > from ? write_all(self->plain_fd, out + from, head_end - from, 0, 0) : 0;
    if (error == 0 && whole > direct_from) {
        error = write_all(self->direct_fd, out + direct_from, whole - direct_from, at + (off_t)direct_from, 1);
        if (error == EINVAL) {
            /* This file system takes no direct write after all. Nothing of it was written if it said so
               at once; the rest goes on appended. */
            error = file_is_ours(self, at + (off_t)direct_from)
                        ? write_all(self->plain_fd, out + direct_from, size - direct_from, 0, 0)
                        : EINVAL;
            return error == 0 ? -2 : error;
        }
    }
    size_t tail_from = whole > head_end ? whole : head_end;
    if (error == 0 && size > tail_from) {
        error = write_all(self->plain_fd, out + tail_from, size - tail_from, 0, 0);
    }
    return error;
}

static void *writer_main(void *arg) {
    DirectLog *self = arg;
    pthread_mutex_lock(&self->lock);
    for (;;) {
        if (self->filled == self->on_file) {  /* nothing new */
            pthread_cond_broadcast(&self->drained);
            if (self->closing) {
                break;
            }
            pthread_cond_wait(&self->wake, &self->lock);
            continue;
        }
        if (self->filled - self->on_file < GATHER_BYTES && !self->closing && !self->hurry) {
            /* Few bytes yet: wait for more, up to GATHER_NS after the first of them came (fewer, larger
               writes: each costs a wake-up, a device round trip and its interrupt on the loop's CPU). */
            struct timespec until = self->pending_since;
            until.tv_nsec += GATHER_NS;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            self->gathering = 1;
            int waited = pthread_cond_timedwait(&self->wake, &self->lock, &until);
            self->gathering = 0;
            if (waited != ETIMEDOUT) {
                continue;  /* (woken: enough bytes, a drain, closing; or spuriously: wait again) */
            }
        }
        /* Take the filling buffer; the other one starts with what follows the last whole block (direct
           mode: the file will hold it, and the next direct write starts on that block) and takes the new
           bytes meanwhile. */
        char *out = self->filling;
        size_t size = self->filled, from = self->on_file;
        off_t at = self->base;
        int mode = self->mode;
        size_t whole = mode == MODE_DIRECT ? size & ~(size_t)(BLOCK - 1) : size;
        char *next = out == self->buffers[0] ? self->buffers[1] : self->buffers[0];
        memcpy(next, out + whole, size - whole);
        self->filling = next;
        self->filled = self->on_file = size - whole;
        self->base = at + (off_t)whole;
        self->writing = 1;
        pthread_mutex_unlock(&self->lock);

        /* (-1: another process appended or truncated the file, -2: no O_DIRECT here after all) */
        int error = mode == MODE_DIRECT ? write_direct(self, out, from, size, at) : -1;
        int appending = error < 0;  /* from now on */
        if (error == -1) {
            error = write_all(self->plain_fd, out + from, size - from, 0, 0);
        } else if (error == -2) {
            error = 0;
        }
        if (error > 0) {
            lost(self, out + from, size - from, error);
        }
        pthread_mutex_lock(&self->lock);
        self->writing = 0;
        if (error != 0 || appending) {  /* direct mode ends: the file may not end where `base` says */
            self->mode = MODE_APPEND;
        }
    }
    pthread_mutex_unlock(&self->lock);
    return NULL;
}

static void release(DirectLog *self) {
    for (int i = 0; i < 2; i++) {
        if (self->buffers[i] != NULL && self->buffers[i] != MAP_FAILED) {
            munmap(self->buffers[i], self->capacity);
        }
        self->buffers[i] = NULL;
    }
    if (self->direct_fd >= 0) {
        close(self->direct_fd);
        self->direct_fd = -1;
    }
    if (self->plain_fd >= 0) {
        close(self->plain_fd);
        self->plain_fd = -1;
    }
}

/* Stop the thread once it has written everything (the GIL released while it does). */
static void stop(DirectLog *self) {
    if (!self->started) {
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    self->closing = 1;
    pthread_cond_signal(&self->wake);
    pthread_mutex_unlock(&self->lock);
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->started = 0;
}

static PyObject *direct_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"path", "capacity", NULL};
    PyObject *path_object = NULL;
    Py_ssize_t capacity = 4 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|n:DirectLog", keywords, PyUnicode_FSConverter,
                                     &path_object, &capacity)) {
        return NULL;
    }
    if (capacity < 2 * BLOCK) {
        Py_DECREF(path_object);
        PyErr_Format(PyExc_ValueError, "DirectLog: capacity must be at least %d bytes", 2 * BLOCK);
        return NULL;
    }
    DirectLog *self = (DirectLog *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(path_object);
        return NULL;
    }
    self->direct_fd = self->plain_fd = -1;
    self->capacity = ((size_t)capacity + BLOCK - 1) & ~(size_t)(BLOCK - 1);
    pthread_mutex_init(&self->lock, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(&self->wake, &monotonic);
    pthread_condattr_destroy(&monotonic);
    pthread_cond_init(&self->drained, NULL);

    const char *path = PyBytes_AS_STRING(path_object);
    struct stat st;
    int error = 0;
    self->plain_fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (self->plain_fd < 0 || fstat(self->plain_fd, &st) < 0) {
        error = errno;
    } else if (!S_ISREG(st.st_mode)) {
        error = ENOTSUP;  /* a FIFO, a terminal, /dev/null: nothing to gain, the caller writes as before */
    } else if ((self->direct_fd = open(path, O_WRONLY | O_DIRECT | O_CLOEXEC)) < 0) {
        error = errno;  /* (EINVAL: a file system without O_DIRECT, such as tmpfs) */
    }
    for (int i = 0; error == 0 && i < 2; i++) {
        self->buffers[i] = mmap(NULL, self->capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (self->buffers[i] == MAP_FAILED) {
            error = errno;
        }
    }
    if (error == 0) {
        /* A file that does not end on a block: its last partial block is rewritten with the first one. */
        self->base = st.st_size & ~(off_t)(BLOCK - 1);
        size_t partial = (size_t)(st.st_size - self->base);
        if (partial > 0 && pread(self->plain_fd, self->buffers[0], partial, self->base) != (ssize_t)partial) {
            self->mode = MODE_APPEND;  /* (could not read it back: append, as before) */
            partial = 0;
        }
        self->filling = self->buffers[0];
        self->filled = self->on_file = partial;
        /* (the thread takes no signals: they stay with Python's main thread) */
        sigset_t all, before;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &before);
        error = pthread_create(&self->thread, NULL, writer_main, self);
        pthread_sigmask(SIG_SETMASK, &before, NULL);
        self->started = error == 0;
    }
    if (error != 0) {
        release(self);
        errno = error;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_object);
        Py_DECREF(path_object);
        Py_DECREF(self);
        return NULL;
    }
    Py_DECREF(path_object);
    return (PyObject *)self;
}

static void direct_dealloc(DirectLog *self) {
    stop(self);
    release(self);
    pthread_cond_destroy(&self->wake);
    pthread_cond_destroy(&self->drained);
    pthread_mutex_destroy(&self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* write(data) -> bool: data (whole lines) queued for the writer; False when it has no room (the writer is
   behind by a whole buffer: the caller counts the lines as dropped) or is closed. */
static PyObject *direct_write(DirectLog *self, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int queued = 0;
    pthread_mutex_lock(&self->lock);
    if (self->started && !self->closing && (size_t)view.len <= self->capacity - self->filled) {
        size_t pending = self->filled - self->on_file;
        memcpy(self->filling + self->filled, view.buf, (size_t)view.len);
        self->filled += (size_t)view.len;
        queued = 1;
        if (pending == 0) {  /* the first byte the writer has not taken: its gathering starts now */
            clock_gettime(CLOCK_MONOTONIC, &self->pending_since);
            if (!self->writing) {
                pthread_cond_signal(&self->wake);
            }
        } else if (self->gathering && pending < GATHER_BYTES && pending + (size_t)view.len >= GATHER_BYTES) {
            pthread_cond_signal(&self->wake);
        }
    }
    pthread_mutex_unlock(&self->lock);
    PyBuffer_Release(&view);
    return PyBool_FromLong(queued);
}

/* drain(): wait (GIL released) until the file holds everything queued so far. */
static PyObject *direct_drain(DirectLog *self, PyObject *unused) {
    if (self->started) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->lock);
        self->hurry++;
        pthread_cond_signal(&self->wake);
        while (self->filled != self->on_file || self->writing) {
            pthread_cond_wait(&self->drained, &self->lock);
        }
        self->hurry--;
        pthread_mutex_unlock(&self->lock);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *direct_close(DirectLog *self, PyObject *unused) {
    stop(self);
    release(self);
    Py_RETURN_NONE;
}

static PyObject *direct_stats(DirectLog *self, PyObject *unused) {
    pthread_mutex_lock(&self->lock);
    unsigned long long lines_lost = self->lines_lost;
    int last_errno = self->last_errno, direct = self->mode == MODE_DIRECT;
    pthread_mutex_unlock(&self->lock);
    return Py_BuildValue("(KiO)", lines_lost, last_errno, direct ? Py_True : Py_False);
}

static PyMethodDef direct_methods[] = {
    {"write", (PyCFunction)direct_write, METH_O,
     "write(data) -> bool: whole lines queued for the writer thread; False with no room (or closed)"},
    {"drain", (PyCFunction)direct_drain, METH_NOARGS, "drain(): wait until the file holds what was queued"},
    {"close", (PyCFunction)direct_close, METH_NOARGS, "close(): write what is queued, stop the thread"},
    {"stats", (PyCFunction)direct_stats, METH_NOARGS,
     "stats() -> (lines_lost, last_errno, direct): lines lost to failed writes, the last errno, and whether "
     "the writer still writes with O_DIRECT"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DirectLogType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "plexus.sidecar._direct_log.DirectLog",
    .tp_doc = "DirectLog(path, capacity=4 MiB): an access-log file written with O_DIRECT by a thread (see the "
              "module)",
    .tp_basicsize = sizeof(DirectLog),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = direct_new,
    .tp_dealloc = (destructor)direct_dealloc,
    .tp_methods = direct_methods,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_direct_log", "The access log's file written with O_DIRECT (see the source).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__direct_log(void) {
    if (PyType_Ready(&DirectLogType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "DirectLog", (PyObject *)&DirectLogType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
