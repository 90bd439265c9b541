/* Fuzz the frame parser as the receive paths use it: a byte stream (TCP) or a ring
 * segment (shm, with PAD allowed) cut into frames, CTRL payloads parsed too. The first byte picks the payload
 * bound and whether PAD is allowed. Checks the parser's contract. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/error.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t max = (data[0] & 0x7f) * 64u;
    bool pad = data[0] & 0x80;
    data++, size--;
    /* copy so ASan sees reads past the end exactly */
    uint8_t *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    size_t off = 0;
    while (off < size) {
        rpc_frame f;
        long n = rpc_frame_parse(buf + off, size - off, max, pad, &f);
        if (n == DHPS_E_MALFORMED || n == 0)
            break;
        uint32_t bound = f.type == RPC_F_PAD ? max + 8 : f.type == RPC_F_CTRL ? RPC_CTRL_BYTES : max;
        if (n < (long)RPC_FRAME_HDR || (size_t)n > size - off || f.len > bound ||
            (size_t)n != RPC_FRAME_HDR + f.len)
            abort();
        /* re-encoding a valid header reproduces it */
        uint8_t h[RPC_FRAME_HDR];
        rpc_frame_encode(&f, h);
        if (memcmp(h, buf + off, RPC_FRAME_HDR) != 0)
            abort();
        if (f.type == RPC_F_CTRL) { /* the re-promotion payload parser too */
            uint32_t op;
            rpc_verbs_info v;
            if (rpc_ctrl_parse(buf + off + RPC_FRAME_HDR, f.len, &op, &v) == 0 &&
                (op < RPC_CTRL_PROMOTE || op > RPC_CTRL_PROMOTE_NO))
                abort();
        }
        off += (size_t)n;
    }
    free(buf);
    return 0;
}
