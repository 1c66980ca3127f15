/* plexus.core._speedups: the per-request telemetry loops of the HTTP/1.1 path, in C.

Each function here does exactly what a Python function of Plexus does (named below), which stays the
reference and the fallback: plexus.core.speedups imports this module when it was built (pip install
builds it; a machine without a C compiler runs the Python paths), and tests/core/test_speedups.py runs
both over the same inputs. Issue 5 (bench/RESULTS.md): these loops are most of what metrics, tracing and
access logs cost an HTTP/1.1 request in Python's bytecode and allocator.

Sans-IO like the modules that call it: no system calls, no global state. A function that meets an input
outside its fast path returns None (or raises nothing new), and the caller runs its Python path, which
then decides (and raises) exactly as before. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <string.h>

/* ---- access lines: plexus.proxy.access_line._tuple_lines ------------------------------------------ */

/* A trace lines block (tracing.fresh_lines' shape): "x-request-id: " ID "\r\ntraceparent: 00-" TRACE
   "-" SPAN "-" FLAGS "\r\n"; everything but the request id is BLOCK_FIXED bytes. */
#define BLOCK_FIXED 86
#define ID_AT 14
#define AFTER_ID 72 /* from the request id's end to the block's end */
#define TRACE_FROM_END 54
#define TRACE_LEN 32

static const char START[] = "{\"start_time\":\"";
static const char TRACE_ID[] = "\",\"trace_id\":\"";
static const char DURATION[] = "\"duration\":";
static const char REQUEST_ID[] = ",\"request_id\":\"";

/* The lines are written straight into the bytes object returned (no copy at the end). */
typedef struct {
    PyObject *bytes;
    char *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
} Buffer;

static int buffer_reserve(Buffer *buffer, Py_ssize_t more) {
    if (buffer->size + more <= buffer->capacity) {
        return 0;
    }
    Py_ssize_t capacity = buffer->capacity * 2;
    if (capacity < buffer->size + more) {
        capacity = buffer->size + more;
    }
    if (buffer->bytes == NULL) {
        buffer->bytes = PyBytes_FromStringAndSize(NULL, capacity);
        if (buffer->bytes == NULL) {
            return -1;
        }
    } else if (_PyBytes_Resize(&buffer->bytes, capacity) < 0) {
        return -1;
    }
    buffer->data = PyBytes_AS_STRING(buffer->bytes);
    buffer->capacity = capacity;
    return 0;
}

static inline void put(Buffer *buffer, const char *data, Py_ssize_t length) {
    memcpy(buffer->data + buffer->size, data, (size_t)length);
    buffer->size += length;
}

/* A non-negative integer in decimal (room reserved by the caller: 20 bytes). */
static inline void put_decimal(Buffer *buffer, long long value) {
    char digits[24];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (count) {
        buffer->data[buffer->size++] = digits[--count];
    }
}

