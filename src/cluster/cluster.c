/*
 * Cluster map: parser, validation, accessors, writer. Design in include/dhps/cluster.h;
 * generation and placement in place.c, edits in edit.c.
 */
#include "dhps/cluster.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dhps/proto.h"
#include "cluster_int.h"


/* ---- error list ---------------------------------------------------------------------- */


void cl_eb_add(struct cl_errbuf *e, const char *fmt, ...)
{
    e->count++;
    if (!e->buf || e->cap == 0 || e->len + 1 >= e->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(e->buf + e->len, e->cap - e->len, fmt, ap);
    va_end(ap);
    if (w < 0)
        return;
    e->len += (size_t)w;
    if (e->len + 1 >= e->cap) {
        e->len = e->cap - 1;
        return;
    }
    e->buf[e->len++] = '\n';
    e->buf[e->len] = '\0';
}

void cl_eb_init(struct cl_errbuf *e, char *buf, size_t cap)
{
    e->buf = buf;
    e->cap = cap;
    e->len = 0;
    e->count = 0;
    if (buf && cap)
        buf[0] = '\0';
}

/* ---- helpers ------------------------------------------------------------------------- */

int dhps_cluster_addr_split(const char *addr, char *ip, size_t ipcap, uint16_t *port)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= ipcap)
        return -1;
    memcpy(ip, addr, (size_t)(colon - addr));
    ip[colon - addr] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, ip, &a) != 1)
        return -1;
    const char *p = colon + 1;
    if (!*p)
        return -1;
    unsigned long v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 65535)
            return -1;
    }
    if (v == 0)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

static int copy_label(const char *s, char *dst)
{
    size_t l = strlen(s);
    if (l > DHPS_CLUSTER_LABEL_MAX)
        return -1;
    memcpy(dst, s, l + 1);
    return 0;
}

