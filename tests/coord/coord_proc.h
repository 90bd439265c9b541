/*
 * Helpers for the coord tests that run dhps-server processes beside a real etcd
 * (etcd_fixture.h, ../server/srv_proc.h): registrations, keys, metrics, log lines.
 */
#ifndef DHPS_TEST_COORD_PROC_H
#define DHPS_TEST_COORD_PROC_H

#include "dhps/coord.h"
#include "etcd_fixture.h"
#include "srv_proc.h"

/* Keys under prefix in etcd (-1 on an etcd error). */
static inline int cp_count_keys(dhps_coord *c, const char *prefix)
{
    dhps_coord_kv *kv;
    int n = dhps_coord_get(c, prefix, true, &kv, NULL);
    dhps_coord_kvs_free(kv, n);
    return n;
}

/* Wait up to ms (scaled) until prefix holds want keys; returns the last count. */
static inline int cp_wait_keys(dhps_coord *c, const char *prefix, int want, unsigned ms)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms);
    int n;
    while ((n = cp_count_keys(c, prefix)) != want && t_now_ms() < end)
        t_sleep_ms(50);
    return n;
}

/* mod_revision of key (0 when absent or on error). */
static inline int64_t cp_key_rev(dhps_coord *c, const char *key)
{
    dhps_coord_kv *kv;
    int n = dhps_coord_get(c, key, false, &kv, NULL);
    int64_t r = n > 0 ? kv[0].mod_revision : 0;
    dhps_coord_kvs_free(kv, n);
    return r;
}

/* The value of key, malloc'ed (NULL when absent or on error). */
static inline char *cp_get_value(dhps_coord *c, const char *key)
{
    dhps_coord_kv *kv;
    int n = dhps_coord_get(c, key, false, &kv, NULL);
    char *v = n > 0 ? strdup(kv[0].value) : NULL;
    dhps_coord_kvs_free(kv, n);
    return v;
}

/* One series from p's /metrics (-1 when unreachable or absent). */
static inline double cp_metric(const proc *p, const char *series)
{
    char *body = NULL;
    int code = t_http_get(p->mport, "/metrics", &body);
    double v = code == 200 ? t_metric(body, series) : -1;
    free(body);
    return v;
}

/* Wait up to ms (scaled) until the series equals want. 0 or -1. */
static inline int cp_wait_metric(const proc *p, const char *series, double want, unsigned ms)
{
    uint64_t end = t_now_ms() + dhps_test_ms(ms);
    while (t_now_ms() < end) {
        if (cp_metric(p, series) == want)
            return 0;
        t_sleep_ms(100);
    }
    return -1;
}

/* Occurrences of needle in the file at path (0 when unreadable). */
static inline int cp_count_in_file(const char *path, const char *needle)
{
    char *t = p_slurp(path);
    int n = 0;
    for (char *p = t; (p = strstr(p, needle)); p++)
        n++;
    free(t);
    return n;
}

#endif
