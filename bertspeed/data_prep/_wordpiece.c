/* BERT ids of many lines in C, for bertspeed.data_prep.fast_tokenizer.FastWordPiece.lines_ids.

   Vocab(vocab: dict[str, int], unk_id, max_input_chars_per_word)
   .encode_lines(lines, lower, normalize, fallback) -> (bytearray of int32 ids, bytearray of int64 ids per line)

   - An ASCII line is normalised here as BERT does it (drop control characters; lower-case if `lower`),
     then split on the whitespace left (space, tab, CR, LF) into chunks.
   - Any other line is normalised by normalize(line) (Python: the Unicode rules) and split as str.split() splits.
   - An ASCII chunk is split into runs of letters/digits and single other characters (every other printable
     ASCII character is BERT punctuation), and each piece goes through greedy longest-match-first WordPiece,
     as Hugging Face's WordPiece model does it: a word longer than max_input_chars_per_word, or one whose rest
     matches no "##" piece, is unk_id.
   - Any other chunk gives the ints of fallback(chunk) (Python: punctuation categories, non-ASCII vocab). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    uint64_t hash;
    const char *key; /* into the Vocab's arena, not NUL-terminated */
    Py_ssize_t len;
    int32_t id; /* -1: empty slot */
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
} Table;

typedef struct {
    PyObject_HEAD
    Table whole;        /* every token */
    Table continuation; /* "##x" tokens, keyed by "x" */
    char *arena;
    int32_t unk_id;
    Py_ssize_t max_chars;
} Vocab;

typedef struct {
    int32_t *ids;
    Py_ssize_t len, cap;
} Ids;

static uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int table_init(Table *t, Py_ssize_t entries) {
    size_t size = 16;
    while (size < (size_t)entries * 2) size <<= 1;
    t->slots = PyMem_Calloc(size, sizeof(Slot));
    if (!t->slots) return -1;
    for (size_t i = 0; i < size; i++) t->slots[i].id = -1;
    t->mask = size - 1;
    return 0;
}

static Slot *table_find(const Table *t, const char *key, Py_ssize_t len, uint64_t h) {
    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        Slot *s = &t->slots[i];
        if (s->id < 0 || (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)) return s;
    }
}

static void table_put(Table *t, const char *key, Py_ssize_t len, int32_t id) {
    uint64_t h = hash_bytes(key, len);
    Slot *s = table_find(t, key, len, h);
    s->hash = h, s->key = key, s->len = len, s->id = id;
}

static int32_t table_get(const Table *t, const char *key, Py_ssize_t len) {
    return table_find(t, key, len, hash_bytes(key, len))->id;
}

static int ids_push(Ids *out, int32_t id) {
    if (out->len == out->cap) {
        Py_ssize_t cap = out->cap ? out->cap * 2 : 4096;
        int32_t *grown = PyMem_Realloc(out->ids, cap * sizeof(int32_t));
        if (!grown) {
            PyErr_NoMemory();
            return -1;
        }
        out->ids = grown, out->cap = cap;
    }
    out->ids[out->len++] = id;
    return 0;
}

/* Greedy longest-match-first WordPiece of one ASCII word (letters/digits, or one punctuation mark). */
static int wordpiece(const Vocab *v, const char *word, Py_ssize_t n, Ids *out) {
    Py_ssize_t first = out->len;
    if (n <= v->max_chars) {
        for (Py_ssize_t start = 0; start < n;) {
            const Table *t = start ? &v->continuation : &v->whole;
            Py_ssize_t end = n;
            int32_t id = -1;
            for (; end > start && (id = table_get(t, word + start, end - start)) < 0; end--)
                ;
            if (id < 0) goto unknown;
            if (ids_push(out, id) < 0) return -1;
            start = end;
        }
        return 0;
    }
unknown:
    out->len = first;
    return ids_push(out, v->unk_id);
}

