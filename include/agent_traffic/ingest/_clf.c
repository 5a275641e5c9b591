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
#include <arpa/inet.h>

enum { OP_LIT, OP_RUN, OP_SAVE_START, OP_SAVE_END, OP_DISPATCH, OP_JMP, OP_FAIL, OP_END, OP_ACCEPT, OP_COUNT };

#define MAX_SLOTS 64
#define ABI 5 /* the functions and their arguments; shape.py uses a build of this ABI only */
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

/* MD5 (RFC 1321), for event ids: md5(source_object || ':' || line_number || ':' || line) as the
 * query computes it, over the same bytes. A straightforward public-domain style implementation. */
typedef struct {
    uint32_t s[4];
    uint64_t total;
    uint8_t buf[64];
    size_t used;
} Md5;

#define MD5_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MD5_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define MD5_H(x, y, z) ((x) ^ (y) ^ (z))
#define MD5_I(x, y, z) ((y) ^ ((x) | ~(z)))
#define STEP(f, a, b, c, d, x, t, r) \
    (a) += MD5_##f((b), (c), (d)) + (x) + (uint32_t)(t); \
    (a) = ((a) << (r)) | ((a) >> (32 - (r))); \
    (a) += (b)

static void md5_block(uint32_t *st, const uint8_t *p) {
    uint32_t x[16], a = st[0], b = st[1], c = st[2], d = st[3];
    for (int i = 0; i < 16; i++)
        x[i] = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 | (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
    STEP(F, a, b, c, d, x[0], 0xd76aa478, 7);
    STEP(F, d, a, b, c, x[1], 0xe8c7b756, 12);
    STEP(F, c, d, a, b, x[2], 0x242070db, 17);
    STEP(F, b, c, d, a, x[3], 0xc1bdceee, 22);
    STEP(F, a, b, c, d, x[4], 0xf57c0faf, 7);
    STEP(F, d, a, b, c, x[5], 0x4787c62a, 12);
    STEP(F, c, d, a, b, x[6], 0xa8304613, 17);
    STEP(F, b, c, d, a, x[7], 0xfd469501, 22);
    STEP(F, a, b, c, d, x[8], 0x698098d8, 7);
    STEP(F, d, a, b, c, x[9], 0x8b44f7af, 12);
    STEP(F, c, d, a, b, x[10], 0xffff5bb1, 17);
    STEP(F, b, c, d, a, x[11], 0x895cd7be, 22);
    STEP(F, a, b, c, d, x[12], 0x6b901122, 7);
    STEP(F, d, a, b, c, x[13], 0xfd987193, 12);
    STEP(F, c, d, a, b, x[14], 0xa679438e, 17);
    STEP(F, b, c, d, a, x[15], 0x49b40821, 22);
    STEP(G, a, b, c, d, x[1], 0xf61e2562, 5);
    STEP(G, d, a, b, c, x[6], 0xc040b340, 9);
    STEP(G, c, d, a, b, x[11], 0x265e5a51, 14);
    STEP(G, b, c, d, a, x[0], 0xe9b6c7aa, 20);
    STEP(G, a, b, c, d, x[5], 0xd62f105d, 5);
    STEP(G, d, a, b, c, x[10], 0x02441453, 9);
    STEP(G, c, d, a, b, x[15], 0xd8a1e681, 14);
    STEP(G, b, c, d, a, x[4], 0xe7d3fbc8, 20);
    STEP(G, a, b, c, d, x[9], 0x21e1cde6, 5);
    STEP(G, d, a, b, c, x[14], 0xc33707d6, 9);
    STEP(G, c, d, a, b, x[3], 0xf4d50d87, 14);
    STEP(G, b, c, d, a, x[8], 0x455a14ed, 20);
    STEP(G, a, b, c, d, x[13], 0xa9e3e905, 5);
    STEP(G, d, a, b, c, x[2], 0xfcefa3f8, 9);
    STEP(G, c, d, a, b, x[7], 0x676f02d9, 14);
    STEP(G, b, c, d, a, x[12], 0x8d2a4c8a, 20);
    STEP(H, a, b, c, d, x[5], 0xfffa3942, 4);
    STEP(H, d, a, b, c, x[8], 0x8771f681, 11);
    STEP(H, c, d, a, b, x[11], 0x6d9d6122, 16);
    STEP(H, b, c, d, a, x[14], 0xfde5380c, 23);
    STEP(H, a, b, c, d, x[1], 0xa4beea44, 4);
    STEP(H, d, a, b, c, x[4], 0x4bdecfa9, 11);
    STEP(H, c, d, a, b, x[7], 0xf6bb4b60, 16);
    STEP(H, b, c, d, a, x[10], 0xbebfbc70, 23);
    STEP(H, a, b, c, d, x[13], 0x289b7ec6, 4);
    STEP(H, d, a, b, c, x[0], 0xeaa127fa, 11);
    STEP(H, c, d, a, b, x[3], 0xd4ef3085, 16);
    STEP(H, b, c, d, a, x[6], 0x04881d05, 23);
    STEP(H, a, b, c, d, x[9], 0xd9d4d039, 4);
    STEP(H, d, a, b, c, x[12], 0xe6db99e5, 11);
    STEP(H, c, d, a, b, x[15], 0x1fa27cf8, 16);
    STEP(H, b, c, d, a, x[2], 0xc4ac5665, 23);
    STEP(I, a, b, c, d, x[0], 0xf4292244, 6);
    STEP(I, d, a, b, c, x[7], 0x432aff97, 10);
    STEP(I, c, d, a, b, x[14], 0xab9423a7, 15);
    STEP(I, b, c, d, a, x[5], 0xfc93a039, 21);
    STEP(I, a, b, c, d, x[12], 0x655b59c3, 6);
    STEP(I, d, a, b, c, x[3], 0x8f0ccc92, 10);
    STEP(I, c, d, a, b, x[10], 0xffeff47d, 15);
    STEP(I, b, c, d, a, x[1], 0x85845dd1, 21);
    STEP(I, a, b, c, d, x[8], 0x6fa87e4f, 6);
    STEP(I, d, a, b, c, x[15], 0xfe2ce6e0, 10);
    STEP(I, c, d, a, b, x[6], 0xa3014314, 15);
    STEP(I, b, c, d, a, x[13], 0x4e0811a1, 21);
    STEP(I, a, b, c, d, x[4], 0xf7537e82, 6);
    STEP(I, d, a, b, c, x[11], 0xbd3af235, 10);
    STEP(I, c, d, a, b, x[2], 0x2ad7d2bb, 15);
    STEP(I, b, c, d, a, x[9], 0xeb86d391, 21);
    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
}

static void md5_init(Md5 *m) {
    m->s[0] = 0x67452301;
    m->s[1] = 0xefcdab89;
    m->s[2] = 0x98badcfe;
    m->s[3] = 0x10325476;
    m->total = 0;
    m->used = 0;
}

static void md5_update(Md5 *m, const uint8_t *p, size_t len) {
    m->total += len;
    if (m->used) {
        size_t take = 64 - m->used < len ? 64 - m->used : len;
        memcpy(m->buf + m->used, p, take);
        m->used += take, p += take, len -= take;
        if (m->used < 64) return;
        md5_block(m->s, m->buf);
        m->used = 0;
    }
    for (; len >= 64; p += 64, len -= 64) md5_block(m->s, p);
    memcpy(m->buf, p, len);
    m->used = len;
}

/* The digest as 32 lowercase hex digits, as DuckDB's md5() writes it. */
static void md5_hex(Md5 *m, uint8_t *out) {
    static const char hex[] = "0123456789abcdef";
    uint64_t bits = m->total * 8;
    uint8_t pad[72] = {0x80};
    size_t npad = (m->used < 56 ? 56 : 120) - m->used;
    for (int i = 0; i < 8; i++) pad[npad + i] = (uint8_t)(bits >> (8 * i));
    md5_update(m, pad, npad + 8);
    for (int i = 0; i < 16; i++) {
        uint8_t byte = (uint8_t)(m->s[i / 4] >> (8 * (i % 4)));
        out[2 * i] = (uint8_t)hex[byte >> 4];
        out[2 * i + 1] = (uint8_t)hex[byte & 15];
    }
}

/* Canonical columns of a fast line (parse.py's "canon" lines): for the few forms the C reads with
 * certainty what the query would compute, so those lines skip the query's expressions. Any other
 * form leaves the line to the query (it answers for the odd cases, as it does without this). */
enum { CANON_TS, CANON_STATUS, CANON_BYTES, CANON_IP, CANON_SLOTS };
#define US_1900 (-2208988800LL * 1000000) /* the query's TS_RANGE, as epoch microseconds */
#define US_2200 (7258118400LL * 1000000)

static int digits(const uint8_t *p, int n, int64_t *out) {
    int64_t v = 0;
    for (int k = 0; k < n; k++) {
        if (p[k] < '0' || p[k] > '9') return 0;
        v = v * 10 + (p[k] - '0');
    }
    *out = v;
    return 1;
}

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) { /* proleptic Gregorian, as DuckDB */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400, yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    return era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
}

