/*
 * Small internal helpers shared by the dhps libraries, the dhps tool, tests and benches.
 * Not public API (include/dhps/ holds that): anything linking dhps_common can include
 * "util.h". The clock and random helpers are static inline, so they cost nothing on hot
 * paths; the Zipf sampler lives in util.c.
 */
#ifndef DHPS_COMMON_UTIL_H
#define DHPS_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Nanoseconds on clock `id` (CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_THREAD_CPUTIME_ID).
 * Thread-safe; one clock_gettime (a vDSO call for the first two). */
static inline uint64_t dhps_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Monotonic nanoseconds: the clock for deadlines, timeouts and durations. */
static inline uint64_t dhps_mono_ns(void) { return dhps_clock_ns(CLOCK_MONOTONIC); }

/* splitmix64: advance *state and return the next pseudo-random word of its stream. */
static inline uint64_t dhps_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform double in [0, 1) from the splitmix64 stream *state (53 random bits). */
static inline double dhps_rand_unit(uint64_t *state)
{
    return (double)(dhps_splitmix64(state) >> 11) * 0x1.0p-53;
}

/* Zipf(s) sampler over ranks [0, n) by rejection-inversion (Hoermann and Derflinger
 * 1996): P(rank r) proportional to (r + 1)^-s, O(1) expected time per sample, any n >= 1
 * (0 is taken as 1), s > 0 (s = 1 allowed). Rank 0 is the most popular; callers scramble
 * ranks into keys. Init once; next is pure given *rng (a splitmix64 state), so one
 * dhps_zipf may be shared by threads that each have their own rng. */
typedef struct dhps_zipf {
    double s, n, h_x1, h_n, cut;
} dhps_zipf;
void dhps_zipf_init(dhps_zipf *z, uint64_t n, double s);
uint64_t dhps_zipf_next(const dhps_zipf *z, uint64_t *rng);

/* Are all n fp32 (f16: fp16) values at p finite (exponent bits not all ones: no NaN, no
 * +-inf)? Bit tests, so no floating-point traps and any alignment. */
static inline bool dhps_f32_all_finite(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, b + 4 * i, 4);
        bad |= (uint32_t)((x & 0x7f800000u) == 0x7f800000u);
    }
    return !bad;
}

static inline bool dhps_f16_all_finite(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint16_t x;
        memcpy(&x, b + 2 * i, 2);
        bad |= (uint32_t)((x & 0x7c00u) == 0x7c00u);
    }
    return !bad;
}

/* A log rate limit: at most `per_s` lines a second; the lines left out are counted and
 * the next line that goes out reports them. Not thread-safe: one per thread (or under the
 * caller's lock). Zero-initialise. */
typedef struct dhps_ratelimit {
    uint64_t window_ns, suppressed;
    uint32_t lines;
} dhps_ratelimit;

/* May a line be logged now? When true, more[0..morelen) gets what ends the line: "" or
 * "; N more not logged" (the lines refused since the last one allowed). */
static inline bool dhps_ratelimit_allow(dhps_ratelimit *r, uint32_t per_s, char *more,
                                        size_t morelen)
{
    uint64_t now = dhps_mono_ns();
    if (now - r->window_ns > 1000000000ull) {
        r->window_ns = now;
        r->lines = 0;
    }
    if (r->lines >= per_s) {
        r->suppressed++;
        return false;
    }
    r->lines++;
    if (r->suppressed)
        snprintf(more, morelen, "; %llu more not logged", (unsigned long long)r->suppressed);
    else if (morelen)
        more[0] = 0;
    r->suppressed = 0;
    return true;
}

/* A file holding a private secret (the cluster secret, a TLS private key) must be one
 * that neither its group nor others may read or change. fd: the file opened
 * (so the bytes read next are the ones checked); path and what ("secret file", "tls key
 * file") name it in the message, why says what the file protects. 0, or DHPS_E_CONFIG
 * with one line in err: fstat failed (strerror), or the mode (naming `chmod 600 PATH`).
 * Thread-safe. */
int dhps_private_file_check_fd(int fd, const char *path, const char *what, const char *why,
                               char *err, size_t errlen);
/* The same for a path (opened read-only, checked, closed); cannot open: strerror. */
int dhps_private_file_check(const char *path, const char *what, const char *why, char *err,
                            size_t errlen);

/* Least and most bytes of a cluster secret file, and the least distinct byte values in
 * it (docs/security.md): 32 random bytes hex-encoded (what `dhps keygen` writes) pass;
 * words, short secrets and repeated patterns do not. */
#define DHPS_SECRET_MIN_BYTES 32u
#define DHPS_SECRET_MIN_DISTINCT 10u

/* The cluster secret file, read the one way the server and every tool read it: up to
 * cap bytes, trailing newlines (\n, \r\n) stripped. On success 0 and the secret in
 * buf[0..*len). On failure DHPS_E_CONFIG with one line in err naming the path and why:
 * cannot open (strerror); readable or writable by group or others (the secret
 * authenticates every peer: chmod 600); empty; shorter than DHPS_SECRET_MIN_BYTES or
 * with fewer than DHPS_SECRET_MIN_DISTINCT distinct bytes (a guessable secret; `dhps
 * keygen` writes a good one); longer than cap bytes. buf is then wiped. Thread-safe. */
int dhps_secret_load(const char *path, uint8_t *buf, size_t cap, size_t *len, char *err,
                     size_t errlen);

/* Write a new cluster secret to path: 32 bytes from getrandom(), hex-encoded (64 bytes,
 * no newline), mode 0600, fsync'ed. Refuses to replace an existing file unless replace (then written
 * beside it and renamed over it). Returns 0 or -errno (-EEXIST: exists). */
int dhps_secret_generate(const char *path, bool replace);

#endif