static inline long long floor_div(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* The same int (identity, or two exact ints of one value): a request's sizes are new int objects each time
   above 256, and the lines' parts for them are worked out again only when the values change. */
static inline int same_int(PyObject *a, PyObject *b) {
    return a == b ||
           (PyLong_CheckExact(a) && PyLong_CheckExact(b) && PyObject_RichCompareBool(a, b, Py_EQ) == 1);
}

/* The Outcome attributes the lines read, looked up once. */
static PyObject *str_sized_request, *str_sized_response, *str_sized_parts, *str_parts_sized, *str_tail;
static PyObject *zero;

/* access_lines(items, offset, second_bytes) -> bytes | None

   _tuple_lines for a batch of ring tuples (outcome, started, duration_ms, request_bytes, response_bytes,
   wire, sampled) whose starts and durations are floats and whose wire[2] are trace lines blocks: the same
   bytes. ``second_bytes(seconds)`` is access_line._second_bytes (the date and time of a whole second).
   None for any other batch (an entry, a TraceStart, no block, ...): the caller's Python path formats it. */
static PyObject *access_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "access_lines(items: list, offset: float, second_bytes)");
        return NULL;
    }
    PyObject *items = args[0];
    double offset = PyFloat_AsDouble(args[1]);
    if (offset == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *second_bytes = args[2];
    Py_ssize_t count = PyList_GET_SIZE(items);
    if (count == 0) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    Buffer out = {NULL, NULL, 0, 0};
    if (buffer_reserve(&out, count * 640) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *second = NULL;           /* the text of last_seconds */
    long long last_seconds = 0;
    PyObject *last_outcome = NULL;     /* borrowed (held by items) */
    PyObject *last_request = NULL, *last_response = NULL; /* borrowed */
    PyObject *parts = NULL;            /* new reference: last_outcome's parts for those sizes */
    PyObject *tail = NULL;             /* new reference: last_outcome's tail */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 7) {
            goto fallback;
        }
        PyObject *outcome = PyTuple_GET_ITEM(item, 0);
        PyObject *started = PyTuple_GET_ITEM(item, 1);
        PyObject *duration = PyTuple_GET_ITEM(item, 2);
        PyObject *request_bytes = PyTuple_GET_ITEM(item, 3);
        PyObject *response_bytes = PyTuple_GET_ITEM(item, 4);
        PyObject *wire = PyTuple_GET_ITEM(item, 5);
        if (!PyFloat_CheckExact(started) || !PyFloat_CheckExact(duration) || !PyTuple_CheckExact(wire) ||
            PyTuple_GET_SIZE(wire) < 3) {
            goto fallback;
        }
        PyObject *block = PyTuple_GET_ITEM(wire, 2);
        if (!PyBytes_CheckExact(block) || PyBytes_GET_SIZE(block) < BLOCK_FIXED) {
            goto fallback;
        }
        const char *lines = PyBytes_AS_STRING(block);
        Py_ssize_t width = PyBytes_GET_SIZE(block);
        Py_ssize_t id_length = width - BLOCK_FIXED;
        if (lines[ID_AT + id_length] != '\r' || lines[width - 2] != '\r') {
            goto fallback;
        }
        /* start: int((started + offset) * 1000) as Python truncates it, then floored into seconds */
        double wall_ms = (PyFloat_AS_DOUBLE(started) + offset) * 1000.0;
        if (!isfinite(wall_ms) || fabs(wall_ms) > 9.0e15) {
            goto fallback;
        }
        long long millis = (long long)wall_ms;
        long long seconds = floor_div(millis, 1000);
        if (second == NULL || seconds != last_seconds) {
            Py_XDECREF(second);
            second = PyObject_CallFunction(second_bytes, "L", seconds);
            if (second == NULL) {
                goto error;
            }
            if (!PyBytes_CheckExact(second)) {
                goto fallback;
            }
            last_seconds = seconds;
        }
        /* duration: whole milliseconds from whole microseconds, each rounded half up (duration_piece) */
        double us_float = PyFloat_AS_DOUBLE(duration) * 1000.0 + 0.5;
        if (!isfinite(us_float) || us_float < 0.0 || us_float > 9.0e15) {
            goto fallback;
        }
        long long us = (long long)us_float;
        /* parts: the outcome's, for these sizes (Outcome.sized_parts or Outcome.parts_sized) */
        if (outcome != last_outcome || !same_int(request_bytes, last_request) ||
            !same_int(response_bytes, last_response)) {
            PyObject *sized_request = PyObject_GetAttr(outcome, str_sized_request);
            if (sized_request == NULL) {
                goto error;
            }
            int same = PyObject_RichCompareBool(request_bytes, sized_request, Py_EQ);
            Py_DECREF(sized_request);
            if (same < 0) {
                goto error;
            }
            if (same) {
                PyObject *sized_response = PyObject_GetAttr(outcome, str_sized_response);
                if (sized_response == NULL) {
                    goto error;
                }
                same = PyObject_RichCompareBool(response_bytes, sized_response, Py_EQ);
                Py_DECREF(sized_response);
                if (same < 0) {
                    goto error;
                }
            }
            Py_XDECREF(parts);
            parts = same ? PyObject_GetAttr(outcome, str_sized_parts)
                         : PyObject_CallMethodObjArgs(outcome, str_parts_sized, request_bytes, response_bytes,
                                                      NULL);
            if (parts == NULL) {
                goto error;
            }
            if (outcome != last_outcome) {
                Py_XDECREF(tail);
                tail = PyObject_GetAttr(outcome, str_tail);
                if (tail == NULL) {
                    goto error;
                }
            }
            if (!PyBytes_CheckExact(parts) || !PyBytes_CheckExact(tail)) {
                goto fallback;
            }
            last_outcome = outcome;
            last_request = request_bytes;
            last_response = response_bytes;
        }
        Py_ssize_t need = (Py_ssize_t)sizeof(START) + PyBytes_GET_SIZE(second) + 8 + PyBytes_GET_SIZE(parts) +
                          (Py_ssize_t)(sizeof(DURATION) + sizeof(REQUEST_ID)) + 30 +
                          id_length + (Py_ssize_t)sizeof(TRACE_ID) + TRACE_LEN + PyBytes_GET_SIZE(tail);
        if (buffer_reserve(&out, need) < 0) {
            goto error;
        }
        put(&out, START, sizeof(START) - 1);
        put(&out, PyBytes_AS_STRING(second), PyBytes_GET_SIZE(second));
        long long ms = millis - seconds * 1000;
        char *at = out.data + out.size;
        at[0] = '.';
        at[1] = (char)('0' + ms / 100);
        at[2] = (char)('0' + ms / 10 % 10);
        at[3] = (char)('0' + ms % 10);
        at[4] = 'Z';
        at[5] = '"';
        at[6] = ',';
        out.size += 7;
        put(&out, PyBytes_AS_STRING(parts), PyBytes_GET_SIZE(parts));
        put(&out, DURATION, sizeof(DURATION) - 1);
        put_decimal(&out, (us + 500) / 1000);
        put(&out, REQUEST_ID, sizeof(REQUEST_ID) - 1);
        put(&out, lines + ID_AT, id_length);
        put(&out, TRACE_ID, sizeof(TRACE_ID) - 1);
        put(&out, lines + width - TRACE_FROM_END, TRACE_LEN);
        put(&out, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
    }
    if (_PyBytes_Resize(&out.bytes, out.size) < 0) {
        goto error;  /* (out.bytes is NULL now) */
    }
    result = out.bytes;
    out.bytes = NULL;
    goto done;
fallback:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(out.bytes);
    Py_XDECREF(second);
    Py_XDECREF(parts);
    Py_XDECREF(tail);
    return result;
}

