/*
 * dhps chaos, second half: what is checked once the load has stopped, and the report
 * (see chaos.h). Every check reads the servers as they are at the end; nothing here
 * writes.
 */
#include "chaos.h"

#include <stdlib.h>
#include <string.h>

#include "dhps/client.h"
#include "dhps/cluster.h"
#include "dhps/error.h"
#include "dhps/proto.h"
#include "dhps/rpc.h"
#include "tools.h"
#include "toolsclient.h"
#include "up.h"

#define DIGEST_RANGES 256u

const char *const chaos_phase_name[5] = {"steady", "killed", "restarting", "stopped",
                                         "slowed"};
const char *const chaos_ack_name[3] = {"all", "quorum", "one"};

uint64_t chaos_metrics_sum(const struct ch_node *nd, uint32_t n, const char *name,
                           uint64_t *per_node)
{
    size_t cap = 1u << 20;
    char *buf = malloc(cap);
    uint64_t sum = 0;
    size_t l = strlen(name);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t v = 0;
        if (buf && nd[i].mport && up_http_get(nd[i].mport, "/metrics", buf, cap) > 0)
            for (char *p = strstr(buf, name); p; p = strstr(p + 1, name))
                if ((p == buf || p[-1] == '\n') && p[l] == ' ')
                    v += (uint64_t)strtod(p + l + 1, NULL);
        sum += v;
        if (per_node)
            per_node[i] = v;
    }
    free(buf);
    return sum;
}

#define M_AE "dhps_sync_antientropy_passes_total"

void chaos_settle(struct chaos *C, struct chaos_check *K)
{
    uint64_t t0 = dhps_mono_ns();
    uint64_t ready_by = t0 + (uint64_t)(C->ready_timeout * 1e9);
    bool ready = false;
    while (!ready && dhps_mono_ns() < ready_by) {
        ready = true;
        for (uint32_t i = 0; i < C->nodes; i++)
            ready &= !C->nd[i].mport || up_http_status(C->nd[i].mport, "/health/ready") == 200;
        if (!ready)
            chaos_sleep_s(0.05);
    }
    bool passed = false;
    if (ready && C->ae_s) {
        uint64_t base[CH_MAX_NODES], now[CH_MAX_NODES];
        chaos_metrics_sum(C->nd, C->nodes, M_AE, base);
        uint64_t by = dhps_mono_ns() + (10ull * C->ae_s + 10) * 1000000000ull;
        while (!passed && dhps_mono_ns() < by) {
            chaos_sleep_s(0.1);
            chaos_metrics_sum(C->nd, C->nodes, M_AE, now);
            passed = true;
            for (uint32_t i = 0; i < C->nodes; i++)
                passed &= !C->nd[i].mport || now[i] >= base[i] + 2;
        }
    }
    K->settled = ready && passed;
    K->settle_s = (double)(dhps_mono_ns() - t0) / 1e9;
}

static void example(struct ch_example *ex, uint32_t *n, uint64_t key, uint32_t shard,
                    uint32_t node, int64_t got, int64_t want)
{
    if (*n < CH_MAX_EXAMPLES)
        ex[(*n)++] = (struct ch_example){key, shard, node, got, want};
}

