/*
 * Shared helpers of the dhps service subcommands (load, up, down, get, put, stats,
 * snapshot, bench). Private to src/tools.
 */
#ifndef DHPS_TOOLS_TOOLS_H
#define DHPS_TOOLS_TOOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h" /* dhps_mono_ns, dhps_splitmix64, dhps_zipf */

/* A read-only mapping of a whole file. */
typedef struct tools_file {
    const uint8_t *data;
    size_t len;
} tools_file;

/* Map path read-only (an empty file maps to data NULL, len 0). Returns 0 or -errno;
 * prints nothing. Unmap with tools_file_unmap (NULL-safe, idempotent). */
int tools_file_map(const char *path, tools_file *f);
void tools_file_unmap(tools_file *f);

/* Parse a decimal/hex unsigned number with an optional k/m/g suffix (x1000, not 1024)
 * into *v; returns false (after printing "dhps <cmd>: bad <what> '<s>'") on error. */
bool tools_parse_u64(const char *cmd, const char *what, const char *s, uint64_t *v);

/* Parse a CPU list in the kernel's list format (cpuset(7)): comma-separated decimal CPU
 * numbers and ranges A-B with A <= B, e.g. "1", "0,2", "0-3,6"; no spaces, signs or empty
 * items. Every CPU must be below ncpu. in[0..ncpu) is cleared, then in[c] set for each CPU
 * listed (repeats allowed). Returns how many distinct CPUs are set (>= 1), or -1 with the
 * reason in why (NUL-terminated, truncated to whylen; the caller names the option).
 * Prints nothing; pure. */
int tools_parse_cpu_list(const char *s, uint32_t ncpu, bool *in, char *why, size_t whylen);

/* Write the CPUs set in in[0..ncpu) to out in list format, ranges joined ("0-2,5"; ""
 * when none), truncated to cap (NUL-terminated when cap > 0). Returns the length the
 * whole list needs, like snprintf. */
size_t tools_format_cpu_list(const bool *in, uint32_t ncpu, char *out, size_t cap);

/* A progress bar on stderr, drawn only when stderr is a terminal (isatty), at most
 * ~10 times a second; tools_progress_done ends the line. */
typedef struct tools_progress {
    bool tty;
    const char *label;
    uint64_t start_ns, last_ns;
} tools_progress;
void tools_progress_init(tools_progress *p, const char *label);
void tools_progress_update(void *p, uint64_t done, uint64_t total);
void tools_progress_done(tools_progress *p);

/* Latency histogram: log-linear buckets (16 per power of two) of nanoseconds, up to
 * ~2^40 ns; quantiles within ~4.4 %. Not thread-safe: one per thread, then merge. */
#define TOOLS_HIST_SUB 16
#define TOOLS_HIST_BUCKETS (41 * TOOLS_HIST_SUB)
typedef struct tools_hist {
    uint64_t n, sum;
    uint64_t b[TOOLS_HIST_BUCKETS];
} tools_hist;
void tools_hist_add(tools_hist *h, uint64_t ns);
void tools_hist_merge(tools_hist *into, const tools_hist *from);
/* The q-quantile (0..1) in ns (bucket midpoint), 0 when empty. */
uint64_t tools_hist_quantile(const tools_hist *h, double q);

/* Deterministic sample vector of key k (dim fp32s in [-1, 1)): what `dhps up` loads
 * and what the tests check lookups against. */
void tools_sample_row(uint64_t key, uint32_t dim, float *out);

#endif
