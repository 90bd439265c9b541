// Peers of the dhps store for `dhps-bench store --peers`: std::unordered_map,
// absl::flat_hash_map and DPDK rte_hash, each behind the bench_contender ops table of
// store_bench.h so the harness runs the very same loops for every contender.
//
// How the peers hold values (the strong design, not the naive one): every peer maps
// the u64 key to the location of its value in ONE contiguous value slab of N x B bytes
// (mmap'd, madvise(MADV_HUGEPAGE) like dhps's segments unless --no-huge), so a value
// costs exactly B bytes and no per-value allocation. The maps hold u64 -> u32 slot
// numbers (the key lives in the map, as it must); rte_hash holds u64 -> pointer into the
// slab as its data word. An upsert finds or inserts the key and copies the new bytes
// over its slot (in place); a lookup copies the found value into the caller's dense
// output row. The slab counts in each peer's RSS, exactly as dhps's segments do.
//
// Same advantages for everyone: every structure is pre-sized for N keys (reserve(N);
// rte_hash entries = N / 0.9), large arrays of the maps come from the same huge-page
// mmap (HugeAlloc below), and rte_hash bulk lookups prefetch the value rows of a
// 64-key burst before copying them. The maps are used as applications use them: one
// find() per key, no software prefetching (absl 20220623 has no prefetch API).

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <unordered_map>
#include <utility>

#include <sched.h>
#include <sys/mman.h>

#include <absl/container/flat_hash_map.h>
#include <absl/hash/hash.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_hash.h>
#include <rte_hash_crc.h>
#include <rte_lcore.h>
#include <rte_malloc.h>
#include <rte_memory.h>

#include "store_bench.h"

namespace {

bool g_huge = true; // set from cfg->huge_pages by create()

// Allocator for the maps: arrays of 2 MiB and more (bucket arrays, absl's slot array)
// come from bench_map() with the same huge-page advice dhps uses; small ones (the
// nodes of unordered_map) from malloc, as in any program.
template <class T> struct HugeAlloc {
    using value_type = T;
    static constexpr size_t kBig = size_t(2) << 20;
    HugeAlloc() noexcept = default;
    template <class U> HugeAlloc(const HugeAlloc<U> &) noexcept {}
    T *allocate(size_t n)
    {
        size_t bytes = n * sizeof(T);
        void *p = bytes >= kBig ? bench_map(bytes, g_huge) : std::malloc(bytes);
        if (!p)
            throw std::bad_alloc();
        return static_cast<T *>(p);
    }
    void deallocate(T *p, size_t n) noexcept
    {
        size_t bytes = n * sizeof(T);
        if (bytes >= kBig)
            bench_unmap(p, bytes);
        else
            std::free(p);
    }
    template <class U> bool operator==(const HugeAlloc<U> &) const noexcept { return true; }
    template <class U> bool operator!=(const HugeAlloc<U> &) const noexcept { return false; }
};

using Pair = std::pair<const uint64_t, uint32_t>;
using StdMap = std::unordered_map<uint64_t, uint32_t, std::hash<uint64_t>,
                                  std::equal_to<uint64_t>, HugeAlloc<Pair>>;
using AbslMap = absl::flat_hash_map<uint64_t, uint32_t, absl::Hash<uint64_t>,
                                    std::equal_to<uint64_t>, HugeAlloc<Pair>>;

// The value slab shared by all three peers' designs: `cap` slots of B bytes.
struct Slab {
    uint8_t *base = nullptr;
    size_t bytes = 0;
    uint32_t B = 0;
    uint64_t cap = 0, used = 0;

