/*
 * An in-process fake dhps node for client tests: an rpc server (rpc.h) answering LOOKUP
 * and UPSERT (proto.h) from a small hash map, with knobs to delay, fail, refuse shards it
 * does not own ("not owned" = DHPS_E_NOTFOUND), play a replica that is recovering or
 * catching up (lookups answered DHPS_E_NOTREADY, writes applied), fence writes routed
 * with an old map (DHPS_E_MOVED, as a server following the etcd map does), or disappear.
 * Header-only; tests include it once.
 */
#ifndef DHPS_TEST_FAKE_SERVER_H
#define DHPS_TEST_FAKE_SERVER_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dhps/cluster.h"
#include "dhps/proto.h"
#include "dhps/rpc.h"
#include "util.h"
#include "test_scale.h"

#define FAKE_SECRET "client-test-secret"
#define FAKE_SLOTS 65536u /* power of two; tests keep well below */
#define FAKE_MAXDIM 64u

struct fake_entry {
    uint64_t key;      /* 0 = empty: tests never use key 0 in fakes */
    uint64_t version;
    uint32_t dim;
    float row[FAKE_MAXDIM];
};

struct fake_node;
typedef void (*fake_moved_fn)(struct fake_node *f, void *arg);

struct fake_node {
    dhps_rpc_server *srv;
    uint32_t id;
    uint16_t port;
    pthread_mutex_t lock;
    struct fake_entry *tab;
    _Atomic int delay_ms;       /* handlers sleep while delay_ms > 0, up to that long */
    _Atomic int sleeping;       /* handlers in that sleep now */
    _Atomic int fail;           /* answer with status DHPS_E_HANDLER */
    _Atomic int fail_next;      /* answer the next N requests with DHPS_E_HANDLER */
    _Atomic(const dhps_cluster_map *) owner_map; /* if set: refuse shards not owned
                                                   (writes: not held, joining counts) */
    _Atomic int not_ready;      /* lookups answered DHPS_E_NOTREADY; writes still applied */
    _Atomic int not_ready_writes; /* answer the next N writes DHPS_E_NOTREADY (a server
                                     should not; the client must cope if one does) */
    _Atomic int not_owned_writes; /* answer the next N writes DHPS_E_NOTFOUND (a node
                                     that has not applied the map adding it yet) */
    _Atomic uint64_t fence;     /* writes whose hdr.map_version is non-zero and below
                                   it are answered DHPS_E_MOVED (docs/server.md) */
    /* called (in a server thread) just before a write is answered DHPS_E_MOVED: a test
     * publishes a newer map there, so it exists by the time the client asks */
    _Atomic(fake_moved_fn) on_moved; /* set with fake_on_moved */
    void *_Atomic on_moved_arg;
    _Atomic uint64_t lookups, upserts, deletes, keys, not_ready_answers, moved_answers;
};

static uint64_t fake_now_ms(void) { return dhps_mono_ns() / 1000000; }

static struct fake_entry *fake_slot(struct fake_node *f, uint64_t key, bool create)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    for (uint32_t i = 0; i < FAKE_SLOTS; i++) {
        struct fake_entry *e = &f->tab[(h + i) & (FAKE_SLOTS - 1)];
        if (e->key == key)
            return e;
        if (e->key == 0) {
            if (!create)
                return NULL;
            e->key = key;
            return e;
        }
    }
    return NULL;
}

static uint16_t fake_f2h(float v) /* exact for the small values tests use */
{
    uint32_t f;
    memcpy(&f, &v, 4);
    if ((f & 0x7fffffff) == 0)
        return (uint16_t)((f >> 16) & 0x8000);
    uint32_t sign = (f >> 16) & 0x8000, exp = ((f >> 23) & 0xff) - 127 + 15;
    return (uint16_t)(sign | (exp << 10) | ((f & 0x7fffff) >> 13));
}

/* Common prologue: delays, failures, ownership. Returns 1 when the answer is set. */
/* Sets (fn, arg) or clears (NULL, NULL) the DHPS_E_MOVED hook while the node serves:
 * the argument is stored before the function, so a server thread that sees fn sees arg. */
static inline void fake_on_moved(struct fake_node *f, fake_moved_fn fn, void *arg)
{
    if (fn)
        atomic_store(&f->on_moved_arg, arg);
    atomic_store(&f->on_moved, fn);
}

