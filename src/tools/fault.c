/*
 * dhps fault: set, clear and list the server-side rpc fault rules of running
 * dhps-server nodes, through each node's /fault admin endpoint (docs/server.md; the node
 * must have "admin": {"faults": true} in its config).
 *
 *   dhps fault set   --node N|all [target] [--peer IP|*] [--port P] [--delay-us US]
 *                    [--delay-percent P] [--drop-percent P] [--partition] [--seed S]
 *   dhps fault clear --node N|all [target] (--peer IP|* [--port P] | --all)
 *   dhps fault list  --node N|all [target] [--json]
 *
 * target: --cluster DIR (DIR/cluster.json of `dhps up`: each node's metrics port, its
 * config's metrics.host, the secret file) or --addr HOST:PORT --secret FILE (one node).
 * Requests are signed with the cluster secret: X-Dhps-Auth: "<ts> <hex
 * HMAC-SHA256(secret, "dhps-admin-v1\n" method "\n/fault\npeer=" peer "\nport=" port
 * "\nall=" all "\n" ts "\n" body)>", ts being "<unix seconds>.<16 hex digits of random
 * nonce>": the server refuses a signed request it has already accepted (replay).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "toolsclient.h"
#include "secret.h"
#include "util.h"
#include "dhps/rpc.h"

int dhps_cmd_fault(int argc, char **argv);

static const char fault_usage[] =
    "usage: dhps fault set   --node N|all [target] [--peer IP|*] [--port P] [--delay-us US]\n"
    "                        [--delay-percent P] [--drop-percent P] [--partition] [--seed S]\n"
    "       dhps fault clear --node N|all [target] (--peer IP|* [--port P] | --all)\n"
    "       dhps fault list  --node N|all [target] [--json]\n"
    "target: --cluster DIR (default $DHPS_CLUSTER_DIR or ./dhps-cluster), or\n"
    "        --addr HOST:PORT --secret FILE (a node's metrics address)\n"
    "Rules apply to rpc requests the node receives from peer (numeric IPv4; port 0 = any\n"
    "port; '*' = every peer without a rule of its own; default '*'). The node must run with\n"
    "\"admin\": {\"faults\": true}.\n";

#define FAULT_MAX_NODES 1024

typedef struct fnode {
    int id;
    char host[64];
    uint16_t port;
} fnode;

/* Parse an unsigned decimal in [0, max]. */
static bool parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno || v > max)
        return false;
    *out = v;
    return true;
}

/* Nodes of DIR/cluster.json (all, or only id `want` >= 0). Returns the count or -1. */
static int nodes_from_cluster(const char *dir, int want, fnode *nd, char *secret_path,
                              size_t splen)
{
    char p[4096];
    snprintf(p, sizeof p, "%s/cluster.json", dir);
    json_error_t je;
    json_t *cj = json_load_file(p, 0, &je);
    if (!cj) {
        fprintf(stderr, "dhps fault: no cluster at %s (%s); name one with --cluster DIR or "
                "--addr HOST:PORT --secret FILE\n", dir, je.text);
        return -1;
    }
    const char *sec = json_string_value(json_object_get(cj, "secret"));
    if (!sec) {
        fprintf(stderr, "dhps fault: %s: no \"secret\"\n", p);
        json_decref(cj);
        return -1;
    }
    snprintf(secret_path, splen, "%s", sec);
    int n = 0;
    size_t i;
    json_t *jn;
    json_array_foreach(json_object_get(cj, "nodes"), i, jn) {
        json_t *jid = json_object_get(jn, "id");
        int id = jid ? (int)json_integer_value(jid) : (int)i;
        if ((want >= 0 && id != want) || n >= FAULT_MAX_NODES)
            continue;
        nd[n].id = id;
        nd[n].port = (uint16_t)json_integer_value(json_object_get(jn, "metrics_port"));
        snprintf(nd[n].host, sizeof nd[n].host, "127.0.0.1");
        const char *cfgp = json_string_value(json_object_get(jn, "config"));
        json_t *cfg = cfgp ? json_load_file(cfgp, 0, NULL) : NULL;
        const char *mh = json_string_value(json_object_get(json_object_get(cfg, "metrics"),
                                                           "host"));
        if (mh && strcmp(mh, "0.0.0.0") != 0)
            snprintf(nd[n].host, sizeof nd[n].host, "%s", mh);
        json_decref(cfg);
        if (nd[n].port == 0) {
            fprintf(stderr, "dhps fault: node %d in %s has no metrics port\n", id, p);
            json_decref(cj);
            return -1;
        }
        n++;
    }
    json_decref(cj);
    if (n == 0)
        fprintf(stderr, "dhps fault: no node %d in %s\n", want, p);
    return n ? n : -1;
}

