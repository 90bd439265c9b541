/* The cuckoo index: hashing, tag match, find, insert with bounded BFS displacement,
 * and growth by rebuilding beside the live table. Writer-side code; the lookup fast
 * path lives in lookup_impl.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "dhps/log.h"
#include "store_int.h"

index_table *index_create(uint64_t nb, bool huge)
{
    if (nb < 2)
        nb = 2;
    if (nb >= (1ull << 32))
        return NULL;
    index_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    size_t bytes = (size_t)nb * sizeof(bucket);
    /* Tables of 2 MiB or more are rounded to whole huge pages and advised; smaller
     * ones (a node holds hundreds of small shards) stay on 4 KiB pages, so a shard of
     * a thousand keys costs kilobytes, not a 2 MiB page. */
    size_t unit = bytes >= (2u << 20) ? (2u << 20) : 4096u;
    size_t map = (bytes + unit - 1) & ~(size_t)(unit - 1);
    void *p = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        free(t);
        return NULL;
    }
    if (huge && unit > 4096u)
        (void)madvise(p, map, MADV_HUGEPAGE);
    t->b = p;
    t->nb = nb;
    t->map_bytes = map;
    return t; /* anonymous memory is zero: every tag empty */
}

void index_free(index_table *t)
{
    if (!t)
        return;
    munmap(t->b, t->map_bytes);
    free(t);
}

static inline void bucket_lock(bucket *b)
{
    uint32_t v = __atomic_load_n(&b->version, __ATOMIC_RELAXED);
    __atomic_store_n(&b->version, v + 1, __ATOMIC_RELAXED);
    FENCE_REL();
}
static inline void bucket_unlock(bucket *b)
{
    uint32_t v = __atomic_load_n(&b->version, __ATOMIC_RELAXED);
    __atomic_store_n(&b->version, v + 1, __ATOMIC_RELEASE);
}

int index_find(dhps_store *s, index_table *t, const hkey *k, uint32_t *bkt, int *slot)
{
    uint32_t bs[2] = {k->b1, k->b2};
    for (int j = 0; j < 2; j++) {
        bucket *b = &t->b[bs[j]];
        uint32_t m = match_tags_writer(b, k->tag);
        while (m) {
            int i = __builtin_ctz(m);
            m &= m - 1;
            if (rd64(rec_ptr(s, b->refs[i])) == k->key) {
                *bkt = bs[j];
                *slot = i;
                return 0;
            }
        }
        if (k->b2 == k->b1)
            break;
    }
    return -1;
}

int index_find_ref(dhps_store *s, uint64_t key, uint32_t ref, uint32_t *bkt, int *slot)
{
    index_table *t = atomic_load_explicit(&s->table, memory_order_relaxed);
    hkey k;
    hkey_make(&k, key, store_hash(s, key), t->nb);
    return index_find_ref_k(t, &k, ref, bkt, slot);
}

static inline int empty_slot(const bucket *b)
{
    uint32_t m = match_tags_writer(b, 0);
    return m ? __builtin_ctz(m) : -1;
}

static inline void slot_fill(bucket *b, int i, uint8_t tag, uint32_t ref)
{
    __atomic_store_n(&b->refs[i], ref, __ATOMIC_RELEASE); /* publishes the record */
    __atomic_store_n(&b->tags[i], tag, __ATOMIC_RELEASE); /* publishes the ref */
}

void index_remove(index_table *t, uint32_t bkt, int slot)
{
    __atomic_store_n(&t->b[bkt].tags[slot], 0, __ATOMIC_RELEASE);
    t->used--;
}

/* Bounded breadth-first search for a path of moves that frees a slot in b1 or b2. */
#define BFS_MAX_NODES 2048
#define BFS_MAX_DEPTH 6
typedef struct bfs_node {
    uint32_t bkt;
    int16_t parent;
    int8_t pslot;
    uint8_t depth;
} bfs_node;

