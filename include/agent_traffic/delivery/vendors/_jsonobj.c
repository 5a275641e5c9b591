/* The compiled path of json_columns.obj(): every row's JSON object in one pass over its columns.
 *
 * The Arrow path builds the same bytes with compute kernels (an escape pass per text column,
 * then a join of key literals and values), each pass a fresh copy of the window's bytes. Here
 * each row is written once: `{`, then per field its key and value, `}`, the row's end. A field
 * is a string array of JSON fragments (written as they are) or of text (quoted here, with the
 * escapes of the table json_columns hands over, which are orjson's); a null value leaves its key
 * out, or writes JSON null for a required text field.
 *
 * The output goes into buffers the caller allocates from Arrow's memory pool, which reuses the
 * pages of the window before (fresh memory from malloc cost as many page faults as the writing
 * took). When they are too small (escapes make values longer), it counts what is needed instead.
 *
 * Every offset is checked against its buffer before a byte is read, so a malformed array makes a
 * ValueError, never a read outside its buffers. The loop runs without the GIL: the planner runs
 * two objects side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ABI 3 /* objects()' arguments; json_columns.py uses a build of this ABI only */
#define ESCAPE_WIDTH 8 /* the escape table: 256 entries of [length, up to 7 bytes] */

enum { KIND_RAW, KIND_TEXT };

typedef struct {
    Py_buffer key, valid, offsets, data;
    int kind, required, has_valid;
    Py_ssize_t offset;
} Field;

typedef struct {
    uint8_t *buf;
    Py_ssize_t used, cap;
} Out;

/* Writes while they fit; after that only counts, so the caller learns the size it needs. */
static inline void put(Out *o, const void *src, Py_ssize_t len) {
    if (o->used + len <= o->cap) memcpy(o->buf + o->used, src, (size_t)len);
    o->used += len;
}

static inline void put_byte(Out *o, uint8_t b) {
    if (o->used < o->cap) o->buf[o->used] = b;
    o->used++;
}

static void release(Field *f, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyBuffer_Release(&f[i].key);
        if (f[i].has_valid) PyBuffer_Release(&f[i].valid);
        PyBuffer_Release(&f[i].offsets);
        PyBuffer_Release(&f[i].data);
    }
}

/* The buffers hold the field's `total` rows from `offset`; each row's offsets are checked as it is written. */
static int check_field(const Field *f, Py_ssize_t total) {
    if (f->offset < 0 || f->offsets.len / 4 < f->offset + total + 1 ||
        (f->has_valid && f->valid.len * 8 < f->offset + total)) {
        PyErr_SetString(PyExc_ValueError, "objects: a field's buffers are shorter than its rows");
        return -1;
    }
    return 0;
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

/* Whether any of eight bytes is below 0x20, a quote or a backslash: the bytes JSON escapes.
 * Exact as a yes or no (bit-twiddling's haszero and hasless; bytes >= 0x80 never count). */
static inline int any_special(uint64_t x) {
    uint64_t quote = x ^ (ONES * '"'), slash = x ^ (ONES * '\\');
    return (((x - ONES * 0x20) & ~x) | ((quote - ONES) & ~quote) | ((slash - ONES) & ~slash)) & HIGHS ? 1 : 0;
}

/* The first byte at or after j that the table escapes; len when none. Eight bytes at a time. */
static inline Py_ssize_t next_escape(const uint8_t *v, Py_ssize_t j, Py_ssize_t len, const uint8_t *table) {
    for (; j + 8 <= len; j += 8) {
        uint64_t x;
        memcpy(&x, v + j, 8);
        if (any_special(x)) break;
    }
    while (j < len && !table[ESCAPE_WIDTH * v[j]]) j++;
    return j;
}

/* 0, or -1 when a row number or a value's offsets lie outside their buffers (nothing read there). */
static int write_rows(const Field *fields, Py_ssize_t nf, Py_ssize_t n, Py_ssize_t total, const int64_t *rows,
                      const Py_buffer *end, const uint8_t *table, Out *o, int32_t *starts) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = rows ? (Py_ssize_t)rows[i] : i;
        if (at < 0 || at >= total) return -1;
        starts[i] = (int32_t)(o->used <= INT32_MAX ? o->used : -1);
        int first = 1;
        put_byte(o, '{');
        for (Py_ssize_t k = 0; k < nf; k++) {
            const Field *f = &fields[k];
            Py_ssize_t row = f->offset + at;
            int is_null = f->has_valid && !((((const uint8_t *)f->valid.buf)[row >> 3] >> (row & 7)) & 1);
            if (is_null && !(f->kind == KIND_TEXT && f->required)) continue;
            const int32_t *off = (const int32_t *)f->offsets.buf;
            if (off[row] < 0 || off[row + 1] < off[row] || off[row + 1] > f->data.len) return -1;
            if (!first) put_byte(o, ',');
            first = 0;
            put(o, f->key.buf, f->key.len);
            const uint8_t *v = (const uint8_t *)f->data.buf + off[row];
            Py_ssize_t len = off[row + 1] - off[row];
            if (f->kind == KIND_RAW) {
                put(o, v, len);
            } else if (is_null) {
                put(o, "null", 4);
            } else {
                put_byte(o, '"');
                Py_ssize_t from = 0; /* runs without escapes are copied whole */
                for (Py_ssize_t j = next_escape(v, 0, len, table); j < len; j = next_escape(v, from, len, table)) {
                    const uint8_t *e = table + ESCAPE_WIDTH * v[j];
                    put(o, v + from, j - from);
                    put(o, e + 1, *e);
                    from = j + 1;
                }
                put(o, v + from, len - from);
                put_byte(o, '"');
            }
        }
        put_byte(o, '}');
        put(o, end->buf, end->len);
    }
    starts[n] = (int32_t)(o->used <= INT32_MAX ? o->used : -1);
    return 0;
}