/* X-Dhps-Auth value for a request (see the header comment). */
static int sign(const uint8_t *key, size_t klen, const char *method, const char *peer,
                const char *port, const char *all, const char *body, char out[128])
{
    char ts[64];
    uint8_t nonce[8]; /* each change signed anew: the server refuses a replayed MAC */
    if (RAND_bytes(nonce, sizeof nonce) != 1)
        return -EIO;
    int t = snprintf(ts, sizeof ts, "%lld.", (long long)time(NULL));
    for (size_t i = 0; i < sizeof nonce; i++)
        t += snprintf(ts + t, sizeof ts - (size_t)t, "%02x", nonce[i]);
    char *msg = NULL;
    int n = asprintf(&msg, "dhps-admin-v1\n%s\n/fault\npeer=%s\nport=%s\nall=%s\n%s\n%s",
                     method, peer, port, all, ts, body);
    if (n < 0)
        return -ENOMEM;
    uint8_t mac[32];
    unsigned int ml = 0;
    uint8_t *r = HMAC(EVP_sha256(), key, (int)klen, (const uint8_t *)msg, (size_t)n, mac, &ml);
    free(msg);
    if (!r || ml != 32)
        return -EIO;
    int k = snprintf(out, 128, "%s ", ts);
    for (int i = 0; i < 32; i++)
        k += snprintf(out + k, (size_t)(128 - k), "%02x", mac[i]);
    return 0;
}

/* One HTTP/1.0 exchange with host:port (10 s bound). Returns the status (or -1 with
 * the reason on stderr) and sets *resp to the malloc'ed body. */
