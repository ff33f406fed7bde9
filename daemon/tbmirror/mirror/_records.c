/* The compiled scan of tbmirror.mirror.records: TFRecord framing and a payload check, in C.
 *
 * scan(data, start, schema, max_length) walks the records of `data` from `start` and returns
 * (end, count, stop): `count` records, each with both masked CRC32Cs right and a payload it can
 * vouch for, reach from `start` to `end`; `stop` says what is at `end`:
 *   END      the end of `data`, or a torn record (too short for its header or its length);
 *   CORRUPT  a record whose length CRC or payload CRC does not check out, or whose length is
 *            above `max_length` (corruption, not a record whose rest is yet to come);
 *   CHECK    a record whose CRCs check out but whose payload this scan cannot vouch for: the
 *            caller decides (Event.FromString).
 *
 * Vouching is conservative: a payload is vouched for only if it is well-formed protobuf wire
 * format under `schema` (records.py builds it from Event's descriptors) in a way upb, the C++
 * and the pure-Python parsers all accept: tags of at most 5 bytes with a field number, wire
 * types 0, 1, 2 and 5, varints of at most 10 bytes, every length inside its message, every
 * declared message field a message of its type (nested at most MAX_DEPTH deep), every declared
 * string field UTF-8, packed scalars whole. Anything else (groups, another wire type than the
 * field's, deeper nesting) is left to the caller, never refused here.
 *
 * `schema` is an array of native uint32: [width, then `width` entries per message type], the
 * root (Event) first. Entry `n` of a row says how field number `n` is checked: its low 8 bits a
 * kind, its high 24 bits the row of a message field's type. Entry 0 applies to field numbers
 * not declared (and to those at or past `width`).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { STOP_END = 0, STOP_CORRUPT = 1, STOP_CHECK = 2 };

enum {
    KIND_SKIP = 0,   /* undeclared: skipped as protobuf skips unknown fields */
    KIND_OPAQUE = 1, /* never vouched for */
    KIND_VARINT = 2, /* varint scalars; length-delimited: packed */
    KIND_FIXED64 = 3,
    KIND_FIXED32 = 4,
    KIND_BYTES = 5,
    KIND_STRING = 6,
    KIND_MESSAGE = 7,
};

#define MAX_DEPTH 64 /* upb allows 100 */
#define MASK_DELTA 0xa282ead8u

/* --- CRC32C (Castagnoli) ------------------------------------------------------------------ */

static uint32_t crc_table[8][256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
        crc_table[0][i] = crc;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int k = 1; k < 8; k++)
            crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^ crc_table[0][crc_table[k - 1][i] & 0xff];
}

static uint32_t load_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Slicing-by-8: any CPU, either byte order. */
static uint32_t crc_portable(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xffffffffu;
    for (; n >= 8; p += 8, n -= 8) {
        uint32_t lo = crc ^ load_le32(p), hi = load_le32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
              crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    }
    for (; n; p++, n--)
        crc = crc_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define HAVE_SSE42 1

/* The SSE4.2 crc32 instruction: only called once the CPU is known to have it. */
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(const uint8_t *p, size_t n)
{
    uint64_t crc = 0xffffffffu;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = _mm_crc32_u64(crc, word);
    }
    uint32_t crc32 = (uint32_t)crc;
    for (; n; p++, n--)
        crc32 = _mm_crc32_u8(crc32, *p);
    return ~crc32;
}
#endif

static uint32_t (*crc32c)(const uint8_t *, size_t) = crc_portable;

static uint32_t masked_crc(const uint8_t *p, size_t n)
{
    uint32_t crc = crc32c(p, n);
    return ((crc >> 15) | (crc << 17)) + MASK_DELTA;
}

/* --- the wire-format check ------------------------------------------------------------------ */

typedef struct {
    const uint8_t *entries; /* uint32 rows, read with memcpy (no alignment assumed) */
    size_t width, rows;
} Schema;

static uint32_t entry(const Schema *schema, size_t row, uint64_t number)
{
    uint32_t value;
    size_t column = number < schema->width ? (size_t)number : 0;
    memcpy(&value, schema->entries + 4 * (1 + row * schema->width + column), 4);
    return value;
}

/* A varint of at most `max_bytes` bytes at *p (before `end`) into *value, *p moved past it;
 * 0 if it is longer, runs past `end` or (10 bytes) overflows 64 bits. */