PyDoc_STRVAR(objects_doc,
             "objects(rows, total, fields, end, escapes, data, offsets) -> int\n\n"
             "JSON objects of the fields' rows `rows` (int64 row numbers below `total`, or None: all\n"
             "`total` in order), each followed by `end`, written into `data` (writable), their starts\n"
             "(one more than the rows, int32) into `offsets`. fields: (key literal, kind 0 raw / 1 text,\n"
             "required, validity buffer or None, int32 offsets, data, array offset) in key order, each of\n"
             "`total` rows. escapes: 256 entries of 8 bytes, [length, replacement...]; length 0 copies\n"
             "the byte. Returns the bytes written, or minus the bytes needed when `data` is too small\n"
             "(then nothing in it is to be used).");

static PyObject *objects(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t total;
    PyObject *list, *rows_obj;
    Py_buffer end, esc, data_out, offsets_out, rows = {0};
    if (!PyArg_ParseTuple(args, "OnO!y*y*w*w*", &rows_obj, &total, &PyList_Type, &list, &end, &esc, &data_out,
                          &offsets_out))
        return NULL;
    int has_rows = rows_obj != Py_None;
    if (has_rows && PyObject_GetBuffer(rows_obj, &rows, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&end);
        PyBuffer_Release(&esc);
        PyBuffer_Release(&data_out);
        PyBuffer_Release(&offsets_out);
        return NULL;
    }
    Py_ssize_t n = has_rows ? rows.len / 8 : total;
    PyObject *result = NULL;
    Py_ssize_t nf = PyList_GET_SIZE(list), parsed = 0;
    Field *fields = PyMem_Calloc((size_t)(nf ? nf : 1), sizeof(Field));
    if (!fields) {
        PyErr_NoMemory();
        goto done;
    }
    if (total < 0 || (has_rows && rows.len % 8) || esc.len != 256 * ESCAPE_WIDTH || offsets_out.len < 4 * (n + 1)) {
        PyErr_SetString(PyExc_ValueError, "objects: bad row count, escape table or offsets buffer");
        goto done;
    }
    for (; parsed < nf; parsed++) {
        Field *f = &fields[parsed];
        PyObject *valid;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, parsed), "y*iiOy*y*n", &f->key, &f->kind, &f->required, &valid,
                              &f->offsets, &f->data, &f->offset))
            goto done;
        f->has_valid = valid != Py_None;
        if (f->has_valid && PyObject_GetBuffer(valid, &f->valid, PyBUF_SIMPLE) < 0) {
            f->has_valid = 0;
            PyBuffer_Release(&f->key);
            PyBuffer_Release(&f->offsets);
            PyBuffer_Release(&f->data);
            goto done;
        }
        if (f->kind != KIND_RAW && f->kind != KIND_TEXT) {
            PyErr_SetString(PyExc_ValueError, "objects: unknown field kind");
            parsed++;
            goto done;
        }
        if (check_field(f, total) < 0) {
            parsed++;
            goto done;
        }
    }
    Out o = {(uint8_t *)data_out.buf, 0, data_out.len};
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = write_rows(fields, nf, n, total, has_rows ? (const int64_t *)rows.buf : NULL, &end, (const uint8_t *)esc.buf,
                     &o, (int32_t *)offsets_out.buf);
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "objects: a row or a value lies outside its buffers");
        goto done;
    }
    if (o.used > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "objects: over 2 GiB of JSON in one window");
        goto done;
    }
    result = PyLong_FromSsize_t(o.used <= o.cap ? o.used : -o.used);
done:
    if (fields) {
        release(fields, parsed);
        PyMem_Free(fields);
    }
    PyBuffer_Release(&end);
    PyBuffer_Release(&esc);
    PyBuffer_Release(&data_out);
    PyBuffer_Release(&offsets_out);
    if (has_rows) PyBuffer_Release(&rows);
    return result;
}

static PyMethodDef methods[] = {
    {"objects", objects, METH_VARARGS, objects_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsonobj", "Compiled path of json_columns.obj (see json_columns.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonobj(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI", ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
