/* LAMB's elementwise work on a CPU in two passes over memory (bertspeed/pretrain/lamb.py has the maths).

   moments(g, m, v, w, one_minus_b1, b2, one_minus_b2, eps, scale, wd) -> (sum w^2, sum u^2)
       m = m + (1 - b1)(g - m), v = b2 v + (1 - b2) g^2 in place; u = m / (sqrt(v) + eps) * scale + wd w is
       only summed, never stored.
   apply(m, v, w, eps, scale, wd, step)
       w -= step * u, with u recomputed from the new m and v exactly as moments computed it.

   PyTorch's multi-tensor ops take about 23 passes over parameter-sized memory for the same step; these take 10.
   Every argument buffer is a C-contiguous float32 array of one length (NumPy views of the tensors); the GIL is
   released while they run, so the caller can run chunks on several threads. Built with -ffp-contract=off (no
   fused multiply-adds), every element gets the same bits from each of the clones below; only the order of the
   sums of squares depends on the vector width. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#define BLOCK 4096

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

static inline float update(float m, float v, float w, float eps, float scale, float wd) {
    return m / (sqrtf(v) + eps) * scale + wd * w;
}

CLONES static void moments_kernel(const float *restrict g, float *restrict m, float *restrict v,
                                  const float *restrict w, Py_ssize_t n, float one_minus_b1, float b2,
                                  float one_minus_b2, float eps, float scale, float wd, double *sums) {
    double sum_w = 0.0, sum_u = 0.0;
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t end = start + BLOCK < n ? start + BLOCK : n;
        float block_w = 0.0f, block_u = 0.0f;
#pragma omp simd reduction(+ : block_w, block_u)
        for (Py_ssize_t i = start; i < end; i++) {
            float gi = g[i], mi = m[i] + one_minus_b1 * (gi - m[i]);
            float vi = v[i] * b2 + one_minus_b2 * gi * gi;
            float u = update(mi, vi, w[i], eps, scale, wd);
            m[i] = mi;
            v[i] = vi;
            block_w += w[i] * w[i];
            block_u += u * u;
        }
        sum_w += block_w;
        sum_u += block_u;
    }
    sums[0] = sum_w;
    sums[1] = sum_u;
}

CLONES static void apply_kernel(const float *restrict m, const float *restrict v, float *restrict w, Py_ssize_t n,
                                float eps, float scale, float wd, float step) {
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++)
        w[i] -= step * update(m[i], v[i], w[i], eps, scale, wd);
}

static void release(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
}

/* Fills views[0..count) from objects[0..count); writable[i] says whether views[i] must be writable. Returns the
   common length in floats, or -1 with an exception set (and no view held). */
static Py_ssize_t get_floats(PyObject **objects, const int *writable, Py_buffer *views, int count) {
    Py_ssize_t n = 0;
    for (int i = 0; i < count; i++) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable[i] ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objects[i], &views[i], flags) != 0) {
            release(views, i);
            return -1;
        }
        const char *problem = NULL;
        if (views[i].itemsize != 4 || strcmp(views[i].format, "f") != 0)
            problem = "arrays must be float32";
        else if (i > 0 && views[i].len / 4 != n)
            problem = "arrays must have one length";
        if (problem) {
            release(views, i + 1);
            PyErr_SetString(PyExc_ValueError, problem);
            return -1;
        }
        n = views[i].len / 4;
    }
    return n;
}

static PyObject *moments(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *objects[4];
    float one_minus_b1, b2, one_minus_b2, eps, scale, wd;
    if (!PyArg_ParseTuple(args, "OOOOffffff:moments", &objects[0], &objects[1], &objects[2], &objects[3],
                          &one_minus_b1, &b2, &one_minus_b2, &eps, &scale, &wd))
        return NULL;
    static const int writable[4] = {0, 1, 1, 0};
    Py_buffer views[4];
    Py_ssize_t n = get_floats(objects, writable, views, 4);
    if (n < 0)
        return NULL;
    double sums[2];
    Py_BEGIN_ALLOW_THREADS
    moments_kernel(views[0].buf, views[1].buf, views[2].buf, views[3].buf, n, one_minus_b1, b2, one_minus_b2,
                   eps, scale, wd, sums);
    Py_END_ALLOW_THREADS
    release(views, 4);
    return Py_BuildValue("(dd)", sums[0], sums[1]);
}

static PyObject *apply(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *objects[3];
    float eps, scale, wd, step;
    if (!PyArg_ParseTuple(args, "OOOffff:apply", &objects[0], &objects[1], &objects[2], &eps, &scale, &wd, &step))
        return NULL;
    static const int writable[3] = {0, 0, 1};
    Py_buffer views[3];
    Py_ssize_t n = get_floats(objects, writable, views, 3);
    if (n < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    apply_kernel(views[0].buf, views[1].buf, views[2].buf, n, eps, scale, wd, step);
    Py_END_ALLOW_THREADS
    release(views, 3);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", moments, METH_VARARGS, "moments(g, m, v, w, 1-b1, b2, 1-b2, eps, scale, wd) -> (sum w^2, sum u^2)"},
    {"apply", apply, METH_VARARGS, "apply(m, v, w, eps, scale, wd, step): w -= step * u"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_lamb_cpu", .m_doc = "LAMB's CPU passes", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__lamb_cpu(void) { return PyModule_Create(&module); }