/* Read one node object into *nd; problems go to e. Returns 0 when usable. */
static int parse_node(json_t *o, size_t i, dhps_cluster_node *nd, struct cl_errbuf *e)
{
    int bad = 0;
    memset(nd, 0, sizeof *nd);
    if (!json_is_object(o)) {
        cl_eb_add(e, "nodes[%zu]: not an object", i);
        return -1;
    }
    json_t *id = json_object_get(o, "id");
    if (!json_is_integer(id) || json_integer_value(id) < 0 ||
        json_integer_value(id) > (json_int_t)DHPS_CLUSTER_MAX_NODE_ID) {
        cl_eb_add(e, "nodes[%zu]: key \"id\" missing or not an integer in 0..%u", i,
               DHPS_CLUSTER_MAX_NODE_ID);
        return -1;
    }
    nd->id = (uint32_t)json_integer_value(id);
    static const char *const keys[3] = {"host", "pod", "az"};
    char *dst[3] = {nd->host, nd->pod, nd->az};
    for (int k = 0; k < 3; k++) {
        json_t *v = json_object_get(o, keys[k]);
        if (!v && k > 0)
            continue; /* pod and az are optional (empty = unknown) */
        /* host must be non-empty; pod and az may be "" (unknown) */
        if (!json_is_string(v) || (k == 0 && json_string_length(v) == 0) ||
            strlen(json_string_value(v)) != json_string_length(v) ||
            copy_label(json_string_value(v), dst[k]) < 0) {
            cl_eb_add(e, "node %u: key \"%s\" missing, empty, not a string or longer than %d bytes",
                   nd->id, keys[k], DHPS_CLUSTER_LABEL_MAX);
            bad = 1;
        }
    }
    json_t *addr = json_object_get(o, "addr");
    if (!json_is_string(addr) || json_string_length(addr) > DHPS_CLUSTER_ADDR_MAX ||
        strlen(json_string_value(addr)) != json_string_length(addr)) {
        cl_eb_add(e, "node %u: key \"addr\" missing or not a string \"ip:port\"", nd->id);
        bad = 1;
    } else {
        strcpy(nd->addr, json_string_value(addr));
        if (dhps_cluster_addr_split(nd->addr, nd->ip, sizeof nd->ip, &nd->port) < 0) {
            cl_eb_add(e, "node %u: key \"addr\": \"%s\" is not a numeric IPv4 \"ip:port\"", nd->id,
                   nd->addr);
            bad = 1;
        }
    }
    json_t *mp = json_object_get(o, "metrics_port");
    if (mp) {
        if (!json_is_integer(mp) || json_integer_value(mp) < 0 ||
            json_integer_value(mp) > 65535) {
            cl_eb_add(e, "node %u: key \"metrics_port\" not an integer in 0..65535", nd->id);
            bad = 1;
        } else {
            nd->metrics_port = (uint16_t)json_integer_value(mp);
        }
    }
    json_t *st = json_object_get(o, "state");
    if (st) {
        const char *v = json_is_string(st) ? json_string_value(st) : "";
        if (!strcmp(v, "active")) {
            nd->state = DHPS_NODE_ACTIVE;
        } else if (!strcmp(v, "draining")) {
            nd->state = DHPS_NODE_DRAINING;
        } else {
            cl_eb_add(e, "node %u: key \"state\" must be \"active\" or \"draining\"", nd->id);
            bad = 1;
        }
    }
    return bad ? -1 : 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Check the node list for duplicate ids and addresses. */
void cl_check_nodes(const dhps_cluster_node *nodes, size_t n, struct cl_errbuf *e)
{
    if (n == 0)
        return;
    uint8_t *seen = calloc(DHPS_CLUSTER_MAX_NODE_ID + 1, 1);
    const char **addrs = malloc(n * sizeof *addrs);
    if (!seen || !addrs) {
        cl_eb_add(e, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (seen[nodes[i].id]++)
            cl_eb_add(e, "nodes: duplicate node id %u", nodes[i].id);
        addrs[i] = nodes[i].addr;
    }
    qsort(addrs, n, sizeof *addrs, cmp_str);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(addrs[i], addrs[i - 1]) && (i < 2 || strcmp(addrs[i], addrs[i - 2])))
            cl_eb_add(e, "nodes: duplicate address %s", addrs[i]);
out:
    free(seen);
    free(addrs);
}

static int cmp_join(const void *a, const void *b)
{
    const dhps_cluster_join *x = a, *y = b;
    if (x->shard != y->shard)
        return x->shard < y->shard ? -1 : 1;
    if (x->node != y->node)
        return x->node < y->node ? -1 : 1;
    return 0;
}

static const char *host_of(const dhps_cluster_map *m, uint32_t id)
{
    return m->nodes[m->by_id[id]].host;
}

static bool known(const dhps_cluster_map *m, uint32_t id)
{
    return id <= m->max_id && m->by_id[id] >= 0;
}

/* Validate the joining entries of m (sorted; shards and nodes already checked). */
static void check_joins(const dhps_cluster_map *m, struct cl_errbuf *e)
{
    const uint32_t R = m->nreplicas;
    for (size_t i = 0; i < m->njoins;) {
        const uint32_t s = m->joins[i].shard;
        size_t end = i;
        while (end < m->njoins && m->joins[end].shard == s)
            end++;
        const uint32_t *r = m->shards + (size_t)s * R;
        bool pairs = true;
        if (end - i > R) {
            cl_eb_add(e, "shard %u: %zu joining entries, more than its %u replicas", s, end - i, R);
            pairs = false;
        }
        for (size_t k = i; k < end; k++) {
            const dhps_cluster_join *j = &m->joins[k];
            if (j->since > m->version)
                cl_eb_add(e, "shard %u: joining node %u: since %llu is newer than the map version "
                       "%llu", s, j->node, (unsigned long long)j->since,
                       (unsigned long long)m->version);
            if (!known(m, j->node)) {
                cl_eb_add(e, "shard %u: joining node %u is not in \"nodes\"", s, j->node);
                continue;
            }
            bool is_rep = false, repl_ok = false;
            for (uint32_t a = 0; a < R; a++) {
                is_rep |= r[a] == j->node;
                repl_ok |= r[a] == j->replaces;
            }
            if (is_rep)
                cl_eb_add(e, "shard %u: joining node %u is already a replica", s, j->node);
            if (!repl_ok)
                cl_eb_add(e, "shard %u: joining node %u replaces %u, which is not a replica", s,
                       j->node, j->replaces);
            if (is_rep || !repl_ok)
                continue;
            for (uint32_t a = 0; a < R; a++)
                if (r[a] != j->replaces && !strcmp(host_of(m, r[a]), host_of(m, j->node)))
                    cl_eb_add(e, "shard %u: joining node %u shares host %s with replica %u", s,
                           j->node, host_of(m, j->node), r[a]);
        }
        for (size_t k = i; pairs && k < end; k++) {
            const dhps_cluster_join *j = &m->joins[k];
            for (size_t l = i; l < k; l++) {
                const dhps_cluster_join *p = &m->joins[l];
                if (p->node == j->node) {
                    cl_eb_add(e, "shard %u: node %u joining twice", s, j->node);
                    continue;
                }
                if (p->replaces == j->replaces)
                    cl_eb_add(e, "shard %u: replica %u replaced twice (by nodes %u and %u)", s,
                           j->replaces, p->node, j->node);
                if (known(m, j->node) && known(m, p->node) &&
                    !strcmp(host_of(m, j->node), host_of(m, p->node)))
                    cl_eb_add(e, "shard %u: joining nodes %u and %u share host %s", s, p->node,
                           j->node, host_of(m, j->node));
            }
        }
        i = end;
    }
}

/* Build a map from parts (takes ownership of nodes, shards and joins; joins may be NULL
 * when njoins is 0) and validate placement and joins. On errors (e->count grew) frees
 * everything and returns DHPS_E_CONFIG. */
int cl_assemble(uint64_t version, uint32_t nshards, uint32_t nrep, dhps_cluster_node *nodes,
                    size_t nnodes, uint32_t *shards, dhps_cluster_join *joins, size_t njoins,
                    struct cl_errbuf *e, dhps_cluster_map **out)
{
    int rc = -ENOMEM;
    unsigned errs0 = e->count;
    dhps_cluster_map *m = calloc(1, sizeof *m);
    if (!m)
        goto fail;
    m->version = version;
    m->nshards = nshards;
    m->nreplicas = nrep;
    m->nnodes = nnodes;
    m->nodes = nodes;
    m->shards = shards;
    m->joins = joins;
    m->njoins = njoins;
    nodes = NULL;
    shards = NULL;
    joins = NULL;
    for (size_t i = 0; i < nnodes; i++)
        if (m->nodes[i].id > m->max_id)
            m->max_id = m->nodes[i].id;
    m->by_id = malloc(((size_t)m->max_id + 1) * sizeof *m->by_id);
    m->owned_off = calloc(nnodes + 1, sizeof *m->owned_off);
    m->owned = malloc(((size_t)nshards * nrep + 1) * sizeof *m->owned);
    if (!m->by_id || !m->owned_off || !m->owned)
        goto fail;
    for (size_t i = 0; i <= m->max_id; i++)
        m->by_id[i] = -1;
    for (size_t i = 0; i < nnodes; i++)
        if (m->by_id[m->nodes[i].id] < 0)
            m->by_id[m->nodes[i].id] = (int32_t)i;

    /* placement checks */
    for (uint32_t s = 0; s < nshards; s++) {
        const uint32_t *r = m->shards + (size_t)s * nrep;
        for (uint32_t a = 0; a < nrep; a++) {
            if (r[a] > m->max_id || m->by_id[r[a]] < 0) {
                cl_eb_add(e, "shard %u: unknown node id %u", s, r[a]);
                continue;
            }
            for (uint32_t b = 0; b < a; b++) {
                if (r[b] > m->max_id || m->by_id[r[b]] < 0)
                    continue;
                if (r[a] == r[b]) {
                    cl_eb_add(e, "shard %u: node %u listed twice", s, r[a]);
                } else if (!strcmp(m->nodes[m->by_id[r[a]]].host,
                                   m->nodes[m->by_id[r[b]]].host)) {
                    cl_eb_add(e, "shard %u: replicas %u and %u share host %s", s, r[b], r[a],
                           m->nodes[m->by_id[r[a]]].host);
                }
            }
        }
    }
    if (e->count != errs0) {
        rc = DHPS_E_CONFIG;
        goto fail;
    }
    if (m->njoins) {
        qsort(m->joins, m->njoins, sizeof *m->joins, cmp_join);
        check_joins(m, e);
        if (e->count != errs0) {
            rc = DHPS_E_CONFIG;
            goto fail;
        }
    }
    /* owned index: counting sort by node index */
    for (uint32_t s = 0; s < nshards; s++)
        for (uint32_t a = 0; a < nrep; a++)
            m->owned_off[m->by_id[m->shards[(size_t)s * nrep + a]] + 1]++;
    for (size_t i = 0; i < nnodes; i++)
        m->owned_off[i + 1] += m->owned_off[i];
    uint32_t *fill = calloc(nnodes + 1, sizeof *fill);
    if (!fill)
        goto fail;
    for (uint32_t s = 0; s < nshards; s++)
        for (uint32_t a = 0; a < nrep; a++) {
            int32_t ni = m->by_id[m->shards[(size_t)s * nrep + a]];
            m->owned[m->owned_off[ni] + fill[ni]++] = s;
        }
    free(fill);
    /* held index: replicas and joining entries, shard by shard so each list ascends */
    m->held_off = calloc(nnodes + 1, sizeof *m->held_off);
    m->held = malloc(((size_t)nshards * nrep + m->njoins + 1) * sizeof *m->held);
    fill = calloc(nnodes + 1, sizeof *fill);
    if (!m->held_off || !m->held || !fill) {
        free(fill);
        goto fail;
    }
    for (size_t i = 0; i < nnodes; i++)
        m->held_off[i + 1] = m->owned_off[i + 1] - m->owned_off[i];
    for (size_t k = 0; k < m->njoins; k++)
        m->held_off[m->by_id[m->joins[k].node] + 1]++;
    for (size_t i = 0; i < nnodes; i++)
        m->held_off[i + 1] += m->held_off[i];
    for (uint32_t s = 0, k = 0; s < nshards; s++) {
        for (uint32_t a = 0; a < nrep; a++) {
            int32_t ni = m->by_id[m->shards[(size_t)s * nrep + a]];
            m->held[m->held_off[ni] + fill[ni]++] = s;
        }
        for (; k < m->njoins && m->joins[k].shard == s; k++) {
            int32_t ni = m->by_id[m->joins[k].node];
            m->held[m->held_off[ni] + fill[ni]++] = s;
        }
    }
    free(fill);
    *out = m;
    return 0;
fail:
    free(nodes);
    free(shards);
    free(joins);
    dhps_cluster_map_destroy(m);
    return rc;
}

/* ---- parse --------------------------------------------------------------------------- */

static int parse_nodes_array(json_t *arr, dhps_cluster_node **nodes, size_t *n, struct cl_errbuf *e)
{
    size_t cnt = json_array_size(arr);
    if (cnt > DHPS_CLUSTER_MAX_NODES) {
        cl_eb_add(e, "nodes: more than %u nodes", DHPS_CLUSTER_MAX_NODES);
        return DHPS_E_CONFIG;
    }
    dhps_cluster_node *v = calloc(cnt ? cnt : 1, sizeof *v);
    if (!v)
        return -ENOMEM;
    unsigned errs0 = e->count;
    for (size_t i = 0; i < cnt; i++)
        parse_node(json_array_get(arr, i), i, &v[i], e);
    if (e->count == errs0)
        cl_check_nodes(v, cnt, e);
    if (e->count != errs0) {
        free(v);
        return DHPS_E_CONFIG;
    }
    *nodes = v;
    *n = cnt;
    return 0;
}

static json_t *load_json(const void *buf, size_t len, struct cl_errbuf *e)
{
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        cl_eb_add(e, "JSON error at line %d column %d: %s", je.line, je.column, je.text);
    return root;
}

int dhps_cluster_map_parse(const void *buf, size_t len, dhps_cluster_map **out, char *err,
                           size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!out || (!buf && len)) {
        cl_eb_add(&e, "invalid arguments");
        return -EINVAL;
    }
    *out = NULL;
    dhps_cluster_node *nodes = NULL;
    uint32_t *shards = NULL;
    dhps_cluster_join *joins = NULL;
    size_t nnodes = 0, njoins = 0;
    int rc = DHPS_E_CONFIG;
    json_t *root = load_json(buf ? buf : "", len, &e);
    if (!root)
        return DHPS_E_MALFORMED;
    if (!json_is_object(root)) {
        cl_eb_add(&e, "top level: not an object");
        goto done;
    }
    json_t *jv = json_object_get(root, "version");
    json_t *jn = json_object_get(root, "nshards");
    json_t *jr = json_object_get(root, "replicas");
    json_t *jnodes = json_object_get(root, "nodes");
    json_t *jsh = json_object_get(root, "shards");
    if (!json_is_integer(jv) || json_integer_value(jv) < 0)
        cl_eb_add(&e, "key \"version\": missing or not a non-negative integer");
    if (!json_is_integer(jn) || json_integer_value(jn) < 1 ||
        json_integer_value(jn) > (json_int_t)DHPS_CLUSTER_MAX_SHARDS)
        cl_eb_add(&e, "key \"nshards\": missing or not an integer in 1..%u",
                  DHPS_CLUSTER_MAX_SHARDS);
    if (!json_is_integer(jr) || json_integer_value(jr) < 1 ||
        json_integer_value(jr) > (json_int_t)DHPS_CLUSTER_MAX_REPLICAS)
        cl_eb_add(&e, "key \"replicas\": missing or not an integer in 1..%u",
               DHPS_CLUSTER_MAX_REPLICAS);
    if (!json_is_array(jnodes) || json_array_size(jnodes) == 0)
        cl_eb_add(&e, "key \"nodes\": missing, not an array, or empty");
    if (!json_is_array(jsh))
        cl_eb_add(&e, "key \"shards\": missing or not an array");
    json_t *jjoin = json_object_get(root, "joining");
    if (jjoin && !json_is_array(jjoin))
        cl_eb_add(&e, "key \"joining\": not an array");
    if (e.count)
        goto done;
    uint32_t nshards = (uint32_t)json_integer_value(jn);
    uint32_t nrep = (uint32_t)json_integer_value(jr);
    if (json_array_size(jsh) != nshards) {
        cl_eb_add(&e, "key \"shards\": %zu entries but nshards is %u", json_array_size(jsh),
                  nshards);
        goto done;
    }
    rc = parse_nodes_array(jnodes, &nodes, &nnodes, &e);
    if (rc < 0)
        goto done;
    rc = DHPS_E_CONFIG;
    shards = malloc((size_t)nshards * nrep * sizeof *shards);
    if (!shards) {
        rc = -ENOMEM;
        goto done;
    }
    for (uint32_t s = 0; s < nshards; s++) {
        json_t *r = json_array_get(jsh, s);
        if (!json_is_array(r)) {
            cl_eb_add(&e, "shard %u: not an array of node ids", s);
            continue;
        }
        size_t k = json_array_size(r);
        if (k == 0) {
            cl_eb_add(&e, "shard %u: no replicas", s);
            continue;
        }
        if (k != nrep) {
            cl_eb_add(&e, "shard %u: %zu replicas, expected %u", s, k, nrep);
            continue;
        }
        for (size_t a = 0; a < k; a++) {
            json_t *id = json_array_get(r, a);
            if (!json_is_integer(id) || json_integer_value(id) < 0 ||
                json_integer_value(id) > (json_int_t)DHPS_CLUSTER_MAX_NODE_ID) {
                cl_eb_add(&e, "shard %u: replica %zu is not a node id", s, a);
                shards[(size_t)s * nrep + a] = 0;
                continue;
            }
            shards[(size_t)s * nrep + a] = (uint32_t)json_integer_value(id);
        }
    }
    njoins = jjoin ? json_array_size(jjoin) : 0;
    if (njoins > (size_t)nshards * nrep) {
        cl_eb_add(&e, "key \"joining\": %zu entries, more than nshards x replicas", njoins);
        goto done;
    }
    if (njoins && !(joins = calloc(njoins, sizeof *joins))) {
        rc = -ENOMEM;
        goto done;
    }
    for (size_t i = 0; i < njoins; i++) {
        json_t *o = json_array_get(jjoin, i);
        if (!json_is_object(o)) {
            cl_eb_add(&e, "joining[%zu]: not an object", i);
            continue;
        }
        static const char *const jk[4] = {"shard", "node", "replaces", "since"};
        json_int_t v[4];
        const json_int_t lim[4] = {(json_int_t)nshards - 1, DHPS_CLUSTER_MAX_NODE_ID,
                                   DHPS_CLUSTER_MAX_NODE_ID, INT64_MAX};
        for (int k = 0; k < 4; k++) {
            json_t *x = json_object_get(o, jk[k]);
            v[k] = json_is_integer(x) ? json_integer_value(x) : -1;
            if (v[k] < 0 || v[k] > lim[k])
                cl_eb_add(&e, "joining[%zu]: key \"%s\" missing or not an integer in 0..%lld", i,
                       jk[k], (long long)lim[k]);
        }
        joins[i] = (dhps_cluster_join){(uint32_t)v[0], (uint32_t)v[1], (uint32_t)v[2],
                                       (uint64_t)v[3]};
    }
    if (e.count)
        goto done;
    rc = cl_assemble((uint64_t)json_integer_value(jv), nshards, nrep, nodes, nnodes, shards, joins,
                  njoins, &e, out);
    nodes = NULL;
    shards = NULL;
    joins = NULL;
done:
    free(nodes);
    free(shards);
    free(joins);
    json_decref(root);
    if (rc == 0 && *out == NULL)
        rc = DHPS_E_CONFIG;
    return rc;
}

