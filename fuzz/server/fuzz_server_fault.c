/* libFuzzer: the /fault admin endpoint's pure parts over arbitrary bytes. The first byte
 * picks the target: even = the PUT body parser (srv_fault_parse), odd = the X-Dhps-Auth
 * header check (srv_admin_auth). Accepted bodies must give a rule the rpc server accepts;
 * rejected ones must name the field; a header is never accepted without the right MAC. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "dhps/rpc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char err[512];
    if ((data[0] & 1) == 0) {
        srv_fault_req r;
        int rc = srv_fault_parse(data + 1, size - 1, &r, err, sizeof err);
        if (rc == 0) {
            if (r.f.drop_percent > 100 || r.f.delay_percent > 100 ||
                r.f.delay_us > DHPS_RPC_FAULT_MAX_DELAY_US || !r.peer[0] ||
                (r.peer[0] == '*' && (r.port || r.peer[1])))
                abort();
            static dhps_rpc_server *s;
            if (!s) { /* the rpc server's own checks must agree (never started) */
                dhps_rpc_server_params p;
                dhps_rpc_server_params_init(&p);
                if (dhps_rpc_server_create(&p, &s))
                    abort();
            }
            if (dhps_rpc_server_fault_set(s, r.peer, r.port, &r.f) ||
                dhps_rpc_server_fault_clear(s, r.peer, r.port))
                abort();
        } else if (rc == DHPS_E_CONFIG) {
            if (strncmp(err, "fault ", 6))
                abort();
        } else if (rc != -12) {
            abort();
        }
        return 0;
    }
    char *h = malloc(size);
    if (!h)
        return 0;
    memcpy(h, data + 1, size - 1);
    h[size - 1] = 0;
    int rc = srv_admin_auth("k", 1, h, "PUT", "/fault", "", "", "", "{}", 2, 1700000000, err,
                            sizeof err);
    /* accepted only if the header is exactly the right "<ts> <mac>", ts being
     * "<digits>[.<hex nonce>]" (signed as it stands) */
    if (rc == 0) {
        uint8_t mac[32];
        char ts[64];
        size_t i = 0;
        while (h[i] && h[i] != ' ' && i < sizeof ts - 1) {
            ts[i] = h[i];
            i++;
        }
        ts[i] = 0;
        if (srv_admin_mac("k", 1, "PUT", "/fault", "", "", "", ts, "{}", 2, mac))
            abort();
        static const char hx[] = "0123456789abcdef";
        for (int k = 0; k < 32; k++) {
            char c1 = h[i + 1 + 2 * k], c2 = h[i + 2 + 2 * k];
            if ((c1 | 0x20) != hx[mac[k] >> 4] || (c2 | 0x20) != hx[mac[k] & 15])
                abort();
        }
    } else if (rc != -13 || strncmp(err, "fault auth: ", 12)) {
        abort();
    }
    /* the replay guard parses any header it is given without harm */
    static srv_admin_replay *replay;
    if (!replay && (replay = malloc(sizeof *replay)))
        srv_admin_replay_init(replay);
    if (replay) {
        int nr = srv_admin_replay_note(replay, h, 1700000000, err, sizeof err);
        if (nr != 0 && nr != -EALREADY && nr != -EBUSY && nr != -EINVAL)
            abort();
    }
    free(h);
    return 0;
}
