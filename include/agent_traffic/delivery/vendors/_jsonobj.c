/* The compiled path of json_columns.obj(): every row's JSON object in one pass over its columns.
 *
 * The Arrow path builds the same bytes with compute kernels (an escape pass per text column,
 * then a join of key literals and values), each pass a fresh copy of the window's bytes. Here
 * each row is written once: `{`, then per field its key and value, `}`, the row's end. A field
 * is a string array of JSON fragments (written as they are), of text (quoted here, with the
 * escapes of the table json_columns hands over, which are orjson's), or of int64 microseconds
 * written as Unix seconds (`epoch`: the text orjson gives for the vendor's per-value definition,
 * without building a string array of them first); a null value leaves its key out, or writes JSON
 * null for a required text field.
 *
 * The output goes into buffers the caller allocates from Arrow's memory pool, which reuses the
 * pages of the window before (fresh memory from malloc cost as many page faults as the writing
 * took). When they are too small (escapes make values longer), it counts what is needed instead.
 *
 * A field may come in parts (an Arrow chunked array: an object's per-provider files one after
 * another), read where they are instead of copied into one array first. A part may be an Arrow
 * dictionary array: its int32 indices pick each row's value from the dictionary's strings (a
 * column Parquet decoded as a dictionary, whose values json_columns escaped once per entry). Every offset is checked
 * against its buffer before a byte is read, so a malformed array makes a ValueError, never a read
 * outside its buffers. The loop runs without the GIL: planning from an object store runs two
 * objects side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define ABI 6 /* objects()' arguments; json_columns.py uses a build of this ABI only */
#define ESCAPE_WIDTH 8 /* the escape table: 256 entries of [length, up to 7 bytes] */
#define EXACT_US (INT64_C(1) << 53) /* microseconds a double holds exactly: epoch values stay below */

enum { KIND_RAW, KIND_TEXT, KIND_EPOCH };

typedef struct {
    Py_buffer valid, offsets, data, indices;
    int has_valid, has_indices;
    Py_ssize_t offset, length, first_row; /* first_row: the field's row number of its first value */
    Py_ssize_t values; /* the strings `offsets` delimits (a dictionary's entries) */
} Part;

typedef struct {
    Py_buffer key;
    int kind, required;
    Py_ssize_t nparts, same_as; /* same_as: an earlier field cut into the same parts (-1: none) */
    Part *parts;
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

static void release_part(Part *p) {
    if (p->has_valid) PyBuffer_Release(&p->valid);
    if (p->has_indices) PyBuffer_Release(&p->indices);
    PyBuffer_Release(&p->offsets);
    PyBuffer_Release(&p->data);
}

/* The part holding row `at` of a field (binary search over the parts' first rows). */
static inline const Part *part_of(const Field *f, Py_ssize_t at) {
    Py_ssize_t lo = 0, hi = f->nparts - 1;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi + 1) / 2;
        if (f->parts[mid].first_row <= at) lo = mid;
        else hi = mid - 1;
    }
    return &f->parts[lo];
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

/* Unix seconds from microseconds, as orjson writes `epoch_seconds` of scrunch.py: an integer for a
 * whole second, else the float round(us / 1e6, 3) (shortest form: `.5`, `.05`, `.0` when it
 * rounds to a whole second). Below EXACT_US only the rows exactly half a millisecond off depend
 * on the double: round() rounds the double's exact value half to even, and fma gives the sign of
 * its distance from the midpoint exactly. -1 (nothing written) outside that range. */
static inline int put_epoch(Out *o, int64_t us) {
    if (us <= -EXACT_US || us >= EXACT_US) return -1;
    char buf[32], digits[20];
    int n = 0, k = 0;
    uint64_t a = (uint64_t)(us < 0 ? -us : us), secs, frac = 0;
    int whole = a % 1000000 == 0;
    if (us < 0) buf[n++] = '-';
    if (whole) {
        secs = a / 1000000;
    } else {
        uint64_t ms = a / 1000, rest = a % 1000;
        if (rest > 500) {
            ms++;
        } else if (rest == 500) {
            double r = fma((double)a / 1e6, 1e6, -(double)a); /* the double's distance above a / 1e6 */
            if (r > 0 || (r == 0 && (ms & 1))) ms++;
        }
        secs = ms / 1000;
        frac = ms % 1000;
    }
    do digits[k++] = (char)('0' + secs % 10); while ((secs /= 10));
    while (k) buf[n++] = digits[--k];
    if (!whole) {
        buf[n++] = '.';
        buf[n++] = (char)('0' + frac / 100);
        if (frac % 100) {
            buf[n++] = (char)('0' + frac / 10 % 10);
            if (frac % 10) buf[n++] = (char)('0' + frac % 10);
        }
    }
    put(o, buf, n);
    return 0;
}

