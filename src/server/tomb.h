/* Private: tombstones of one store. The store keeps no trace of a deleted key, but a
 * replica that catches up or repairs from a peer must not take back a key this node
 * deleted (the peer may not have seen the delete yet). So the server remembers, per
 * (table, shard), key -> highest delete version for sync.tombstone_s seconds, and
 * ships them in sync exports (docs/server.md "Replicas").
 *
 * Open addressing with linear probing; at_s == 0 marks an empty slot (wall-clock
 * seconds are never 0). Not thread-safe: the store's writer mutex guards it. */
#ifndef DHPS_SRV_TOMB_H
#define DHPS_SRV_TOMB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct srv_tomb {
    uint64_t *keys, *vers;
    uint32_t *at_s; /* wall-clock second of the delete; 0 = empty slot */
    size_t cap, n;  /* cap a power of two (0 before the first put) */
} srv_tomb;

/* Remember key deleted at version (keeps the higher version). 0 or -ENOMEM. */
int srv_tomb_put(srv_tomb *t, uint64_t key, uint64_t version, uint32_t now_s);

/* The delete version remembered for key, or false. */
bool srv_tomb_get(const srv_tomb *t, uint64_t key, uint64_t *version);

/* Forget tombstones written before cutoff_s. Returns how many were dropped. */
size_t srv_tomb_expire(srv_tomb *t, uint32_t cutoff_s);

/* Visit every tombstone: fn(arg, key, version). */
void srv_tomb_each(const srv_tomb *t, void (*fn)(void *arg, uint64_t key, uint64_t version),
                   void *arg);

void srv_tomb_free(srv_tomb *t);

#endif
