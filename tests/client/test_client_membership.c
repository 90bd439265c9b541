/* Client and membership changes, against in-process fake nodes (fake_server.h): writes
 * fenced with DHPS_E_MOVED are re-routed to the holders of a newer map (acks of nodes
 * that stay holders count), bounded, and fail with DHPS_E_MOVED when no newer map can
 * be had. Maps are written by hand so every message can be counted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "dhps/client.h"
#include "fake_server.h"
#include "test_scale.h"

#define NNODES 4
#define DIM 8
#define NK 100

struct fx {
    struct fake_node nodes[NNODES];
    char dir[64], path[96];
    dhps_client *c;
    _Atomic uint64_t hook_version; /* on_moved hooks: the version they publish next */
    _Atomic int hook_calls;
    int hook_once;                 /* 1: publish only on the first call */
    const char *hook_shards;       /* placement the hook publishes */
    dhps_cluster_map *owner_map;   /* a fake's owner_map: freed after the fakes stop (a
                                      worker may read it until then) */
};

/* Write a map over the fakes to x->path (atomically: temp file and rename): node i =
 * id i, host h<i>; shards: the JSON array of replica arrays (nshards entries, R each);
 * joining: a JSON array or NULL. Returns 0 or -1 (printed); no cmocka assertion, so
 * server threads (on_moved hooks) may call it. */
static int write_map_rc(struct fx *x, uint64_t version, uint32_t nshards, uint32_t R,
                        const char *shards, const char *joining)
{
    static _Atomic int seq;
    char tmp[128], buf[4096];
    snprintf(tmp, sizeof tmp, "%s/map.%d.tmp", x->dir, atomic_fetch_add(&seq, 1));
    int len = snprintf(buf, sizeof buf, "{\"version\": %llu, \"nshards\": %u, \"replicas\": %u, "
                       "\"nodes\": [", (unsigned long long)version, nshards, R);
    for (int i = 0; i < NNODES; i++)
        len += snprintf(buf + len, sizeof buf - (size_t)len,
                        "%s{\"id\": %d, \"host\": \"h%d\", \"pod\": \"p0\", \"az\": \"az%d\", "
                        "\"addr\": \"127.0.0.1:%u\"}", i ? ", " : "", i, i, i % 2,
                        x->nodes[i].port);
    len += snprintf(buf + len, sizeof buf - (size_t)len, "], \"shards\": %s", shards);
    if (joining)
        len += snprintf(buf + len, sizeof buf - (size_t)len, ", \"joining\": %s", joining);
    snprintf(buf + len, sizeof buf - (size_t)len, "}\n");
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fputs(buf, f);
    if (fclose(f) != 0)
        return -1;
    dhps_cluster_map *m = NULL;
    char err[512] = "";
    int rc = dhps_cluster_map_load(tmp, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "bad test map: %s\n%s", err, buf);
        return -1;
    }
    dhps_cluster_map_destroy(m);
    return rename(tmp, x->path) == 0 ? 0 : -1;
}

static void write_map(struct fx *x, uint64_t version, uint32_t nshards, uint32_t R,
                      const char *shards, const char *joining)
{
    assert_int_equal(write_map_rc(x, version, nshards, R, shards, joining), 0);
}

static dhps_client *mkclient(struct fx *x, int router)
{
    dhps_client_params p;
    dhps_client_params_init(&p);
    p.connect_timeout_ms = dhps_test_ms(1000); /* not under test: scaled */
    p.map_path = x->path;
    p.secret = FAKE_SECRET;
    p.secret_len = strlen(FAKE_SECRET);
    p.router = router;
    p.reload_interval_ms = 0; /* the map is re-read only when a node says it is old */
    p.default_timeout_us = dhps_test_us(2000000);
    if (router == DHPS_CLIENT_ROUTER_ROUTE) {
        p.host = "hc"; /* no node's host; az0 = nodes 0 and 2 in its best tier */
        p.pod = "p0";
        p.az = "az0";
    }
    dhps_client *c = NULL;
    assert_int_equal(dhps_client_create(&p, &c), 0);
    return c;
}