static int fake_prologue(struct fake_node *f, dhps_rpc_request *r, const dhps_proto_hdr *h)
{
    uint64_t t0 = fake_now_ms();
    atomic_fetch_add(&f->sleeping, 1);
    while (atomic_load(&f->delay_ms) > 0 && fake_now_ms() - t0 < (uint64_t)atomic_load(&f->delay_ms))
        usleep(1000);
    atomic_fetch_sub(&f->sleeping, 1);
    dhps_proto_resp *resp = r->resp;
    memset(resp, 0, sizeof *resp);
    r->resp_len = sizeof *resp;
    const dhps_cluster_map *om = atomic_load(&f->owner_map);
    int fn = atomic_load(&f->fail_next);
    while (fn > 0 && !atomic_compare_exchange_weak(&f->fail_next, &fn, fn - 1))
        ;
    if (atomic_load(&f->fail) || fn > 0) {
        resp->status = DHPS_E_HANDLER;
        return 1;
    }
    if (r->method != DHPS_M_LOOKUP) {
        int nw = atomic_load(&f->not_ready_writes);
        while (nw > 0 && !atomic_compare_exchange_weak(&f->not_ready_writes, &nw, nw - 1))
            ;
        if (nw > 0) {
            resp->status = DHPS_E_NOTREADY;
            atomic_fetch_add(&f->not_ready_answers, 1);
            return 1;
        }
        int no = atomic_load(&f->not_owned_writes);
        while (no > 0 && !atomic_compare_exchange_weak(&f->not_owned_writes, &no, no - 1))
            ;
        if (no > 0) {
            resp->status = DHPS_E_NOTFOUND;
            return 1;
        }
    }
    /* a joining node takes the shard's writes, not its lookups */
    if (om && !(r->method == DHPS_M_LOOKUP ? dhps_cluster_map_owns(om, f->id, h->shard)
                                           : dhps_cluster_map_holds(om, f->id, h->shard))) {
        resp->status = DHPS_E_NOTFOUND;
        return 1;
    }
    uint64_t fence = atomic_load(&f->fence);
    if (r->method != DHPS_M_LOOKUP && h->map_version && h->map_version < fence) {
        fake_moved_fn hook = atomic_load(&f->on_moved);
        if (hook)
            hook(f, atomic_load(&f->on_moved_arg));
        atomic_fetch_add(&f->moved_answers, 1);
        resp->status = DHPS_E_MOVED;
        return 1;
    }
    return 0;
}

static int fake_lookup(void *arg, dhps_rpc_request *r)
{
    struct fake_node *f = arg;
    const uint8_t *b = r->req;
    if (r->req_len < sizeof(dhps_proto_hdr) + sizeof(dhps_proto_lookup))
        return -1;
    const dhps_proto_hdr *h = r->req;
    dhps_proto_lookup lk;
    memcpy(&lk, b + sizeof *h, sizeof lk);
    if (r->req_len < sizeof *h + sizeof lk + 8ull * lk.n)
        return -1;
    atomic_fetch_add(&f->lookups, 1);
    if (fake_prologue(f, r, h))
        return 0;
    if (atomic_load(&f->not_ready)) { /* catching up: holds writes, serves no lookups */
        ((dhps_proto_resp *)r->resp)->status = DHPS_E_NOTREADY;
        atomic_fetch_add(&f->not_ready_answers, 1);
        return 0;
    }
    const uint8_t *kp = b + sizeof *h + sizeof lk;
    bool fp16 = h->flags & DHPS_LOOKUP_FP16;
    pthread_mutex_lock(&f->lock);
    uint32_t dim = 0;
    for (uint32_t i = 0; i < lk.n && !dim; i++) {
        uint64_t k;
        memcpy(&k, kp + 8 * i, 8);
        struct fake_entry *e = fake_slot(f, k, false);
        if (e)
            dim = e->dim;
    }
    if (!dim)
        dim = 8; /* tests use dim 8 when nothing is found */
    uint32_t vb = dim * (fp16 ? 2 : 4);
    size_t words = (lk.n + 63) / 64;
    size_t need = sizeof(dhps_proto_resp) + words * 8 + (size_t)lk.n * vb;
    if (need > r->resp_cap) {
        pthread_mutex_unlock(&f->lock);
        return -1;
    }
    dhps_proto_resp *resp = r->resp;
    uint8_t *mask = (uint8_t *)r->resp + sizeof *resp, *rows = mask + words * 8;
    memset(mask, 0, words * 8 + (size_t)lk.n * vb);
    uint32_t found = 0;
    for (uint32_t i = 0; i < lk.n; i++) {
        uint64_t k;
        memcpy(&k, kp + 8 * i, 8);
        struct fake_entry *e = fake_slot(f, k, false);
        if (!e || e->dim != dim)
            continue;
        found++;
        mask[i / 8] |= (uint8_t)(1u << (i % 8));
        for (uint32_t d = 0; d < dim; d++) {
            if (fp16) {
                uint16_t hv = fake_f2h(e->row[d]);
                memcpy(rows + (size_t)i * vb + 2 * d, &hv, 2);
            } else {
                memcpy(rows + (size_t)i * vb + 4 * d, &e->row[d], 4);
            }
        }
    }
    pthread_mutex_unlock(&f->lock);
    resp->status = 0;
    resp->n = lk.n;
    resp->value_bytes = vb;
    resp->count = found;
    r->resp_len = need;
    return 0;
}