/* "21/Nov/2026:10:11:12 +0000" exactly (strptime %d/%b/%Y:%H:%M:%S %z): epoch microseconds, when
 * the date exists, the time is within a day (no leap second), the offset within +-14:59 and the
 * instant within 1900-2199. Anything else (other widths, month case, odd values) is left to the query. */
static int clf_time(const uint8_t *p, Py_ssize_t len, int64_t *us) {
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    static const int dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int64_t d, y, h, mi, sec, oh, om;
    if (len != 26 || p[2] != '/' || p[6] != '/' || p[11] != ':' || p[14] != ':' || p[17] != ':' || p[20] != ' ' ||
        (p[21] != '+' && p[21] != '-'))
        return 0;
    if (!digits(p, 2, &d) || !digits(p + 7, 4, &y) || !digits(p + 12, 2, &h) || !digits(p + 15, 2, &mi) ||
        !digits(p + 18, 2, &sec) || !digits(p + 22, 2, &oh) || !digits(p + 24, 2, &om))
        return 0;
    int m = 0;
    while (m < 12 && (p[3] != months[3 * m] || p[4] != months[3 * m + 1] || p[5] != months[3 * m + 2])) m++;
    if (m == 12) return 0;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (d < 1 || d > dim[m] + (m == 1 && leap) || h > 23 || mi > 59 || sec > 59 || oh > 14 || om > 59) return 0;
    int64_t offset = (oh * 3600 + om * 60) * (p[21] == '-' ? -1 : 1);
    int64_t t = (days_from_civil(y, m + 1, d) * 86400 + h * 3600 + mi * 60 + sec - offset) * 1000000;
    if (t < US_1900 || t >= US_2200) return 0;
    *us = t;
    return 1;
}