static int setup(void **state)
{
    struct fx *x = calloc(1, sizeof *x);
    strcpy(x->dir, "/tmp/dhps_memb_XXXXXX");
    assert_non_null(mkdtemp(x->dir));
    snprintf(x->path, sizeof x->path, "%s/map.json", x->dir);
    for (uint32_t i = 0; i < NNODES; i++)
        assert_int_equal(fake_start(&x->nodes[i], i, 0), 0);
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    struct fx *x = *state;
    dhps_client_destroy(x->c);
    for (uint32_t i = 0; i < NNODES; i++)
        fake_free(&x->nodes[i]);
    dhps_cluster_map_destroy(x->owner_map);
    unlink(x->path);
    rmdir(x->dir);
    free(x);
    return 0;
}

static void row_of(uint64_t key, float *row)
{
    for (int d = 0; d < DIM; d++)
        row[d] = (float)((key % 1000) + d) * 0.25f;
}

/* Write keys first..first+n-1 with ack; returns the rc, res filled, failed mask checked
 * against rc (all set when rc != 0: every key here is in one shard, or all failed). */
static int put(dhps_client *c, uint64_t first, size_t n, int ack, dhps_client_result *res,
               uint64_t *failed)
{
    uint64_t keys[NK];
    float vals[NK * DIM];
    assert_true(n <= NK);
    for (size_t i = 0; i < n; i++) {
        keys[i] = first + i;
        row_of(keys[i], vals + i * DIM);
    }
    return dhps_client_update(c, "emb", keys, vals, n, DIM, DHPS_FP32, DHPS_CLIENT_TTL_DEFAULT,
                              ack, 0, failed, res);
}

static uint64_t upserts(struct fx *x, int i) { return atomic_load(&x->nodes[i].upserts); }

static void stats(struct fx *x, dhps_client_stats *st) { dhps_client_stats_get(x->c, st); }

/* Does node i hold keys first..first+n-1, all at version v (0: any)? Or none of them? */
static void holds(struct fx *x, int i, uint64_t first, size_t n, uint64_t v, bool want)
{
    for (size_t k = 0; k < n; k++) {
        uint64_t got = 0;
        bool has = fake_get(&x->nodes[i], first + k, &got, NULL);
        assert_int_equal(has, want);
        if (has && v)
            assert_int_equal(got, v);
    }
}

/* ---- DHPS_E_MOVED --------------------------------------------------------------------- */

/* One shard, R 2. Map 1 = {0, 1}; map 2 (on disk, not yet seen by the client) = {1, 2}.
 * Node 0 fences writes of maps before 2. The write is refused by node 0, acknowledged
 * by node 1; the client refreshes, finds map 2, and sends to node 2 only: node 1's
 * acknowledgement counts (still a holder), node 0 is no longer one. Then the same for a
 * delete with node 1 fencing and map 3 = {2, 3}. */
static void test_moved_reroute(void **state)
{
    struct fx *x = *state;
    write_map(x, 1, 1, 2, "[[0, 1]]", NULL);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    write_map(x, 2, 1, 2, "[[1, 2]]", NULL);
    atomic_store(&x->nodes[0].fence, 2);
    dhps_client_result res;
    uint64_t failed[2] = {~0ull, ~0ull};
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, failed), 0);
    assert_int_equal(failed[0] | failed[1], 0);
    assert_int_equal(res.found, NK);
    assert_int_equal(res.messages, 3);
    assert_int_equal(upserts(x, 0), 1);
    assert_int_equal(atomic_load(&x->nodes[0].moved_answers), 1);
    assert_int_equal(upserts(x, 1), 1); /* not re-sent: its ack under map 1 counted */
    assert_int_equal(upserts(x, 2), 1);
    assert_int_equal(upserts(x, 3), 0);
    holds(x, 0, 1, NK, 0, false);
    holds(x, 1, 1, NK, res.version, true);
    holds(x, 2, 1, NK, res.version, true);
    uint64_t v_put = res.version;
    dhps_client_stats st;
    stats(x, &st);
    assert_int_equal(st.moved, 1);
    assert_int_equal(st.map_refreshes, 1);
    assert_int_equal(st.update_shortfalls, 0);
    assert_int_equal(dhps_client_map_version(x->c), 2);
    dhps_client_node_stats ns;
    assert_int_equal(dhps_client_node_stats_get(x->c, 0, &ns), 0);
    assert_int_equal(ns.last_error, DHPS_E_MOVED);

    /* a delete: node 1 now fences map 2, map 3 = {2, 3} */
    write_map(x, 3, 1, 2, "[[2, 3]]", NULL);
    atomic_store(&x->nodes[1].fence, 3);
    uint64_t keys[NK];
    for (int i = 0; i < NK; i++)
        keys[i] = 1 + (uint64_t)i;
    assert_int_equal(dhps_client_delete(x->c, "emb", keys, NK, DHPS_ACK_ALL, 0, failed, &res), 0);
    assert_int_equal(atomic_load(&x->nodes[0].deletes), 0);
    assert_int_equal(atomic_load(&x->nodes[1].deletes), 1);
    assert_int_equal(atomic_load(&x->nodes[2].deletes), 1);
    assert_int_equal(atomic_load(&x->nodes[3].deletes), 1);
    holds(x, 2, 1, NK, res.version, true); /* the tombstone's version */
    holds(x, 1, 1, NK, v_put, true);       /* refused: still the write's version */
    stats(x, &st);
    assert_int_equal(st.moved, 2);
    assert_int_equal(st.map_refreshes, 2);
    assert_int_equal(dhps_client_map_version(x->c), 3);
}

