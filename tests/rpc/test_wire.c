/* Wire format: frame and hello parsers (the same pure functions the fuzzers call). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "dhps/rpc.h"
#include "wire.h"

static void frame_roundtrip_and_bounds(void **st)
{
    (void)st;
    uint8_t b[RPC_FRAME_HDR + 5];
    rpc_frame f = {.type = RPC_F_REQ, .method = 7, .len = 5, .id = 0x1122334455667788ull}, g;
    rpc_frame_encode(&f, b);
    memcpy(b + RPC_FRAME_HDR, "hello", 5);
    for (size_t n = 0; n < sizeof b; n++)
        assert_int_equal(rpc_frame_parse(b, n, 100, false, &g), 0); /* need more */
    assert_int_equal(rpc_frame_parse(b, sizeof b, 100, false, &g), (long)sizeof b);
    assert_int_equal(g.method, 7);
    assert_int_equal(g.id, f.id);
    assert_int_equal(g.len, 5);
    assert_int_equal(rpc_frame_parse(b, sizeof b, 4, false, &g), DHPS_E_MALFORMED); /* too big */
    b[0] ^= 1;
    assert_int_equal(rpc_frame_parse(b, sizeof b, 100, false, &g), DHPS_E_MALFORMED); /* magic */
    b[0] ^= 1;
    b[18] = 1;
    assert_int_equal(rpc_frame_parse(b, sizeof b, 100, false, &g), DHPS_E_MALFORMED); /* rsvd */
    b[18] = 0;
    f.type = 9;
    rpc_frame_encode(&f, b);
    assert_int_equal(rpc_frame_parse(b, sizeof b, 100, false, &g), DHPS_E_MALFORMED);
    f = (rpc_frame){.type = RPC_F_PAD, .len = 0};
    rpc_frame_encode(&f, b);
    assert_int_equal(rpc_frame_parse(b, RPC_FRAME_HDR, 100, false, &g), DHPS_E_MALFORMED);
    assert_int_equal(rpc_frame_parse(b, RPC_FRAME_HDR, 100, true, &g), (long)RPC_FRAME_HDR);
    f = (rpc_frame){.type = RPC_F_DOORBELL, .len = 1};
    rpc_frame_encode(&f, b);
    assert_int_equal(rpc_frame_parse(b, sizeof b, 100, false, &g), DHPS_E_MALFORMED);
    f = (rpc_frame){.type = RPC_F_RESP, .len = 1, .status = DHPS_E_HANDLER};
    rpc_frame_encode(&f, b);
    assert_int_equal(rpc_frame_parse(b, sizeof b, 100, false, &g), DHPS_E_MALFORMED);
    f = (rpc_frame){.type = RPC_F_REQ, .status = -1};
    rpc_frame_encode(&f, b);
    assert_int_equal(rpc_frame_parse(b, sizeof b, 100, false, &g), DHPS_E_MALFORMED);
}

static void hello_roundtrip(void **st)
{
    (void)st;
    uint8_t b[2048];
    rpc_hello h = {.kind = RPC_H_CLIENT_PROOF, .version = 2, .want = DHPS_RPC_SHM,
                   .shm_bytes = 1 << 20, .shm_cookie = 99}, g;
    strcpy(h.shm_name, "/dhps-rpc-12-abcdef");
    memset(h.proof, 3, sizeof h.proof);
    h.verbs.qpn = 0x123456;
    long n = rpc_hello_encode(&h, b, sizeof b);
    assert_true(n > 0);
    for (long k = 0; k < n; k++)
        assert_int_equal(rpc_hello_parse(b, (size_t)k, &g), 0);
    assert_int_equal(rpc_hello_parse(b, (size_t)n, &g), n);
    assert_string_equal(g.shm_name, h.shm_name);
    assert_int_equal(g.shm_cookie, 99);
    assert_int_equal(g.verbs.qpn, 0x123456);
    assert_memory_equal(g.proof, h.proof, RPC_MAC);
    /* unsafe names are rejected */
    strcpy(h.shm_name, "/dhps-rpc-../../etc");
    n = rpc_hello_encode(&h, b, sizeof b);
    assert_int_equal(rpc_hello_parse(b, (size_t)n, &g), DHPS_E_MALFORMED);
    strcpy(h.shm_name, "/other");
    n = rpc_hello_encode(&h, b, sizeof b);
    assert_int_equal(rpc_hello_parse(b, (size_t)n, &g), DHPS_E_MALFORMED);
    /* version 1 client hello: capabilities ignored (TCP only) */
    rpc_hello c = {.kind = RPC_H_CLIENT_HELLO, .version = 1, .caps = DHPS_RPC_ALL, .max_msg = 9};
    n = rpc_hello_encode(&c, b, sizeof b);
    assert_int_equal(rpc_hello_parse(b, (size_t)n, &g), n);
    assert_int_equal(g.caps, DHPS_RPC_MASK(DHPS_RPC_TCP));
    /* newer version: parsed as ours */
    c.version = 7;
    n = rpc_hello_encode(&c, b, sizeof b);
    assert_int_equal(rpc_hello_parse(b, (size_t)n, &g), n);
    assert_int_equal(g.version, RPC_HELLO_VERSION);
    assert_int_equal(g.caps, DHPS_RPC_ALL);
    c.version = 0;
    n = rpc_hello_encode(&c, b, sizeof b);
    assert_int_equal(rpc_hello_parse(b, (size_t)n, &g), DHPS_E_VERSION);
    /* oversized body */
    c.version = 2;
    n = rpc_hello_encode(&c, b, sizeof b);
    b[8] = 0xff;
    b[9] = 0xff;
    assert_int_equal(rpc_hello_parse(b, (size_t)n, &g), DHPS_E_MALFORMED);
}