static uint64_t row_hash(const float *row, uint32_t dim)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *b = (const unsigned char *)row;
    for (size_t i = 0; i < (size_t)dim * sizeof(float); i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* What one replica answered for one key. */
enum { R_UNREAD = 0, R_ABSENT, R_FOUND };
struct rd {
    uint8_t st;
    uint32_t gen;  /* update keys: the generation in the row */
    uint64_t hash; /* the row */
};

/* Look keys up (n of them) through the client as it is configured now (router, or one
 * node left by fault rules); fn(arg, i, found, row) for each key answered. Returns keys
 * not answered (their lookups failed 20 times). */
static uint64_t read_keys(struct chaos *C, const uint64_t *keys, uint32_t n, float *out,
                          void (*fn)(void *, uint32_t, bool, const float *), void *arg)
{
    uint64_t mask[(500 + 63) / 64], unread = 0;
    for (uint32_t off = 0; off < n; off += 500) {
        uint32_t m = n - off < 500 ? n - off : 500;
        dhps_client_result res;
        int rc = -1;
        for (int attempt = 0; attempt < 20 && rc != 0; attempt++) {
            rc = dhps_client_lookup(C->client, "emb", keys + off, m, out, C->dim, DHPS_FP32,
                                    mask, 2000000, &res);
            if (rc != 0)
                chaos_sleep_s(0.05); /* breakers of the partitioned nodes settle */
        }
        if (rc != 0) {
            unread += m;
            continue;
        }
        for (uint32_t j = 0; j < m; j++)
            fn(arg, off + j, !((mask[j / 64] >> (j % 64)) & 1), out + (size_t)j * C->dim);
    }
    return unread;
}

struct replica_read {
    struct rd *rd;       /* [key index][slot] */
    const uint32_t *idx; /* key index of each key read */
    const uint8_t *slot; /* replica slot of each key read */
    uint32_t dim;
};

static void on_replica(void *arg, uint32_t i, bool found, const float *row)
{
    struct replica_read *r = arg;
    struct rd *d = &r->rd[(size_t)r->idx[i] * CH_MAX_REPL + r->slot[i]];
    d->st = found ? R_FOUND : R_ABSENT;
    d->gen = found ? (uint32_t)row[0] : 0;
    d->hash = found ? row_hash(row, r->dim) : 0;
}

struct router_read {
    struct chaos *C;
    struct chaos_check *K;
    const uint64_t *keys;
    uint32_t nsh;
};

static void on_router(void *arg, uint32_t i, bool found, const float *row)
{
    struct router_read *r = arg;
    uint64_t key = r->keys[i];
    uint32_t k = (uint32_t)(key - CH_UBASE), g = found ? (uint32_t)row[0] : 0;
    if (g < r->C->acked[k]) {
        r->K->stale_router++;
        example(r->K->stale_ex, &r->K->nstale_ex, key, dhps_proto_shard_of(key, r->nsh),
                UINT32_MAX, found ? (int64_t)g : -1, r->C->acked[k]);
    }
}

/* Key index i: the sample keys 0..nkeys-1, then update key CH_UBASE + (i - nkeys). */
static uint64_t key_at(const struct chaos *C, uint64_t i)
{
    return i < C->nkeys ? i : CH_UBASE + (i - C->nkeys);
}

void chaos_verify(struct chaos *C, struct chaos_check *K)
{
    uint64_t nk = C->nkeys + CH_UKEYS;
    uint32_t nsh = dhps_cluster_map_nshards(C->map);
    struct rd *rd = calloc(nk * CH_MAX_REPL, sizeof *rd);
    uint64_t *keys = malloc(nk * sizeof *keys);
    uint32_t *idx = malloc(nk * sizeof *idx);
    uint8_t *slot = malloc(nk);
    float *out = malloc((size_t)500 * C->dim * sizeof(float)), *want = NULL;
    if (!rd || !keys || !idx || !slot || !out || nk > UINT32_MAX)
        goto out;
    dhps_rpc_fault part;
    dhps_rpc_fault_init(&part);
    part.partition = true;
    /* each replica alone */
    for (uint32_t only = 0; only < C->nodes; only++) {
        uint32_t n = 0;
        for (uint64_t i = 0; i < nk; i++) {
            if (i >= C->nkeys && !C->gen[i - C->nkeys])
                continue; /* update key never written */
            uint64_t key = key_at(C, i);
            const uint32_t *ids;
            int r = dhps_cluster_map_replicas(C->map, dhps_proto_shard_of(key, nsh), &ids);
            for (int j = 0; j < r && j < CH_MAX_REPL; j++)
                if (ids[j] == only) {
                    keys[n] = key;
                    idx[n] = (uint32_t)i;
                    slot[n++] = (uint8_t)j;
                }
        }
        for (uint32_t i = 0; i < C->nodes; i++)
            if (i != only)
                dhps_client_fault_set(C->client, i, &part);
        struct replica_read rr = {rd, idx, slot, C->dim};
        K->unread += read_keys(C, keys, n, out, on_replica, &rr);
        for (uint32_t i = 0; i < C->nodes; i++)
            dhps_client_fault_set(C->client, i, NULL);
    }
    /* through the router: the acknowledged update keys */
    uint32_t n = 0;
    for (uint32_t k = 0; k < CH_UKEYS; k++)
        if (C->acked[k])
            keys[n++] = CH_UBASE + k;
    K->checked = n;
    struct router_read rr = {C, K, keys, nsh};
    K->unread += read_keys(C, keys, n, out, on_router, &rr);

    /* the findings */
    if (!(want = malloc((size_t)C->dim * sizeof(float))))
        goto out;
    for (uint64_t i = 0; i < nk; i++) {
        bool upd = i >= C->nkeys;
        uint32_t k = upd ? (uint32_t)(i - C->nkeys) : 0;
        if (upd && !C->gen[k])
            continue;
        uint64_t key = key_at(C, i);
        uint32_t shard = dhps_proto_shard_of(key, nsh);
        const uint32_t *ids;
        int r = dhps_cluster_map_replicas(C->map, shard, &ids);
        if (r > CH_MAX_REPL)
            r = CH_MAX_REPL;
        const struct rd *d = &rd[i * CH_MAX_REPL];
        bool all_read = true, differ = false;
        for (int j = 0; j < r; j++) {
            all_read &= d[j].st != R_UNREAD;
            differ |= d[j].st != d[0].st || d[j].hash != d[0].hash;
        }
        if (all_read) {
            K->keys_compared++;
            if (differ) {
                K->keys_differing++;
                for (int j = 1; j < r; j++)
                    if (d[j].st != d[0].st || d[j].hash != d[0].hash)
                        example(K->diff_ex, &K->ndiff_ex, key, shard, ids[j],
                                d[j].st == R_FOUND ? (upd ? (int64_t)d[j].gen : 1) : -1,
                                d[0].st == R_FOUND ? (upd ? (int64_t)d[0].gen : 1) : -1);
            }
        }
        if (!upd) {
            tools_sample_row(key, C->dim, want);
            uint64_t h = row_hash(want, C->dim);
            bool bad = false;
            for (int j = 0; j < r; j++)
                bad |= d[j].st == R_ABSENT || (d[j].st == R_FOUND && d[j].hash != h);
            K->sample_bad += bad;
            continue;
        }
        if (!C->acked[k])
            continue;
        int behind = 0, read = 0;
        for (int j = 0; j < r; j++) {
            if (d[j].st == R_UNREAD)
                continue;
            read++;
            if (d[j].st == R_ABSENT || d[j].gen < C->acked[k]) {
                behind++;
                example(K->lost_ex, &K->nlost_ex, key, shard, ids[j],
                        d[j].st == R_FOUND ? (int64_t)d[j].gen : -1, C->acked[k]);
            }
        }
        K->lost += behind > 0;
        K->lost_everywhere += read > 0 && behind == read;
    }
out:
    free(want);
    free(out);
    free(slot);
    free(idx);
    free(keys);
    free(rd);
}

void chaos_digests(struct chaos *C, struct chaos_check *K)
{
    uint32_t nsh = dhps_cluster_map_nshards(C->map);
    size_t cap = sizeof(dhps_proto_resp) + 16 * DIGEST_RANGES;
    uint8_t *resp[CH_MAX_REPL] = {0};
    for (int j = 0; j < CH_MAX_REPL; j++)
        if (!(resp[j] = malloc(cap)))
            goto out;
    struct {
        dhps_proto_hdr h;
        dhps_proto_sync_digest d;
    } req;
    for (uint32_t s = 0; s < nsh; s++) {
        const uint32_t *ids;
        int r = dhps_cluster_map_replicas(C->map, s, &ids);
        if (r > CH_MAX_REPL)
            r = CH_MAX_REPL;
        bool ok = true;
        for (int j = 0; j < r && ok; j++) {
            memset(&req, 0, sizeof req);
            req.h.version = DHPS_PROTO_VERSION;
            req.h.shard = s;
            snprintf(req.h.table, sizeof req.h.table, "emb");
            req.h.map_version = dhps_cluster_map_version(C->map);
            req.d.nranges = DIGEST_RANGES;
            size_t len = 0;
            dhps_proto_resp rh;
            int e = tools_conn_call(C->conn, ids[j], DHPS_M_SYNC_DIGEST, &req, sizeof req,
                                    resp[j], cap, &len);
            if (!e) {
                memcpy(&rh, resp[j], sizeof rh);
                if (rh.n != DIGEST_RANGES || len < cap)
                    e = DHPS_E_MALFORMED;
            }
            if (e) {
                fprintf(stderr, "dhps chaos: SYNC_DIGEST of shard %u from n%u: %s\n", s,
                        ids[j], dhps_strerror(e));
                K->digest_errors++;
                ok = false;
            }
        }
        if (!ok)
            continue;
        K->shards_checked++;
        bool differ = false;
        for (int j = 1; j < r; j++) {
            const uint64_t *h0 = (const uint64_t *)(resp[0] + sizeof(dhps_proto_resp));
            const uint64_t *hj = (const uint64_t *)(resp[j] + sizeof(dhps_proto_resp));
            uint32_t ranges = 0;
            uint64_t c0 = 0, cj = 0;
            for (uint32_t g = 0; g < DIGEST_RANGES; g++) {
                ranges += h0[g] != hj[g] || h0[DIGEST_RANGES + g] != hj[DIGEST_RANGES + g];
                c0 += h0[DIGEST_RANGES + g];
                cj += hj[DIGEST_RANGES + g];
            }
            if (ranges) {
                differ = true;
                /* key: ranges that differ; got/want: record counts of n<j> and n<0> */
                example(K->shard_ex, &K->nshard_ex, ranges, s, ids[j], (int64_t)cj,
                        (int64_t)c0);
            }
        }
        K->shards_differing += differ;
    }
out:
    for (int j = 0; j < CH_MAX_REPL; j++)
        free(resp[j]);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int chaos_verdict(const struct chaos *C, const struct chaos_check *K)
{
    return K->lost || C->missing_while_held || K->keys_differing || K->shards_differing ||
                   K->digest_errors || K->stale_router || K->sample_bad || K->unread ||
                   !K->settled || C->restart_failures || C->ready_timeouts
               ? 1
               : 0;
}

/* The examples of the check, for finding the cause of a non-zero figure. */
static void list_examples(const struct chaos *C, const struct chaos_check *K, FILE *say)
{
    for (uint32_t i = 0; i < C->nheld_ex; i++) {
        const struct ch_missing *m = &C->held_ex[i];
        fprintf(say, "  missing while held: key %llu at %.3f s (%s n%u)\n",
                (unsigned long long)m->key, (double)m->t_ns / 1e9, chaos_phase_name[m->phase],
                m->victim);
    }
    for (uint32_t i = 0; i < K->nlost_ex; i++) {
        const struct ch_example *e = &K->lost_ex[i];
        fprintf(say, "  acked update behind: key %llu shard %u on n%u: generation %lld, "
                "acknowledged %lld\n", (unsigned long long)e->key, e->shard, e->node,
                (long long)e->got, (long long)e->want);
    }
    for (uint32_t i = 0; i < K->nstale_ex; i++) {
        const struct ch_example *e = &K->stale_ex[i];
        fprintf(say, "  stale router read: key %llu shard %u: generation %lld, acknowledged "
                "%lld\n", (unsigned long long)e->key, e->shard, (long long)e->got,
                (long long)e->want);
    }
    for (uint32_t i = 0; i < K->ndiff_ex; i++) {
        const struct ch_example *e = &K->diff_ex[i];
        fprintf(say, "  replicas differ: key %llu shard %u: n%u has %lld, the first replica "
                "%lld (generation; 1 = a sample row, -1 = absent)\n",
                (unsigned long long)e->key, e->shard, e->node, (long long)e->got,
                (long long)e->want);
    }
    for (uint32_t i = 0; i < K->nshard_ex; i++) {
        const struct ch_example *e = &K->shard_ex[i];
        fprintf(say, "  digests differ: shard %u, n%u: %llu of %u ranges, %lld records vs "
                "%lld on the first replica\n", e->shard, e->node, (unsigned long long)e->key,
                DIGEST_RANGES, (long long)e->got, (long long)e->want);
    }
}

void chaos_report(const struct chaos *C, const struct chaos_check *K,
                  const struct chaos_opts *o, FILE *say)
{
    double avail = C->requests ? (double)C->in_deadline / (double)C->requests : 0;
    double cu[CH_MAX_CATCHUPS], p50 = 0, cmax = 0;
    memcpy(cu, C->catchup, C->ncatchup * sizeof *cu);
    qsort(cu, C->ncatchup, sizeof *cu, cmp_double);
    if (C->ncatchup) {
        p50 = cu[(C->ncatchup - 1) / 2];
        cmax = cu[C->ncatchup - 1];
    }
    uint64_t lookup_errors = C->errors[0] + C->errors[1] + C->errors[2];
    const char *ack = chaos_ack_name[C->ack];
    if (o->json) {
        printf("{\"seconds\": %.1f, \"requests\": %llu, \"answered_in_deadline\": %llu, "
               "\"availability\": %.6f, \"deadline_ms\": %llu, \"lookup_errors\": %llu, "
               "\"lookup_timeouts\": %llu, \"lookup_unreachable\": %llu, "
               "\"lookup_other_errors\": %llu, \"lookup_late\": %llu, \"missing_keys\": %llu, "
               "\"missing_while_held\": %llu, \"updates\": %llu, \"update_shortfalls\": %llu, "
               "\"update_ack\": \"%s\", \"acked_updates\": %llu, \"acked_keys_checked\": %llu, "
               "\"acked_updates_lost\": %llu, \"acked_updates_lost_everywhere\": %llu, "
               "\"stale_router_reads\": %llu, \"sample_keys_bad\": %llu, "
               "\"keys_unread\": %llu, "
               "\"replica_divergence\": {\"shards_checked\": %u, \"shards_differing\": %u, "
               "\"digest_errors\": %u, \"keys_compared\": %llu, \"keys_differing\": %llu}, "
               "\"catchup_seconds\": {\"p50\": %.3f, \"max\": %.3f, \"n\": %u}, "
               "\"notready_answers\": %llu, "
               "\"ready_timeouts\": %u, \"anti_entropy_s\": %u, \"settled\": %s, "
               "\"settle_seconds\": %.2f, \"kills\": %u, \"stops\": %u, \"slowdowns\": %u, "
               "\"restart_failures\": %u",
               o->seconds, (unsigned long long)C->requests, (unsigned long long)C->in_deadline,
               avail, (unsigned long long)o->deadline_ms, (unsigned long long)lookup_errors,
               (unsigned long long)C->errors[0], (unsigned long long)C->errors[1],
               (unsigned long long)C->errors[2], (unsigned long long)C->errors[3],
               (unsigned long long)C->missing_keys, (unsigned long long)C->missing_while_held,
               (unsigned long long)C->updates, (unsigned long long)C->update_shortfalls, ack,
               (unsigned long long)C->acked_keys, (unsigned long long)K->checked,
               (unsigned long long)K->lost, (unsigned long long)K->lost_everywhere,
               (unsigned long long)K->stale_router, (unsigned long long)K->sample_bad,
               (unsigned long long)K->unread, K->shards_checked, K->shards_differing,
               K->digest_errors, (unsigned long long)K->keys_compared,
               (unsigned long long)K->keys_differing, p50, cmax, C->ncatchup,
               (unsigned long long)C->notready_answers, C->ready_timeouts, C->ae_s, K->settled ? "true" : "false", K->settle_s,
               C->kills, C->stops, C->slows, C->restart_failures);
        if (C->ld_at >= 0)
            printf(", \"rdma_link_delete\": {\"device\": \"%s\", \"at_s\": %.1f, "
                   "\"exit\": %d, \"took_s\": %.2f, \"verbs_handled_before\": %llu, "
                   "\"tcp_handled_before\": %llu, \"verbs_handled_end\": %llu, "
                   "\"tcp_handled_end\": %llu, \"verbs_failures\": %llu, "
                   "\"lookups_after\": %llu, \"lookups_after_in_deadline\": %llu, "
                   "\"lookups_after_failed\": %llu}",
                   C->ld_dev, C->ld_at, C->ld_status, C->ld_secs,
                   (unsigned long long)C->ld_verbs_before, (unsigned long long)C->ld_tcp_before,
                   (unsigned long long)C->ld_verbs_end, (unsigned long long)C->ld_tcp_end,
                   (unsigned long long)C->ld_verbs_failures, (unsigned long long)C->ld_requests,
                   (unsigned long long)C->ld_in_deadline,
                   (unsigned long long)(C->ld_requests - C->ld_in_deadline));
        printf("}\n");
    } else {
        printf("dhps chaos: %llu lookups, %llu answered completely within %llu ms: "
               "availability %.5f %% (target 99.999 %%)\n"
               "  not in deadline: %llu timeouts, %llu unreachable, %llu other errors, %llu "
               "late; %llu keys reported missing, %llu of them in complete answers though "
               "every replica held them (target 0)\n"
               "  updates (ACK_%s): %llu batches, %llu short of acks; %llu key writes "
               "acknowledged, %llu keys checked on every replica alone: %llu behind on some "
               "replica (target 0), %llu on every one; %llu router reads older than the ack "
               "(target 0)\n"
               "  replicas: %u restarts ready after %.2f s p50, %.2f s max (%u not ready in "
               "time; %llu lookup messages answered not ready meanwhile); at the end (settled in %.2f s, anti-entropy every %u s%s): %u of %u "
               "shards with differing digests, %llu of %llu chaos keys differing between "
               "replicas, %llu sample keys wrong somewhere, %llu key reads unanswered "
               "(targets 0)\n"
               "  faults: %u kill -9 + restart (%u restart failures), %u SIGSTOP, %u "
               "slowdowns\n",
               (unsigned long long)C->requests, (unsigned long long)C->in_deadline,
               (unsigned long long)o->deadline_ms, 100.0 * avail,
               (unsigned long long)C->errors[0], (unsigned long long)C->errors[1],
               (unsigned long long)C->errors[2], (unsigned long long)C->errors[3],
               (unsigned long long)C->missing_keys, (unsigned long long)C->missing_while_held,
               ack[0] == 'a' ? "ALL" : ack[0] == 'q' ? "QUORUM" : "ONE",
               (unsigned long long)C->updates, (unsigned long long)C->update_shortfalls,
               (unsigned long long)C->acked_keys, (unsigned long long)K->checked,
               (unsigned long long)K->lost, (unsigned long long)K->lost_everywhere,
               (unsigned long long)K->stale_router, C->ncatchup, p50, cmax, C->ready_timeouts,
               (unsigned long long)C->notready_answers,
               K->settle_s, C->ae_s, K->settled ? "" : ", NOT SETTLED", K->shards_differing,
               K->shards_checked, (unsigned long long)K->keys_differing,
               (unsigned long long)K->keys_compared, (unsigned long long)K->sample_bad,
               (unsigned long long)K->unread, C->kills, C->restart_failures, C->stops,
               C->slows);
        if (C->ld_at >= 0)
            printf("  rdma link delete %s at %.1f s: exit %d after %.2f s; requests the "
                   "servers handled over verbs %llu before it, %llu at the end (tcp %llu, "
                   "%llu); verbs paths failed %llu; lookups after it: %llu, %llu in "
                   "deadline, %llu failed\n",
                   C->ld_dev, C->ld_at, C->ld_status, C->ld_secs,
                   (unsigned long long)C->ld_verbs_before, (unsigned long long)C->ld_verbs_end,
                   (unsigned long long)C->ld_tcp_before, (unsigned long long)C->ld_tcp_end,
                   (unsigned long long)C->ld_verbs_failures, (unsigned long long)C->ld_requests,
                   (unsigned long long)C->ld_in_deadline,
                   (unsigned long long)(C->ld_requests - C->ld_in_deadline));
    }
    for (uint32_t i = 0; i < C->nfails; i++) {
        const struct ch_fail *f = &C->fails[i];
        fprintf(say, "  missed: %7.3f s, %s n%u for %.0f ms (before: %s): %s after %llu us, "
                "%zu keys unanswered, %u messages, %u retries, %u hedges\n",
                (double)f->t_ns / 1e9, chaos_phase_name[f->phase], f->victim,
                (double)f->since_ns / 1e6, chaos_phase_name[f->prev_phase],
                f->rc ? dhps_strerror(f->rc) : "complete but late",
                (unsigned long long)f->dt_us, f->unanswered, f->messages, f->retries, f->hedges);
    }
    list_examples(C, K, say);
}
