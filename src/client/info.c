/* dhps_client_table_info: a table's dim and dtype from the nodes' INFO (contract in
 * include/dhps/client.h). */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_internal.h"

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Parse one INFO answer: 0 and *dim and *dtype when it lists table, DHPS_E_NOTFOUND when it
 * does not, DHPS_E_MALFORMED when it is not INFO JSON. */
static int info_parse(const char *text, size_t len, const char *table, uint32_t *dim,
                      int *dtype)
{
    json_t *o = json_loadb(text, len, 0, NULL), *t;
    json_t *tabs = json_object_get(o, "tables");
    int rc = json_is_array(tabs) ? DHPS_E_NOTFOUND : DHPS_E_MALFORMED;
    size_t i;
    json_array_foreach(tabs, i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        if (!name || strcmp(name, table))
            continue;
        json_int_t d = json_integer_value(json_object_get(t, "dim"));
        const char *ty = json_string_value(json_object_get(t, "dtype"));
        if (d <= 0 || d > UINT32_MAX || !ty || (strcmp(ty, "fp32") && strcmp(ty, "fp16"))) {
            rc = DHPS_E_MALFORMED;
            break;
        }
        *dim = (uint32_t)d;
        *dtype = strcmp(ty, "fp16") ? DHPS_FP32 : DHPS_FP16;
        rc = 0;
        break;
    }
    json_decref(o);
    return rc;
}

int dhps_client_table_info(dhps_client *c, const char *table, uint32_t *dim, int *dtype,
                           uint64_t timeout_us)
{
    if (!c || !table || !dim || !dtype || strlen(table) >= sizeof ((dhps_proto_hdr *)0)->table)
        return -EINVAL;
    if (!timeout_us)
        timeout_us = c->p.default_timeout_us;
    uint64_t deadline = mono_ns() + timeout_us * 1000;
    struct map_ref *mr = client_map_pin(c);
    if (!mr)
        return -ENOMEM;
    dhps_rpc_client *rc = NULL;
    size_t cap = 1u << 20;
    uint8_t *resp = malloc(cap);
    dhps_rpc_client_params cp;
    client_rpc_params(c, &cp);
    cp.max_msg = (uint32_t)cap;
    uint64_t tms = timeout_us / 1000;
    cp.connect_timeout_ms = tms ? (uint32_t)(tms < 60000 ? tms : 60000) : 1;
    int err = resp ? dhps_rpc_client_create(&cp, &rc) : -ENOMEM;
    int first = 0;        /* first failure other than "unknown table" */
    bool unknown = false, found = false;
    for (size_t i = 0; !err && !found && i < dhps_cluster_map_nnodes(mr->m); i++) {
        uint64_t now = mono_ns();
        if (now >= deadline) {
            first = first ? first : DHPS_E_TIMEOUT;
            break;
        }
        const dhps_cluster_node *nd = dhps_cluster_map_node_at(mr->m, i);
        dhps_rpc_channel_params chp;
        dhps_rpc_channel_params_init(&chp);
        chp.host = nd->ip;
        chp.port = nd->port;
        chp.allow = DHPS_RPC_MASK(DHPS_RPC_TCP);
        chp.tls = client_node_tls(c, nd);
        dhps_rpc_channel *ch = NULL;
        dhps_proto_hdr h = {.version = DHPS_PROTO_VERSION};
        snprintf(h.table, sizeof h.table, "%s", table);
        size_t len = 0;
        int e = dhps_rpc_channel_open(rc, &chp, &ch);
        if (!e) {
            now = mono_ns();
            e = now >= deadline ? DHPS_E_TIMEOUT
                                : dhps_rpc_call(ch, DHPS_M_INFO, &h, sizeof h, resp, cap, &len,
                                                (deadline - now) / 1000 + 1);
        }
        dhps_rpc_channel_close(ch);
        dhps_proto_resp r = {0};
        if (!e && len < sizeof r)
            e = DHPS_E_MALFORMED;
        if (!e) {
            memcpy(&r, resp, sizeof r);
            e = r.status > 0 ? DHPS_E_MALFORMED : r.status;
        }
        if (!e)
            e = info_parse((const char *)resp + sizeof r, len - sizeof r, table, dim, dtype);
        if (!e)
            found = true;
        else if (e == DHPS_E_NOTFOUND)
            unknown = true;
        else if (!first)
            first = e;
    }
    if (!err && !found)
        err = unknown ? DHPS_E_NOTFOUND : first ? first : DHPS_E_NOTFOUND;
    dhps_rpc_client_destroy(rc);
    free(resp);
    client_map_unref(mr);
    return err;
}