/* Whether the request's target is a plain path the query leaves as it is (starts with '/', no
 * "://"), and its path and query (absent when empty) cut at the first '?'. */
static int plain_target(const uint8_t *base, const uint8_t *target_view, uint8_t *path, uint8_t *query,
                        uint8_t *valid_query) {
    int32_t len, off;
    memcpy(&len, target_view, 4);
    const uint8_t *t;
    if (len <= 12) {
        t = target_view + 4;
        off = -1;
    } else {
        memcpy(&off, target_view + 12, 4);
        t = base + off;
    }
    if (len < 1 || t[0] != '/') return 0;
    for (const uint8_t *c = memchr(t, ':', (size_t)len); c; c = memchr(c + 1, ':', (size_t)(t + len - c - 1)))
        if (t + len - c >= 3 && c[1] == '/' && c[2] == '/') return 0;
    const uint8_t *q = memchr(t, '?', (size_t)len);
    int32_t plen = q ? (int32_t)(q - t) : len;
    /* views: a short one is inline (copy its bytes), a long one points into the block */
    memset(path, 0, 16);
    memset(query, 0, 16);
    *valid_query = 0;
    if (off < 0) {
        memcpy(path, &plen, 4);
        memcpy(path + 4, t, (size_t)plen);
        if (q && len - plen - 1 > 0) {
            int32_t qlen = len - plen - 1;
            memcpy(query, &qlen, 4);
            memcpy(query + 4, q + 1, (size_t)qlen);
            *valid_query = 1;
        }
    } else {
        put_view(path, base, off, plen);
        if (q && len - plen - 1 > 0) {
            put_view(query, base, off + plen + 1, len - plen - 1);
            *valid_query = 1;
        }
    }
    return 1;
}

/* The canonical columns of fast line i from its captures; 0 when the line is left to the query. */
static int canonical(const uint8_t *line, const Py_ssize_t *cs, const Py_ssize_t *ce, const int32_t *slot,
                     const uint8_t *method_view, int64_t *ts, int64_t *status, int64_t *bytes, uint8_t *valid_bytes) {
    int32_t mlen;
    memcpy(&mlen, method_view, 4);
    const uint8_t *mth = method_view + 4; /* a method longer than 12 bytes: the query uppercases it */
    if (mlen > 12) return 0;
    for (int32_t k = 0; k < mlen; k++)
        if (mth[k] >= 'a' && mth[k] <= 'z') return 0;
    int s = slot[CANON_TS];
    if (s < 0 || cs[s] < 0 || ce[s] < cs[s] || !clf_time(line + cs[s], ce[s] - cs[s], ts)) return 0;
    s = slot[CANON_STATUS];
    if (s < 0 || cs[s] < 0 || ce[s] - cs[s] < 1 || ce[s] - cs[s] > 9 || !digits(line + cs[s], (int)(ce[s] - cs[s]), status) ||
        *status < 100 || *status > 599)
        return 0;
    s = slot[CANON_BYTES];
    *valid_bytes = 0;
    *bytes = 0;
    if (s >= 0 && cs[s] >= 0 && ce[s] > cs[s]) { /* '' is NULL, '-' is 0 */
        Py_ssize_t n = ce[s] - cs[s];
        if (n == 1 && line[cs[s]] == '-')
            *bytes = 0;
        else if (n > 18 || !digits(line + cs[s], (int)n, bytes))
            return 0;
        *valid_bytes = 1;
    }
    s = slot[CANON_IP];
    if (s >= 0 && cs[s] >= 0 && ce[s] > cs[s]) {
        /* The query keeps an address as it is unless it has a ':' and is bracketed ([v6]:port) or
         * has exactly one (v4:port): a bare IPv6 address (two colons or more) is kept as well. */
        const uint8_t *ip = line + cs[s];
        Py_ssize_t n = ce[s] - cs[s], colons = 0;
        for (const uint8_t *c = memchr(ip, ':', (size_t)n); c && colons < 2; c = memchr(c + 1, ':', (size_t)(ip + n - c - 1)))
            colons++;
        if (colons == 1 || (colons && ip[0] == '[')) return 0;
    }
    return 1;
}