/* ---- fresh trace lines: plexus.proxy.tracing.Tracer._make_fresh ------------------------------------- */

static const char HEX[] = "0123456789abcdef";
static const char FRESH_HEAD[] = "x-request-id: ";
static const char FRESH_MIDDLE[] = "\r\ntraceparent: 00-";

/* fresh_blocks(prefix, base, digits, sampled) -> list[bytes]

   The blocks _make_fresh makes for one batch, in its order (the last unit first is popped last: the list
   holds the unit of counter ``base + n - 1`` first): n = len(sampled) blocks "x-request-id: " prefix
   COUNTER "\r\ntraceparent: 00-" TRACE "-" SPAN "-0" FLAG "\r\n". ``base``: the counter of the batch's
   first request (a multiple of 256, below 2**48); ``digits``: the hex digits of the batch's random bytes
   (48 a block, then one a block: _make_fresh's columns); ``sampled``: b"0" or b"1" a block. */
static PyObject *fresh_blocks(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[2]) || !PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "fresh_blocks(prefix: bytes, base: int, digits: bytes, sampled: bytes)");
        return NULL;
    }
    const char *prefix = PyBytes_AS_STRING(args[0]);
    Py_ssize_t prefix_length = PyBytes_GET_SIZE(args[0]);
    unsigned long long base = PyLong_AsUnsignedLongLong(args[1]);
    if (base == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    const char *digits = PyBytes_AS_STRING(args[2]);
    const char *sampled = PyBytes_AS_STRING(args[3]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[3]);
    if (n > 256 || (base & 0xff) != 0 || base >= (1ULL << 48) || PyBytes_GET_SIZE(args[2]) < 49 * n) {
        PyErr_SetString(PyExc_ValueError, "fresh_blocks: at most 256 blocks from a multiple of 256 below 2**48, "
                                          "49 digits a block");
        return NULL;
    }
    Py_ssize_t width = (Py_ssize_t)sizeof(FRESH_HEAD) - 1 + prefix_length + 12 +
                       (Py_ssize_t)sizeof(FRESH_MIDDLE) - 1 + 32 + 1 + 16 + 3 + 2;
    PyObject *blocks = PyList_New(n);
    if (blocks == NULL) {
        return NULL;
    }
    char counter_high[10];
    unsigned long long high = base >> 8;
    for (int d = 9; d >= 0; d--) {
        counter_high[d] = HEX[high & 15];
        high >>= 4;
    }
    for (Py_ssize_t unit = 0; unit < n; unit++) {
        PyObject *block = PyBytes_FromStringAndSize(NULL, width);
        if (block == NULL) {
            Py_DECREF(blocks);
            return NULL;
        }
        char *at = PyBytes_AS_STRING(block);
        unsigned low = (unsigned)(n - 1 - unit);
        memcpy(at, FRESH_HEAD, sizeof(FRESH_HEAD) - 1);
        at += sizeof(FRESH_HEAD) - 1;
        memcpy(at, prefix, (size_t)prefix_length);
        at += prefix_length;
        memcpy(at, counter_high, 10);
        at[10] = HEX[(low >> 4) & 15];
        at[11] = HEX[low & 15];
        at += 12;
        memcpy(at, FRESH_MIDDLE, sizeof(FRESH_MIDDLE) - 1);
        at += sizeof(FRESH_MIDDLE) - 1;
        const char *random = digits + 48 * unit;
        at[0] = digits[48 * n + unit];  /* the trace id's first digit */
        memcpy(at + 1, random, 31);
        at[32] = '-';
        memcpy(at + 33, random + 32, 16);
        at += 49;
        at[0] = '-';
        at[1] = '0';
        at[2] = sampled[unit];
        at[3] = '\r';
        at[4] = '\n';
        PyList_SET_ITEM(blocks, unit, block);
    }
    return blocks;
}

