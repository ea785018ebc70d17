/* BERT ids of many lines in C, for bertspeed.data_prep.fast_tokenizer.FastWordPiece.lines_ids.

   Vocab(vocab: dict[str, int], unk_id, max_input_chars_per_word)
   .encode_lines(lines, lower, normalize, char_info, is_punctuation)
       -> (bytearray of int32 ids, bytearray of int64 ids per line)

   - An ASCII line is normalised here as BERT does it (drop control characters; lower-case if `lower`) and
     split on the whitespace left (space, tab, CR, LF) into chunks.
   - Any other line is normalised character by character, each character's normalisation taken from
     char_info(character) -> (its normalisation alone, whether it takes part in canonical reordering), asked
     once per character and kept; a line holding a reordering character goes to normalize(line) whole.
     The result is split as str.split() splits it.
   - A chunk is split into words at BERT punctuation: in ASCII every character but letters and digits (no
     other ASCII survives normalisation); above it, is_punctuation(character), asked once per character
     and kept in a table.
   - Each word goes through greedy longest-match-first WordPiece over its UTF-8 bytes, ends stepping back
     a whole character, as Hugging Face's WordPiece model does it: a word of more than
     max_input_chars_per_word characters, or one whose rest matches no "##" piece, is unk_id. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define UNICODE_SIZE 0x110000

typedef struct {
    uint32_t hash; /* of the key */
    int32_t key;   /* index into Table.keys; -1: empty slot */
} Slot;            /* 8 bytes: a 30,522-token vocab's table is 512 KB, mostly in cache */

typedef struct {
    uint32_t offset, len; /* in the Vocab's arena */
    int32_t id;
} Key;

typedef struct {
    Slot *slots;
    Key *keys;
    uint32_t mask, count;
    uint32_t longest; /* bytes of the longest key */
} Table;

typedef struct {
    PyObject_HEAD
    Table whole;        /* every token */
    Table continuation; /* "##x" tokens, keyed by "x" */
    char *arena;
    uint8_t *punctuation; /* per code point: 0 not asked yet, 1 no, 2 yes; allocated at first use */
    uint32_t *prefix_hashes; /* wordpiece's scratch: hashes of word[start:start + k], k <= 4 * max_chars */
    /* BERT's normalisation of each code point alone, asked of char_info once: blocks of 256 code points, entry
       = (offset into normalised << 8 | length) + 1, 0 = not asked yet; REORDERS marks a character after which
       the line is normalised as a whole (canonical reordering depends on neighbours). */
    uint32_t *normalised_blocks[UNICODE_SIZE >> 8];
    Py_UCS4 *normalised;
    Py_ssize_t normalised_len, normalised_cap;
    int32_t unk_id;
    Py_ssize_t max_chars;
} Vocab;

typedef struct {
    int32_t *ids;
    Py_ssize_t len, cap;
} Ids;

/* What one encode_lines call needs besides the Vocab. */
typedef struct {
    Ids out;
    char *buf; /* a line or a word, normalised / as UTF-8 */
    Py_ssize_t buf_size;
    Py_UCS4 *line; /* a non-ASCII line, normalised */
    Py_ssize_t line_size;
    PyObject *is_punctuation, *char_info;
} Work;

#define REORDERS 0xFFFFFFFFu

/* FNV-1a; hash_prefixes gives the same values for every prefix of s in one pass. */
#define FNV_BASIS 1469598103934665603ULL
#define FNV_PRIME 1099511628211ULL

static uint32_t fold(uint64_t h) { return (uint32_t)(h ^ (h >> 32)); }

static uint32_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = FNV_BASIS;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * FNV_PRIME;
    return fold(h);
}

static void hash_prefixes(const char *s, Py_ssize_t n, uint32_t *out) { /* out[k] = hash_bytes(s, k) */
    uint64_t h = FNV_BASIS;
    for (Py_ssize_t i = 0; i < n; i++) out[i + 1] = fold(h = (h ^ (unsigned char)s[i]) * FNV_PRIME);
}