static int read_file(const char *path, char **buf, size_t *len, struct cl_errbuf *e)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        cl_eb_add(e, "%s: %s", path, strerror(errno));
        return rc;
    }
    int rc = 0;
    size_t cap = 16384, n = 0;
    char *b = malloc(cap);
    if (!b) {
        rc = -ENOMEM;
        goto out;
    }
    for (;;) {
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                rc = -ENOMEM;
                goto out;
            }
            b = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, b + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            cl_eb_add(e, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *buf = b;
    *len = n;
    b = NULL;
out:
    free(b);
    close(fd);
    return rc;
}

int dhps_cluster_map_load(const char *path, dhps_cluster_map **out, char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!path || !out)
        return -EINVAL;
    *out = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc = read_file(path, &buf, &len, &e);
    if (rc < 0)
        return rc;
    rc = dhps_cluster_map_parse(buf, len, out, err, errlen);
    free(buf);
    return rc;
}

int dhps_cluster_nodes_parse(const void *buf, size_t len, dhps_cluster_node **nodes, size_t *n,
                             char *err, size_t errlen)
{
    struct cl_errbuf e;
    cl_eb_init(&e, err, errlen);
    if (!nodes || !n || (!buf && len))
        return -EINVAL;
    json_t *root = load_json(buf ? buf : "", len, &e);
    if (!root)
        return DHPS_E_MALFORMED;
    json_t *arr = json_is_object(root) ? json_object_get(root, "nodes") : root;
    int rc;
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        cl_eb_add(&e, "node list: expected a non-empty array of nodes or {\"nodes\": [...]}");
        rc = DHPS_E_CONFIG;
    } else {
        rc = parse_nodes_array(arr, nodes, n, &e);
    }
    json_decref(root);
    return rc;
}