/* No newer map: the chunk fails with DHPS_E_MOVED under ALL and QUORUM (R 2: both
 * needed), after one refresh each; ONE is satisfied by node 1 and refreshes nothing. */
static void test_moved_no_newer_map(void **state)
{
    struct fx *x = *state;
    write_map(x, 1, 1, 2, "[[0, 1]]", NULL);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    atomic_store(&x->nodes[0].fence, 5);
    int acks[2] = {DHPS_ACK_ALL, DHPS_ACK_QUORUM};
    dhps_client_result res;
    dhps_client_stats st;
    for (int a = 0; a < 2; a++) {
        uint64_t failed[2] = {0, 0};
        assert_int_equal(put(x->c, 1, NK, acks[a], &res, failed), DHPS_E_MOVED);
        assert_int_equal(failed[0], ~0ull);
        assert_int_equal(failed[1], (1ull << (NK - 64)) - 1);
        assert_int_equal(res.missing, NK);
        assert_int_equal(res.found, 0);
        /* node 1 took it all the same (the call may return before its answer) */
        assert_int_equal(dhps_client_drain(x->c, dhps_test_us(2000000)), 0);
        holds(x, 1, 1, NK, res.version, true);
        stats(x, &st);
        assert_int_equal(st.moved, 0);
        assert_int_equal(st.map_refreshes, (uint64_t)a + 1);
        assert_int_equal(st.update_shortfalls, (uint64_t)a + 1);
    }
    assert_int_equal(upserts(x, 0), 2); /* no re-send to a node that said MOVED */
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ONE, &res, NULL), 0);
    stats(x, &st);
    assert_int_equal(st.map_refreshes, 2);
    assert_int_equal(dhps_client_map_version(x->c), 1);
    /* an older map on disk does not count as newer either */
    write_map(x, 1, 1, 2, "[[1, 2]]", NULL);
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, NULL), DHPS_E_MOVED);
    assert_int_equal(upserts(x, 2), 0);
}

/* on_moved hook: publish map version hook_version (then +1) with placement hook_shards
 * (a failure shows as the client finding no newer map). */
static void publish_hook(struct fake_node *f, void *arg)
{
    (void)f;
    struct fx *x = arg;
    if (atomic_fetch_add(&x->hook_calls, 1) > 0 && x->hook_once)
        return;
    if (write_map_rc(x, atomic_fetch_add(&x->hook_version, 1), 1, 2, x->hook_shards, NULL))
        fprintf(stderr, "publish_hook: cannot write the map\n");
}

/* on_moved hook: rename a prepared map file over the client's, once. */
struct pub {
    struct fx *x;
    char from[128];
    _Atomic int done;
};

static void rename_hook(struct fake_node *f, void *arg)
{
    (void)f;
    struct pub *pb = arg;
    if (atomic_exchange(&pb->done, 1) == 0 && rename(pb->from, pb->x->path) != 0)
        fprintf(stderr, "rename_hook: %s\n", strerror(errno));
}

/* A node that refuses every map (its fence always ahead) while a newer map appears at
 * each refusal: the client follows at most CLIENT_MAX_REROUTES (3) of them, then fails
 * the chunk with DHPS_E_MOVED - well before the deadline. ONE is satisfied by node 1. */