    bool open(const bench_store_cfg *cfg, char *err)
    {
        B = cfg->value_bytes;
        cap = cfg->keys;
        bytes = size_t(cap) * B;
        base = static_cast<uint8_t *>(bench_map(bytes ? bytes : 1, cfg->huge_pages));
        if (!base) {
            snprintf(err, BENCH_ERR_LEN, "value slab of %zu bytes: %s", bytes,
                     strerror(errno));
            return false;
        }
        return true;
    }
    void close()
    {
        if (base)
            bench_unmap(base, bytes ? bytes : 1);
        base = nullptr;
    }
    uint8_t *slot(uint64_t i) const { return base + size_t(i) * B; }
};

inline void set_found(uint64_t *found, size_t i) { found[i >> 6] |= uint64_t(1) << (i & 63); }

int check_peer_batch(const Slab &s, size_t stride, const uint32_t *lens, char *err)
{
    if (lens) {
        snprintf(err, BENCH_ERR_LEN, "peers store fixed-size values only (no churn)");
        return -1;
    }
    if (stride < s.B) {
        snprintf(err, BENCH_ERR_LEN, "value stride %zu < value size %u", stride, s.B);
        return -1;
    }
    return 0;
}

// ---- std::unordered_map and absl::flat_hash_map: u64 -> u32 slab slot -------------

template <class Map> struct MapCtx {
    Map map;
    Slab slab;
};

template <class Map> int map_create(const bench_store_cfg *cfg, void **ctx, char *err)
{
    g_huge = cfg->huge_pages;
    if (cfg->keys > UINT32_MAX) {
        snprintf(err, BENCH_ERR_LEN, "peers index values with u32 slots: at most %u keys",
                 UINT32_MAX);
        return -1;
    }
    MapCtx<Map> *c = nullptr;
    try {
        c = new MapCtx<Map>();
        if (!c->slab.open(cfg, err)) {
            delete c;
            return -1;
        }
        c->map.reserve(cfg->keys);
    } catch (const std::exception &e) {
        if (c)
            c->slab.close();
        delete c;
        snprintf(err, BENCH_ERR_LEN, "create: %s", e.what());
        return -1;
    }
    *ctx = c;
    return 0;
}

template <class Map>
int map_upsert(void *ctx, const uint64_t *keys, size_t n, const uint8_t *vals,
               size_t stride, const uint32_t *lens, uint32_t ttl, uint64_t version,
               char *err)
{
    auto *c = static_cast<MapCtx<Map> *>(ctx);
    if (check_peer_batch(c->slab, stride, lens, err))
        return -1;
    const uint32_t B = c->slab.B;
    try {
        for (size_t i = 0; i < n; i++) {
            auto r = c->map.try_emplace(keys[i], uint32_t(c->slab.used));
            if (r.second) {
                if (c->slab.used == c->slab.cap) {
                    c->map.erase(r.first);
                    snprintf(err, BENCH_ERR_LEN, "value slab full (%llu slots)",
                             (unsigned long long)c->slab.cap);
                    return -1;
                }
                c->slab.used++;
            }
            memcpy(c->slab.slot(r.first->second), vals + i * stride, B);
        }
    } catch (const std::exception &e) {
        snprintf(err, BENCH_ERR_LEN, "upsert: %s", e.what());
        return -1;
    }
    return 0;
}

template <class Map>
size_t map_lookup(void *ctx, const uint64_t *keys, size_t n, uint8_t *out, size_t stride,
                  uint32_t *lens, uint64_t *found)
{
    auto *c = static_cast<MapCtx<Map> *>(ctx);
    const uint32_t B = c->slab.B;
    const auto end = c->map.end();
    size_t hits = 0;
    memset(found, 0, (n + 63) / 64 * sizeof(uint64_t));
    for (size_t i = 0; i < n; i++) {
        uint8_t *row = out + i * stride;
        auto it = c->map.find(keys[i]);
        if (it != end) {
            memcpy(row, c->slab.slot(it->second), B);
            if (stride > B)
                memset(row + B, 0, stride - B);
            set_found(found, i);
            if (lens)
                lens[i] = B;
            hits++;
        } else {
            memset(row, 0, stride);
            if (lens)
                lens[i] = 0;
        }
    }
    return hits;
}

template <class Map> void map_destroy(void *ctx)
{
    auto *c = static_cast<MapCtx<Map> *>(ctx);
    if (!c)
        return;
    c->slab.close();
    delete c;
}

// ---- DPDK rte_hash: u64 key -> data pointer into the slab, bulk lookups ------------
//
// EAL setup that works on these machines (no hugepages mounted, no devices, shared
// hosts; DPDK 22.11): --no-huge makes EAL back its heap (-m MB) with a memfd
// ("/memfd:nohuge", MAP_SHARED). --in-memory is refused together with --no-huge in
// 22.11 ("Option --legacy-mem is not compatible with --in-memory"); --no-shconf
// instead keeps EAL from creating its shared config and multi-process socket, so
// concurrent runs do not collide (only the empty directory /var/run/dpdk/rte
// appears). --no-pci and --no-telemetry skip device probing and the telemetry socket.
// -l 0 gives EAL one lcore; it pins the calling thread to CPU 0, which we undo right
// after rte_eal_init (the other contenders run unpinned). -m 64 covers EAL's own
// needs; rte_eal_init adds ~20 MB of RSS (metadata), before our RSS baseline.
//
// The table itself does NOT live in that memfd heap: shared memory gets transparent
// huge pages only if /sys/kernel/mm/transparent_hugepage/shmem_enabled allows it
// ("never" here), while dhps and the other peers get them through madvise on
// anonymous memory. To give rte_hash the same advantage, we create an external malloc
// heap (rte_malloc_heap_create + rte_malloc_heap_memory_add) over our own anonymous
// mmap, 2 MiB aligned and madvise(MADV_HUGEPAGE)'d (unless --no-huge), and pass its
// socket id to rte_hash_create, so buckets, key store and free-slot ring (all
// rte_zmalloc / memzone memory) come from it. The region is sized from what
// rte_hash_create allocates: buckets (align32pow2(entries) / 8 of 64-128 bytes), key
// store (entries + 1 slots of 16 bytes) and free-slot ring (align32pow2(entries) x 4
// bytes), i.e. at most ~36 bytes x align32pow2(entries); we reserve 64 bytes x that +
// 64 MiB of address space, which costs nothing until written (see the MADV_DONTNEED
// in rte_init): the RSS delta is what rte_hash's allocations touch. At 10 M keys that
// is ~34 bytes per key, as the sizes above predict.

const char k_rte_heap[] = "dhps_bench";
const size_t k_rte_page = size_t(2) << 20;
void *g_rte_map;       // our mmap (unaligned)
size_t g_rte_map_len;
void *g_rte_heap_va;   // 2 MiB aligned start added to the heap
size_t g_rte_heap_len;
int g_rte_socket = -1;

struct RteCtx {
    struct rte_hash *h = nullptr;
    Slab slab;
};

uint32_t rte_entries(uint64_t keys)
{
    uint64_t e = keys * 10 / 9 + 8; // fill at most 90 % of the requested entries
    return e > RTE_HASH_ENTRIES_MAX ? RTE_HASH_ENTRIES_MAX : uint32_t(e);
}

int rte_init(const bench_store_cfg *cfg, char *err)
{
    const char *args[] = {"dhps-bench",   "--no-huge",      "--no-pci",
                          "--no-shconf",  "--no-telemetry", "-l", "0",
                          "--log-level=lib.eal:error", "-m", "64"};
    int argc = int(sizeof args / sizeof args[0]);
    char *argv[sizeof args / sizeof args[0] + 1];
    for (int i = 0; i < argc; i++)
        argv[i] = const_cast<char *>(args[i]);
    argv[argc] = nullptr;

    cpu_set_t before;
    bool have_mask = sched_getaffinity(0, sizeof before, &before) == 0;
    if (rte_eal_init(argc, argv) < 0) {
        snprintf(err, BENCH_ERR_LEN, "rte_eal_init: %s", rte_strerror(rte_errno));
        return -1;
    }
    if (have_mask)
        sched_setaffinity(0, sizeof before, &before);

    uint64_t pow2 = rte_align64pow2(rte_entries(cfg->keys));
    g_rte_heap_len = (size_t(pow2 * 64 + (size_t(64) << 20)) + k_rte_page - 1) & ~(k_rte_page - 1);
    g_rte_map_len = g_rte_heap_len + k_rte_page;
    g_rte_map = bench_map(g_rte_map_len, cfg->huge_pages);
    if (!g_rte_map) {
        snprintf(err, BENCH_ERR_LEN, "mmap %zu bytes for the rte heap: %s", g_rte_map_len,
                 strerror(errno));
        return -1;
    }
    g_rte_heap_va = reinterpret_cast<void *>(
        (reinterpret_cast<uintptr_t>(g_rte_map) + k_rte_page - 1) & ~uintptr_t(k_rte_page - 1));
    if (rte_malloc_heap_create(k_rte_heap) ||
        rte_malloc_heap_memory_add(k_rte_heap, g_rte_heap_va, g_rte_heap_len, nullptr,
                                   unsigned(g_rte_heap_len / k_rte_page), k_rte_page)) {
        snprintf(err, BENCH_ERR_LEN, "external rte heap of %zu bytes: %s", g_rte_heap_len,
                 rte_strerror(rte_errno));
        return -1;
    }
    // rte_malloc_heap_memory_add leaves the whole region resident (measured: RSS
    // grows by all of it); give the pages back, so they are faulted in (and counted)
    // only as rte_hash writes them. The heap's free-element header sits at the start
    // of the region; we keep the first and last 2 MiB. Every lookup and update result
    // is checked, so a heap damaged by this would show as wrong values or a crash.
    if (g_rte_heap_len > 2 * k_rte_page)
        madvise(static_cast<char *>(g_rte_heap_va) + k_rte_page,
                g_rte_heap_len - 2 * k_rte_page, MADV_DONTNEED);
    g_rte_socket = rte_malloc_heap_get_socket(k_rte_heap);
    if (g_rte_socket < 0) {
        snprintf(err, BENCH_ERR_LEN, "rte_malloc_heap_get_socket: %s", rte_strerror(rte_errno));
        return -1;
    }
    return 0;
}

void rte_fini(void)
{
    if (g_rte_socket >= 0) {
        rte_malloc_heap_memory_remove(k_rte_heap, g_rte_heap_va, g_rte_heap_len);
        rte_malloc_heap_destroy(k_rte_heap);
    }
    bench_unmap(g_rte_map, g_rte_map_len);
    rte_eal_cleanup();
}

int rte_create(const bench_store_cfg *cfg, void **ctx, char *err)
{
    RteCtx *c = new (std::nothrow) RteCtx();
    if (!c) {
        snprintf(err, BENCH_ERR_LEN, "out of memory");
        return -1;
    }
    if (!c->slab.open(cfg, err)) {
        delete c;
        return -1;
    }
    struct rte_hash_parameters p;
    memset(&p, 0, sizeof p);
    p.name = "dhps_bench";
    p.entries = rte_entries(cfg->keys);
    p.key_len = sizeof(uint64_t);
    p.hash_func = rte_hash_crc; // CRC32C, the SSE4.2 instruction when the CPU has it
    p.hash_func_init_val = 0;
    p.socket_id = g_rte_socket; // the external, huge-page advised heap above
    p.extra_flag = 0; // single writer, no reader/writer concurrency: the fastest mode
    c->h = rte_hash_create(&p);
    if (!c->h) {
        snprintf(err, BENCH_ERR_LEN, "rte_hash_create(entries %u): %s", p.entries,
                 rte_strerror(rte_errno));
        c->slab.close();
        delete c;
        return -1;
    }
    *ctx = c;
    return 0;
}

int rte_upsert(void *ctx, const uint64_t *keys, size_t n, const uint8_t *vals,
               size_t stride, const uint32_t *lens, uint32_t ttl, uint64_t version,
               char *err)
{
    RteCtx *c = static_cast<RteCtx *>(ctx);
    if (check_peer_batch(c->slab, stride, lens, err))
        return -1;
    const uint32_t B = c->slab.B;
    const void *kp[RTE_HASH_LOOKUP_BULK_MAX];
    void *data[RTE_HASH_LOOKUP_BULK_MAX];
    for (size_t base = 0; base < n; base += RTE_HASH_LOOKUP_BULK_MAX) {
        uint32_t m = uint32_t(n - base < RTE_HASH_LOOKUP_BULK_MAX ? n - base
                                                                  : RTE_HASH_LOOKUP_BULK_MAX);
        for (uint32_t j = 0; j < m; j++)
            kp[j] = &keys[base + j];
        uint64_t hit = 0;
        int r = rte_hash_lookup_bulk_data(c->h, kp, m, &hit, data);
        if (r < 0) {
            snprintf(err, BENCH_ERR_LEN, "rte_hash_lookup_bulk_data: %s", strerror(-r));
            return -1;
        }
        for (uint32_t j = 0; j < m; j++) {
            uint8_t *dst;
            if (hit >> j & 1) {
                dst = static_cast<uint8_t *>(data[j]);
            } else {
                if (c->slab.used == c->slab.cap) {
                    snprintf(err, BENCH_ERR_LEN, "value slab full (%llu slots)",
                             (unsigned long long)c->slab.cap);
                    return -1;
                }
                dst = c->slab.slot(c->slab.used);
                int a = rte_hash_add_key_data(c->h, kp[j], dst);
                if (a < 0) {
                    snprintf(err, BENCH_ERR_LEN, "rte_hash_add_key_data (%llu keys in): %s",
                             (unsigned long long)c->slab.used, strerror(-a));
                    return -1;
                }
                c->slab.used++;
            }
            memcpy(dst, vals + (base + j) * stride, B);
        }
    }
    return 0;
}

size_t rte_lookup(void *ctx, const uint64_t *keys, size_t n, uint8_t *out, size_t stride,
                  uint32_t *lens, uint64_t *found)
{
    RteCtx *c = static_cast<RteCtx *>(ctx);
    const uint32_t B = c->slab.B;
    const uint32_t pf = B < 256 ? B : 256; // prefetch up to 4 lines of each value
    const void *kp[RTE_HASH_LOOKUP_BULK_MAX];
    void *data[RTE_HASH_LOOKUP_BULK_MAX];
    size_t hits = 0;
    static_assert(RTE_HASH_LOOKUP_BULK_MAX == 64, "one found word per burst");
    for (size_t base = 0; base < n; base += RTE_HASH_LOOKUP_BULK_MAX) {
        uint32_t m = uint32_t(n - base < RTE_HASH_LOOKUP_BULK_MAX ? n - base
                                                                  : RTE_HASH_LOOKUP_BULK_MAX);
        for (uint32_t j = 0; j < m; j++)
            kp[j] = &keys[base + j];
        uint64_t hit = 0;
        int r = rte_hash_lookup_bulk_data(c->h, kp, m, &hit, data);
        if (r < 0)
            hit = 0; // counted as misses; cannot happen with valid arguments
        for (uint32_t j = 0; j < m; j++)
            if (hit >> j & 1)
                for (uint32_t o = 0; o < pf; o += 64)
                    __builtin_prefetch(static_cast<const uint8_t *>(data[j]) + o);
        for (uint32_t j = 0; j < m; j++) {
            size_t i = base + j;
            uint8_t *row = out + i * stride;
            if (hit >> j & 1) {
                memcpy(row, data[j], B);
                if (stride > B)
                    memset(row + B, 0, stride - B);
                if (lens)
                    lens[i] = B;
                hits++;
            } else {
                memset(row, 0, stride);
                if (lens)
                    lens[i] = 0;
            }
        }
        // bursts start at multiples of 64, so a burst's hit mask is one found word
        found[base / 64] = m == 64 ? hit : hit & ((uint64_t(1) << m) - 1);
    }
    return hits;
}

// rte_hash_lookup_bulk_data reads both candidate buckets of every key (a 64-byte line
// each: it compares the signatures of both before looking at any key) and the key-store
// entry of the hit (16 bytes at a 16-byte multiple of a cache-aligned array: one line);
// the value row is then read from the slab: the lines of [slot, slot + B).
void rte_lines(void *ctx, double *index, double *data)
{
    RteCtx *c = static_cast<RteCtx *>(ctx);
    const uint64_t B = c->slab.B, period = 64; // slot offsets mod 64 repeat every 64 slots
    uint64_t n = c->slab.used < period ? c->slab.used : period, lines = 0;
    for (uint64_t i = 0; i < n; i++) {
        uintptr_t a = reinterpret_cast<uintptr_t>(c->slab.slot(i));
        lines += ((a + B + 63) / 64) - a / 64;
    }
    *index = 3;
    *data = n ? double(lines) / double(n) : 0;
}

void rte_destroy(void *ctx)
{
    RteCtx *c = static_cast<RteCtx *>(ctx);
    if (!c)
        return;
    rte_hash_free(c->h);
    c->slab.close();
    delete c;
}

const bench_contender k_unordered_map = {
    "unordered_map", "std::unordered_map", nullptr,
    "std::unordered_map<u64,u32 slot> reserve(N), values in one N x B slab;\n"
    "                      nodes from malloc (4 KiB pages unless GLIBC_TUNABLES=\n"
    "                      glibc.malloc.hugetlb=1)", false,
    nullptr, map_create<StdMap>, map_upsert<StdMap>, map_lookup<StdMap>, nullptr,
    nullptr, nullptr, map_destroy<StdMap>, nullptr,
};

const bench_contender k_absl = {
    "absl", "absl::flat_hash_map", nullptr,
    "absl::flat_hash_map<u64,u32 slot> reserve(N), values in one N x B slab", false,
    nullptr, map_create<AbslMap>, map_upsert<AbslMap>, map_lookup<AbslMap>, nullptr,
    nullptr, nullptr, map_destroy<AbslMap>, nullptr,
};

const bench_contender k_rte_hash = {
    "rte_hash", "rte_hash (bulk)", nullptr,
    "DPDK rte_hash (CRC32C, entries N/0.9, heap in huge-page advised memory),\n"
    "                      data = pointer into one N x B slab; lookups by\n"
    "                      rte_hash_lookup_bulk_data in bursts of 64, value rows\n"
    "                      prefetched, then copied", false,
    rte_init, rte_create, rte_upsert, rte_lookup, nullptr, nullptr, rte_lines, rte_destroy,
    rte_fini,
};

} // namespace

extern "C" const bench_contender *bench_peer_unordered_map(void) { return &k_unordered_map; }
extern "C" const bench_contender *bench_peer_absl(void) { return &k_absl; }
extern "C" const bench_contender *bench_peer_rte_hash(void) { return &k_rte_hash; }