/* Eight MD5s at once with AVX2 (one per 32-bit lane), where the CPU has it: the lines of a block
 * are hashed eight by eight, each from its own padded copy (lane l's message at msg + l * stride,
 * nblocks[l] 64-byte blocks; a lane past its last block keeps its state). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_MD5X8 1
#define VF(x, y, z) _mm256_xor_si256(z, _mm256_and_si256(x, _mm256_xor_si256(y, z)))
#define VG(x, y, z) _mm256_xor_si256(y, _mm256_and_si256(z, _mm256_xor_si256(x, y)))
#define VH(x, y, z) _mm256_xor_si256(_mm256_xor_si256(x, y), z)
#define VI(x, y, z) _mm256_xor_si256(y, _mm256_or_si256(x, _mm256_xor_si256(z, _mm256_set1_epi32(-1))))
#define VSTEP(f, a, b, c, d, xk, t, r) \
    (a) = _mm256_add_epi32(_mm256_add_epi32((a), f((b), (c), (d))), _mm256_add_epi32((xk), _mm256_set1_epi32((int)(t)))); \
    (a) = _mm256_or_si256(_mm256_slli_epi32((a), (r)), _mm256_srli_epi32((a), 32 - (r))); \
    (a) = _mm256_add_epi32((a), (b))

static inline uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

__attribute__((target("avx2"))) static void md5x8(const uint8_t *msg, size_t stride, const int32_t *nblocks,
                                                  uint32_t out[4][8]) {
    __m256i sa = _mm256_set1_epi32(0x67452301), sb = _mm256_set1_epi32((int)0xefcdab89),
            sc = _mm256_set1_epi32((int)0x98badcfe), sd = _mm256_set1_epi32(0x10325476);
    __m256i nb = _mm256_loadu_si256((const __m256i *)nblocks);
    int32_t most = 0;
    for (int l = 0; l < 8; l++) most = nblocks[l] > most ? nblocks[l] : most;
    for (int32_t blk = 0; blk < most; blk++) {
        __m256i x[16];
        const uint8_t *p = msg + (size_t)blk * 64;
        for (int j = 0; j < 16; j++)
            x[j] = _mm256_set_epi32((int)le32(p + 7 * stride + 4 * j), (int)le32(p + 6 * stride + 4 * j),
                                    (int)le32(p + 5 * stride + 4 * j), (int)le32(p + 4 * stride + 4 * j),
                                    (int)le32(p + 3 * stride + 4 * j), (int)le32(p + 2 * stride + 4 * j),
                                    (int)le32(p + 1 * stride + 4 * j), (int)le32(p + 4 * j));
        __m256i a = sa, b = sb, c = sc, d = sd;
        VSTEP(VF, a, b, c, d, x[0], 0xd76aa478, 7);
        VSTEP(VF, d, a, b, c, x[1], 0xe8c7b756, 12);
        VSTEP(VF, c, d, a, b, x[2], 0x242070db, 17);
        VSTEP(VF, b, c, d, a, x[3], 0xc1bdceee, 22);
        VSTEP(VF, a, b, c, d, x[4], 0xf57c0faf, 7);
        VSTEP(VF, d, a, b, c, x[5], 0x4787c62a, 12);
        VSTEP(VF, c, d, a, b, x[6], 0xa8304613, 17);
        VSTEP(VF, b, c, d, a, x[7], 0xfd469501, 22);
        VSTEP(VF, a, b, c, d, x[8], 0x698098d8, 7);
        VSTEP(VF, d, a, b, c, x[9], 0x8b44f7af, 12);
        VSTEP(VF, c, d, a, b, x[10], 0xffff5bb1, 17);
        VSTEP(VF, b, c, d, a, x[11], 0x895cd7be, 22);
        VSTEP(VF, a, b, c, d, x[12], 0x6b901122, 7);
        VSTEP(VF, d, a, b, c, x[13], 0xfd987193, 12);
        VSTEP(VF, c, d, a, b, x[14], 0xa679438e, 17);
        VSTEP(VF, b, c, d, a, x[15], 0x49b40821, 22);
        VSTEP(VG, a, b, c, d, x[1], 0xf61e2562, 5);
        VSTEP(VG, d, a, b, c, x[6], 0xc040b340, 9);
        VSTEP(VG, c, d, a, b, x[11], 0x265e5a51, 14);
        VSTEP(VG, b, c, d, a, x[0], 0xe9b6c7aa, 20);
        VSTEP(VG, a, b, c, d, x[5], 0xd62f105d, 5);
        VSTEP(VG, d, a, b, c, x[10], 0x02441453, 9);
        VSTEP(VG, c, d, a, b, x[15], 0xd8a1e681, 14);
        VSTEP(VG, b, c, d, a, x[4], 0xe7d3fbc8, 20);
        VSTEP(VG, a, b, c, d, x[9], 0x21e1cde6, 5);
        VSTEP(VG, d, a, b, c, x[14], 0xc33707d6, 9);
        VSTEP(VG, c, d, a, b, x[3], 0xf4d50d87, 14);
        VSTEP(VG, b, c, d, a, x[8], 0x455a14ed, 20);
        VSTEP(VG, a, b, c, d, x[13], 0xa9e3e905, 5);
        VSTEP(VG, d, a, b, c, x[2], 0xfcefa3f8, 9);
        VSTEP(VG, c, d, a, b, x[7], 0x676f02d9, 14);
        VSTEP(VG, b, c, d, a, x[12], 0x8d2a4c8a, 20);
        VSTEP(VH, a, b, c, d, x[5], 0xfffa3942, 4);
        VSTEP(VH, d, a, b, c, x[8], 0x8771f681, 11);
        VSTEP(VH, c, d, a, b, x[11], 0x6d9d6122, 16);
        VSTEP(VH, b, c, d, a, x[14], 0xfde5380c, 23);
        VSTEP(VH, a, b, c, d, x[1], 0xa4beea44, 4);
        VSTEP(VH, d, a, b, c, x[4], 0x4bdecfa9, 11);
        VSTEP(VH, c, d, a, b, x[7], 0xf6bb4b60, 16);
        VSTEP(VH, b, c, d, a, x[10], 0xbebfbc70, 23);
        VSTEP(VH, a, b, c, d, x[13], 0x289b7ec6, 4);
        VSTEP(VH, d, a, b, c, x[0], 0xeaa127fa, 11);
        VSTEP(VH, c, d, a, b, x[3], 0xd4ef3085, 16);
        VSTEP(VH, b, c, d, a, x[6], 0x04881d05, 23);
        VSTEP(VH, a, b, c, d, x[9], 0xd9d4d039, 4);
        VSTEP(VH, d, a, b, c, x[12], 0xe6db99e5, 11);
        VSTEP(VH, c, d, a, b, x[15], 0x1fa27cf8, 16);
        VSTEP(VH, b, c, d, a, x[2], 0xc4ac5665, 23);
        VSTEP(VI, a, b, c, d, x[0], 0xf4292244, 6);
        VSTEP(VI, d, a, b, c, x[7], 0x432aff97, 10);
        VSTEP(VI, c, d, a, b, x[14], 0xab9423a7, 15);
        VSTEP(VI, b, c, d, a, x[5], 0xfc93a039, 21);
        VSTEP(VI, a, b, c, d, x[12], 0x655b59c3, 6);
        VSTEP(VI, d, a, b, c, x[3], 0x8f0ccc92, 10);
        VSTEP(VI, c, d, a, b, x[10], 0xffeff47d, 15);
        VSTEP(VI, b, c, d, a, x[1], 0x85845dd1, 21);
        VSTEP(VI, a, b, c, d, x[8], 0x6fa87e4f, 6);
        VSTEP(VI, d, a, b, c, x[15], 0xfe2ce6e0, 10);
        VSTEP(VI, c, d, a, b, x[6], 0xa3014314, 15);
        VSTEP(VI, b, c, d, a, x[13], 0x4e0811a1, 21);
        VSTEP(VI, a, b, c, d, x[4], 0xf7537e82, 6);
        VSTEP(VI, d, a, b, c, x[11], 0xbd3af235, 10);
        VSTEP(VI, c, d, a, b, x[2], 0x2ad7d2bb, 15);
        VSTEP(VI, b, c, d, a, x[9], 0xeb86d391, 21);
        __m256i live = _mm256_cmpgt_epi32(nb, _mm256_set1_epi32(blk));
        sa = _mm256_blendv_epi8(sa, _mm256_add_epi32(sa, a), live);
        sb = _mm256_blendv_epi8(sb, _mm256_add_epi32(sb, b), live);
        sc = _mm256_blendv_epi8(sc, _mm256_add_epi32(sc, c), live);
        sd = _mm256_blendv_epi8(sd, _mm256_add_epi32(sd, d), live);
    }
    _mm256_storeu_si256((__m256i *)out[0], sa);
    _mm256_storeu_si256((__m256i *)out[1], sb);
    _mm256_storeu_si256((__m256i *)out[2], sc);
    _mm256_storeu_si256((__m256i *)out[3], sd);
}
#endif

static void hex_digest(const uint32_t *words, size_t step, uint8_t *out) { /* words[0], words[step], ... */
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        uint8_t byte = (uint8_t)(words[(i / 4) * step] >> (8 * (i % 4)));
        out[2 * i] = (uint8_t)hex[byte >> 4];
        out[2 * i + 1] = (uint8_t)hex[byte & 15];
    }
}