static void test_moved_bounded(void **state)
{
    struct fx *x = *state;
    write_map(x, 1, 1, 2, "[[0, 1]]", NULL);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    x->hook_shards = "[[0, 1]]";
    atomic_store(&x->hook_version, 2);
    fake_on_moved(&x->nodes[0], publish_hook, x);
    atomic_store(&x->nodes[0].fence, UINT64_MAX);
    dhps_client_result res;
    uint64_t t0 = dhps_mono_ns();
    assert_int_equal(put(x->c, 1, 10, DHPS_ACK_ALL, &res, NULL), DHPS_E_MOVED);
    uint64_t took_ms = (dhps_mono_ns() - t0) / 1000000;
    print_message("  a write chasing a map that keeps moving: gave up after %llu ms\n",
                  (unsigned long long)took_ms);
    assert_true(took_ms < dhps_test_ms(2000)); /* did not run to the deadline */
    dhps_client_stats st;
    stats(x, &st);
    assert_int_equal(st.moved, 3);
    assert_int_equal(st.map_refreshes, 3);
    assert_int_equal(upserts(x, 0), 4); /* map 1, then once per re-route */
    assert_int_equal(upserts(x, 1), 1); /* its ack carried through the three maps */
    assert_int_equal(dhps_client_map_version(x->c), 4);
    assert_int_equal(res.missing, 10);
    fake_on_moved(&x->nodes[0], NULL, NULL);
}

/* The newer map is published at the moment node 0 refuses (not before the call), over
 * 64 shards and R 3 with every node fencing map 1: each of the write's chunks is
 * re-routed once, after a single refresh, and every key ends on exactly its holders
 * in map 2; lookups then read them back. */
static void test_moved_map_published_meanwhile(void **state)
{
    struct fx *x = *state;
    dhps_cluster_map *m1 = NULL, *m2 = NULL;
    assert_int_equal(fake_write_map(x->nodes, NNODES, 64, 3, 1, false, x->path, &m1), 0);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    char p2[128];
    snprintf(p2, sizeof p2, "%s/next.json", x->dir);
    assert_int_equal(fake_write_map(x->nodes, NNODES, 64, 3, 2, true, p2, &m2), 0);
    for (int i = 0; i < NNODES; i++)
        atomic_store(&x->nodes[i].fence, 2);
    /* publish = rename the prepared file over the map, at the first refusal */
    struct pub pb = {.x = x};
    strcpy(pb.from, p2);
    for (int i = 0; i < NNODES; i++) {
        fake_on_moved(&x->nodes[i], rename_hook, &pb);
    }
    enum { N = 2000 };
    static uint64_t keys[N];
    static float vals[N * DIM], out[N * DIM];
    bool shard_used[64] = {false};
    size_t nshards_used = 0;
    for (int i = 0; i < N; i++) {
        keys[i] = 1000 + (uint64_t)i;
        row_of(keys[i], vals + (size_t)i * DIM);
        uint32_t s = dhps_cluster_map_shard_of(m1, keys[i]);
        nshards_used += !shard_used[s];
        shard_used[s] = true;
    }
    dhps_client_result res;
    uint64_t failed[(N + 63) / 64];
    assert_int_equal(dhps_client_update(x->c, "emb", keys, vals, N, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_ALL, 0, failed, &res), 0);
    for (int i = 0; i < N; i++) {
        uint32_t s = dhps_cluster_map_shard_of(m2, keys[i]);
        for (int n = 0; n < NNODES; n++) {
            uint64_t v = 0;
            bool has = fake_get(&x->nodes[n], keys[i], &v, NULL);
            assert_int_equal(has, dhps_cluster_map_owns(m2, (uint32_t)n, s));
            if (has)
                assert_int_equal(v, res.version);
        }
    }
    dhps_client_stats st;
    stats(x, &st);
    assert_int_equal(st.map_refreshes, 1);
    assert_int_equal(st.moved, nshards_used);
    assert_int_equal(dhps_client_map_version(x->c), 2);
    uint64_t miss[(N + 63) / 64];
    assert_int_equal(dhps_client_lookup(x->c, "emb", keys, N, out, DIM, DHPS_FP32, miss, 0,
                                        &res), 0);
    assert_int_equal(res.found, N);
    assert_memory_equal(out, vals, sizeof vals);
    for (int i = 0; i < NNODES; i++)
        fake_on_moved(&x->nodes[i], NULL, NULL);
    dhps_cluster_map_destroy(m1);
    dhps_cluster_map_destroy(m2);
}

