/* Fuzz the hello parser (all five message kinds) and check that a parsed message
 * re-encodes and re-parses to the same fields; also run the proof on what parsed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/error.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    rpc_hello h, g;
    long n = rpc_hello_parse(buf, size, &h);
    if (n > 0) {
        if ((size_t)n > size || n < (long)RPC_HELLO_HDR)
            abort();
        if (strnlen(h.shm_name, RPC_SHM_NAME) >= RPC_SHM_NAME)
            abort();
        uint8_t out[RPC_HELLO_HDR + RPC_HELLO_MAX_BODY];
        long m = rpc_hello_encode(&h, out, sizeof out);
        if (m <= 0 || rpc_hello_parse(out, (size_t)m, &g) != m)
            abort();
        if (g.kind != h.kind || g.caps != h.caps || g.want != h.want ||
            g.status != h.status || g.transport != h.transport ||
            strcmp(g.shm_name, h.shm_name) != 0 || g.shm_cookie != h.shm_cookie)
            abort();
        uint8_t mac[RPC_MAC];
        rpc_proof("k", 1, 'c', &h, &g, &h, mac);
    } else if (n != 0 && n != DHPS_E_MALFORMED && n != DHPS_E_VERSION) {
        abort();
    }
    free(buf);
    return 0;
}