/* The line number as the query writes it (line_number::VARCHAR) and the ':' after it. */
static int id_number(int64_t num, char *digits) {
    char tmp[24];
    int t = 0, k = 0;
    uint64_t v = num < 0 ? (uint64_t)0 - (uint64_t)num : (uint64_t)num;
    do tmp[t++] = (char)('0' + v % 10), v /= 10; while (v);
    if (num < 0) digits[k++] = '-';
    while (t) digits[k++] = tmp[--t];
    digits[k++] = ':';
    return k;
}

#define LANE_BYTES 2048 /* a line whose padded message fits is hashed eight at a time */

PyDoc_STRVAR(event_ids_doc,
"event_ids(block, starts, lengths, line_numbers, prefix, out) -> None\n\n"
"For each line i (starts/lengths/line_numbers: int64 arrays), writes the 32 hex digits of\n"
"md5(prefix || str(line_numbers[i]) || ':' || line) at out[32 * i]: the query's event id, with\n"
"prefix = source_object || ':'. Raises ValueError when a line lies outside the block.");

static PyObject *event_ids(PyObject *self, PyObject *args) {
    Py_buffer block, starts, lengths, nums, prefix, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*", &block, &starts, &lengths, &nums, &prefix, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = starts.len / 8;
    if (starts.len % 8 || lengths.len != starts.len || nums.len != starts.len || out.len != 32 * n) {
        PyErr_SetString(PyExc_ValueError, "event_ids: buffer sizes do not agree");
        goto done;
    }
    const int64_t *st = (const int64_t *)starts.buf, *ln = (const int64_t *)lengths.buf, *num = (const int64_t *)nums.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (st[i] < 0 || ln[i] < 0 || st[i] > block.len || ln[i] > block.len - st[i]) {
            PyErr_SetString(PyExc_ValueError, "event_ids: a line lies outside the block");
            goto done;
        }
    }
    const uint8_t *base = (const uint8_t *)block.buf, *pre = (const uint8_t *)prefix.buf;
    uint8_t *o = (uint8_t *)out.buf;
    size_t plen = (size_t)prefix.len;