static int read_varint(const uint8_t **p, const uint8_t *end, int max_bytes, uint64_t *value)
{
    uint64_t result = 0;
    const uint8_t *q = *p;
    if (q < end && *q < 0x80) { /* one byte: most tags and lengths */
        *p = q + 1;
        *value = *q;
        return 1;
    }
    for (int i = 0; i < max_bytes && q < end; i++) {
        uint8_t byte = *q++;
        if (i == 9 && byte > 1)
            return 0;
        result |= (uint64_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            *p = q;
            *value = result;
            return 1;
        }
    }
    return 0;
}

/* Well-formed UTF-8: no overlong forms, surrogates or code points past U+10FFFF. */
static int is_utf8(const uint8_t *p, const uint8_t *end)
{
    while (p < end) {
        if (end - p >= 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            if (!(word & 0x8080808080808080ull)) {
                p += 8;
                continue;
            }
        }
        uint8_t lead = *p;
        if (lead < 0x80) {
            p++;
            continue;
        }
        int size;
        uint32_t code, least;
        if ((lead & 0xe0) == 0xc0) {
            size = 2, code = lead & 0x1f, least = 0x80;
        } else if ((lead & 0xf0) == 0xe0) {
            size = 3, code = lead & 0x0f, least = 0x800;
        } else if ((lead & 0xf8) == 0xf0) {
            size = 4, code = lead & 0x07, least = 0x10000;
        } else {
            return 0;
        }
        if (end - p < size)
            return 0;
        for (int i = 1; i < size; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            code = code << 6 | (p[i] & 0x3f);
        }
        if (code < least || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff))
            return 0;
        p += size;
    }
    return 1;
}

/* Packed scalars of `kind` filling p..end exactly. */
static int is_packed(int kind, const uint8_t *p, const uint8_t *end)
{
    uint64_t ignored;
    switch (kind) {
    case KIND_VARINT:
        while (p < end)
            if (!read_varint(&p, end, 10, &ignored))
                return 0;
        return 1;
    case KIND_FIXED64:
        return (end - p) % 8 == 0;
    case KIND_FIXED32:
        return (end - p) % 4 == 0;
    default:
        return 0;
    }
}

/* 1 if p..end is certainly a well-formed message of the type in `row` (see the top). */
static int vouch(const Schema *schema, size_t row, const uint8_t *p, const uint8_t *end,
                 int depth)
{
    if (depth > MAX_DEPTH || row >= schema->rows)
        return 0;
    while (p < end) {
        uint64_t tag, value;
        if (!read_varint(&p, end, 5, &tag) || tag > UINT32_MAX || tag >> 3 == 0)
            return 0;
        uint32_t field = entry(schema, row, tag >> 3);
        int kind = field & 0xff;
        if (kind == KIND_OPAQUE)
            return 0;
        switch (tag & 7) {
        case 0:
            if ((kind != KIND_SKIP && kind != KIND_VARINT) || !read_varint(&p, end, 10, &value))
                return 0;
            break;
        case 1:
            if ((kind != KIND_SKIP && kind != KIND_FIXED64) || end - p < 8)
                return 0;
            p += 8;
            break;
        case 5:
            if ((kind != KIND_SKIP && kind != KIND_FIXED32) || end - p < 4)
                return 0;
            p += 4;
            break;
        case 2: {
            if (!read_varint(&p, end, 10, &value) || value >= INT32_MAX ||
                value > (uint64_t)(end - p))
                return 0;
            const uint8_t *next = p + value;
            int ok = kind == KIND_SKIP || kind == KIND_BYTES ||
                     (kind == KIND_STRING && is_utf8(p, next)) ||
                     (kind == KIND_MESSAGE && vouch(schema, field >> 8, p, next, depth + 1)) ||
                     is_packed(kind, p, next);
            if (!ok)
                return 0;
            p = next;
            break;
        }
        default: /* groups (3, 4) and the invalid 6 and 7 */
            return 0;
        }
    }
    return 1;
}

/* --- Python ------------------------------------------------------------------------------- */

