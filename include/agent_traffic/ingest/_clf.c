/* The compiled fast path of parse.py for line formats shaped like NCSA logs (see shape.py).
 *
 * shape.py compiles a format's regex into a tiny program (literal, greedy run over a byte class,
 * capture start/end, branch on the next byte, jump, end-of-line, accept). scan() runs it once per
 * line, with no backtracking: the path it follows is the first one a backtracking (leftmost-first,
 * greedy) matcher would try, so when it reaches the end the captures are exactly RE2's. When it
 * fails, the line is marked "not fast" and parse.py hands it to the regex in DuckDB as before.
 *
 * Output, per captured field, an Arrow string_view array (16 bytes a line) that points into the
 * block: no byte of a line is copied. Every read is bounds-checked against the block and the
 * program is validated before any line is read, so hostile bytes or a bad program cannot make it
 * read outside its buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { OP_LIT, OP_RUN, OP_SAVE_START, OP_SAVE_END, OP_DISPATCH, OP_JMP, OP_FAIL, OP_END, OP_ACCEPT, OP_COUNT };

#define MAX_SLOTS 64
#define ABI 2 /* scan()'s arguments; shape.py uses a build of this ABI only */
#define MAX_CLASSES 256

typedef struct {
    int32_t op, a, b, c;
} Instr;

/* 1 when the line matches; cap_start/cap_end hold the captured spans (-1: group did not take part). */
static int run_line(const Instr *prog, Py_ssize_t nops, const uint8_t *classes, const int *stop, const uint8_t *pool,
                    const uint8_t *s, Py_ssize_t len, Py_ssize_t *cap_start, Py_ssize_t *cap_end) {
    Py_ssize_t p = 0, pc = 0;
    while (pc < nops) {
        const Instr *in = &prog[pc];
        switch (in->op) {
        case OP_LIT:
            if (len - p < in->b) return 0;
            if (in->b == 1 ? s[p] != pool[in->a] : memcmp(s + p, pool + in->a, (size_t)in->b) != 0) return 0;
            p += in->b;
            pc++;
            break;
        case OP_RUN: { /* greedy; the count is in characters (UTF-8 continuation bytes do not count) */
            const uint8_t *cls = classes + 256 * (Py_ssize_t)in->a;
            if (in->c < 0 && in->b <= 1) { /* `*` and `+`: no count to keep */
                Py_ssize_t from = p;
                if (stop[in->a] >= 0) { /* a class of all bytes but one (and the absent backslash) */
                    const uint8_t *q = memchr(s + p, stop[in->a], (size_t)(len - p));
                    p = q ? q - s : len;
                } else {
                    while (p < len && cls[s[p]]) p++;
                }
                if (p == from && in->b == 1) return 0;
                pc++;
                break;
            }
            int64_t count = 0;
            while (p < len && cls[s[p]]) {
                if ((s[p] & 0xC0) != 0x80) {
                    if (in->c >= 0 && count == in->c) break;
                    count++;
                }
                p++;
            }
            if (count < in->b) return 0;
            pc++;
            break;
        }
        case OP_SAVE_START:
            cap_start[in->a] = p;
            pc++;
            break;
        case OP_SAVE_END:
            cap_end[in->a] = p;
            pc++;
            break;
        case OP_DISPATCH: {
            const uint8_t *cls = classes + 256 * (Py_ssize_t)in->a;
            pc = (p < len && cls[s[p]]) ? in->b : in->c;
            break;
        }
        case OP_JMP:
            pc = in->a;
            break;
        case OP_END:
            return p == len;
        case OP_ACCEPT:
            return 1;
        default: /* OP_FAIL */
            return 0;
        }
    }
    return 0;
}

/* For each class, the one byte it lacks besides the backslash (fast lines have none), else -1:
 * a run over it ends at that byte, which memchr finds many bytes at a time (quoted fields). */
static void stop_bytes(const uint8_t *classes, Py_ssize_t nclasses, int *stop) {
    for (Py_ssize_t k = 0; k < nclasses; k++) {
        int missing = 0, last = -1;
        for (int b = 0; b < 256; b++)
            if (!classes[256 * k + b] && b != '\\') missing++, last = b;
        stop[k] = missing == 1 ? last : -1;
    }
}

