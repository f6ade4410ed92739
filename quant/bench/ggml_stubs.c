// The few ggml.c symbols ggml-quants.c needs, so that it builds alone (row
// sizes of the types the harness uses). Not part of kiln's build.
#include <stdlib.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include "ggml.h"
void ggml_abort(const char * file, int line, const char * fmt, ...) { fprintf(stderr, "abort %s:%d\n", file, line); abort(); }
static void geom(int t, size_t * bs, size_t * ts) {
    switch (t) {
        case GGML_TYPE_Q4_0: *bs = 32; *ts = 18; return;
        case GGML_TYPE_Q4_1: *bs = 32; *ts = 20; return;
        case GGML_TYPE_Q5_0: *bs = 32; *ts = 22; return;
        case GGML_TYPE_Q5_1: *bs = 32; *ts = 24; return;
        case GGML_TYPE_Q8_0: *bs = 32; *ts = 34; return;
        case GGML_TYPE_Q2_K: *bs = 256; *ts = 84; return;
        case GGML_TYPE_Q3_K: *bs = 256; *ts = 110; return;
        case GGML_TYPE_Q4_K: *bs = 256; *ts = 144; return;
        case GGML_TYPE_Q5_K: *bs = 256; *ts = 176; return;
        case GGML_TYPE_Q6_K: *bs = 256; *ts = 210; return;
        case GGML_TYPE_IQ4_NL: *bs = 32; *ts = 18; return;
        case GGML_TYPE_IQ4_XS: *bs = 256; *ts = 136; return;
    }
    fprintf(stderr, "stub ggml_row_size: type %d\n", t); abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { size_t bs, ts; geom(type, &bs, &ts); return ts * ne / bs; }
const char * ggml_type_name(enum ggml_type type) { return "?"; }
size_t ggml_type_size(enum ggml_type type) { size_t bs, ts; geom(type, &bs, &ts); return ts; }