static int fake_upsert(void *arg, dhps_rpc_request *r)
{
    struct fake_node *f = arg;
    const uint8_t *b = r->req;
    if (r->req_len < sizeof(dhps_proto_hdr) + sizeof(dhps_proto_upsert))
        return -1;
    const dhps_proto_hdr *h = r->req;
    dhps_proto_upsert up;
    memcpy(&up, b + sizeof *h, sizeof up);
    if (r->req_len < sizeof *h + sizeof up + (8ull + up.value_bytes) * up.n ||
        h->flags != DHPS_FP32 || up.value_bytes % 4 || up.value_bytes / 4 > FAKE_MAXDIM)
        return -1;
    atomic_fetch_add(&f->upserts, 1);
    if (fake_prologue(f, r, h))
        return 0;
    const uint8_t *kp = b + sizeof *h + sizeof up, *vp = kp + 8ull * up.n;
    size_t words = (up.n + 63) / 64;
    if (sizeof(dhps_proto_resp) + words * 8 > r->resp_cap)
        return -1;
    dhps_proto_resp *resp = r->resp;
    uint8_t *mask = (uint8_t *)r->resp + sizeof *resp;
    memset(mask, 0, words * 8);
    uint32_t applied = 0;
    pthread_mutex_lock(&f->lock);
    for (uint32_t i = 0; i < up.n; i++) {
        uint64_t k;
        memcpy(&k, kp + 8 * i, 8);
        struct fake_entry *e = fake_slot(f, k, true);
        if (!e)
            continue;
        if (e->version > up.version) {
            mask[i / 8] |= (uint8_t)(1u << (i % 8));
            continue;
        }
        e->version = up.version;
        e->dim = up.value_bytes / 4;
        memcpy(e->row, vp + (size_t)i * up.value_bytes, up.value_bytes);
        applied++;
    }
    pthread_mutex_unlock(&f->lock);
    atomic_fetch_add(&f->keys, up.n);
    resp->n = up.n;
    resp->count = applied;
    r->resp_len = sizeof *resp + words * 8;
    return 0;
}

static int fake_delete(void *arg, dhps_rpc_request *r)
{
    struct fake_node *f = arg;
    const uint8_t *b = r->req;
    if (r->req_len < sizeof(dhps_proto_hdr) + sizeof(dhps_proto_delete))
        return -1;
    const dhps_proto_hdr *h = r->req;
    dhps_proto_delete dl;
    memcpy(&dl, b + sizeof *h, sizeof dl);
    if (r->req_len < sizeof *h + sizeof dl + 8ull * dl.n)
        return -1;
    atomic_fetch_add(&f->deletes, 1);
    if (fake_prologue(f, r, h))
        return 0;
    const uint8_t *kp = b + sizeof *h + sizeof dl;
    size_t words = (dl.n + 63) / 64;
    if (sizeof(dhps_proto_resp) + words * 8 > r->resp_cap)
        return -1;
    dhps_proto_resp *resp = r->resp;
    uint8_t *mask = (uint8_t *)r->resp + sizeof *resp;
    memset(mask, 0, words * 8);
    uint32_t deleted = 0;
    pthread_mutex_lock(&f->lock);
    for (uint32_t i = 0; i < dl.n; i++) {
        uint64_t k;
        memcpy(&k, kp + 8 * i, 8);
        struct fake_entry *e = fake_slot(f, k, false);
        if (!e || e->version > dl.version)
            continue;
        e->dim = 0; /* a tombstone: lookups skip rows whose dim differs */
        e->version = dl.version;
        mask[i / 8] |= (uint8_t)(1u << (i % 8));
        deleted++;
    }
    pthread_mutex_unlock(&f->lock);
    resp->n = dl.n;
    resp->count = deleted;
    r->resp_len = sizeof *resp + words * 8;
    return 0;
}