static int is_ascii_alnum(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int ascii_words(const Vocab *v, const char *s, Py_ssize_t n, Ids *out) {
    for (Py_ssize_t i = 0, j; i < n; i = j) {
        j = i + 1;
        if (is_ascii_alnum(s[i]))
            while (j < n && is_ascii_alnum(s[j])) j++;
        if (wordpiece(v, s + i, j - i, out) < 0) return -1;
    }
    return 0;
}

/* One ASCII chunk text[lo:hi]: runs of letters/digits and single other characters, each through WordPiece. */
static int ascii_chunk(const Vocab *v, int kind, const void *data, Py_ssize_t lo, Py_ssize_t hi, Ids *out) {
    Py_ssize_t n = hi - lo;
    char *copy = NULL;
    const char *s = (const char *)data + lo;
    if (kind != PyUnicode_1BYTE_KIND) { /* ASCII chunk of a text holding wider characters elsewhere */
        if (!(copy = PyMem_Malloc(n))) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) copy[i] = (char)PyUnicode_READ(kind, data, lo + i);
        s = copy;
    }
    int status = ascii_words(v, s, n, out);
    PyMem_Free(copy);
    return status;
}

static int fallback_chunk(PyObject *text, Py_ssize_t lo, Py_ssize_t hi, PyObject *fallback, Ids *out) {
    PyObject *chunk = PyUnicode_Substring(text, lo, hi);
    if (!chunk) return -1;
    PyObject *ids = PyObject_CallOneArg(fallback, chunk);
    Py_DECREF(chunk);
    if (!ids) return -1;
    PyObject *seq = PySequence_Fast(ids, "fallback must return a sequence of ints");
    Py_DECREF(ids);
    if (!seq) return -1;
    int status = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && status == 0; i++) {
        long id = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        status = (id == -1 && PyErr_Occurred()) ? -1 : ids_push(out, (int32_t)id);
    }
    Py_DECREF(seq);
    return status;
}

/* A normalised str: chunks split as str.split() splits them. */
static int encode_text(Vocab *self, PyObject *text, PyObject *fallback, Ids *out) {
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < n;) {
        while (i < n && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i))) i++;
        if (i == n) break;
        Py_ssize_t lo = i;
        int ascii = 1;
        for (; i < n; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (Py_UNICODE_ISSPACE(c)) break;
            ascii &= c < 128;
        }
        if ((ascii ? ascii_chunk(self, kind, data, lo, i, out) : fallback_chunk(text, lo, i, fallback, out)) < 0)
            return -1;
    }
    return 0;
}

static int is_ascii_control(char c) { /* BERT's clean_text drops these; \t \n \r are whitespace */
    return (c >= 0 && c < 32 && c != '\t' && c != '\n' && c != '\r') || c == 127;
}