void dhps_cluster_map_destroy(dhps_cluster_map *m)
{
    if (!m)
        return;
    free(m->nodes);
    free(m->by_id);
    free(m->shards);
    free(m->owned_off);
    free(m->owned);
    free(m->joins);
    free(m->held_off);
    free(m->held);
    free(m);
}

/* ---- accessors ----------------------------------------------------------------------- */

uint64_t dhps_cluster_map_version(const dhps_cluster_map *m) { return m->version; }
uint32_t dhps_cluster_map_nshards(const dhps_cluster_map *m) { return m->nshards; }
uint32_t dhps_cluster_map_nreplicas(const dhps_cluster_map *m) { return m->nreplicas; }
size_t dhps_cluster_map_nnodes(const dhps_cluster_map *m) { return m->nnodes; }
uint32_t dhps_cluster_map_max_node_id(const dhps_cluster_map *m) { return m->max_id; }

const dhps_cluster_node *dhps_cluster_map_node_at(const dhps_cluster_map *m, size_t i)
{
    return (m && i < m->nnodes) ? &m->nodes[i] : NULL;
}

const dhps_cluster_node *dhps_cluster_map_node(const dhps_cluster_map *m, uint32_t id)
{
    if (!m || id > m->max_id || m->by_id[id] < 0)
        return NULL;
    return &m->nodes[m->by_id[id]];
}