/* One Arrow string_view: length, then the bytes inline (<= 12) or a prefix, buffer 0 and offset. */
static void put_view(uint8_t *v, const uint8_t *base, Py_ssize_t off, Py_ssize_t len) {
    int32_t l32 = (int32_t)len, o32 = (int32_t)off, zero = 0;
    memset(v, 0, 16);
    memcpy(v, &l32, 4);
    if (len <= 12) {
        memcpy(v + 4, base + off, (size_t)len);
    } else {
        memcpy(v + 4, base + off, 4);
        memcpy(v + 8, &zero, 4);
        memcpy(v + 12, &o32, 4);
    }
}

static int check_program(const Instr *prog, Py_ssize_t nops, Py_ssize_t nclasses, Py_ssize_t pool_len, int nslots) {
    for (Py_ssize_t pc = 0; pc < nops; pc++) {
        const Instr *in = &prog[pc];
        int ok = 1;
        switch (in->op) {
        case OP_LIT: ok = in->a >= 0 && in->b >= 0 && (Py_ssize_t)in->a + in->b <= pool_len; break;
        case OP_RUN: ok = in->a >= 0 && in->a < nclasses && in->b >= 0 && in->c >= -1 && (in->c < 0 || in->c >= in->b); break;
        case OP_SAVE_START:
        case OP_SAVE_END: ok = in->a >= 0 && in->a < nslots; break;
        case OP_DISPATCH: ok = in->a >= 0 && in->a < nclasses && in->b > pc && in->b <= nops && in->c > pc && in->c <= nops; break;
        case OP_JMP: ok = in->a > pc && in->a <= nops; break; /* forward only: every line ends */
        case OP_FAIL:
        case OP_END:
        case OP_ACCEPT: break;
        default: ok = 0;
        }
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "bad shape program at instruction %zd", pc);
            return 0;
        }
    }
    return 1;
}

/* The request line "METHOD TARGET ..." of a fast line as parse.py's query reads it: split at single
 * spaces; a method only when there is a second part and the first is a non-empty token; the target
 * is the second part, absent when empty. `req` is the captured request [from, to) in the block. */
static void split_request(const uint8_t *base, Py_ssize_t from, Py_ssize_t to, const uint8_t *token,
                          uint8_t *method, uint8_t *target, uint8_t *valid_method, uint8_t *valid_target) {
    const uint8_t *r = base + from;
    Py_ssize_t len = to - from, sp1 = -1, sp2 = len;
    *valid_method = *valid_target = 0;
    memset(method, 0, 16);
    memset(target, 0, 16);
    if (len == 0 || (len == 1 && r[0] == '-')) return; /* NULLIF(NULLIF(request, ''), '-') */
    const uint8_t *sp = memchr(r, ' ', (size_t)len);
    if (sp == NULL || sp == r) return; /* one part, or an empty method */
    sp1 = sp - r;
    for (Py_ssize_t k = 0; k < sp1; k++)
        if (!token[r[k]]) return;
    sp = memchr(r + sp1 + 1, ' ', (size_t)(len - sp1 - 1));
    if (sp) sp2 = sp - r;
    put_view(method, base, from, sp1);
    *valid_method = 1;
    if (sp2 > sp1 + 1) {
        put_view(target, base, from + sp1 + 1, sp2 - sp1 - 1);
        *valid_target = 1;
    }
}