static int table_init(Table *t, Py_ssize_t entries) {
    uint32_t size = 16;
    while (size < (uint64_t)entries * 2) size <<= 1;
    if (!(t->slots = PyMem_Malloc(size * sizeof(Slot))) || !(t->keys = PyMem_Malloc((entries + 1) * sizeof(Key))))
        return -1;
    for (uint32_t i = 0; i < size; i++) t->slots[i].key = -1;
    t->mask = size - 1, t->count = t->longest = 0;
    return 0;
}

/* The slot holding key[0:len] (hash h), or the empty slot where it would go. */
static Slot *table_slot(const Table *t, const char *arena, const char *key, uint32_t len, uint32_t h) {
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        Slot *s = &t->slots[i];
        if (s->key < 0) return s;
        const Key *k = &t->keys[s->key];
        if (s->hash == h && k->len == len && memcmp(arena + k->offset, key, len) == 0) return s;
    }
}

static int32_t table_get(const Vocab *v, const Table *t, const char *key, uint32_t len, uint32_t h) {
    const Slot *s = table_slot(t, v->arena, key, len, h);
    return s->key < 0 ? -1 : t->keys[s->key].id;
}

static void table_put(Vocab *v, Table *t, uint32_t offset, uint32_t len, int32_t id) {
    uint32_t h = hash_bytes(v->arena + offset, len);
    Slot *s = table_slot(t, v->arena, v->arena + offset, len, h);
    if (s->key < 0) s->hash = h, s->key = (int32_t)t->count++;
    t->keys[s->key] = (Key){offset, len, id};
    if (len > t->longest) t->longest = len;
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

static int reserve(Work *w, Py_ssize_t size) {
    if (size <= w->buf_size) return 0;
    char *grown = PyMem_Realloc(w->buf, size);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = grown, w->buf_size = size;
    return 0;
}

/* Greedy longest-match-first WordPiece of one word: n bytes of UTF-8, chars characters. */
static int wordpiece(const Vocab *v, const char *word, Py_ssize_t n, Py_ssize_t chars, Ids *out) {
    Py_ssize_t first = out->len;
    if (chars <= v->max_chars) {
        for (Py_ssize_t start = 0; start < n;) {
            const Table *t = start ? &v->continuation : &v->whole;
            Py_ssize_t end = n;
            if (n - start > t->longest) /* no key is longer: start at the last character boundary that fits */
                for (end = start + t->longest; end > start && (word[end] & 0xC0) == 0x80; end--)
                    ;
            if (end == start) goto unknown;
            hash_prefixes(word + start, end - start, v->prefix_hashes);
            int32_t id;
            while ((id = table_get(v, t, word + start, (uint32_t)(end - start), v->prefix_hashes[end - start])) < 0) {
                do end--;
                while (end > start && (word[end] & 0xC0) == 0x80); /* back to a character's first byte */
                if (end == start) goto unknown;
            }
            if (ids_push(out, id) < 0) return -1;
            start = end;
        }
        return 0;
    }
unknown:
    out->len = first;
    return ids_push(out, v->unk_id);
}

static int is_ascii_alnum(Py_UCS4 c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_punctuation(Vocab *v, Work *w, Py_UCS4 c) {
    if (c < 128) return !is_ascii_alnum(c);
    if (!v->punctuation && !(v->punctuation = PyMem_Calloc(UNICODE_SIZE, 1))) {
        PyErr_NoMemory();
        return -1;
    }
    if (!v->punctuation[c]) {
        PyObject *answer = PyObject_CallFunction(w->is_punctuation, "C", (int)c);
        int yes = answer ? PyObject_IsTrue(answer) : -1;
        Py_XDECREF(answer);
        if (yes < 0) return -1;
        v->punctuation[c] = yes ? 2 : 1;
    }
    return v->punctuation[c] == 2;
}

/* An ASCII chunk s[0:n]: runs of letters/digits and single other characters, each through WordPiece. */
static int ascii_words(const Vocab *v, const char *s, Py_ssize_t n, Ids *out) {
    for (Py_ssize_t i = 0, j; i < n; i = j) {
        j = i + 1;
        if (is_ascii_alnum(s[i]))
            while (j < n && is_ascii_alnum(s[j])) j++;
        if (wordpiece(v, s + i, j - i, j - i, out) < 0) return -1;
    }
    return 0;
}

static Py_ssize_t put_utf8(char *buf, Py_UCS4 c) {
    if (c < 0x80) return buf[0] = (char)c, 1;
    if (c < 0x800) return buf[0] = (char)(0xC0 | c >> 6), buf[1] = (char)(0x80 | (c & 0x3F)), 2;
    if (c < 0x10000) {
        buf[0] = (char)(0xE0 | c >> 12), buf[1] = (char)(0x80 | ((c >> 6) & 0x3F)), buf[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    buf[0] = (char)(0xF0 | c >> 18), buf[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    buf[2] = (char)(0x80 | ((c >> 6) & 0x3F)), buf[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* A chunk text[lo:hi] of a normalised str: words at punctuation, each as UTF-8 through WordPiece. */
static int unicode_chunk(Vocab *v, Work *w, int kind, const void *data, Py_ssize_t lo, Py_ssize_t hi) {
    if (reserve(w, 4 * (hi - lo)) < 0) return -1;
    for (Py_ssize_t i = lo; i < hi;) {
        Py_ssize_t n = 0, chars = 0;
        int punct = is_punctuation(v, w, PyUnicode_READ(kind, data, i));
        if (punct < 0) return -1;
        do {
            n += put_utf8(w->buf + n, PyUnicode_READ(kind, data, i++));
            chars++;
        } while (!punct && i < hi && (punct = is_punctuation(v, w, PyUnicode_READ(kind, data, i))) == 0);
        if (punct < 0 || wordpiece(v, w->buf, n, chars, &w->out) < 0) return -1;
    }
    return 0;
}

/* Normalised text (a str's kind and data, or UCS4), split into chunks as str.split() splits it. */
static int encode_text(Vocab *v, Work *w, int kind, const void *data, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n;) {
        while (i < n && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i))) i++;
        Py_ssize_t lo = i;
        while (i < n && !Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i))) i++;
        if (i > lo && unicode_chunk(v, w, kind, data, lo, i) < 0) return -1;
    }
    return 0;
}

/* The entry of code point c (see Vocab.normalised_blocks), asking char_info(c) -> (str, reorders) at first. */
static uint32_t normalised_entry(Vocab *v, Work *w, Py_UCS4 c) {
    uint32_t **block = &v->normalised_blocks[c >> 8];
    if (!*block && !(*block = PyMem_Calloc(256, sizeof(uint32_t)))) return PyErr_NoMemory(), 0;
    uint32_t *entry = &(*block)[c & 255];
    if (*entry) return *entry;
    PyObject *info = PyObject_CallFunction(w->char_info, "C", (int)c), *text;
    int reorders;
    if (!info || !PyArg_ParseTuple(info, "Up", &text, &reorders)) {
        Py_XDECREF(info);
        return 0;
    }
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    if (len > 255 || v->normalised_len + len > (1 << 23)) {
        PyErr_Format(PyExc_ValueError, "normalisation of U+%04X too long", (unsigned)c);
    } else if (v->normalised_len + len > v->normalised_cap) {
        Py_ssize_t cap = 2 * (v->normalised_len + len) + 256;
        Py_UCS4 *grown = PyMem_Realloc(v->normalised, cap * sizeof(Py_UCS4));
        if (grown) v->normalised = grown, v->normalised_cap = cap;
        else PyErr_NoMemory();
    }
    if (!PyErr_Occurred()) {
        for (Py_ssize_t i = 0; i < len; i++) v->normalised[v->normalised_len + i] = PyUnicode_READ_CHAR(text, i);
        *entry = reorders ? REORDERS : ((uint32_t)v->normalised_len << 8 | (uint32_t)len) + 1;
        v->normalised_len += len;
    }
    Py_DECREF(info);
    return PyErr_Occurred() ? 0 : *entry;
}

/* A non-ASCII line: normalised here, character by character, into w->line; returns its length, -1 on error,
   -2 when the line holds a character after which it must be normalised as a whole. */
static Py_ssize_t normalise_line(Vocab *v, Work *w, PyObject *line) {
    int kind = PyUnicode_KIND(line);
    const void *data = PyUnicode_DATA(line);
    Py_ssize_t n = PyUnicode_GET_LENGTH(line), m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t entry = normalised_entry(v, w, PyUnicode_READ(kind, data, i));
        if (!entry) return -1;
        if (entry == REORDERS) return -2;
        Py_ssize_t len = (entry - 1) & 255;
        if (m + len > w->line_size) {
            Py_ssize_t size = 2 * (m + len) + 256;
            Py_UCS4 *grown = PyMem_Realloc(w->line, size * sizeof(Py_UCS4));
            if (!grown) return PyErr_NoMemory(), -1;
            w->line = grown, w->line_size = size;
        }
        memcpy(w->line + m, v->normalised + ((entry - 1) >> 8), len * sizeof(Py_UCS4));
        m += len;
    }
    return m;
}

static int is_ascii_control(char c) { /* BERT's clean_text drops these; \t \n \r are whitespace */
    return (c >= 0 && c < 32 && c != '\t' && c != '\n' && c != '\r') || c == 127;
}

static int is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* An ASCII line s[0:n], normalised here into w->buf. */
static int encode_ascii_line(Vocab *v, Work *w, const char *s, Py_ssize_t n, int lower) {
    if (reserve(w, n) < 0) return -1;
    char *buf = w->buf;
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (!is_ascii_control(c)) buf[m++] = (lower && c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    for (Py_ssize_t i = 0, lo; i < m;) {
        while (i < m && is_ascii_space(buf[i])) i++;
        for (lo = i; i < m && !is_ascii_space(buf[i]); i++)
            ;
        if (i > lo && ascii_words(v, buf + lo, i - lo, &w->out) < 0) return -1;
    }
    return 0;
}

static int encode_line(Vocab *v, Work *w, PyObject *line, int lower, PyObject *normalize) {
    if (!PyUnicode_Check(line)) {
        PyErr_Format(PyExc_TypeError, "lines must be str, not %.100s", Py_TYPE(line)->tp_name);
        return -1;
    }
    if (PyUnicode_IS_ASCII(line))
        return encode_ascii_line(v, w, (const char *)PyUnicode_DATA(line), PyUnicode_GET_LENGTH(line), lower);
    Py_ssize_t n = normalise_line(v, w, line);
    if (n != -2) return n < 0 ? -1 : encode_text(v, w, PyUnicode_4BYTE_KIND, w->line, n);
    PyObject *normalized = PyObject_CallOneArg(normalize, line);
    if (!normalized) return -1;
    int status = -1;
    if (PyUnicode_Check(normalized))
        status = encode_text(v, w, PyUnicode_KIND(normalized), PyUnicode_DATA(normalized),
                             PyUnicode_GET_LENGTH(normalized));
    else
        PyErr_SetString(PyExc_TypeError, "normalize must return str");
    Py_DECREF(normalized);
    return status;
}

static PyObject *Vocab_encode_lines(Vocab *self, PyObject *args) {
    PyObject *lines, *normalize, *seq, *result = NULL;
    int lower;
    Work w = {{NULL, 0, 0}, NULL, 0, NULL, 0, NULL, NULL};
    if (!PyArg_ParseTuple(args, "OpOOO:encode_lines", &lines, &lower, &normalize, &w.char_info, &w.is_punctuation))
        return NULL;
    if (!(seq = PySequence_Fast(lines, "lines must be a sequence of str"))) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    int64_t *lengths = PyMem_Malloc((count ? count : 1) * sizeof(int64_t));
    if (!lengths) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t before = w.out.len;
        if (encode_line(self, &w, PySequence_Fast_GET_ITEM(seq, i), lower, normalize) < 0) goto done;
        lengths[i] = w.out.len - before;
    }
    PyObject *ids = PyByteArray_FromStringAndSize((const char *)w.out.ids, w.out.len * (Py_ssize_t)sizeof(int32_t));
    PyObject *per_line = PyByteArray_FromStringAndSize((const char *)lengths, count * (Py_ssize_t)sizeof(int64_t));
    if (ids && per_line) result = PyTuple_Pack(2, ids, per_line);
    Py_XDECREF(ids);
    Py_XDECREF(per_line);
done:
    Py_DECREF(seq);
    PyMem_Free(lengths);
    PyMem_Free(w.buf);
    PyMem_Free(w.line);
    PyMem_Free(w.out.ids);
    return result;
}

static int Vocab_init(Vocab *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"vocab", "unk_id", "max_input_chars_per_word", NULL};
    PyObject *vocab, *key, *value;
    int unk_id;
    Py_ssize_t max_chars, pos = 0, arena_size = 0, used = 0, continuations = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!in:Vocab", names, &PyDict_Type, &vocab, &unk_id, &max_chars))
        return -1;
    if (self->arena) {
        PyErr_SetString(PyExc_RuntimeError, "Vocab is already initialised");
        return -1;
    }
    while (PyDict_Next(vocab, &pos, &key, &value)) {
        Py_ssize_t len;
        const char *utf8;
        if (!PyUnicode_Check(key) || !(utf8 = PyUnicode_AsUTF8AndSize(key, &len))) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "vocab keys must be str");
            return -1;
        }
        arena_size += len;
        continuations += len > 2 && utf8[0] == '#' && utf8[1] == '#';
    }
    if (arena_size >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "vocab too large");
        return -1;
    }
    Py_ssize_t entries = PyDict_Size(vocab);
    self->arena = PyMem_Malloc(arena_size + 1);
    if (!self->arena || table_init(&self->whole, entries) < 0 || table_init(&self->continuation, continuations) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    if (max_chars < 0 || max_chars > (1 << 20)) {
        PyErr_Format(PyExc_ValueError, "max_input_chars_per_word %zd is not in [0, 2**20]", max_chars);
        return -1;
    }
    if (!(self->prefix_hashes = PyMem_Malloc((4 * max_chars + 1) * sizeof(uint32_t)))) {
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
        memcpy(self->arena + used, utf8, len);
        table_put(self, &self->whole, (uint32_t)used, (uint32_t)len, (int32_t)id);
        if (len > 2 && utf8[0] == '#' && utf8[1] == '#')
            table_put(self, &self->continuation, (uint32_t)used + 2, (uint32_t)len - 2, (int32_t)id);
        used += len;
    }
    return 0;
}

static void Vocab_dealloc(Vocab *self) {
    PyMem_Free(self->whole.slots);
    PyMem_Free(self->whole.keys);
    PyMem_Free(self->continuation.slots);
    PyMem_Free(self->continuation.keys);
    PyMem_Free(self->arena);
    PyMem_Free(self->punctuation);
    PyMem_Free(self->prefix_hashes);
    for (size_t i = 0; i < UNICODE_SIZE >> 8; i++) PyMem_Free(self->normalised_blocks[i]);
    PyMem_Free(self->normalised);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Vocab_methods[] = {
    {"encode_lines", (PyCFunction)Vocab_encode_lines, METH_VARARGS,
     "encode_lines(lines, lower, normalize, char_info, is_punctuation) -> (int32 ids, int64 ids per line) as "
     "bytearrays"},
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
