/* Epoch-based reclamation: readers publish the global epoch they entered under; the
 * writer stamps what it unlinks with the current epoch and advances it; memory is
 * freed once every active reader entered after the stamp. */
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "store_int.h"

uint64_t epoch_retire_stamp(dhps_store *s)
{
    /* seq_cst: the unlinking stores before this are ordered before readers' later
     * epoch loads; readers entering from now on get a larger epoch. */
    return atomic_fetch_add_explicit(&s->global_epoch, 1, memory_order_seq_cst);
}

uint64_t epoch_min_active(dhps_store *s)
{
    FENCE_SC(s);
    uint64_t min = UINT64_MAX;
    uint32_t hw = atomic_load_explicit(&s->reader_hw, memory_order_acquire);
    for (uint32_t i = 0; i < hw; i++) {
        uint64_t e = atomic_load_explicit(&s->readers[i].epoch, memory_order_seq_cst);
        if (e && e < min)
            min = e;
    }
    return min;
}

size_t store_reclaim(dhps_store *s)
{
    if (s->retired_head == SEG_NONE && !s->retired_tables)
        return 0;
    uint64_t min = epoch_min_active(s);
    size_t freed = 0;
    uint32_t *link = &s->retired_head;
    while (*link != SEG_NONE) {
        uint32_t id = *link;
        seg_meta *m = &s->segs[id];
        if (m->retire_epoch < min) {
            *link = m->next;
            /* Keep a few freed segments resident: a reused segment then costs no page
             * faults or zeroing (compaction frees and reuses segments constantly). */
            m->state = SEG_FREE;
            s->used_bytes -= m->used;
            s->retired_used -= m->used;
            m->used = 0;
            if (s->free_resident < FREE_RESIDENT_MAX) {
                m->resident = 1;
                s->free_resident++;
                m->next = s->warm_head;
                s->warm_head = id;
            } else {
                (void)madvise(s->base + ((size_t)id << s->seg_log2), s->seg_bytes, MADV_DONTNEED);
                m->resident = 0;
                m->next = s->free_head;
                s->free_head = id;
            }
            s->nsegs_alloc--;
            freed += s->seg_bytes;
        } else {
            link = &m->next;
        }
    }
    retired_table **tl = &s->retired_tables;
    while (*tl) {
        retired_table *rt = *tl;
        if (rt->epoch < min) {
            *tl = rt->next;
            s->retired_table_bytes -= rt->t->nb * sizeof(bucket);
            freed += rt->t->nb * sizeof(bucket);
            index_free(rt->t);
            free(rt);
        } else {
            tl = &rt->next;
        }
    }
    return freed;
}
