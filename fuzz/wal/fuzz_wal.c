/* libFuzzer: the update log's three decoders. Input: one selector byte, then, by the
 * selector modulo 3:
 *   0: the bytes of a segment file (wal.0000000000000001.log), opened by dhps_wal_open
 *      (header checks of formats 1 and 2, identity, record checks, torn-tail cut,
 *      replay); a log that opens must replay only whole records inside the file and take
 *      one more append;
 *   1: a dhps-server log record payload for srv_log_decode (src/server/durable.h);
 *      a decoded record's keys and rows must lie inside the payload;
 *   2: a segment identity for srv_logid_parse (src/server/logid.h); a parsed one must be
 *      in range and survive srv_logid_encode + parse unchanged. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "dhps/wal.h"
#include "durable.h"
#include "logid.h"

static char dir[64];

static void clean(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[600];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
}

static int replay(void *arg, uint64_t lsn, const void *p, size_t len)
{
    size_t *total = arg;
    if (len > DHPS_WAL_MAX_RECORD || ((uintptr_t)p & 7u))
        abort();
    volatile uint8_t x = 0;
    for (size_t i = 0; i < len; i++) /* ASan: the payload is readable */
        x ^= ((const uint8_t *)p)[i];
    (void)x;
    (void)lsn;
    *total += len + DHPS_WAL_RECORD_HDR;
    return 0;
}

static void remove_dir(void)
{
    clean();
    rmdir(dir);
}

static void fuzz_segment(const uint8_t *data, size_t size)
{
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/dhps-fuzz-wal-%d", (int)getpid());
        mkdir(dir, 0700);
        atexit(remove_dir);
    }
    clean();
    char p[600];
    snprintf(p, sizeof p, "%s/wal.0000000000000001.log", dir);
    FILE *f = fopen(p, "wb");
    if (!f)
        abort();
    if (size)
        fwrite(data, 1, size, f);
    fclose(f);
    dhps_wal_params wp;
    dhps_wal_params_init(&wp);
    wp.dir = dir;
    wp.identity = "fuzz";
    wp.sync = DHPS_WAL_SYNC_NEVER;
    wp.segment_bytes = 1 << 20;
    dhps_wal_report rep;
    dhps_wal *w = NULL;
    size_t total = 0;
    char err[512];
    int rc = dhps_wal_open(&wp, 0, replay, &total, &rep, &w, err, sizeof err);
    if (rc == 0) {
        if (total && total + DHPS_WAL_SEGMENT_HDR_BYTES(0) > size)
            abort(); /* replayed more than the file held */
        if (rep.torn_bytes > size)
            abort();
        uint8_t b[3] = {1, 2, 3};
        struct iovec iov = {b, sizeof b};
        uint64_t lsn;
        if (dhps_wal_append(w, &iov, 1, &lsn) || lsn != rep.next_lsn)
            abort();
        dhps_wal_close(w);
    } else if (w || !err[0]) {
        abort(); /* an error always comes with a message and no handle */
    }
}

static void fuzz_payload(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    srv_log_rec r;
    const char *why = NULL;
    int rc = srv_log_decode(buf, size, &r, &why);
    if (rc == 0) {
        const uint8_t *end = buf + size;
        if (why || r.n > DHPS_PROTO_MAX_KEYS || !memchr(r.table, 0, sizeof r.table))
            abort();
        if (r.keys < buf || r.keys + (size_t)r.n * 8 > end)
            abort();
        if (r.kind == SRV_LOG_UPSERT &&
            (!r.rows || r.rows + (size_t)r.n * r.row_bytes != end))
            abort();
        if (r.kind == SRV_LOG_DELETE && (r.rows || r.keys + (size_t)r.n * 8 != end))
            abort();
        /* re-encoding the header gives the same bytes */
        uint8_t hdr[SRV_LOG_HDR_MAX];
        size_t hl = srv_log_encode_hdr(&r, hdr);
        if (buf + hl != r.keys || memcmp(hdr, buf, hl))
            abort();
    } else if (!why) {
        abort();
    }
    free(buf);
}

static void fuzz_identity(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1); /* exactly size bytes: ASan sees an overread */
    memcpy(buf, data, size);
    static srv_logid id, again;
    const char *why = NULL;
    int rc = srv_logid_parse(buf, size, &id, &why);
    free(buf);
    if (rc) {
        if (!why || (rc != DHPS_E_MALFORMED && rc != DHPS_E_VERSION))
            abort();
        return;
    }
    if (why || !id.node[0] || id.nshards < 1 || id.nshards > DHPS_SERVER_MAX_SHARDS ||
        id.ntables < 1 || id.ntables > DHPS_SERVER_MAX_TABLES)
        abort();
    /* what the server would write for this identity parses back to the same */
    static dhps_server_config c;
    memset(&c, 0, sizeof c);
    c.node_id = id.node;
    c.coord_cluster = id.cluster[0] ? id.cluster : NULL;
    c.nshards = id.nshards;
    c.ntables = id.ntables;
    for (uint32_t i = 0; i < id.ntables; i++) {
        if (!id.tables[i].name[0] || id.tables[i].dim < 1 ||
            id.tables[i].dim > DHPS_SERVER_MAX_DIM)
            abort();
        memcpy(c.tables[i].name, id.tables[i].name, sizeof c.tables[i].name);
        c.tables[i].dim = id.tables[i].dim;
        c.tables[i].dtype = id.tables[i].dtype;
    }
    static char enc[DHPS_WAL_IDENTITY_MAX + 1];
    int n = srv_logid_encode(&c, enc, sizeof enc);
    if (n < 0 || srv_logid_parse(enc, (size_t)n, &again, &why) ||
        memcmp(&id, &again, sizeof id))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0: fuzz_segment(data + 1, size - 1); break;
    case 1: fuzz_payload(data + 1, size - 1); break;
    default: fuzz_identity(data + 1, size - 1); break;
    }
    return 0;
}
