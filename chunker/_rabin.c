/*
 * Rabin fingerprint content-defined chunking (imported as dfms.chunker._rabin).
 *
 * The fingerprint of a 64-byte window w[0..63] is the polynomial
 * sum(w[j] * x^(8*(63-j))) reduced modulo the irreducible polynomial
 * POLYNOMIAL over GF(2). It depends only on the window's bytes, so a chunk
 * boundary depends only on the bytes before it and on the chunk start: the
 * same everywhere, in every process.
 *
 * A boundary follows byte i (chunk length L = i + 1 - start) when
 * L >= min_size and (fingerprint & mask) == mask, or when L == max_size.
 * Requiring all mask bits set (rather than clear) keeps runs of zero bytes,
 * whose fingerprint is 0, from being cut at every min_size.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define WINDOW_SIZE 64
/* Degree-53 irreducible polynomial (the one used by restic's and
 * rabin-cdc's chunkers). Changing it changes every boundary. */
#define POLYNOMIAL 0x3DA3358B4DC173ULL
#define POLY_DEGREE 53
#define TOP_SHIFT (POLY_DEGREE - 8)

/* Lanes scan LANES consecutive blocks of one chunk at once: each lane's hash
 * is a serial chain of dependent table lookups, so independent chains keep
 * the CPU busy while a lookup is in flight. */
#define LANES 4

#if defined(__GNUC__)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define UNLIKELY(x) (x)
#endif

/* mod_table[t]: t * x^53 mod P, plus t << 53 so that the XOR also clears
 * the byte that was shifted above the polynomial's degree. */
static uint64_t mod_table[256];
/* out_table[b]: b * x^(8*64) mod P, the share of a byte that has just left
 * the 64-byte window. */
static uint64_t out_table[256];

static uint64_t
poly_mod(uint64_t value, int value_bits)
{
    for (int bit = value_bits - 1; bit >= POLY_DEGREE; bit--) {
        if (value & (1ULL << bit)) {
            value ^= POLYNOMIAL << (bit - POLY_DEGREE);
        }
    }
    return value;
}

static inline uint64_t
append_byte(uint64_t digest, uint8_t byte)
{
    return ((digest << 8) | byte) ^ mod_table[digest >> TOP_SHIFT];
}

static void
build_tables(void)
{
    for (int t = 0; t < 256; t++) {
        uint64_t high = (uint64_t)t << POLY_DEGREE;
        mod_table[t] = poly_mod(high, POLY_DEGREE + 8) | high;
    }
    for (int b = 0; b < 256; b++) {
        uint64_t digest = append_byte(0, (uint8_t)b);
        for (int i = 0; i < WINDOW_SIZE; i++) {
            digest = append_byte(digest, 0);
        }
        out_table[b] = digest;
    }
}

/* Fingerprint of the window ending at p[0]: reads p[-63..0]. */
static inline uint64_t
window_fingerprint(const uint8_t *p)
{
    uint64_t digest = 0;
    for (int j = -(WINDOW_SIZE - 1); j <= 0; j++) {
        digest = append_byte(digest, p[j]);
    }
    return digest;
}

/* First position i in [first, end) whose window matches, or -1. */
static Py_ssize_t
scan_one_lane(const uint8_t *p, Py_ssize_t first, Py_ssize_t end, uint64_t mask)
{
    if (first >= end) {
        return -1;
    }
    uint64_t d = window_fingerprint(p + first);
    if ((d & mask) == mask) {
        return first;
    }
    for (Py_ssize_t i = first + 1; i < end; i++) {
        d = (((d << 8) | p[i]) ^ out_table[p[i - WINDOW_SIZE]]) ^ mod_table[d >> TOP_SHIFT];
        if (UNLIKELY((d & mask) == mask)) {
            return i;
        }
    }
    return -1;
}

#define LANE_STEP(d, q, hit)                                                              \
    do {                                                                                  \
        d = (((d << 8) | q[t]) ^ out_table[q[t - WINDOW_SIZE]]) ^ mod_table[d >> TOP_SHIFT]; \
        if (UNLIKELY((d & mask) == mask) && hit < 0) {                                    \
            hit = t;                                                                      \
        }                                                                                 \
    } while (0)

/* Scans LANES blocks of `block` positions starting at `first` at once.
 * Returns the first matching position, or -1 if none of them matches. */
static Py_ssize_t
scan_lanes(const uint8_t *p, Py_ssize_t first, Py_ssize_t block, uint64_t mask)
{
    const uint8_t *q0 = p + first;
    const uint8_t *q1 = q0 + block;
    const uint8_t *q2 = q1 + block;
    const uint8_t *q3 = q2 + block;
    uint64_t d0 = window_fingerprint(q0);
    uint64_t d1 = window_fingerprint(q1);
    uint64_t d2 = window_fingerprint(q2);
    uint64_t d3 = window_fingerprint(q3);
    Py_ssize_t h0 = (d0 & mask) == mask ? 0 : -1;
    Py_ssize_t h1 = (d1 & mask) == mask ? 0 : -1;
    Py_ssize_t h2 = (d2 & mask) == mask ? 0 : -1;
    Py_ssize_t h3 = (d3 & mask) == mask ? 0 : -1;
    for (Py_ssize_t t = 1; t < block; t++) {
        LANE_STEP(d0, q0, h0);
        LANE_STEP(d1, q1, h1);
        LANE_STEP(d2, q2, h2);
        LANE_STEP(d3, q3, h3);
    }
    if (h0 >= 0) return first + h0;
    if (h1 >= 0) return first + block + h1;
    if (h2 >= 0) return first + 2 * block + h2;
    if (h3 >= 0) return first + 3 * block + h3;
    return -1;
}