/* 0, or -1 when a row number or a value's offsets lie outside their buffers (nothing read there). */
static int write_rows(const Field *fields, Py_ssize_t nf, Py_ssize_t n, Py_ssize_t total, const int64_t *rows,
                      const Py_buffer *end, const uint8_t *table, Out *o, int32_t *starts, Py_ssize_t *found) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t at = rows ? (Py_ssize_t)rows[i] : i;
        if (at < 0 || at >= total) return -1;
        starts[i] = (int32_t)(o->used <= INT32_MAX ? o->used : -1);
        int first = 1;
        put_byte(o, '{');
        for (Py_ssize_t k = 0; k < nf; k++) {
            const Field *f = &fields[k];
            found[k] = f->nparts == 1 ? 0 : f->same_as >= 0 ? found[f->same_as] : part_of(f, at) - f->parts;
            const Part *p = &f->parts[found[k]];
            Py_ssize_t row = p->offset + (at - p->first_row);
            int is_null = p->has_valid && !((((const uint8_t *)p->valid.buf)[row >> 3] >> (row & 7)) & 1);
            if (is_null && !(f->kind == KIND_TEXT && f->required)) continue;
            if (!first) put_byte(o, ',');
            first = 0;
            put(o, f->key.buf, f->key.len);
            if (is_null) { /* a required text field: its slot's offsets or index may be anything */
                put(o, "null", 4);
                continue;
            }
            if (f->kind == KIND_EPOCH) {
                if (put_epoch(o, ((const int64_t *)p->offsets.buf)[row]) < 0) return -1;
                continue;
            }
            Py_ssize_t at_value = row;
            if (p->has_indices) {
                int32_t ix = ((const int32_t *)p->indices.buf)[row];
                if (ix < 0 || ix >= p->values) return -1;
                at_value = ix;
            }
            const int32_t *off = (const int32_t *)p->offsets.buf;
            if (off[at_value] < 0 || off[at_value + 1] < off[at_value] || off[at_value + 1] > p->data.len) return -1;
            const uint8_t *v = (const uint8_t *)p->data.buf + off[at_value];
            Py_ssize_t len = off[at_value + 1] - off[at_value];
            if (f->kind == KIND_RAW) {
                put(o, v, len);
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

/* `obj`'s buffer into `buf`, unless it is None; `*held` says whether it was taken. */
static int optional_buffer(PyObject *obj, Py_buffer *buf, int *held) {
    *held = obj != Py_None && PyObject_GetBuffer(obj, buf, PyBUF_SIMPLE) == 0;
    return obj != Py_None && !*held ? -1 : 0;
}

/* One part: (validity or None, int32 offsets, data, array offset, length), its buffers holding
 * its rows; a dictionary part adds its int32 indices (offset and validity apply to them; offsets
 * and data are the dictionary's); an epoch part is (validity or None, int64 values, b"", array
 * offset, length). -1 with an exception set (nothing held) on failure. */
static int parse_part(PyObject *item, Part *p, int kind) {
    PyObject *valid, *indices = Py_None;
    if (!PyArg_ParseTuple(item, "Oy*y*nn|O", &valid, &p->offsets, &p->data, &p->offset, &p->length, &indices))
        return -1;
    if (indices != Py_None && kind == KIND_EPOCH) {
        PyErr_SetString(PyExc_ValueError, "objects: an epoch part has no dictionary");
        release_part(p);
        return -1;
    }
    if (optional_buffer(valid, &p->valid, &p->has_valid) < 0 ||
        optional_buffer(indices, &p->indices, &p->has_indices) < 0) {
        release_part(p);
        return -1;
    }
    p->values = kind == KIND_EPOCH ? p->offsets.len / 8 : p->offsets.len / 4 - 1;
    Py_ssize_t slots = p->has_indices ? p->indices.len / 4 : p->values; /* rows it holds */
    if (p->offset < 0 || p->length < 0 || p->values < 0 || slots < p->offset + p->length ||
        (p->has_valid && p->valid.len * 8 < p->offset + p->length)) {
        PyErr_SetString(PyExc_ValueError, "objects: a part's buffers are shorter than its rows");
        release_part(p);
        return -1;
    }
    return 0;
}

/* One field: (key literal, kind, required, [parts]) whose parts hold `total` rows in all. */
static int parse_field(PyObject *item, Field *f, Py_ssize_t total) {
    PyObject *parts;
    if (!PyArg_ParseTuple(item, "y*iiO!", &f->key, &f->kind, &f->required, &PyList_Type, &parts)) return -1;
    f->nparts = 0;
    Py_ssize_t want = PyList_GET_SIZE(parts), rows = 0;
    f->parts = PyMem_Calloc((size_t)(want ? want : 1), sizeof(Part));
    if (!f->parts) {
        PyBuffer_Release(&f->key);
        PyErr_NoMemory();
        return -1;
    }
    if (f->kind != KIND_RAW && f->kind != KIND_TEXT && f->kind != KIND_EPOCH) {
        PyErr_SetString(PyExc_ValueError, "objects: unknown field kind");
        return -1;
    }
    for (; f->nparts < want; f->nparts++) {
        Part *p = &f->parts[f->nparts];
        if (parse_part(PyList_GET_ITEM(parts, f->nparts), p, f->kind) < 0) return -1;
        p->first_row = rows;
        rows += p->length;
    }
    if (rows != total || !want) {
        PyErr_SetString(PyExc_ValueError, "objects: a field's parts do not hold its rows");
        return -1;
    }
    return 0;
}

static void release_fields(Field *fields, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyBuffer_Release(&fields[i].key);
        for (Py_ssize_t k = 0; k < fields[i].nparts; k++) release_part(&fields[i].parts[k]);
        PyMem_Free(fields[i].parts);
    }
}

PyDoc_STRVAR(objects_doc,
             "objects(rows, total, fields, end, escapes, data, offsets) -> int\n\n"
             "JSON objects of the fields' rows `rows` (int64 row numbers below `total`, or None: all\n"
             "`total` in order), each followed by `end`, written into `data` (writable), their starts\n"
             "(one more than the rows, int32) into `offsets`. fields, in key order: (key literal, kind\n"
             "0 raw / 1 text / 2 epoch, required, [parts]), a part (validity buffer or None, int32 offsets,\n"
             "data, array offset, length[, int32 dictionary indices: offsets and data are then the\n"
             "dictionary's]; for epoch: int64 microseconds in place of the offsets, data b''), the parts\n"
             "of each field holding its `total` rows one after another.\n"
             "escapes: 256 entries of 8 bytes, [length, replacement...]; length 0 copies the byte.\n"
             "Returns the bytes written, or minus the bytes needed when `data` is too small (then nothing\n"
             "in it is to be used).");

static PyObject *objects(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t total;
    PyObject *list, *rows_obj;
    Py_buffer end, esc, data_out, offsets_out, rows = {0};
    if (!PyArg_ParseTuple(args, "OnO!y*y*w*w*", &rows_obj, &total, &PyList_Type, &list, &end, &esc, &data_out,
                          &offsets_out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *found = NULL; /* per field, the part of the row being written */
    int has_rows = rows_obj != Py_None;
    Py_ssize_t nf = PyList_GET_SIZE(list), parsed = 0;
    Field *fields = PyMem_Calloc((size_t)(nf ? nf : 1), sizeof(Field));
    if (!fields) {
        PyErr_NoMemory();
        goto done;
    }
    if (has_rows && PyObject_GetBuffer(rows_obj, &rows, PyBUF_SIMPLE) < 0) {
        has_rows = 0;
        goto done;
    }
    Py_ssize_t n = has_rows ? rows.len / 8 : total;
    if (total < 0 || (has_rows && rows.len % 8) || esc.len != 256 * ESCAPE_WIDTH || offsets_out.len < 4 * (n + 1)) {
        PyErr_SetString(PyExc_ValueError, "objects: bad row count, escape table or offsets buffer");
        goto done;
    }
    for (; parsed < nf; parsed++) {
        Field *f = &fields[parsed];
        if (parse_field(PyList_GET_ITEM(list, parsed), f, total) < 0) {
            if (f->parts) parsed++; /* its key and parts so far are released below */
            goto done;
        }
        f->same_as = -1; /* the table's columns share their chunks: one lookup a row for all of them */
        for (Py_ssize_t k = 0; k < parsed && f->same_as < 0 && f->nparts > 1; k++) {
            int same = fields[k].nparts == f->nparts && fields[k].same_as < 0;
            for (Py_ssize_t q = 0; same && q < f->nparts; q++) same = fields[k].parts[q].first_row == f->parts[q].first_row;
            if (same) f->same_as = k;
        }
    }
    found = PyMem_Calloc((size_t)(nf ? nf : 1), sizeof(Py_ssize_t));
    if (!found) {
        PyErr_NoMemory();
        goto done;
    }
    Out o = {(uint8_t *)data_out.buf, 0, data_out.len};
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = write_rows(fields, nf, n, total, has_rows ? (const int64_t *)rows.buf : NULL, &end, (const uint8_t *)esc.buf,
                     &o, (int32_t *)offsets_out.buf, found);
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "objects: a row or a value lies outside its buffers, or a time outside +-2**53 us");
        goto done;
    }
    if (o.used > INT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "objects: over 2 GiB of JSON in one window");
        goto done;
    }
    result = PyLong_FromSsize_t(o.used <= o.cap ? o.used : -o.used);
done:
    PyMem_Free(found);
    if (fields) {
        release_fields(fields, parsed);
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