static PyObject *scan(PyObject *module, PyObject *args)
{
    Py_buffer data, table;
    Py_ssize_t start;
    unsigned long long max_length;
    if (!PyArg_ParseTuple(args, "y*ny*K:scan", &data, &start, &table, &max_length))
        return NULL;
    PyObject *result = NULL;
    Schema schema = {table.buf, 0, 0};
    if (table.len >= 4) {
        uint32_t width;
        memcpy(&width, table.buf, 4);
        schema.width = width;
    }
    if (schema.width == 0 || table.len % 4 != 0 || (table.len / 4 - 1) % schema.width != 0) {
        PyErr_SetString(PyExc_ValueError, "schema: not a table of rows of `width` entries");
        goto done;
    }
    schema.rows = (size_t)(table.len / 4 - 1) / schema.width;
    if (start < 0 || start > data.len) {
        PyErr_SetString(PyExc_ValueError, "start: outside the data");
        goto done;
    }
    const uint8_t *base = data.buf;
    size_t offset = (size_t)start, size = (size_t)data.len;
    Py_ssize_t count = 0;
    int stop = STOP_END;
    Py_BEGIN_ALLOW_THREADS
    while (size - offset >= 12) {
        const uint8_t *header = base + offset;
        uint64_t length = (uint64_t)load_le32(header) | (uint64_t)load_le32(header + 4) << 32;
        if (masked_crc(header, 8) != load_le32(header + 8) || length > max_length) {
            stop = STOP_CORRUPT;
            break;
        }
        if (size - offset < 16 || length > size - offset - 16)
            break; /* torn: its rest has not arrived */
        const uint8_t *payload = header + 12;
        if (masked_crc(payload, (size_t)length) != load_le32(payload + length)) {
            stop = STOP_CORRUPT;
            break;
        }
        if (!vouch(&schema, 0, payload, payload + length, 0)) {
            stop = STOP_CHECK;
            break;
        }
        offset += 16 + (size_t)length;
        count++;
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("nni", (Py_ssize_t)offset, count, stop);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&table);
    return result;
}

static PyObject *crc32c_of(PyObject *module, PyObject *args)
{
    Py_buffer data;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "y*|p:crc32c", &data, &portable))
        return NULL;
    uint32_t crc = portable ? crc_portable(data.buf, (size_t)data.len)
                            : crc32c(data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

static void put_le(uint8_t *p, uint64_t value, int bytes)
{
    for (int i = 0; i < bytes; i++)
        p[i] = (uint8_t)(value >> (8 * i));
}

/* frame_all(payloads: list[bytes]) -> bytes: a TFRecord for each payload, one after the other
   (little-endian length, its masked CRC, the payload, its masked CRC): events.frame_all. */
static PyObject *frame_all(PyObject *module, PyObject *args)
{
    PyObject *payloads;
    if (!PyArg_ParseTuple(args, "O!:frame_all", &PyList_Type, &payloads))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(payloads), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "frame_all: payloads must be bytes");
            return NULL;
        }
        if (PyBytes_GET_SIZE(item) > PY_SSIZE_T_MAX - 16 - total)
            return PyErr_NoMemory();
        total += 16 + PyBytes_GET_SIZE(item);
    }
    PyObject *framed = PyBytes_FromStringAndSize(NULL, total);
    if (framed == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(framed);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(payloads, i);
        const uint8_t *payload = (const uint8_t *)PyBytes_AS_STRING(item);
        size_t length = (size_t)PyBytes_GET_SIZE(item);
        put_le(p, length, 8);
        put_le(p + 8, masked_crc(p, 8), 4);
        memcpy(p + 12, payload, length);
        put_le(p + 12 + length, masked_crc(payload, length), 4);
        p += 16 + length;
    }
    return framed;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data, start, schema) -> (end, count, stop): whole records that check out (above)."},
    {"frame_all", frame_all, METH_VARARGS,
     "frame_all(payloads) -> bytes: a TFRecord for each payload of the list, one after another."},
    {"crc32c", crc32c_of, METH_VARARGS,
     "crc32c(data, portable=False) -> the CRC32C of data (portable: the table-driven code)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef definition = {
    PyModuleDef_HEAD_INIT, "_records", "TFRecord scanning and framing in C (see records.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__records(void)
{
    crc_init();
#ifdef HAVE_SSE42
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        crc32c = crc_sse42;
#endif
    PyObject *module = PyModule_Create(&definition);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "END", STOP_END) < 0 ||
        PyModule_AddIntConstant(module, "CORRUPT", STOP_CORRUPT) < 0 ||
        PyModule_AddIntConstant(module, "CHECK", STOP_CHECK) < 0 ||
        PyModule_AddIntConstant(module, "HARDWARE_CRC", crc32c != crc_portable) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
