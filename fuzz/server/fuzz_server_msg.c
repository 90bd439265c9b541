/* libFuzzer: request decoding for every method. Input: u16 method selector, u16 table
 * dim, then the request bytes. Decoded views must lie inside the message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"

static const uint16_t methods[] = {DHPS_M_LOOKUP, DHPS_M_UPSERT,   DHPS_M_DELETE, DHPS_M_STATS,
                                   DHPS_M_SNAPSHOT, DHPS_M_INFO, DHPS_M_SYNC_DIGEST,
                                   DHPS_M_SYNC_FETCH, 0x0100, 0xFFFF};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    uint16_t sel, dim;
    memcpy(&sel, data, 2);
    memcpy(&dim, data + 2, 2);
    dim = (uint16_t)(dim % DHPS_SERVER_MAX_DIM + 1);
    uint16_t method = methods[sel % (sizeof methods / sizeof methods[0])];
    size_t len = size - 4;
    /* copy to an exact-size heap buffer so ASan sees any read past the end */
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, data + 4, len);
    srv_msg m;
    const char *why = NULL;
    int rc = srv_msg_decode(method, buf, len, &m, &why);
    if (!why)
        abort();
    if (rc == 0) {
        const uint8_t *end = buf + len;
        if (m.n > DHPS_PROTO_MAX_KEYS || memchr(m.table, 0, DHPS_TABLE_NAME_MAX) == NULL)
            abort();
        if (m.keys) {
            if (m.keys < buf || m.keys + (size_t)m.n * 8 > end)
                abort();
            volatile uint64_t sum = 0;
            for (uint32_t i = 0; i < m.n; i++) {
                uint64_t k;
                memcpy(&k, m.keys + (size_t)i * 8, 8);
                sum += k;
            (void)sum;
            }
        }
        if (method == DHPS_M_UPSERT) {
            if (!m.values || m.values + (size_t)m.n * m.value_bytes != end)
                abort();
            if (srv_msg_check_rows(&m, dim, &why) == 0 &&
                m.value_bytes != dim * (m.flags == DHPS_FP16 ? 2u : 4u))
                abort();
        }
        if (m.range_mask) {
            size_t mb = (size_t)(m.nranges + 63) / 64 * 8;
            if (!m.nranges || m.range_mask < buf || m.range_mask + mb != end)
                abort();
            volatile uint8_t x = 0;
            for (size_t i = 0; i < mb; i++)
                x ^= m.range_mask[i];
            (void)x;
        }
        if ((method == DHPS_M_SYNC_DIGEST || method == DHPS_M_SYNC_FETCH) &&
            m.nranges > DHPS_PROTO_SYNC_MAX_RANGES)
            abort();
        (void)srv_lookup_resp_len(m.n, (size_t)dim * 4);
    } else if (rc != DHPS_E_MALFORMED && rc != DHPS_E_TOOBIG && rc != DHPS_E_VERSION) {
        abort();
    }
    free(buf);
    return 0;
}