/* ---- joining nodes --------------------------------------------------------------------- */

/* Shard 0 of a one-shard map: node 2 joining to replace node 0 (since version v). */
static char *join2(uint64_t since)
{
    static char buf[128];
    snprintf(buf, sizeof buf, "[{\"shard\": 0, \"node\": 2, \"replaces\": 0, \"since\": %llu}]",
             (unsigned long long)since);
    return buf;
}

/* Wait (bounded) until node i holds keys first..first+n-1 at version v: a write the
 * client gave up on may still be applied by a slow node. */
static bool wait_holds(struct fx *x, int i, uint64_t first, size_t n, uint64_t v)
{
    uint64_t end = dhps_mono_ns() + dhps_test_us(5000000) * 1000ull;
    for (;;) {
        size_t ok = 0;
        for (size_t k = 0; k < n; k++) {
            uint64_t got = 0;
            ok += fake_get(&x->nodes[i], first + k, &got, NULL) && got == v;
        }
        if (ok == n)
            return true;
        if (dhps_mono_ns() > end)
            return false;
        usleep(2000);
    }
}

/* A write goes to the replicas and the joining node. ACK_ALL needs the joining node
 * (failing: DHPS_E_HANDLER after its re-sends; stalled: the deadline); QUORUM and ONE
 * count serving replicas only, so neither waits for it - it is still sent the write. */
static void test_joining_writes(void **state)
{
    struct fx *x = *state;
    write_map(x, 1, 1, 2, "[[0, 1]]", join2(1));
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    dhps_client_result res;
    uint64_t failed[2];
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, failed), 0);
    assert_int_equal(failed[0] | failed[1], 0);
    assert_int_equal(res.messages, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(upserts(x, i), 1);
        holds(x, i, 1, NK, res.version, true);
    }
    assert_int_equal(upserts(x, 3), 0);

    /* the joining node fails: ALL falls short, QUORUM and ONE do not */
    atomic_store(&x->nodes[2].fail, 1);
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, failed), DHPS_E_HANDLER);
    assert_int_equal(failed[0], ~0ull);
    assert_int_equal(res.missing, NK);
    assert_int_equal(upserts(x, 2), 1 + 3); /* max_attempts re-sends */
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_QUORUM, &res, failed), 0);
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ONE, &res, failed), 0);
    assert_int_equal(dhps_client_drain(x->c, dhps_test_us(2000000)), 0);
    assert_true(upserts(x, 2) >= 4 + 2); /* still sent the write */
    atomic_store(&x->nodes[2].fail, 0);

    /* the joining node does not answer: ALL ends at its deadline, QUORUM and ONE return
     * with the replicas (waiting for it would end at the deadline too) */
    atomic_store(&x->nodes[2].delay_ms, 600000);
    uint64_t keys[NK];
    float vals[NK * DIM];
    for (int i = 0; i < NK; i++) {
        keys[i] = 1 + (uint64_t)i;
        row_of(keys[i], vals + i * DIM);
    }
    assert_int_equal(dhps_client_update(x->c, "emb", keys, vals, NK, DIM, DHPS_FP32, 0,
                                        DHPS_ACK_ALL, dhps_test_us(300000), failed, &res),
                     DHPS_E_TIMEOUT);
    assert_int_equal(failed[0], ~0ull);
    int acks[2] = {DHPS_ACK_QUORUM, DHPS_ACK_ONE};
    for (int a = 0; a < 2; a++) {
        assert_int_equal(dhps_client_update(x->c, "emb", keys, vals, NK, DIM, DHPS_FP32, 0,
                                            acks[a], dhps_test_us(2000000), failed, &res), 0);
        assert_int_equal(failed[0] | failed[1], 0);
    }
    atomic_store(&x->nodes[2].delay_ms, 0);
    /* the stalled node got the writes all the same (the last one's version wins) */
    assert_true(wait_holds(x, 2, 1, NK, res.version));
    assert_int_equal(dhps_client_drain(x->c, dhps_test_us(5000000)), 0);
    dhps_client_stats st;
    stats(x, &st);
    assert_int_equal(st.moved, 0);
    assert_int_equal(st.map_refreshes, 0);
}