/* Lanes waste the work done past the boundary in the round that finds it;
 * a block of about avg/64 keeps that waste to a few percent of a chunk. */
static Py_ssize_t
lane_block(uint64_t mask)
{
    uint64_t block = (mask + 1) / 64;
    if (block < 512) {
        block = 512;
    }
    if (block > 16384) {
        block = 16384;
    }
    return (Py_ssize_t)block;
}

/* Length of the chunk that starts at p and has n bytes available. */
static Py_ssize_t
chunk_length(const uint8_t *p, Py_ssize_t n, Py_ssize_t min_size, Py_ssize_t max_size,
             uint64_t mask)
{
    if (n <= min_size) {
        return n;
    }
    Py_ssize_t end = n < max_size ? n : max_size;
    Py_ssize_t block = lane_block(mask);
    Py_ssize_t first = min_size - 1;
    while (end - first >= LANES * block) {
        Py_ssize_t hit = scan_lanes(p, first, block, mask);
        if (hit >= 0) {
            return hit + 1;
        }
        first += LANES * block;
    }
    Py_ssize_t hit = scan_one_lane(p, first, end, mask);
    return hit >= 0 ? hit + 1 : end;
}

static int
check_sizes(Py_ssize_t min_size, Py_ssize_t max_size, unsigned long long mask)
{
    if (min_size < WINDOW_SIZE) {
        PyErr_Format(PyExc_ValueError, "min_size=%zd must be >= the window size %d",
                     min_size, WINDOW_SIZE);
        return -1;
    }
    if (max_size < min_size) {
        PyErr_Format(PyExc_ValueError, "max_size=%zd must be >= min_size=%zd",
                     max_size, min_size);
        return -1;
    }
    if ((mask & (mask + 1)) != 0 || mask >= (1ULL << POLY_DEGREE)) {
        PyErr_Format(PyExc_ValueError, "mask=%llu must be 2**k - 1 with k < %d",
                     mask, POLY_DEGREE);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(find_cut_doc,
"find_cut(buffer, start, min_size, max_size, mask) -> int\n\n"
"Length of the chunk that starts at buffer[start]. Reads at most max_size\n"
"bytes, so the result is final once len(buffer) - start >= max_size; with\n"
"fewer bytes left and no boundary found, it is all of them.");

static PyObject *
find_cut(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t start, min_size, max_size;
    unsigned long long mask;
    if (!PyArg_ParseTuple(args, "y*nnnK:find_cut", &view, &start, &min_size, &max_size,
                          &mask)) {
        return NULL;
    }
    if (check_sizes(min_size, max_size, mask) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (start < 0 || start > view.len) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "start=%zd is outside the buffer", start);
        return NULL;
    }
    const uint8_t *p = (const uint8_t *)view.buf + start;
    Py_ssize_t n = view.len - start;
    Py_ssize_t length;
    Py_BEGIN_ALLOW_THREADS
    length = chunk_length(p, n, min_size, max_size, (uint64_t)mask);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(length);
}

PyDoc_STRVAR(fingerprint_doc,
"fingerprint(data) -> int\n\n"
"Rabin fingerprint of data (of its last 64 bytes once data is longer).");

static PyObject *
fingerprint(PyObject *module, PyObject *args)
{
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*:fingerprint", &view)) {
        return NULL;
    }
    const uint8_t *p = view.buf;
    uint64_t digest = 0;
    for (Py_ssize_t i = 0; i < view.len; i++) {
        digest = append_byte(digest, p[i]);
        if (i >= WINDOW_SIZE) {
            digest ^= out_table[p[i - WINDOW_SIZE]];
        }
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(digest);
}

static PyMethodDef rabin_methods[] = {
    {"find_cut", find_cut, METH_VARARGS, find_cut_doc},
    {"fingerprint", fingerprint, METH_VARARGS, fingerprint_doc},
    {NULL, NULL, 0, NULL},
};

static int
rabin_exec(PyObject *module)
{
    build_tables();
    PyObject *polynomial = PyLong_FromUnsignedLongLong(POLYNOMIAL);
    if (polynomial == NULL) {
        return -1;
    }
    int added = PyModule_AddObjectRef(module, "POLYNOMIAL", polynomial);
    Py_DECREF(polynomial);
    if (added < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "WINDOW_SIZE", WINDOW_SIZE) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot rabin_slots[] = {
    {Py_mod_exec, rabin_exec},
    {0, NULL},
};

static struct PyModuleDef rabin_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "dfms.chunker._rabin",
    .m_doc = "Rabin fingerprint chunk-boundary search (releases the GIL while scanning).",
    .m_size = 0,
    .m_methods = rabin_methods,
    .m_slots = rabin_slots,
};

PyMODINIT_FUNC
PyInit__rabin(void)
{
    return PyModuleDef_Init(&rabin_module);
}
