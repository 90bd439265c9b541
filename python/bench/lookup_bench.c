/*
 * The C side of python/bench_lookup.py: the same lookups through the C API, in the same
 * run, so the Python binding's overhead is a ratio on one machine at one moment.
 *
 *   lookup_bench MAP SECRET_FILE HOST POD AZ TABLE DIM BATCH KEYS_FILE SECONDS
 *
 * KEYS_FILE: raw u64 keys (native order), used round-robin in batches of BATCH. Prints
 * "lookups N keys K seconds S keys_per_s R partial P". Built by bench_lookup.py with cc
 * against include/ and the library under test: as a program (a separate process with a
 * client of its own) and, with -DDHPS_BENCH_NO_MAIN -shared, as a library whose
 * dhps_bench_loop runs the same loop on the Python client's own handle, in-process.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dhps/client.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* The timed loop alone, for bench_lookup.py to call in its own process on its own
 * dhps.Client's handle (passed as an address): same client, same channels, same thread,
 * so only the language of the loop differs. Returns keys/s. */
double dhps_bench_loop(uintptr_t client, const char *table, const uint64_t *keys, size_t nkeys,
                       size_t batch, uint32_t dim, double seconds, double warmup)
{
    dhps_client *c = (dhps_client *)client;
    float *out = malloc(batch * dim * sizeof *out);
    uint64_t *mm = calloc((batch + 63) / 64, 8), *um = calloc((batch + 63) / 64, 8);
    double r = -1;
    if (!out || !mm || !um || nkeys < batch)
        goto done;
    size_t off = 0;
    for (double t_end = now_s() + warmup; now_s() < t_end;) {
        dhps_client_lookup_masks(c, table, keys + off, batch, out, dim, DHPS_FP32, mm, um, 0,
                                 NULL);
        off = off + 2 * batch > nkeys ? 0 : off + batch;
    }
    unsigned long lookups = 0;
    double t0 = now_s(), t = t0;
    while (t - t0 < seconds) {
        dhps_client_lookup_masks(c, table, keys + off, batch, out, dim, DHPS_FP32, mm, um, 0,
                                 NULL);
        lookups++;
        off = off + 2 * batch > nkeys ? 0 : off + batch;
        if ((lookups & 15) == 0)
            t = now_s();
    }
    r = (double)(lookups * batch) / (now_s() - t0);
done:
    free(out);
    free(mm);
    free(um);
    return r;
}

#ifndef DHPS_BENCH_NO_MAIN
int main(int argc, char **argv)
{
    if (argc != 11) {
        fprintf(stderr, "usage: lookup_bench MAP SECRET HOST POD AZ TABLE DIM BATCH KEYS SECONDS\n");
        return 2;
    }
    size_t slen, klen;
    char *secret = slurp(argv[2], &slen);
    while (secret && slen && (secret[slen - 1] == '\n' || secret[slen - 1] == '\r'))
        slen--; /* as dhps-server reads secret_file */
    uint64_t *keys = (uint64_t *)slurp(argv[9], &klen);
    uint32_t dim = (uint32_t)atoi(argv[7]);
    size_t batch = (size_t)atoi(argv[8]), nkeys = klen / 8;
    double seconds = atof(argv[10]);
    if (!secret || !keys || nkeys < batch || !dim || !batch) {
        fprintf(stderr, "lookup_bench: bad secret/keys/dim/batch\n");
        return 2;
    }
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.map_path = argv[1];
    p.secret = secret;
    p.secret_len = slen;
    p.host = *argv[3] ? argv[3] : NULL;
    p.pod = *argv[4] ? argv[4] : NULL;
    p.az = *argv[5] ? argv[5] : NULL;
    p.max_msg = 4u << 20; /* as the Python Client and the tools */
    dhps_client *c = NULL;
    int rc = dhps_client_create(&p, &c);
    if (rc < 0) {
        fprintf(stderr, "lookup_bench: %s\n", dhps_strerror(rc));
        return 1;
    }
    dhps_client_connect(c);
    float *out = malloc(batch * dim * sizeof *out);
    uint64_t *mm = calloc((batch + 63) / 64, 8), *um = calloc((batch + 63) / 64, 8);
    unsigned long lookups = 0, partial = 0;
    size_t off = 0;
    /* warm-up: 1 s of the same loop, not counted (a fresh client: channels, router state) */
    for (double t_end = now_s() + 1.0; now_s() < t_end;) {
        dhps_client_lookup_masks(c, argv[6], keys + off, batch, out, dim, DHPS_FP32, mm, um, 0,
                                 NULL);
        off = off + 2 * batch > nkeys ? 0 : off + batch;
    }
    double t0 = now_s(), t = t0;
    while (t - t0 < seconds) {
        /* the same call the Python binding makes: lookup with both masks */
        if (dhps_client_lookup_masks(c, argv[6], keys + off, batch, out, dim, DHPS_FP32, mm,
                                     um, 0, NULL) < 0)
            partial++;
        lookups++;
        off = off + 2 * batch > nkeys ? 0 : off + batch;
        if ((lookups & 15) == 0)
            t = now_s();
    }
    t = now_s() - t0;
    printf("lookups %lu keys %lu seconds %.3f keys_per_s %.0f partial %lu\n", lookups,
           lookups * batch, t, (double)(lookups * batch) / t, partial);
    dhps_client_destroy(c);
    free(out);
    free(mm);
    free(um);
    free(keys);
    free(secret);
    return 0;
}
#endif