/* Joining nodes on some shards only, two on shard 0 (both its replicas being replaced),
 * none on shard 2: each key lands on exactly its shard's replicas and joining nodes. */
static void test_joining_some_shards(void **state)
{
    struct fx *x = *state;
    write_map(x, 1, 4, 2, "[[0, 1], [1, 2], [2, 3], [3, 0]]",
              "[{\"shard\": 0, \"node\": 2, \"replaces\": 0, \"since\": 1},"
              " {\"shard\": 0, \"node\": 3, \"replaces\": 1, \"since\": 1},"
              " {\"shard\": 1, \"node\": 3, \"replaces\": 1, \"since\": 1},"
              " {\"shard\": 3, \"node\": 1, \"replaces\": 0, \"since\": 1}]");
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    dhps_cluster_map *m = NULL;
    assert_int_equal(dhps_cluster_map_load(x->path, &m, NULL, 0), 0);
    dhps_client_result res;
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, NULL), 0);
    for (uint64_t k = 1; k <= NK; k++) {
        uint32_t s = dhps_cluster_map_shard_of(m, k);
        for (uint32_t i = 0; i < NNODES; i++)
            assert_int_equal(fake_get(&x->nodes[i], k, NULL, NULL),
                             dhps_cluster_map_holds(m, i, s));
    }
    dhps_cluster_map_destroy(m);
}

/* A joining node that has not applied the map adding it yet answers "not owned": the
 * write is re-sent to it (a few ms apart, up to max_attempts), with no map refresh - it
 * is the node's map that is behind, not the client's. */
static void test_joining_not_applied_yet(void **state)
{
    struct fx *x = *state;
    write_map(x, 1, 1, 2, "[[0, 1]]", join2(1));
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    atomic_store(&x->nodes[2].not_owned_writes, 2);
    dhps_client_result res;
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, NULL), 0);
    assert_int_equal(res.retries, 2);
    assert_int_equal(upserts(x, 2), 3);
    holds(x, 2, 1, NK, res.version, true);
    /* it never catches up: ALL fails "not owned" after max_attempts (3) */
    atomic_store(&x->nodes[2].not_owned_writes, 100);
    uint64_t failed[2];
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, failed), DHPS_E_NOTFOUND);
    assert_int_equal(failed[0], ~0ull);
    assert_int_equal(upserts(x, 2), 3 + 3);
    dhps_client_stats st;
    stats(x, &st);
    assert_int_equal(st.moved, 0);
    assert_int_equal(st.map_refreshes, 0);
    assert_int_equal(st.not_owned, 2 + 3);
    atomic_store(&x->nodes[2].not_owned_writes, 0);
}

/* Lookups never go to a joining node: not first, not as a retry when a replica fails,
 * not as a hedge when one is slow, not when every replica fails (the keys are then
 * unanswered, though the joining node holds them). Both routers. */
static void test_joining_no_lookups(void **state)
{
    struct fx *x = *state;
    int routers[2] = {DHPS_CLIENT_ROUTER_FIRST_HEALTHY, DHPS_CLIENT_ROUTER_ROUTE};
    write_map(x, 1, 1, 2, "[[0, 1]]", join2(1));
    uint64_t keys[NK];
    float want[NK * DIM], out[NK * DIM];
    for (int i = 0; i < NK; i++) {
        keys[i] = 1 + (uint64_t)i;
        row_of(keys[i], want + i * DIM);
    }
    for (int r = 0; r < 2; r++) {
        dhps_client_destroy(x->c);
        x->c = mkclient(x, routers[r]);
        dhps_client_result res;
        assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, NULL), 0);
        uint32_t hedges = 0;
        for (int round = 0; round < 60; round++) {
            int phase = round / 20; /* 0: healthy, 1: node 0 slow, 2: node 0 failing */
            atomic_store(&x->nodes[0].delay_ms, phase == 1 ? 20 : 0);
            atomic_store(&x->nodes[0].fail, phase == 2);
            assert_int_equal(dhps_client_lookup(x->c, "emb", keys, NK, out, DIM, DHPS_FP32,
                                                NULL, dhps_test_us(2000000), &res), 0);
            assert_int_equal(res.found, NK);
            assert_memory_equal(out, want, sizeof want);
            hedges += res.hedges;
        }
        if (routers[r] == DHPS_CLIENT_ROUTER_ROUTE)
            assert_true(hedges > 0); /* the slow phase hedged, to node 1 */
        atomic_store(&x->nodes[1].fail, 1);
        for (int round = 0; round < 5; round++) {
            int rc = dhps_client_lookup(x->c, "emb", keys, NK, out, DIM, DHPS_FP32, NULL,
                                        dhps_test_us(300000), &res);
            assert_true(rc == DHPS_E_HANDLER || rc == DHPS_E_UNREACHABLE);
            assert_int_equal(res.unanswered, NK);
        }
        atomic_store(&x->nodes[0].fail, 0);
        atomic_store(&x->nodes[1].fail, 0);
        assert_int_equal(dhps_client_drain(x->c, dhps_test_us(2000000)), 0);
        assert_int_equal(atomic_load(&x->nodes[2].lookups), 0);
        dhps_client_node_stats ns;
        assert_int_equal(dhps_client_node_stats_get(x->c, 2, &ns), 0);
        assert_int_equal(ns.messages, 1); /* the write */
        assert_true(atomic_load(&x->nodes[0].lookups) + atomic_load(&x->nodes[1].lookups) > 60);
    }
}