PyDoc_STRVAR(scan_doc,
"scan(block, starts, lengths, program, classes, pool, nslots, fast, views, request_slot, token, valid)\n"
"-> int\n\n"
"Run the shape program on each line (starts/lengths: int64 arrays into block). Writes fast[i] = 1\n"
"for a line that matched and has no backslash, and for each slot s the string view of line i's\n"
"capture at views[(s * n + i) * 16]. With request_slot >= 0, slots nslots and nslots + 1 get the\n"
"request's method and target and valid[i], valid[n + i] say whether they are present (token: the\n"
"256-byte table of method characters). Returns how many lines are fast.");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer block, starts, lengths, prog, classes, pool, fast, views, token, valid;
    int nslots, req;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*iw*w*iy*w*", &block, &starts, &lengths, &prog, &classes, &pool, &nslots,
                          &fast, &views, &req, &token, &valid))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = starts.len / 8, nops = prog.len / (Py_ssize_t)sizeof(Instr), nfast = 0;
    int extra = req >= 0 ? 2 : 0;
    if (starts.len % 8 || lengths.len != starts.len || fast.len != n || nslots < 0 || nslots > MAX_SLOTS ||
        views.len != (Py_ssize_t)(nslots + extra) * n * 16 || prog.len % (Py_ssize_t)sizeof(Instr) ||
        classes.len % 256 || req >= nslots || (req >= 0 && (token.len != 256 || valid.len != 2 * n))) {
        PyErr_SetString(PyExc_ValueError, "scan: buffer sizes do not agree");
        goto done;
    }
    if (block.len >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "scan: string views address a block with 32-bit offsets");
        goto done;
    }
    const Instr *code = (const Instr *)prog.buf;
    if (classes.len / 256 > MAX_CLASSES) {
        PyErr_SetString(PyExc_ValueError, "scan: too many classes");
        goto done;
    }
    if (!check_program(code, nops, classes.len / 256, pool.len, nslots)) goto done;
    int stop[MAX_CLASSES];
    stop_bytes((const uint8_t *)classes.buf, classes.len / 256, stop);
    const uint8_t *base = (const uint8_t *)block.buf;
    const int64_t *st = (const int64_t *)starts.buf, *ln = (const int64_t *)lengths.buf;
    uint8_t *out_fast = (uint8_t *)fast.buf, *out_views = (uint8_t *)views.buf, *out_valid = (uint8_t *)valid.buf;
    const uint8_t *tok = (const uint8_t *)token.buf;
    const uint8_t *cls = (const uint8_t *)classes.buf, *lits = (const uint8_t *)pool.buf;
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t cs[MAX_SLOTS], ce[MAX_SLOTS];
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t s = st[i], l = ln[i];
        int ok = s >= 0 && l >= 0 && s <= block.len && l <= block.len - s;
        if (ok) ok = memchr(base + s, '\\', (size_t)l) == NULL;
        if (ok) {
            for (int k = 0; k < nslots; k++) cs[k] = ce[k] = -1;
            ok = run_line(code, nops, cls, stop, lits, base + s, (Py_ssize_t)l, cs, ce);
        }
        out_fast[i] = (uint8_t)ok;
        nfast += ok;
        for (int k = 0; k < nslots; k++) {
            uint8_t *v = out_views + ((Py_ssize_t)k * n + i) * 16;
            if (ok && cs[k] >= 0 && ce[k] >= cs[k])
                put_view(v, base, (Py_ssize_t)s + cs[k], ce[k] - cs[k]);
            else
                memset(v, 0, 16); /* an empty string: the group took no part, or the line is not fast */
        }
        if (req >= 0) {
            uint8_t *m = out_views + ((Py_ssize_t)nslots * n + i) * 16, *t = out_views + ((Py_ssize_t)(nslots + 1) * n + i) * 16;
            if (ok && cs[req] >= 0 && ce[req] >= cs[req]) {
                split_request(base, (Py_ssize_t)s + cs[req], (Py_ssize_t)s + ce[req], tok, m, t, out_valid + i,
                              out_valid + n + i);
            } else {
                memset(m, 0, 16);
                memset(t, 0, 16);
                out_valid[i] = out_valid[n + i] = 0;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(nfast);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&prog);
    PyBuffer_Release(&classes);
    PyBuffer_Release(&pool);
    PyBuffer_Release(&fast);
    PyBuffer_Release(&views);
    PyBuffer_Release(&token);
    PyBuffer_Release(&valid);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clf", "Compiled fast path for NCSA-shaped log lines (see shape.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__clf(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "MAX_SLOTS", MAX_SLOTS) < 0 || PyModule_AddIntConstant(m, "ABI", ABI) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