uint32_t dhps_cluster_map_shard_of(const dhps_cluster_map *m, uint64_t key)
{
    return dhps_proto_shard_of(key, m->nshards);
}

int dhps_cluster_map_replicas(const dhps_cluster_map *m, uint32_t shard, const uint32_t **ids)
{
    if (!m || !ids || shard >= m->nshards)
        return -EINVAL;
    *ids = m->shards + (size_t)shard * m->nreplicas;
    return (int)m->nreplicas;
}

size_t dhps_cluster_map_shards_of(const dhps_cluster_map *m, uint32_t node_id, uint32_t *out,
                                  size_t cap)
{
    if (!m || node_id > m->max_id || m->by_id[node_id] < 0)
        return 0;
    int32_t i = m->by_id[node_id];
    size_t cnt = m->owned_off[i + 1] - m->owned_off[i];
    for (size_t k = 0; k < cnt && k < cap; k++)
        out[k] = m->owned[m->owned_off[i] + k];
    return cnt;
}

bool dhps_cluster_map_owns(const dhps_cluster_map *m, uint32_t node_id, uint32_t shard)
{
    if (!m || shard >= m->nshards)
        return false;
    const uint32_t *r = m->shards + (size_t)shard * m->nreplicas;
    for (uint32_t a = 0; a < m->nreplicas; a++)
        if (r[a] == node_id)
            return true;
    return false;
}