/* A traceparent's flags, their last hex digit: bit 0 is "sampled" (tracing._SAMPLED_FLAGS). */
static inline int sampled_flag(char flag) {
    return flag == '1' || flag == '3' || flag == '5' || flag == '7' || flag == '9' || flag == 'b' ||
           flag == 'd' || flag == 'f';
}

/* block_passes(block) -> bool

   Whether Tracer.follow_approved forwards ``block`` (a block approves_block approved) as it is: its
   traceparent (the block's last 55 bytes before the CRLF) is of version 00, its trace and span ids are not
   all zeros, and its sampled flag is off. */
static PyObject *block_passes(PyObject *module, PyObject *block) {
    if (!PyBytes_CheckExact(block)) {
        PyErr_SetString(PyExc_TypeError, "block_passes(block: bytes)");
        return NULL;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(block);
    if (length < 57) {
        Py_RETURN_FALSE;
    }
    const char *end = PyBytes_AS_STRING(block) + length;
    if (end[-57] != '0' || end[-56] != '0') {
        Py_RETURN_FALSE;
    }
    int all_zero = 1;
    for (int i = -54; i < -22 && all_zero; i++) {
        all_zero = end[i] == '0';
    }
    if (all_zero) {
        Py_RETURN_FALSE;
    }
    all_zero = 1;
    for (int i = -21; i < -5 && all_zero; i++) {
        all_zero = end[i] == '0';
    }
    if (all_zero || sampled_flag(end[-3])) {
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* ---- a known head's trace block: plexus.codec.http1.request_decoder.RequestDecoder._known ------------- */

static const char BLOCK_MIDDLE[] = "\r\ntraceparent: ";

/* known_block(head, before, after, id_at, middle, stop, classes, shape) -> bytes | None

   Whether ``head`` is ``before`` + a request id + "\r\ntraceparent: " + a traceparent + ``after``, the
   request id from ``id_at`` to ``middle``, the traceparent from ``middle`` + 15 to ``stop``, and its block
   (``head[id_at - 14 : stop + 2]``) of the byte classes ``shape`` through the table ``classes``: the
   block; else None. (The caller checked len(head).) */
static PyObject *known_block(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[2]) || !PyBytes_CheckExact(args[6]) || !PyBytes_CheckExact(args[7]) ||
        PyBytes_GET_SIZE(args[6]) != 256) {
        PyErr_SetString(PyExc_TypeError, "known_block(head, before, after, id_at, middle, stop, classes, shape)");
        return NULL;
    }
    Py_ssize_t id_at = PyLong_AsSsize_t(args[3]);
    Py_ssize_t middle = PyLong_AsSsize_t(args[4]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const char *head = PyBytes_AS_STRING(args[0]);
    Py_ssize_t length = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t before_length = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t after_length = PyBytes_GET_SIZE(args[2]);
    Py_ssize_t shape_length = PyBytes_GET_SIZE(args[7]);
    Py_ssize_t middle_length = (Py_ssize_t)sizeof(BLOCK_MIDDLE) - 1;
    if (id_at != before_length || id_at < 14 || middle < id_at || middle + middle_length > stop ||
        stop + after_length != length || stop + 2 - (id_at - 14) != shape_length || after_length < 2) {
        Py_RETURN_NONE;
    }
    if (memcmp(head, PyBytes_AS_STRING(args[1]), (size_t)before_length) != 0 ||
        memcmp(head + middle, BLOCK_MIDDLE, (size_t)middle_length) != 0 ||
        memcmp(head + stop, PyBytes_AS_STRING(args[2]), (size_t)after_length) != 0) {
        Py_RETURN_NONE;
    }
    const unsigned char *classes = (const unsigned char *)PyBytes_AS_STRING(args[6]);
    const unsigned char *shape = (const unsigned char *)PyBytes_AS_STRING(args[7]);
    const unsigned char *block = (const unsigned char *)head + id_at - 14;
    for (Py_ssize_t i = 0; i < shape_length; i++) {
        if (classes[block[i]] != shape[i]) {
            Py_RETURN_NONE;
        }
    }
    return PyBytes_FromStringAndSize((const char *)block, shape_length);
}

/* ---- the end of an HTTP/1.1 exchange: plexus.transport.http_exchange.Exchange._ended's usual path ---- */


/* Where the slots journal_end reads are, by their member descriptors (journal_setup): a slot of a class
   keeps its offset in every subclass (PolicedExchange). */
enum { X_DOWN, X_HEAD, X_ROUTE, X_UPSTREAM, X_STATUS, X_ATTEMPTS, X_STARTED, X_REQ_BYTES, X_RESP_BYTES,
       X_TRACE, X_COUNT };
static const char *const EXCHANGE_SLOTS[X_COUNT] = {"down", "head", "route", "upstream", "status",
                                                    "attempts", "started", "req_bytes", "resp_bytes", "trace"};
enum { H_METHOD, H_TARGET, H_HOST, H_USER_AGENT, H_CALLER, H_TRACE_LINES, H_TRACE, H_TRACE_BLOCK, H_COUNT };
static const char *const HEAD_SLOTS[H_COUNT] = {"method", "target", "host", "user_agent", "caller",
                                                "trace_lines", "trace", "trace_block"};
enum { O_FAILED, O_TELEMETRY, O_COUNT };
static const char *const OUTCOME_SLOTS[O_COUNT] = {"failed", "telemetry"};
enum { E_INSTANCE, E_COUNT };
static const char *const ENDPOINT_SLOTS[E_COUNT] = {"instance"};
enum { D_LAST_SIGNATURE, D_LAST_OUTCOME, D_COUNT };
static const char *const DOWNSTREAM_SLOTS[D_COUNT] = {"last_signature", "last_outcome"};
enum { T_TAPPING, T_EXPORTING_SPANS, T_JOURNAL, T_COUNT };
static const char *const TELEMETRY_SLOTS[T_COUNT] = {"tapping", "exporting_spans", "journal"};

static PyTypeObject *exchange_type, *head_type, *outcome_type, *endpoint_type, *downstream_type,
    *telemetry_type;
static Py_ssize_t exchange_at[X_COUNT], head_at[H_COUNT], outcome_at[O_COUNT], endpoint_at[E_COUNT],
    downstream_at[D_COUNT], telemetry_at[T_COUNT];
static Py_ssize_t journal_fold;
static PyObject *str_settle;

static int slot_offsets(PyObject *type, const char *const *names, Py_ssize_t *offsets, int count) {
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "journal_setup: a class expected");
        return -1;
    }
    for (int i = 0; i < count; i++) {
        PyObject *descr = PyObject_GetAttrString(type, names[i]);
        if (descr == NULL) {
            return -1;
        }
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (ok) {
            offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        }
        Py_DECREF(descr);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "journal_setup: %s.%s is not a slot", ((PyTypeObject *)type)->tp_name,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

/* journal_setup(Exchange, RequestHead, Outcome, Endpoint, HttpDownstream, Telemetry, fold): where the
   slots journal_end reads are, once. */
static PyObject *journal_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7 || !PyLong_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "journal_setup(Exchange, RequestHead, Outcome, Endpoint, "
                                         "HttpDownstream, Telemetry, fold: int)");
        return NULL;
    }
    if (slot_offsets(args[0], EXCHANGE_SLOTS, exchange_at, X_COUNT) < 0 ||
        slot_offsets(args[1], HEAD_SLOTS, head_at, H_COUNT) < 0 ||
        slot_offsets(args[2], OUTCOME_SLOTS, outcome_at, O_COUNT) < 0 ||
        slot_offsets(args[3], ENDPOINT_SLOTS, endpoint_at, E_COUNT) < 0 ||
        slot_offsets(args[4], DOWNSTREAM_SLOTS, downstream_at, D_COUNT) < 0 ||
        slot_offsets(args[5], TELEMETRY_SLOTS, telemetry_at, T_COUNT) < 0) {
        return NULL;
    }
    journal_fold = PyLong_AsSsize_t(args[6]);
    if (journal_fold == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_XSETREF(exchange_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(head_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(outcome_type, (PyTypeObject *)Py_NewRef(args[2]));
    Py_XSETREF(endpoint_type, (PyTypeObject *)Py_NewRef(args[3]));
    Py_XSETREF(downstream_type, (PyTypeObject *)Py_NewRef(args[4]));
    Py_XSETREF(telemetry_type, (PyTypeObject *)Py_NewRef(args[5]));
    Py_RETURN_NONE;
}

/* tracing.sampled_in_lines: the flags' last digit of a lines block, bit 0 */
static inline int sampled_lines(PyObject *lines) {
    Py_ssize_t length = PyBytes_GET_SIZE(lines);
    return length > 3 && sampled_flag(PyBytes_AS_STRING(lines)[length - 3]);
}

#define SLOT(object, at) (*(PyObject **)((char *)(object) + (at)))

/* 1: equal as tuple comparison finds it (identity, then ==); 0: not, or not known without running
   Python code (objects other than bytes, str and int are compared by identity only: the caller leaves
   the request to Exchange._ended's Python path, which compares them as it always has). */
static inline int same(PyObject *a, PyObject *b) {
    if (a == b) {
        return 1;
    }
    if (Py_TYPE(a) != Py_TYPE(b)) {
        return 0;
    }
    if (PyBytes_CheckExact(a)) {
        return PyBytes_GET_SIZE(a) == PyBytes_GET_SIZE(b) &&
               memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(a)) == 0;
    }
    if (PyUnicode_CheckExact(a)) {
        return PyUnicode_Compare(a, b) == 0;  /* (str: no error for two str) */
    }
    if (PyLong_CheckExact(a)) {
        return PyObject_RichCompareBool(a, b, Py_EQ) == 1;  /* (int: no Python code, no error) */
    }
    return 0;
}

/* journal_end(exchange, now, reason, flags) -> bool

   Exchange._ended for a request whose signature is its connection's last one (down.last_signature, the
   same 12 fields compared alike), whose outcome needs no entry at once (not failed, no tap open) and that
   is not a sampled request while spans are exported (Python also queues its tuple for the exporter): its
   journal tuple appended to the telemetry's journal, which is settled when it holds the fold. False, with
   nothing done, for any other request (and any slot unset): Exchange._ended's Python path takes it. */
static PyObject *journal_end(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "journal_end(exchange, now, reason, flags)");
        return NULL;
    }
    PyObject *exchange = args[0], *now = args[1];
    if (exchange_type == NULL || !PyObject_TypeCheck(exchange, exchange_type) || !PyFloat_CheckExact(now)) {
        Py_RETURN_FALSE;
    }
    PyObject *x[X_COUNT];
    for (int i = 0; i < X_COUNT; i++) {
        if ((x[i] = SLOT(exchange, exchange_at[i])) == NULL) {
            Py_RETURN_FALSE;
        }
    }
    PyObject *head = x[X_HEAD], *upstream = x[X_UPSTREAM], *started = x[X_STARTED], *down = x[X_DOWN];
    if (!PyObject_TypeCheck(head, head_type) || !PyFloat_CheckExact(started) ||
        !PyObject_TypeCheck(down, downstream_type) ||
        (upstream != Py_None && !PyObject_TypeCheck(upstream, endpoint_type))) {
        Py_RETURN_FALSE;
    }
    PyObject *h[H_COUNT];
    for (int i = 0; i < H_COUNT; i++) {
        if ((h[i] = SLOT(head, head_at[i])) == NULL) {
            Py_RETURN_FALSE;
        }
    }
    PyObject *peer = Py_None;
    if (upstream != Py_None && (peer = SLOT(upstream, endpoint_at[E_INSTANCE])) == NULL) {
        Py_RETURN_FALSE;
    }
    PyObject *last = SLOT(down, downstream_at[D_LAST_SIGNATURE]);
    if (last == NULL) {
        Py_RETURN_FALSE;
    }
    Py_INCREF(last);  /* (held while compared) */
    PyObject *signature[12] = {h[H_METHOD], h[H_TARGET], h[H_HOST], h[H_USER_AGENT], h[H_CALLER],
                               x[X_ROUTE], upstream, peer, x[X_STATUS], x[X_ATTEMPTS], args[2], args[3]};
    int equal = PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == 12;
    for (int i = 0; equal && i < 12; i++) {
        equal = same(signature[i], PyTuple_GET_ITEM(last, i));
    }
    Py_DECREF(last);
    if (!equal) {
        Py_RETURN_FALSE;
    }
    PyObject *outcome = SLOT(down, downstream_at[D_LAST_OUTCOME]);
    PyObject *telemetry;
    if (outcome == NULL || !PyObject_TypeCheck(outcome, outcome_type) ||
        SLOT(outcome, outcome_at[O_FAILED]) != Py_False ||
        (telemetry = SLOT(outcome, outcome_at[O_TELEMETRY])) == NULL ||
        !PyObject_TypeCheck(telemetry, telemetry_type)) {
        Py_RETURN_FALSE;
    }
    PyObject *trace = x[X_TRACE], *lines = h[H_TRACE_LINES];
    PyObject *tapping = SLOT(telemetry, telemetry_at[T_TAPPING]);
    PyObject *exporting = SLOT(telemetry, telemetry_at[T_EXPORTING_SPANS]);
    PyObject *journal = SLOT(telemetry, telemetry_at[T_JOURNAL]);
    /* (a tap open: an entry is needed now; spans exported and this request sampled: a span queued too) */
    if (tapping != Py_False || journal == NULL || !PyList_CheckExact(journal) ||
        (exporting != Py_False &&
         (exporting != Py_True || trace != Py_None || !PyBytes_CheckExact(lines) || sampled_lines(lines)))) {
        Py_RETURN_FALSE;
    }
    PyObject *response_bytes = x[X_RESP_BYTES];
    int positive = PyObject_RichCompareBool(response_bytes, zero, Py_GT);
    if (positive < 0) {
        return NULL;
    }
    /* What the tuples hold, held before anything is allocated (an allocation may run a collection, and
       a finalizer could change the exchange's slots) */
    /* (the trace that came: its block, or the headers; Exchange._ended's ``head.trace_block or head.trace``) */
    PyObject *incoming = PyBytes_Check(h[H_TRACE_BLOCK]) && PyBytes_GET_SIZE(h[H_TRACE_BLOCK]) ? h[H_TRACE_BLOCK]
                                                                                                : h[H_TRACE];
    PyObject *fields[10] = {outcome, started, x[X_REQ_BYTES], positive ? response_bytes : zero, h[H_HOST],
                            h[H_USER_AGENT], trace == Py_None ? lines : trace, incoming, journal, telemetry};
    for (int i = 0; i < 10; i++) {
        Py_INCREF(fields[i]);
    }
    PyObject *result = NULL, *item = NULL;
    double duration_ms = (PyFloat_AS_DOUBLE(now) - PyFloat_AS_DOUBLE(started)) * 1000.0;
    PyObject *wire = PyTuple_Pack(4, fields[4], fields[5], fields[6], fields[7]);
    if (wire == NULL) {
        goto done;
    }
    item = PyTuple_New(7);
    if (item == NULL) {
        goto done;
    }
    PyObject *duration = PyFloat_FromDouble(duration_ms);
    if (duration == NULL) {
        goto done;
    }
    PyTuple_SET_ITEM(item, 0, Py_NewRef(outcome));
    PyTuple_SET_ITEM(item, 1, Py_NewRef(started));
    PyTuple_SET_ITEM(item, 2, duration);
    PyTuple_SET_ITEM(item, 3, Py_NewRef(fields[2]));
    PyTuple_SET_ITEM(item, 4, Py_NewRef(fields[3]));
    PyTuple_SET_ITEM(item, 5, wire);
    wire = NULL;
    PyTuple_SET_ITEM(item, 6, Py_NewRef(Py_None));
    if (PyList_Append(journal, item) < 0) {
        goto done;
    }
    if (PyList_GET_SIZE(journal) >= journal_fold) {
        PyObject *settled = PyObject_CallMethodNoArgs(telemetry, str_settle);
        if (settled == NULL) {
            goto done;
        }
        Py_DECREF(settled);
    }
    result = Py_NewRef(Py_True);