static void proofs_bind_secret_and_nonces(void **st)
{
    (void)st;
    rpc_hello ch = {.kind = RPC_H_CLIENT_HELLO, .version = 2, .caps = 3, .max_msg = 1};
    rpc_hello sh = {.kind = RPC_H_SERVER_HELLO, .version = 2, .caps = 3, .max_msg = 1};
    memset(ch.nonce, 1, RPC_NONCE);
    memset(sh.nonce, 2, RPC_NONCE);
    uint8_t a[RPC_MAC], b[RPC_MAC];
    rpc_proof("k", 1, 's', &ch, &sh, NULL, a);
    rpc_proof("k", 1, 's', &ch, &sh, NULL, b);
    assert_true(rpc_mac_equal(a, b));
    rpc_proof("K", 1, 's', &ch, &sh, NULL, b);
    assert_false(rpc_mac_equal(a, b));
    sh.nonce[5] ^= 1;
    rpc_proof("k", 1, 's', &ch, &sh, NULL, b);
    assert_false(rpc_mac_equal(a, b));
    rpc_hello pr = {.kind = RPC_H_CLIENT_PROOF, .want = 1};
    rpc_proof("k", 1, 'c', &ch, &sh, &pr, a);
    pr.shm_cookie = 1;
    rpc_proof("k", 1, 'c', &ch, &sh, &pr, b);
    assert_false(rpc_mac_equal(a, b));
    /* the ACCEPT proof (version 3) binds the hellos and the accepted path: a proof for
     * tcp is no proof for verbs, nor for other verbs endpoints, and differs from 's' */
    ch.version = sh.version = 3;
    rpc_hello ac = {.kind = RPC_H_ACCEPT, .version = 3, .transport = DHPS_RPC_TCP};
    rpc_proof("k", 1, 'a', &ch, &sh, &ac, a);
    rpc_proof("k", 1, 's', &ch, &sh, NULL, b);
    assert_false(rpc_mac_equal(a, b));
    ac.transport = DHPS_RPC_VERBS;
    rpc_proof("k", 1, 'a', &ch, &sh, &ac, b);
    assert_false(rpc_mac_equal(a, b));
    ac.transport = DHPS_RPC_TCP;
    ac.verbs.qpn = 7;
    rpc_proof("k", 1, 'a', &ch, &sh, &ac, b);
    assert_false(rpc_mac_equal(a, b));
    /* and it travels in the version-3 ACCEPT, which is refused without it */
    uint8_t buf[256];
    memcpy(ac.proof, a, RPC_MAC);
    long n = rpc_hello_encode(&ac, buf, sizeof buf);
    assert_true(n > 0);
    rpc_hello got;
    assert_int_equal(rpc_hello_parse(buf, (size_t)n, &got), n);
    assert_memory_equal(got.proof, a, RPC_MAC);
    ac.version = 2;
    long n2 = rpc_hello_encode(&ac, buf, sizeof buf); /* the shorter version-2 body */
    buf[4] = 3;                                       /* claimed as version 3 */
    assert_int_equal(rpc_hello_parse(buf, (size_t)n2, &got), DHPS_E_MALFORMED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(frame_roundtrip_and_bounds),
        cmocka_unit_test(hello_roundtrip),
        cmocka_unit_test(proofs_bind_secret_and_nonces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