#ifdef HAVE_MD5X8
    int x8 = __builtin_cpu_supports("avx2");
    uint8_t *lanes = x8 ? PyMem_RawMalloc(8 * LANE_BYTES) : NULL;
#endif
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_MD5X8
    int32_t nb[8];
    Py_ssize_t at[8];
    int used = 0;
#endif
    for (Py_ssize_t i = 0; i < n; i++) {
        char digits[24];
        int k = id_number(num[i], digits);
        size_t len = plen + (size_t)k + (size_t)ln[i];
#ifdef HAVE_MD5X8
        if (lanes && len + 9 <= LANE_BYTES) { /* the padded message into lane `used` */
            uint8_t *m = lanes + (size_t)used * LANE_BYTES;
            size_t total = (len + 8) / 64 * 64 + 64;
            uint64_t bits = (uint64_t)len * 8;
            memcpy(m, pre, plen);
            memcpy(m + plen, digits, (size_t)k);
            memcpy(m + plen + k, base + st[i], (size_t)ln[i]);
            m[len] = 0x80;
            memset(m + len + 1, 0, total - 8 - len - 1);
            for (int b = 0; b < 8; b++) m[total - 8 + b] = (uint8_t)(bits >> (8 * b));
            nb[used] = (int32_t)(total / 64);
            at[used++] = i;
            if (used == 8 || i == n - 1) {
                uint32_t words[4][8];
                for (int l = used; l < 8; l++) nb[l] = 0;
                md5x8(lanes, LANE_BYTES, nb, words);
                for (int l = 0; l < used; l++) hex_digest(&words[0][l], 8, o + 32 * at[l]);
                used = 0;
            }
            continue;
        }
#endif
        Md5 m;
        md5_init(&m);
        md5_update(&m, pre, plen);
        md5_update(&m, (const uint8_t *)digits, (size_t)k);
        md5_update(&m, base + st[i], (size_t)ln[i]);
        md5_hex(&m, o + 32 * i);
    }