size_t dhps_cluster_map_njoining(const dhps_cluster_map *m) { return m ? m->njoins : 0; }

const dhps_cluster_join *dhps_cluster_map_join_at(const dhps_cluster_map *m, size_t i)
{
    return (m && i < m->njoins) ? &m->joins[i] : NULL;
}

/* Index of the first joining entry with shard >= s. */
static size_t join_lower(const dhps_cluster_map *m, uint32_t s)
{
    size_t lo = 0, hi = m->njoins;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->joins[mid].shard < s)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int dhps_cluster_map_joining(const dhps_cluster_map *m, uint32_t shard,
                             const dhps_cluster_join **out)
{
    if (!m || !out || shard >= m->nshards)
        return -EINVAL;
    size_t i = join_lower(m, shard), k = i;
    while (k < m->njoins && m->joins[k].shard == shard)
        k++;
    *out = k > i ? &m->joins[i] : NULL;
    return (int)(k - i);
}

bool dhps_cluster_map_holds(const dhps_cluster_map *m, uint32_t node, uint32_t shard)
{
    if (dhps_cluster_map_owns(m, node, shard))
        return true;
    if (!m || shard >= m->nshards)
        return false;
    for (size_t i = join_lower(m, shard); i < m->njoins && m->joins[i].shard == shard; i++)
        if (m->joins[i].node == node)
            return true;
    return false;
}

