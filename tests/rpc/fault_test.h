/*
 * Shared by test_rpc_fault.c and test_rpc_server_fault.c: the counting echo handler and
 * a microsecond clock. Header-only; each test binary gets its own `handled`.
 */
#ifndef DHPS_TESTS_RPC_FAULT_TEST_H
#define DHPS_TESTS_RPC_FAULT_TEST_H

#include <stdint.h>
#include <string.h>

#include "dhps/rpc.h"
#include "util.h"

static _Atomic long handled; /* requests the echo handler has answered */

/* M_ECHO: the response is the request. */
static inline int h_echo(void *arg, dhps_rpc_request *r)
{
    (void)arg;
    handled++;
    memcpy(r->resp, r->req, r->req_len);
    r->resp_len = r->req_len;
    return 0;
}

static inline uint64_t now_us(void) { return dhps_mono_ns() / 1000u; }

#endif