/* A move starts (map 2 adds node 2 joining for node 0) while the client has map 1; node
 * 0 already follows map 2 and fences map-1 writes; node 1 does not yet. The write is
 * re-routed: node 0 again with map 2, node 2 new, node 1's ack carried. Then the flip
 * (map 3: node 2 in node 0's place, node 0 holds nothing): a client still on map 2 is
 * refused "not owned" by node 0 and re-routes - the other two already acknowledged, so
 * nothing more is sent. */
static void test_joining_move(void **state)
{
    struct fx *x = *state;
    write_map(x, 1, 1, 2, "[[0, 1]]", NULL);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    write_map(x, 2, 1, 2, "[[0, 1]]", join2(2));
    atomic_store(&x->nodes[0].fence, 2);
    dhps_client_result res;
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, NULL), 0);
    assert_int_equal(upserts(x, 0), 2);
    assert_int_equal(upserts(x, 1), 1);
    assert_int_equal(upserts(x, 2), 1);
    for (int i = 0; i < 3; i++)
        holds(x, i, 1, NK, res.version, true);
    uint64_t v_first = res.version;
    dhps_client_stats st;
    stats(x, &st);
    assert_int_equal(st.moved, 1);
    assert_int_equal(dhps_client_map_version(x->c), 2);

    /* the flip: node 0 refuses the shard it no longer holds */
    write_map(x, 3, 1, 2, "[[2, 1]]", NULL);
    assert_int_equal(dhps_cluster_map_load(x->path, &x->owner_map, NULL, 0), 0);
    atomic_store(&x->nodes[0].owner_map, x->owner_map);
    assert_int_equal(put(x->c, 1, NK, DHPS_ACK_ALL, &res, NULL), 0);
    assert_int_equal(dhps_client_drain(x->c, dhps_test_us(2000000)), 0);
    assert_int_equal(upserts(x, 0), 3);
    assert_int_equal(upserts(x, 1), 2);
    assert_int_equal(upserts(x, 2), 2);
    holds(x, 0, 1, NK, v_first, true); /* refused: the first write's rows */
    holds(x, 1, 1, NK, res.version, true);
    holds(x, 2, 1, NK, res.version, true);
    stats(x, &st);
    assert_int_equal(st.moved, 2);
    assert_true(st.not_owned > 0);
    assert_int_equal(dhps_client_map_version(x->c), 3);
}

/* ---- threads ------------------------------------------------------------------------- */

#define NTHR 4
#define TKEYS 64

struct writer {
    struct fx *x;
    int id;
    _Atomic int *stop;
    int bad_rc;                 /* first return code other than 0 */
    unsigned calls;
    uint64_t last_version;      /* of the final write, made after the last map change */
};

static void thr_put(struct writer *w, dhps_client_result *res, int *rc)
{
    uint64_t keys[TKEYS];
    float vals[TKEYS * DIM];
    for (int i = 0; i < TKEYS; i++) {
        keys[i] = (uint64_t)(w->id + 1) * 100000 + (uint64_t)i;
        row_of(keys[i], vals + i * DIM);
    }
    *rc = dhps_client_update(w->x->c, "emb", keys, vals, TKEYS, DIM, DHPS_FP32, 0,
                             DHPS_ACK_ALL, 0, NULL, res);
    if (*rc && !w->bad_rc)
        w->bad_rc = *rc;
    w->calls++;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    dhps_client_result res;
    int rc;
    while (!atomic_load(w->stop))
        thr_put(w, &res, &rc);
    return NULL;
}