/* An ASCII line, normalised here into `buf` (at least n bytes). */
static int encode_ascii_line(Vocab *self, const char *s, Py_ssize_t n, int lower, char *buf, Ids *out) {
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (!is_ascii_control(c)) buf[m++] = (lower && c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    for (Py_ssize_t i = 0, lo; i < m;) {
        while (i < m && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r')) i++;
        for (lo = i; i < m && !(buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r'); i++)
            ;
        if (i > lo && ascii_words(self, buf + lo, i - lo, out) < 0) return -1;
    }
    return 0;
}

static int encode_line(Vocab *self, PyObject *line, int lower, PyObject *normalize, PyObject *fallback, char **buf,
                       Py_ssize_t *buf_size, Ids *out) {
    if (!PyUnicode_Check(line)) {
        PyErr_Format(PyExc_TypeError, "lines must be str, not %.100s", Py_TYPE(line)->tp_name);
        return -1;
    }
    if (PyUnicode_IS_ASCII(line)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(line);
        if (n > *buf_size) {
            char *grown = PyMem_Realloc(*buf, n);
            if (!grown) {
                PyErr_NoMemory();
                return -1;
            }
            *buf = grown, *buf_size = n;
        }
        return encode_ascii_line(self, (const char *)PyUnicode_DATA(line), n, lower, *buf, out);
    }
    PyObject *normalized = PyObject_CallOneArg(normalize, line);
    if (!normalized) return -1;
    int status = PyUnicode_Check(normalized) ? encode_text(self, normalized, fallback, out) : -1;
    if (status < 0 && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "normalize must return str");
    Py_DECREF(normalized);
    return status;
}

static PyObject *Vocab_encode_lines(Vocab *self, PyObject *args) {
    PyObject *lines, *normalize, *fallback, *seq, *result = NULL;
    int lower;
    if (!PyArg_ParseTuple(args, "OpOO:encode_lines", &lines, &lower, &normalize, &fallback)) return NULL;
    if (!(seq = PySequence_Fast(lines, "lines must be a sequence of str"))) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), buf_size = 0;
    int64_t *lengths = PyMem_Malloc((count ? count : 1) * sizeof(int64_t));
    char *buf = NULL;
    Ids out = {NULL, 0, 0};
    if (!lengths) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t before = out.len;
        if (encode_line(self, PySequence_Fast_GET_ITEM(seq, i), lower, normalize, fallback, &buf, &buf_size, &out) < 0)
            goto done;
        lengths[i] = out.len - before;
    }
    PyObject *ids = PyByteArray_FromStringAndSize((const char *)out.ids, out.len * (Py_ssize_t)sizeof(int32_t));
    PyObject *per_line = PyByteArray_FromStringAndSize((const char *)lengths, count * (Py_ssize_t)sizeof(int64_t));
    if (ids && per_line) result = PyTuple_Pack(2, ids, per_line);
    Py_XDECREF(ids);
    Py_XDECREF(per_line);
done:
    Py_DECREF(seq);
    PyMem_Free(lengths);
    PyMem_Free(buf);
    PyMem_Free(out.ids);
    return result;
}

static int Vocab_init(Vocab *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"vocab", "unk_id", "max_input_chars_per_word", NULL};
    PyObject *vocab, *key, *value;
    int unk_id;
    Py_ssize_t max_chars, pos = 0, arena_size = 0, used = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!in:Vocab", names, &PyDict_Type, &vocab, &unk_id, &max_chars))
        return -1;
    if (self->arena) {
        PyErr_SetString(PyExc_RuntimeError, "Vocab is already initialised");
        return -1;
    }
    while (PyDict_Next(vocab, &pos, &key, &value)) {
        Py_ssize_t len;
        if (!PyUnicode_Check(key) || !PyUnicode_AsUTF8AndSize(key, &len)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "vocab keys must be str");
            return -1;
        }
        arena_size += len;
    }
    Py_ssize_t entries = PyDict_Size(vocab);
    self->arena = PyMem_Malloc(arena_size + 1);
    if (!self->arena || table_init(&self->whole, entries) < 0 || table_init(&self->continuation, entries) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    self->unk_id = unk_id, self->max_chars = max_chars;
    for (pos = 0; PyDict_Next(vocab, &pos, &key, &value);) {
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(key, &len);
        long id = PyLong_AsLong(value);
        if (id == -1 && PyErr_Occurred()) return -1;
        if (id < 0 || id > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "vocab id %ld of %R is not a non-negative int32", id, key);
            return -1;
        }
        char *stored = memcpy(self->arena + used, utf8, len);
        used += len;
        table_put(&self->whole, stored, len, (int32_t)id);
        if (len > 2 && stored[0] == '#' && stored[1] == '#') table_put(&self->continuation, stored + 2, len - 2, (int32_t)id);
    }
    return 0;
}

static void Vocab_dealloc(Vocab *self) {
    PyMem_Free(self->whole.slots);
    PyMem_Free(self->continuation.slots);
    PyMem_Free(self->arena);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Vocab_methods[] = {
    {"encode_lines", (PyCFunction)Vocab_encode_lines, METH_VARARGS,
     "encode_lines(lines, lower, normalize, fallback) -> (int32 ids, int64 ids per line) as bytearrays"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject VocabType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bertspeed.data_prep._wordpiece.Vocab",
    .tp_basicsize = sizeof(Vocab),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Vocab(vocab, unk_id, max_input_chars_per_word): see the module docstring",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Vocab_init,
    .tp_dealloc = (destructor)Vocab_dealloc,
    .tp_methods = Vocab_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_wordpiece",
    .m_doc = "BERT WordPiece ids of many lines in C (see bertspeed/data_prep/_wordpiece.c)",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__wordpiece(void) {
    if (PyType_Ready(&VocabType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddObjectRef(m, "Vocab", (PyObject *)&VocabType) < 0) Py_CLEAR(m);
    return m;
}