static int fake_start(struct fake_node *f, uint32_t id, uint16_t port)
{
    memset(f, 0, sizeof *f);
    f->id = id;
    pthread_mutex_init(&f->lock, NULL);
    f->tab = calloc(FAKE_SLOTS, sizeof *f->tab);
    dhps_rpc_server_params p;
    dhps_rpc_server_params_init(&p);
    p.port = port;
    p.workers = 2;
    p.hello_timeout_ms = dhps_test_ms(2000); /* not under test: scaled */
    p.secret = FAKE_SECRET;
    p.secret_len = strlen(FAKE_SECRET);
    int rc = dhps_rpc_server_create(&p, &f->srv);
    if (rc)
        return rc;
    dhps_rpc_server_register(f->srv, DHPS_M_LOOKUP, fake_lookup, f);
    dhps_rpc_server_register(f->srv, DHPS_M_UPSERT, fake_upsert, f);
    dhps_rpc_server_register(f->srv, DHPS_M_DELETE, fake_delete, f);
    f->port = dhps_rpc_server_port(f->srv);
    return dhps_rpc_server_start(f->srv);
}

/* Stop serving (connections close); the store is kept for inspection. */
static void fake_stop(struct fake_node *f)
{
    dhps_rpc_server_destroy(f->srv);
    f->srv = NULL;
}

static void fake_free(struct fake_node *f)
{
    fake_stop(f);
    free(f->tab);
    pthread_mutex_destroy(&f->lock);
}

/* Does f hold key with this version (0 = any)? Copies the row when row != NULL. */
__attribute__((unused)) static bool fake_get(struct fake_node *f, uint64_t key, uint64_t *version, float *row)
{
    pthread_mutex_lock(&f->lock);
    struct fake_entry *e = fake_slot(f, key, false);
    if (e) {
        if (version)
            *version = e->version;
        if (row)
            memcpy(row, e->row, e->dim * sizeof(float));
    }
    pthread_mutex_unlock(&f->lock);
    return e != NULL;
}

/* Write a map over the fakes (node i = id i, host h<i>, az az<i%2>) to path. */
__attribute__((unused)) static int fake_write_map(struct fake_node *f, size_t n,
                                                  uint32_t nshards, uint32_t replicas,
                                                  uint64_t version, bool reversed,
                                                  const char *path, dhps_cluster_map **out)
{
    dhps_cluster_node *nodes = calloc(n, sizeof *nodes);
    for (size_t i = 0; i < n; i++) {
        size_t j = reversed ? n - 1 - i : i;
        nodes[i].id = f[j].id;
        snprintf(nodes[i].host, sizeof nodes[i].host, "h%u", f[j].id);
        snprintf(nodes[i].pod, sizeof nodes[i].pod, "p0");
        snprintf(nodes[i].az, sizeof nodes[i].az, "az%u", f[j].id % 2);
        snprintf(nodes[i].addr, sizeof nodes[i].addr, "127.0.0.1:%u", f[j].port);
    }
    dhps_cluster_gen_params gp;
    dhps_cluster_gen_params_init(&gp);
    gp.nshards = nshards;
    gp.replicas = replicas;
    gp.version = version;
    dhps_cluster_map *m = NULL;
    int rc = dhps_cluster_map_generate(&gp, nodes, n, &m, NULL, 0);
    free(nodes);
    if (rc)
        return rc;
    rc = dhps_cluster_map_write(m, path);
    if (out)
        *out = m;
    else
        dhps_cluster_map_destroy(m);
    return rc;
}

#endif