size_t dhps_cluster_map_holdings_of(const dhps_cluster_map *m, uint32_t node, uint32_t *out,
                                    size_t cap)
{
    if (!m || node > m->max_id || m->by_id[node] < 0)
        return 0;
    int32_t i = m->by_id[node];
    size_t cnt = m->held_off[i + 1] - m->held_off[i];
    for (size_t k = 0; k < cnt && k < cap; k++)
        out[k] = m->held[m->held_off[i] + k];
    return cnt;
}

/* ---- write --------------------------------------------------------------------------- */

static int sb_printf(char **b, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int sb_printf(char **b, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(*b + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (w < 0)
            return -1;
        if ((size_t)w < *cap - *len) {
            *len += (size_t)w;
            return 0;
        }
        size_t nc = (*cap + (size_t)w) * 2;
        char *nb = realloc(*b, nc);
        if (!nb)
            return -1;
        *b = nb;
        *cap = nc;
    }
}

/* JSON string escaping for labels (they come from validated input but may hold '"'). */
static char *json_str(const char *s)
{
    json_t *j = json_string(s);
    char *r = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    return r;
}

char *dhps_cluster_map_to_json(const dhps_cluster_map *m)
{
    if (!m)
        return NULL;
    size_t cap = 4096 + m->nnodes * 200 + (size_t)m->nshards * (m->nreplicas * 7 + 8), len = 0;
    char *b = malloc(cap);
    if (!b)
        return NULL;
    b[0] = '\0';
    if (sb_printf(&b, &len, &cap,
                  "{\n  \"version\": %llu,\n  \"nshards\": %u,\n  \"replicas\": %u,\n"
                  "  \"nodes\": [\n", (unsigned long long)m->version, m->nshards,
                  m->nreplicas) < 0)
        goto fail;
    for (size_t i = 0; i < m->nnodes; i++) {
        const dhps_cluster_node *nd = &m->nodes[i];
        char *h = json_str(nd->host), *p = json_str(nd->pod), *a = json_str(nd->az);
        char *ad = json_str(nd->addr);
        int w = (h && p && a && ad) ?
            sb_printf(&b, &len, &cap, "    {\"id\": %u, \"host\": %s, \"pod\": %s, \"az\": %s, "
                      "\"addr\": %s", nd->id, h, p, a, ad) : -1;
        free(h);
        free(p);
        free(a);
        free(ad);
        if (w < 0)
            goto fail;
        if (nd->metrics_port && sb_printf(&b, &len, &cap, ", \"metrics_port\": %u",
                                          nd->metrics_port) < 0)
            goto fail;
        if (nd->state == DHPS_NODE_DRAINING &&
            sb_printf(&b, &len, &cap, ", \"state\": \"draining\"") < 0)
            goto fail;
        if (sb_printf(&b, &len, &cap, "}%s\n", i + 1 < m->nnodes ? "," : "") < 0)
            goto fail;
    }
    if (sb_printf(&b, &len, &cap, "  ],\n") < 0)
        goto fail;
    if (m->njoins && sb_printf(&b, &len, &cap, "  \"joining\": [\n") < 0)
        goto fail;
    for (size_t k = 0; k < m->njoins; k++) {
        const dhps_cluster_join *j = &m->joins[k];
        if (sb_printf(&b, &len, &cap, "    {\"shard\": %u, \"node\": %u, \"replaces\": %u, "
                      "\"since\": %llu}%s\n", j->shard, j->node, j->replaces,
                      (unsigned long long)j->since, k + 1 < m->njoins ? "," : "") < 0)
            goto fail;
    }
    if (m->njoins && sb_printf(&b, &len, &cap, "  ],\n") < 0)
        goto fail;
    if (sb_printf(&b, &len, &cap, "  \"shards\": [\n") < 0)
        goto fail;
    for (uint32_t s = 0; s < m->nshards; s++) {
        if (sb_printf(&b, &len, &cap, "    [") < 0)
            goto fail;
        for (uint32_t a = 0; a < m->nreplicas; a++)
            if (sb_printf(&b, &len, &cap, "%s%u", a ? ", " : "",
                          m->shards[(size_t)s * m->nreplicas + a]) < 0)
                goto fail;
        if (sb_printf(&b, &len, &cap, "]%s\n", s + 1 < m->nshards ? "," : "") < 0)
            goto fail;
    }
    if (sb_printf(&b, &len, &cap, "  ]\n}\n") < 0)
        goto fail;
    return b;
fail:
    free(b);
    return NULL;
}

int dhps_cluster_map_write(const dhps_cluster_map *m, const char *path)
{
    if (!m || !path)
        return -EINVAL;
    int rc = 0, fd = -1;
    char *json = dhps_cluster_map_to_json(m);
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!json || !tmp) {
        rc = -ENOMEM;
        goto out;
    }
    snprintf(tmp, plen + 16, "%s.tmpXXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    fchmod(fd, 0644);
    size_t len = strlen(json), off = 0;
    while (off < len) {
        ssize_t w = write(fd, json + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd) < 0) {
        rc = -errno;
        goto out;
    }
    int crc = close(fd);
    fd = -1;
    if (crc < 0) {
        rc = -errno;
        goto out;
    }
    if (rename(tmp, path) < 0) {
        rc = -errno;
        goto out;
    }
out:
    if (fd >= 0)
        close(fd);
    if (rc < 0 && tmp)
        unlink(tmp);
    free(tmp);
    free(json);
    return rc;
}