static int http(const fnode *nd, const char *method, const char *target, const char *auth,
                const char *body, char **resp)
{
    *resp = NULL;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(nd->port)};
    if (inet_pton(AF_INET, nd->host, &a.sin_addr) != 1) {
        fprintf(stderr, "dhps fault: node %d: bad address %s\n", nd->id, nd->host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {.tv_sec = 10};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        fprintf(stderr, "dhps fault: node %d: %s:%u: %s\n", nd->id, nd->host, nd->port,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    size_t blen = body ? strlen(body) : 0;
    char *req = NULL;
    int k = asprintf(&req, "%s %s HTTP/1.0\r\nHost: %s\r\n%s%s%s"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, target, nd->host, auth ? "X-Dhps-Auth: " : "", auth ? auth : "",
                     auth ? "\r\n" : "", blen, body ? body : "");
    int code = -1;
    char *buf = NULL;
    if (k < 0)
        goto out;
    for (size_t off = 0; off < (size_t)k;) {
        ssize_t w = write(fd, req + off, (size_t)k - off);
        if (w <= 0) {
            fprintf(stderr, "dhps fault: node %d: send: %s\n", nd->id, strerror(errno));
            goto out;
        }
        off += (size_t)w;
    }
    size_t cap = 1 << 16, len = 0;
    buf = malloc(cap);
    for (;;) {
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                goto out;
            buf = nb;
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    buf[len] = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1) {
        fprintf(stderr, "dhps fault: node %d: no HTTP answer from %s:%u\n", nd->id, nd->host,
                nd->port);
        code = -1;
        goto out;
    }
    char *b = strstr(buf, "\r\n\r\n");
    *resp = strdup(b ? b + 4 : "");
out:
    free(req);
    free(buf);
    close(fd);
    return code;
}

static void print_rules(const fnode *nd, const char *text)
{
    json_t *o = json_loads(text, 0, NULL);
    json_t *rules = json_object_get(o, "rules");
    printf("node %d (%s:%u): %zu rule%s\n", nd->id, nd->host, nd->port, json_array_size(rules),
           json_array_size(rules) == 1 ? "" : "s");
    if (json_array_size(rules))
        printf("  %-15s %5s %10s %6s %5s %9s %10s %10s %10s %11s\n", "peer", "port", "delay_us",
               "delay%", "drop%", "partition", "matched", "delayed", "dropped", "partitioned");
    size_t i;
    json_t *r;
    json_array_foreach(rules, i, r) {
#define I(k) ((long long)json_integer_value(json_object_get(r, k)))
        printf("  %-15s %5lld %10lld %6lld %5lld %9s %10lld %10lld %10lld %11lld\n",
               json_string_value(json_object_get(r, "peer")), I("port"), I("delay_us"),
               I("delay_percent"), I("drop_percent"),
               json_is_true(json_object_get(r, "partition")) ? "yes" : "no", I("matched"),
               I("delayed"), I("dropped"), I("partitioned"));
#undef I
    }
    json_decref(o);
}

int dhps_cmd_fault(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(fault_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *verb = argv[1];
    bool is_set = !strcmp(verb, "set"), is_clear = !strcmp(verb, "clear"),
         is_list = !strcmp(verb, "list");
    if (!is_set && !is_clear && !is_list) {
        fprintf(stderr, "dhps fault: unknown action '%s' (set, clear, list)\n%s", verb,
                fault_usage);
        return 2;
    }
    const char *node = NULL, *cluster = NULL, *addr = NULL, *secret = NULL, *peer = NULL;
    uint64_t port = 0, delay = 0, dpct = 100, drop = 0, seed = 0;
    bool partition = false, all = false, json = false, port_given = false;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true, takes = true;
        if (!strcmp(a, "--node"))
            node = v;
        else if (!strcmp(a, "--cluster") || !strcmp(a, "--dir"))
            cluster = v;
        else if (!strcmp(a, "--addr"))
            addr = v;
        else if (!strcmp(a, "--secret"))
            secret = v;
        else if (!strcmp(a, "--peer"))
            peer = v;
        else if (!strcmp(a, "--port"))
            ok = parse_u64(v, 65535, &port), port_given = true;
        else if (!strcmp(a, "--delay-us") && is_set)
            ok = parse_u64(v, 60000000, &delay);
        else if (!strcmp(a, "--delay-percent") && is_set)
            ok = parse_u64(v, 100, &dpct);
        else if (!strcmp(a, "--drop-percent") && is_set)
            ok = parse_u64(v, 100, &drop);
        else if (!strcmp(a, "--seed") && is_set)
            ok = parse_u64(v, (uint64_t)INT64_MAX, &seed);
        else if (!strcmp(a, "--partition") && is_set)
            partition = true, takes = false;
        else if (!strcmp(a, "--all") && is_clear)
            all = true, takes = false;
        else if (!strcmp(a, "--json"))
            json = true, takes = false;
        else {
            fprintf(stderr, "dhps fault %s: unknown option '%s'\n%s", verb, a, fault_usage);
            return 2;
        }
        if (takes && !v) {
            fprintf(stderr, "dhps fault %s: %s needs a value\n", verb, a);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "dhps fault %s: %s: bad value '%s' (%s)\n", verb, a, v,
                    !strcmp(a, "--port") ? "0..65535"
                    : !strcmp(a, "--delay-us") ? "0..60000000"
                    : !strcmp(a, "--seed") ? "an integer >= 0" : "0..100");
            return 2;
        }
        i += takes;
    }
    if (!node) {
        fprintf(stderr, "dhps fault %s: --node N|all is required\n", verb);
        return 2;
    }
    uint64_t want = 0;
    if (strcmp(node, "all") && !parse_u64(node, FAULT_MAX_NODES, &want)) {
        fprintf(stderr, "dhps fault %s: --node: bad value '%s' (a node id or 'all')\n", verb,
                node);
        return 2;
    }
    if (is_clear && !all && !peer) {
        fprintf(stderr, "dhps fault clear: name the rule with --peer IP|* [--port P], or "
                "--all\n");
        return 2;
    }
    if (is_clear && all && (peer || port_given)) {
        fprintf(stderr, "dhps fault clear: --all goes without --peer/--port\n");
        return 2;
    }
    if (!peer)
        peer = "*";
    if (!strcmp(peer, "*") && port) {
        fprintf(stderr, "dhps fault %s: --port needs a --peer address ('*' is every port "
                "of every peer)\n", verb);
        return 2;
    }
    struct in_addr ia;
    if (strcmp(peer, "*") && inet_pton(AF_INET, peer, &ia) != 1) {
        fprintf(stderr, "dhps fault %s: --peer: '%s' is not a numeric IPv4 address or '*'\n",
                verb, peer);
        return 2;
    }
    static fnode nd[FAULT_MAX_NODES];
    int n;
    char secret_path[4096];
    if (addr || secret) {
        if (!addr || !secret || cluster) {
            fprintf(stderr, "dhps fault %s: --addr and --secret go together, without "
                    "--cluster\n", verb);
            return 2;
        }
        const char *colon = strrchr(addr, ':');
        uint64_t mp = 0;
        if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof nd[0].host ||
            !parse_u64(colon + 1, 65535, &mp) || mp == 0) {
            fprintf(stderr, "dhps fault %s: --addr: want HOST:PORT, got '%s'\n", verb, addr);
            return 2;
        }
        nd[0].id = strcmp(node, "all") ? (int)want : 0;
        snprintf(nd[0].host, sizeof nd[0].host, "%.*s", (int)(colon - addr), addr);
        nd[0].port = (uint16_t)mp;
        snprintf(secret_path, sizeof secret_path, "%s", secret);
        n = 1;
    } else {
        n = nodes_from_cluster(cluster ? cluster : tools_default_dir(),
                               strcmp(node, "all") ? (int)want : -1, nd, secret_path,
                               sizeof secret_path);
        if (n < 0)
            return 1;
    }
    size_t slen = 0;
    uint8_t key[DHPS_RPC_MAX_SECRET];
    char serr[4200];
    if (dhps_secret_load(secret_path, key, sizeof key, &slen, serr, sizeof serr)) {
        fprintf(stderr, "dhps fault: %s\n", serr);
        return 1;
    }
    /* the request, the same for every node */
    char body[512] = "", target[256] = "/fault", ports[16] = "";
    const char *method = "GET";
    if (is_set) {
        method = "PUT";
        snprintf(body, sizeof body,
                 "{\"peer\":\"%s\",\"port\":%llu,\"delay_us\":%llu,\"delay_percent\":%llu,"
                 "\"drop_percent\":%llu,\"partition\":%s,\"seed\":%llu}", peer,
                 (unsigned long long)port, (unsigned long long)delay, (unsigned long long)dpct,
                 (unsigned long long)drop, partition ? "true" : "false",
                 (unsigned long long)seed);
    } else if (is_clear) {
        method = "DELETE";
        if (all) {
            snprintf(target, sizeof target, "/fault?all=true");
        } else {
            snprintf(ports, sizeof ports, "%llu", (unsigned long long)port);
            snprintf(target, sizeof target, "/fault?peer=%s&port=%s", peer, ports);
        }
    }
    int failed = 0;
    json_t *out = json ? json_array() : NULL;
    for (int i = 0; i < n; i++) {
        char auth[128], *resp = NULL;
        const char *sp = is_clear && !all ? peer : "";
        if (sign(key, slen, method, sp, ports, is_clear && all ? "true" : "",
                 body, auth)) {
            fprintf(stderr, "dhps fault: cannot sign the request\n");
            failed++;
            break;
        }
        int code = http(&nd[i], method, target, is_list ? NULL : auth, body, &resp);
        if (code != 200) {
            if (code > 0) {
                size_t l = strlen(resp);
                fprintf(stderr, "dhps fault %s: node %d: HTTP %d: %s%s", verb, nd[i].id, code,
                        resp, l && resp[l - 1] == '\n' ? "" : "\n");
            }
            failed++;
        } else if (json) {
            json_t *o = json_loads(resp, 0, NULL);
            json_array_append_new(out, json_pack("{s:i,s:s,s:i,s:o}", "node", nd[i].id,
                                                 "host", nd[i].host, "metrics_port",
                                                 (int)nd[i].port, "rules",
                                                 o && json_object_get(o, "rules")
                                                     ? json_incref(json_object_get(o, "rules"))
                                                     : json_array()));
            json_decref(o);
        } else if (is_list) {
            print_rules(&nd[i], resp);
        } else if (is_set) {
            printf("node %d: rule set: peer %s port %llu: delay %llu us (%llu%%), drop %llu%%, "
                   "partition %s\n", nd[i].id, peer, (unsigned long long)port,
                   (unsigned long long)delay, (unsigned long long)dpct,
                   (unsigned long long)drop, partition ? "yes" : "no");
        } else {
            printf("node %d: %s cleared\n", nd[i].id, all ? "every rule" : "rule");
        }
        free(resp);
    }
    if (out) {
        char *t = json_dumps(out, JSON_COMPACT);
        if (t)
            printf("%s\n", t);
        free(t);
        json_decref(out);
    }
    memset(key, 0, sizeof key);
    return failed ? 1 : 0;
}