done:
    for (int i = 0; i < 10; i++) {
        Py_DECREF(fields[i]);
    }
    Py_XDECREF(wire);
    Py_XDECREF(item);
    return result;
}

static PyMethodDef methods[] = {
    {"access_lines", (PyCFunction)(void (*)(void))access_lines, METH_FASTCALL,
     "access_lines(items, offset, second_bytes): access_line._tuple_lines, or None off its fast path"},
    {"fresh_blocks", (PyCFunction)(void (*)(void))fresh_blocks, METH_FASTCALL,
     "fresh_blocks(prefix, base, digits, sampled): a batch of Tracer._make_fresh's blocks"},
    {"block_passes", (PyCFunction)block_passes, METH_O,
     "block_passes(block): Tracer.follow_approved(block) is block"},
    {"journal_setup", (PyCFunction)(void (*)(void))journal_setup, METH_FASTCALL,
     "journal_setup(Exchange, RequestHead, Outcome, Endpoint, HttpDownstream, Telemetry, fold)"},
    {"journal_end", (PyCFunction)(void (*)(void))journal_end, METH_FASTCALL,
     "journal_end(exchange, now, reason, flags): Exchange._ended's usual path, or False"},
    {"known_block", (PyCFunction)(void (*)(void))known_block, METH_FASTCALL,
     "known_block(head, before, after, id_at, middle, stop, classes, shape): RequestDecoder._known's check"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_speedups", "Plexus's per-request telemetry loops in C (see the source).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    str_sized_request = PyUnicode_InternFromString("sized_request");
    str_sized_response = PyUnicode_InternFromString("sized_response");
    str_sized_parts = PyUnicode_InternFromString("sized_parts");
    str_parts_sized = PyUnicode_InternFromString("parts_sized");
    str_tail = PyUnicode_InternFromString("tail");
    str_settle = PyUnicode_InternFromString("settle");
    zero = PyLong_FromLong(0);
    if (str_settle == NULL || zero == NULL) {
        return NULL;
    }
    if (str_sized_request == NULL || str_sized_response == NULL || str_sized_parts == NULL ||
        str_parts_sized == NULL || str_tail == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
