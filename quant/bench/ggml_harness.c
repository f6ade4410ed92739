// A driver around ggml's quantizers, for checking and benchmarking kiln's
// `quant` crate against them. It holds no ggml code: it is compiled against a
// ggml checkout by build_ggml_harness.sh (see quant/BENCH.md) and is not part
// of kiln's build or CI.
//
// usage: harness chunk TYPE N_PER_ROW IMAT(0/1)   stdin: nrows*n f32 [then n f32 imatrix]  stdout: bytes of ggml_quantize_chunk's quantize_* call (imatrix optional)
//        harness ref TYPE                         stdin: f32                               stdout: quantize_row_*_ref bytes
//        harness deq TYPE                         stdin: bytes                             stdout: f32
//        harness bench TYPE N_PER_ROW IMAT SECS   stdin as chunk; prints values/s of thread CPU time (single thread)
#include "ggml-common.h"
#include "ggml-quants.h"
#include "ggml-impl.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void * slurp(size_t * n) {
    size_t cap = 1 << 20, len = 0; char * buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + len, 1, cap - len, stdin)) > 0) { len += r; if (len == cap) { cap *= 2; buf = realloc(buf, cap); } }
    *n = len; return buf;
}

typedef size_t (*qfn)(const float *, void *, int64_t, int64_t, const float *);
static size_t q_f16(const float * x, void * y, int64_t nr, int64_t n, const float * im) { (void)im; uint16_t * o = y; for (int64_t i = 0; i < nr*n; i++) o[i] = GGML_FP32_TO_FP16(x[i]); return nr*n*2; }
static size_t q_bf16(const float * x, void * y, int64_t nr, int64_t n, const float * im) { (void)im; ggml_bf16_t * o = y; for (int64_t i = 0; i < nr*n; i++) o[i] = GGML_FP32_TO_BF16(x[i]); return nr*n*2; }

static qfn chunk_fn(const char * ty) {
    if (!strcmp(ty, "q4_0")) return quantize_q4_0;
    if (!strcmp(ty, "q4_1")) return quantize_q4_1;
    if (!strcmp(ty, "q5_0")) return quantize_q5_0;
    if (!strcmp(ty, "q5_1")) return quantize_q5_1;
    if (!strcmp(ty, "q8_0")) return quantize_q8_0;
    if (!strcmp(ty, "q2_K")) return quantize_q2_K;
    if (!strcmp(ty, "q3_K")) return quantize_q3_K;
    if (!strcmp(ty, "q4_K")) return quantize_q4_K;
    if (!strcmp(ty, "q5_K")) return quantize_q5_K;
    if (!strcmp(ty, "q6_K")) return quantize_q6_K;
    if (!strcmp(ty, "iq4_nl")) return quantize_iq4_nl;
    if (!strcmp(ty, "iq4_xs")) return quantize_iq4_xs;
    if (!strcmp(ty, "f16")) return q_f16;
    if (!strcmp(ty, "bf16")) return q_bf16;
    fprintf(stderr, "bad type %s\n", ty); exit(1);
}

// thread CPU time: robust against other processes sharing the cores
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(int argc, char ** argv) {
    const char * mode = argv[1]; const char * ty = argv[2];
    size_t nb; void * in = slurp(&nb);
    if (!strcmp(mode, "chunk") || !strcmp(mode, "bench")) {
        int64_t n = atoll(argv[3]); int imat = atoi(argv[4]);
        int64_t total = nb / 4 - (imat ? n : 0);
        int64_t nrows = total / n;
        const float * x = in;
        const float * qw = imat ? x + nrows * n : NULL;
        void * out = calloc(1, total * 4 + 1024);
        qfn f = chunk_fn(ty);
        if (!strcmp(mode, "chunk")) {
            size_t w = f(x, out, nrows, n, qw);
            fwrite(out, 1, w, stdout);
        } else {
            double secs = atof(argv[5]);
            double t0 = now(), t; long reps = 0;
            do { f(x, out, nrows, n, qw); reps++; t = now(); } while (t - t0 < secs);
            printf("%.6e\n", (double)reps * total / (t - t0));
        }
        return 0;
    }
    if (!strcmp(mode, "ref")) {
        const float * x = in; int64_t n = nb / 4;
        void * out = calloc(1, n * 4 + 1024); size_t w = 0;
        if (!strcmp(ty, "iq4_nl")) { quantize_row_iq4_nl_ref(x, out, n); w = n/32*18; }
        else if (!strcmp(ty, "iq4_xs")) { quantize_row_iq4_xs_ref(x, out, n); w = n/256*136; }
        else { fprintf(stderr, "bad type\n"); return 1; }
        fwrite(out, 1, w, stdout); return 0;
    }
    int64_t n; float * y;
    #define DQ(name, bs, ts, fn) if (!strcmp(ty, name)) { n = nb/ts*bs; y = malloc(n*4+4); fn(in, y, n); fwrite(y, 4, n, stdout); return 0; }
    DQ("iq4_nl", 32, 18, dequantize_row_iq4_nl)
    DQ("iq4_xs", 256, 136, dequantize_row_iq4_xs)
    DQ("q4_K", 256, 144, dequantize_row_q4_K)
    fprintf(stderr, "bad type\n"); return 1;
}