/* 16 shards, R 2, placement rotated by v; odd versions move shard 0 (a joining node). */
static void rotate_map(struct fx *x, uint64_t v)
{
    char shards[512], join[128];
    int len = snprintf(shards, sizeof shards, "[");
    for (int s = 0; s < 16; s++)
        len += snprintf(shards + len, sizeof shards - (size_t)len, "%s[%d, %d]", s ? ", " : "",
                        (int)((s + v) % 4), (int)((s + v + 1) % 4));
    snprintf(shards + len, sizeof shards - (size_t)len, "]");
    snprintf(join, sizeof join, "[{\"shard\": 0, \"node\": %d, \"replaces\": %d, \"since\": %llu}]",
             (int)((v + 2) % 4), (int)(v % 4), (unsigned long long)v);
    write_map(x, v, 16, 2, shards, v % 2 ? join : NULL);
}

/* Four threads write through one client (ACK_ALL) while the map changes every 30 ms
 * (scaled: test_scale.h; a write spanning 4 changes would rightly give up, after 3
 * re-routes) and every node then fences the older maps: refusals, refreshes (several
 * threads at once: one waits for the other's) and re-routes on every thread, map pins
 * outliving installs. Every write succeeds; a final write per thread lands on exactly
 * its holders in the last map. */
static void test_moved_threads(void **state)
{
    struct fx *x = *state;
    rotate_map(x, 1);
    x->c = mkclient(x, DHPS_CLIENT_ROUTER_FIRST_HEALTHY);
    _Atomic int stop = 0;
    struct writer w[NTHR];
    pthread_t th[NTHR];
    for (int i = 0; i < NTHR; i++) {
        w[i] = (struct writer){.x = x, .id = i, .stop = &stop};
        assert_int_equal(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
    }
    uint64_t last = 8, period_us = dhps_test_us(30000);
    for (uint64_t v = 2; v <= last; v++) {
        usleep((useconds_t)period_us);
        rotate_map(x, v);
        for (int i = 0; i < NNODES; i++)
            atomic_store(&x->nodes[i].fence, v);
    }
    usleep((useconds_t)period_us);
    atomic_store(&stop, 1);
    unsigned calls = 0;
    for (int i = 0; i < NTHR; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        if (w[i].bad_rc)
            fprintf(stderr, "writer %d: rc %d (%s)\n", i, w[i].bad_rc, dhps_strerror(w[i].bad_rc));
        assert_int_equal(w[i].bad_rc, 0);
        calls += w[i].calls;
        dhps_client_result res;
        int rc;
        thr_put(&w[i], &res, &rc);
        assert_int_equal(rc, 0);
        w[i].last_version = res.version;
    }
    dhps_client_stats st;
    stats(x, &st);
    print_message("  %u writes over %llu map changes: %llu chunks re-routed, %llu refreshes\n",
                  calls, (unsigned long long)(last - 1), (unsigned long long)st.moved,
                  (unsigned long long)st.map_refreshes);
    assert_int_equal(dhps_client_map_version(x->c), last);
    assert_true(st.moved > 0);
    dhps_cluster_map *m = NULL;
    assert_int_equal(dhps_cluster_map_load(x->path, &m, NULL, 0), 0);
    for (int i = 0; i < NTHR; i++)
        for (int k = 0; k < TKEYS; k++) {
            uint64_t key = (uint64_t)(i + 1) * 100000 + (uint64_t)k, v = 0;
            uint32_t s = dhps_cluster_map_shard_of(m, key);
            for (uint32_t n = 0; n < NNODES; n++)
                if (dhps_cluster_map_holds(m, n, s)) {
                    assert_true(fake_get(&x->nodes[n], key, &v, NULL));
                    assert_int_equal(v, w[i].last_version);
                }
        }
    dhps_cluster_map_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_moved_reroute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_moved_no_newer_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_moved_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_moved_map_published_meanwhile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joining_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joining_some_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joining_not_applied_yet, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joining_no_lookups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_joining_move, setup, teardown),
        cmocka_unit_test_setup_teardown(test_moved_threads, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