static int bfs_place(index_table *t, const hkey *k, uint32_t ref)
{
    bfs_node q[BFS_MAX_NODES];
    int head = 0, tail = 0;
    q[tail++] = (bfs_node){k->b1, -1, -1, 0};
    if (k->b2 != k->b1)
        q[tail++] = (bfs_node){k->b2, -1, -1, 0};
    while (head < tail) {
        int ni = head++;
        bfs_node n = q[ni];
        bucket *b = &t->b[n.bkt];
        int es = empty_slot(b);
        if (es >= 0) {
            /* Execute moves from the end of the path back to the root. */
            int cur = ni;
            while (q[cur].parent >= 0) {
                bfs_node c = q[cur];
                bfs_node p = q[c.parent];
                bucket *src = &t->b[p.bkt], *dst = &t->b[c.bkt];
                uint8_t tag = src->tags[c.pslot];
                if (dst->tags[es] != 0 || tag == 0 || alt_bucket(p.bkt, tag, t->nb) != c.bkt)
                    return -1; /* path crossed itself; every move so far was valid */
                bucket_lock(src);
                if (dst != src)
                    bucket_lock(dst);
                slot_fill(dst, es, tag, src->refs[c.pslot]);
                __atomic_store_n(&src->tags[c.pslot], 0, __ATOMIC_RELEASE);
                if (dst != src)
                    bucket_unlock(dst);
                bucket_unlock(src);
                es = c.pslot;
                cur = c.parent;
            }
            bucket *root = &t->b[q[cur].bkt];
            if (root->tags[es] != 0)
                return -1;
            slot_fill(root, es, k->tag, ref);
            t->used++;
            return 0;
        }
        if (n.depth >= BFS_MAX_DEPTH)
            continue;
        for (int i = 0; i < SLOTS && tail < BFS_MAX_NODES; i++) {
            uint32_t a = alt_bucket(n.bkt, b->tags[i], t->nb);
            if (a == n.bkt)
                continue;
            q[tail++] = (bfs_node){a, (int16_t)ni, (int8_t)i, (uint8_t)(n.depth + 1)};
        }
    }
    return DHPS_E_FULL;
}

int index_insert(dhps_store *s, index_table *t, const hkey *k, uint32_t ref)
{
    (void)s;
    bucket *b1 = &t->b[k->b1];
    int i = empty_slot(b1);
    if (i >= 0) {
        slot_fill(b1, i, k->tag, ref);
        t->used++;
        return 0;
    }
    bucket *b2 = &t->b[k->b2];
    i = empty_slot(b2);
    if (i >= 0) {
        slot_fill(b2, i, k->tag, ref);
        t->used++;
        return 0;
    }
    for (int attempt = 0; attempt < 3; attempt++) {
        int rc = bfs_place(t, k, ref);
        if (rc != -1)
            return rc;
    }
    return DHPS_E_FULL;
}

/* Rebuild into a table sized for `want` keys (at least 1.5x the current one), then
 * publish it with one pointer store. Readers keep using the old table meanwhile; it is
 * freed once they have left. The writer is busy for the rebuild. */
int index_grow(dhps_store *s, uint64_t want)
{
    index_table *old = atomic_load_explicit(&s->table, memory_order_relaxed);
    uint64_t nb = (uint64_t)((double)want / (SLOTS * 0.93)) + 1;
    if (nb < old->nb + old->nb / 2)
        nb = old->nb + old->nb / 2;
    for (int tries = 0; tries < 4; tries++, nb += nb / 4) {
        uint64_t bytes = nb * sizeof(bucket);
        if (s->p.mem_limit && store_mem_used(s) + bytes > s->p.mem_limit) {
            if (s->grow_refused_nb != old->nb) /* say it once per table size */
                DHPS_LOG(DHPS_LOG_WARN, "store", "index growth to %llu buckets refused: memory limit",
                         (unsigned long long)nb);
            s->grow_refused_nb = old->nb;
            return DHPS_E_FULL;
        }
        index_table *t = index_create(nb, s->p.huge_pages);
        if (!t)
            return -ENOMEM;
        int rc = 0;
        for (uint64_t bi = 0; bi < old->nb && rc == 0; bi++) {
            const bucket *ob = &old->b[bi];
            if (bi + 4 < old->nb)
                __builtin_prefetch(&old->b[bi + 4]);
            for (int i = 0; i < SLOTS; i++) {
                if (!ob->tags[i])
                    continue;
                uint32_t ref = ob->refs[i];
                uint64_t key = rd64(rec_ptr(s, ref));
                hkey k;
                hkey_make(&k, key, store_hash(s, key), t->nb);
                if ((rc = index_insert(s, t, &k, ref)) != 0)
                    break;
            }
        }
        if (rc != 0) {
            index_free(t);
            continue;
        }
        atomic_store_explicit(&s->table, t, memory_order_release);
        retired_table *rt = malloc(sizeof *rt);
        if (!rt) {
            /* cannot defer: wait for readers to leave, then free now */
            uint64_t e = epoch_retire_stamp(s);
            while (epoch_min_active(s) <= e)
                ;
            index_free(old);
        } else {
            rt->t = old;
            rt->epoch = epoch_retire_stamp(s);
            rt->next = s->retired_tables;
            s->retired_tables = rt;
            s->retired_table_bytes += old->nb * sizeof(bucket);
        }
        s->st.index_grows++;
        DHPS_LOG(DHPS_LOG_INFO, "store", "index grown to %llu buckets (%llu keys)",
                 (unsigned long long)nb, (unsigned long long)t->used);
        return 0;
    }
    return DHPS_E_FULL;
}
