/* Tombstones of one store: see tomb.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tomb.h"

static size_t slot_of(uint64_t key, size_t cap)
{
    uint64_t z = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(z ^ (z >> 29)) & (cap - 1);
}

/* Move the entries written at or after cutoff_s into a table of cap slots. On -ENOMEM
 * t is unchanged. */
static int rehash(srv_tomb *t, size_t cap, uint32_t cutoff_s)
{
    srv_tomb n = {.cap = cap};
    n.keys = malloc(cap * sizeof *n.keys);
    n.vers = malloc(cap * sizeof *n.vers);
    n.at_s = calloc(cap, sizeof *n.at_s);
    if (!n.keys || !n.vers || !n.at_s) {
        srv_tomb_free(&n);
        return -ENOMEM;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->at_s[i] || t->at_s[i] < cutoff_s)
            continue;
        size_t j = slot_of(t->keys[i], cap);
        while (n.at_s[j])
            j = (j + 1) & (cap - 1);
        n.keys[j] = t->keys[i];
        n.vers[j] = t->vers[i];
        n.at_s[j] = t->at_s[i];
        n.n++;
    }
    srv_tomb_free(t);
    *t = n;
    return 0;
}

int srv_tomb_put(srv_tomb *t, uint64_t key, uint64_t version, uint32_t now_s)
{
    if (!now_s)
        now_s = 1;
    if ((t->n + 1) * 4 > t->cap * 3) { /* keep the fill under 3/4 */
        int rc = rehash(t, t->cap ? t->cap * 2 : 64, 0);
        if (rc)
            return rc;
    }
    size_t j = slot_of(key, t->cap);
    while (t->at_s[j] && t->keys[j] != key)
        j = (j + 1) & (t->cap - 1);
    if (t->at_s[j]) {
        if (version > t->vers[j])
            t->vers[j] = version;
        t->at_s[j] = now_s;
        return 0;
    }
    t->keys[j] = key;
    t->vers[j] = version;
    t->at_s[j] = now_s;
    t->n++;
    return 0;
}

bool srv_tomb_get(const srv_tomb *t, uint64_t key, uint64_t *version)
{
    if (!t->n)
        return false;
    size_t j = slot_of(key, t->cap);
    while (t->at_s[j]) {
        if (t->keys[j] == key) {
            *version = t->vers[j];
            return true;
        }
        j = (j + 1) & (t->cap - 1);
    }
    return false;
}

size_t srv_tomb_expire(srv_tomb *t, uint32_t cutoff_s)
{
    size_t old = 0;
    for (size_t i = 0; i < t->cap; i++)
        old += t->at_s[i] && t->at_s[i] < cutoff_s;
    if (!old)
        return 0;
    size_t cap = t->cap; /* shrink when mostly empty */
    while (cap > 64 && (t->n - old) * 8 < cap)
        cap /= 2;
    size_t before = t->n;
    if (rehash(t, cap, cutoff_s)) /* out of memory: keep them until the next pass */
        return 0;
    return before - t->n;
}

void srv_tomb_each(const srv_tomb *t, void (*fn)(void *arg, uint64_t key, uint64_t version),
                   void *arg)
{
    for (size_t i = 0; i < t->cap; i++)
        if (t->at_s[i])
            fn(arg, t->keys[i], t->vers[i]);
}

void srv_tomb_free(srv_tomb *t)
{
    free(t->keys);
    free(t->vers);
    free(t->at_s);
    memset(t, 0, sizeof *t);
}