#ifdef HAVE_MD5X8
    if (used) { /* the last lines, when the very last one went the scalar way */
        uint32_t words[4][8];
        for (int l = used; l < 8; l++) nb[l] = 0;
        md5x8(lanes, LANE_BYTES, nb, words);
        for (int l = 0; l < used; l++) hex_digest(&words[0][l], 8, o + 32 * at[l]);
    }
#endif
    Py_END_ALLOW_THREADS
#ifdef HAVE_MD5X8
    PyMem_RawFree(lanes);
#endif
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&nums);
    PyBuffer_Release(&prefix);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(scan_doc,
"scan(block, starts, lengths, program, classes, pool, nslots, fast, views, request_slot, token, valid)\n"
"-> int\n\n"
"Run the shape program on each line (starts/lengths: int64 arrays into block). Writes fast[i] = 1\n"
"for a line that matched and has no backslash, and for each slot s the string view of line i's\n"
"capture at views[(s * n + i) * 16]. With request_slot >= 0, slots nslots and nslots + 1 get the\n"
"request's method and target and valid[i], valid[n + i] say whether they are present (token: the\n"
"256-byte table of method characters). With canon (int32 slots of time, status, bytes, client_ip;\n"
"-1: none) and a request slot, two more view slots get the target's path and query, ints[0..2]\n"
"the time (epoch us), status and bytes, and valid[2..4] whether query and bytes are present and\n"
"whether the line is canonical (see canonical()). Returns how many lines are fast.");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer block, starts, lengths, prog, classes, pool, fast, views, token, valid, canon, ints;
    int nslots, req;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*iw*w*iy*w*y*w*", &block, &starts, &lengths, &prog, &classes, &pool, &nslots,
                          &fast, &views, &req, &token, &valid, &canon, &ints))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = starts.len / 8, nops = prog.len / (Py_ssize_t)sizeof(Instr), nfast = 0;
    int canon_on = canon.len > 0, extra = req >= 0 ? (canon_on ? 4 : 2) : 0;
    const int32_t *cslot = (const int32_t *)canon.buf;
    if (starts.len % 8 || lengths.len != starts.len || fast.len != n || nslots < 0 || nslots > MAX_SLOTS ||
        views.len != (Py_ssize_t)(nslots + extra) * n * 16 || prog.len % (Py_ssize_t)sizeof(Instr) ||
        classes.len % 256 || req >= nslots || (req >= 0 && (token.len != 256 || valid.len != (canon_on ? 5 : 2) * n)) ||
        (canon_on && (req < 0 || canon.len != CANON_SLOTS * 4 || ints.len != 3 * n * 8))) {
        PyErr_SetString(PyExc_ValueError, "scan: buffer sizes do not agree");
        goto done;
    }
    for (int k = 0; canon_on && k < CANON_SLOTS; k++) {
        if (cslot[k] < -1 || cslot[k] >= nslots) {
            PyErr_SetString(PyExc_ValueError, "scan: a canonical column's slot is out of range");
            goto done;
        }
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
    int64_t *out_ints = (int64_t *)ints.buf;
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
            if (canon_on) {
                uint8_t *path = out_views + ((Py_ssize_t)(nslots + 2) * n + i) * 16;
                uint8_t *query = out_views + ((Py_ssize_t)(nslots + 3) * n + i) * 16;
                int c = ok && out_valid[i] && out_valid[n + i] && plain_target(base, t, path, query, out_valid + 2 * n + i);
                c = c && canonical(base + s, cs, ce, cslot, m, out_ints + i, out_ints + n + i, out_ints + 2 * n + i,
                                   out_valid + 3 * n + i);
                out_valid[4 * n + i] = (uint8_t)c;
                if (!c) {
                    memset(path, 0, 16);
                    memset(query, 0, 16);
                    out_valid[2 * n + i] = out_valid[3 * n + i] = 0;
                    out_ints[i] = out_ints[n + i] = out_ints[2 * n + i] = 0;
                }
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
    PyBuffer_Release(&canon);
    PyBuffer_Release(&ints);
    return result;
}

PyDoc_STRVAR(ipv6_doc,
"ipv6(data, offsets, out, ok) -> None\n\n"
"For each value i of an Arrow large_string (data, offsets: int64), the 16 bytes of the IPv6\n"
"address it spells at out[16 * i] and ok[i] = 1, by inet_pton (socket.inet_pton's parser). Values\n"
"with a byte that is not printable ASCII, a space or a bracket, or longer than 45 bytes get ok[i] = 0\n"
"without a parse: the caller's Python decides those, exactly as it always did.");

static PyObject *ipv6(PyObject *self, PyObject *args) {
    Py_buffer data, offsets, out, ok;
    if (!PyArg_ParseTuple(args, "y*y*w*w*", &data, &offsets, &out, &ok)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = offsets.len / 8 - 1;
    const int64_t *off = (const int64_t *)offsets.buf;
    if (offsets.len % 8 || n < 0 || out.len != 16 * n || ok.len != n) {
        PyErr_SetString(PyExc_ValueError, "ipv6: buffer sizes do not agree");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > data.len) {
            PyErr_SetString(PyExc_ValueError, "ipv6: a value lies outside the data");
            goto done;
        }
    }
    const uint8_t *d = (const uint8_t *)data.buf;
    uint8_t *o = (uint8_t *)out.buf, *k = (uint8_t *)ok.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = (Py_ssize_t)(off[i + 1] - off[i]);
        char text[46];
        int plain = len >= 2 && len <= 45;
        for (Py_ssize_t j = 0; plain && j < len; j++) {
            uint8_t c = d[off[i] + j];
            plain = c > ' ' && c < 0x7f && c != '[' && c != ']';
            text[j] = (char)c;
        }
        k[i] = 0;
        if (plain) {
            text[len] = 0;
            k[i] = inet_pton(AF_INET6, text, o + 16 * i) == 1;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&out);
    PyBuffer_Release(&ok);
    return result;
}

/* Lines of a block: its newlines, plus one for a last line without one. */
static Py_ssize_t line_count(const uint8_t *base, Py_ssize_t len) {
    Py_ssize_t n = 0;
    const uint8_t *p = base, *end = base + len;
    while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) n++, p++;
    return n + (len > 0 && base[len - 1] != '\n');
}

