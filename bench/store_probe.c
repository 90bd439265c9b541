/*
 * dhps-store-probe: where a lookup's time goes, normalised by this machine's memory.
 *
 * Builds a dhps store of N random keys with B-byte values (default 128) placed at
 * 2^A-byte alignment (record_align_log2, default the store's 1), then in one process and
 * interleaved (best of 5): batched lookups (batch 1024, uniform), batched same-length
 * upserts, and a reference loop of independent random one-line reads (prefetched 32
 * ahead) over a 1 GiB huge-page array. Prints lookups and upserts per second and
 * lookups per reference line read: a ratio that stays put when the machine is busy,
 * so schedule changes can be compared on a shared machine. Not a peer comparison:
 * that is dhps-bench store.
 *
 *   dhps-store-probe [N [B [A]]]    (defaults 10000000, 128 and 1)
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "dhps/store.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoull(argv[1], NULL, 0) : 10000000, k = 1024, q = 10000000;
    size_t b = argc > 2 ? strtoull(argv[2], NULL, 0) : 128;
    const char *usage = "usage: dhps-store-probe [N >= 1024 [B in 1..16383 [A in 1..4]]]\n";
    dhps_store_params p;
    dhps_store_params_init(&p);
    p.capacity_hint = n;
    if (argc > 3)
        p.record_align_log2 = (uint32_t)strtoul(argv[3], NULL, 0);
    dhps_store *s;
    if (argc > 4 || n < k || b < 1 || b > DHPS_STORE_MAX_VALUE || dhps_store_create(&p, &s) != 0) {
        fputs(usage, stderr);
        return 2;
    }
    uint64_t *keys = malloc(n * 8), *qs = malloc(q * 8);
    uint8_t *v = malloc(k * b), *out = aligned_alloc(64, k * b);
    size_t ref_bytes = 1ull << 30;
    uint8_t *ref = mmap(NULL, ref_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!keys || !qs || !v || !out || ref == MAP_FAILED) {
        fprintf(stderr, "dhps-store-probe: out of memory\n");
        return 1;
    }
    madvise(ref, ref_bytes, MADV_HUGEPAGE);
    memset(ref, 1, ref_bytes);
    memset(v, 7, k * b);
    for (size_t i = 0; i < n; i++)
        keys[i] = mix(i + 1);
    double t = now();
    for (size_t i = 0; i < n; i += k) {
        dhps_store_batch bt = {.keys = keys + i, .n = n - i < k ? n - i : k, .values = v,
                               .value_stride = b, .version = 1};
        dhps_store_put(s, &bt, NULL);
    }
    double build = (double)n / (now() - t);
    for (size_t i = 0; i < q; i++)
        qs[i] = keys[mix(i ^ 0x55) % n];
    dhps_store_reader *r;
    dhps_store_reader_open(s, &r);
    uint64_t found[16];
    double best_l = 0, best_u = 0, best_ref = 0;
    for (int rep = 0; rep < 5; rep++) {
        t = now();
        size_t h = 0;
        for (size_t i = 0; i < q; i += k)
            h += dhps_store_get(r, qs + i, q - i < k ? q - i : k, out, b, NULL, found);
        double e = now() - t;
        if (h != q) {
            fprintf(stderr, "dhps-store-probe: %zu keys missing\n", q - h);
            return 1;
        }
        if (q / e > best_l)
            best_l = q / e;
        t = now();
        uint64_t sum = 0, lines = ref_bytes / 64;
        for (size_t i = 0; i < q; i++) {
            __builtin_prefetch(ref + (mix(i + 32) % lines) * 64);
            sum += ref[(mix(i) % lines) * 64];
        }
        e = now() - t;
        if (q / e > best_ref && sum)
            best_ref = q / e;
        t = now();
        for (size_t i = 0; i < q / 2; i += k) {
            dhps_store_batch bt = {.keys = qs + i, .n = q / 2 - i < k ? q / 2 - i : k, .values = v,
                                   .value_stride = b,
                                   .version = 2 + (uint64_t)rep};
            dhps_store_put(s, &bt, NULL);
        }
        e = now() - t;
        if (q / 2 / e > best_u)
            best_u = q / 2 / e;
    }
    dhps_store_stats st;
    dhps_store_get_stats(s, &st);
    printf("keys %zu, values %zu B at %u-byte alignment (index %.1f MB, %.2f B/key, fill %.3f), "
           "simd %s\n",
           n, b, 1u << p.record_align_log2, st.index_bytes / 1e6, (double)st.index_bytes / n,
           st.load_factor, dhps_store_simd_name());
    printf("build %.2f M/s  lookup %.2f M/s  upsert %.2f M/s  reference lines %.1f M/s  "
           "lookups per line %.3f\n",
           build / 1e6, best_l / 1e6, best_u / 1e6, best_ref / 1e6, best_l / best_ref);
    dhps_store_reader_close(r);
    dhps_store_destroy(s);
    return 0;
}