PyDoc_STRVAR(count_lines_doc,
"count_lines(block) -> int\n\n"
"The lines of a block: its newlines, plus one for a last line without one.");

static PyObject *count_lines(PyObject *self, PyObject *args) {
    Py_buffer block;
    if (!PyArg_ParseTuple(args, "y*", &block)) return NULL;
    Py_ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    n = line_count((const uint8_t *)block.buf, block.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&block);
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(frame_doc,
"frame(block, starts, lengths, views) -> None\n\n"
"Each line of the block (count_lines(block) of them: starts and lengths int64, views 16 bytes a\n"
"line): its offset, its length without its terminator (\\n or \\r\\n) and an Arrow string_view\n"
"pointing at it in the block (buffer 0). One pass of memchr, with the GIL released.");

static PyObject *frame(PyObject *self, PyObject *args) {
    Py_buffer block, starts, lengths, views;
    if (!PyArg_ParseTuple(args, "y*w*w*w*", &block, &starts, &lengths, &views)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = starts.len / 8, i = 0, pos = 0, len = block.len;
    if (starts.len % 8 || lengths.len != starts.len || views.len != 16 * n) {
        PyErr_SetString(PyExc_ValueError, "frame: buffer sizes do not agree");
        goto done;
    }
    if (len >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "frame: string views address a block with 32-bit offsets");
        goto done;
    }
    const uint8_t *base = (const uint8_t *)block.buf;
    int64_t *st = (int64_t *)starts.buf, *ln = (int64_t *)lengths.buf;
    uint8_t *v = (uint8_t *)views.buf;
    Py_BEGIN_ALLOW_THREADS
    for (; i < n && pos < len; i++) {
        const uint8_t *nl = memchr(base + pos, '\n', (size_t)(len - pos));
        Py_ssize_t end = nl ? nl - base : len, l = end - pos;
        if (l > 0 && base[end - 1] == '\r') l--;
        st[i] = pos;
        ln[i] = l;
        put_view(v + 16 * i, base, pos, l);
        pos = end + 1;
    }
    Py_END_ALLOW_THREADS
    if (i != n || pos < len) {
        PyErr_SetString(PyExc_ValueError, "frame: the buffers do not hold the block's lines");
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&block);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&views);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"event_ids", event_ids, METH_VARARGS, event_ids_doc},
    {"ipv6", ipv6, METH_VARARGS, ipv6_doc},
    {"count_lines", count_lines, METH_VARARGS, count_lines_doc},
    {"frame", frame, METH_VARARGS, frame_doc},
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
