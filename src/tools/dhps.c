/*
 * dhps: the command-line tool. One binary, subcommands dispatched from a const table.
 *
 * Each command lives in its own file of src/tools (docs/tools.md); `sim` needs only the
 * route library, the others the client and cluster libraries (noclient.c otherwise).
 */
#include <stdio.h>
#include <string.h>

#include "dhps/proto.h"

int dhps_cmd_sim(int argc, char **argv);
int dhps_cmd_map(int argc, char **argv);
int dhps_cmd_nodes(int argc, char **argv);
int dhps_cmd_load(int argc, char **argv);
int dhps_cmd_up(int argc, char **argv);
int dhps_cmd_down(int argc, char **argv);
int dhps_cmd_start(int argc, char **argv);
int dhps_cmd_stop(int argc, char **argv);
int dhps_cmd_restart(int argc, char **argv);
int dhps_cmd_get(int argc, char **argv);
int dhps_cmd_put(int argc, char **argv);
int dhps_cmd_delete(int argc, char **argv);
int dhps_cmd_info(int argc, char **argv);
int dhps_cmd_stats(int argc, char **argv);
int dhps_cmd_snapshot(int argc, char **argv);
int dhps_cmd_bench(int argc, char **argv);
int dhps_cmd_chaos(int argc, char **argv);
int dhps_cmd_fault(int argc, char **argv);
int dhps_cmd_traffic(int argc, char **argv);
int dhps_cmd_node(int argc, char **argv);
int dhps_cmd_rebalance(int argc, char **argv);
int dhps_cmd_controller(int argc, char **argv);
int dhps_cmd_membership(int argc, char **argv);
int dhps_cmd_keygen(int argc, char **argv);

struct dhps_cmd {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the subcommand name */
    const char *help;
};

static const struct dhps_cmd dhps_cmds[] = {
    {"sim", dhps_cmd_sim, "simulate traffic through the router; `sim churn`: membership"},
    {"map", dhps_cmd_map, "check or generate a cluster map file; publish/show it in etcd"},
    {"nodes", dhps_cmd_nodes, "nodes registered in etcd (--etcd URL --cluster NAME)"},
    {"load", dhps_cmd_load, "bulk-load a table from a dhps table file or a .npy array"},
    {"up", dhps_cmd_up, "start a local cluster, load a sample table, run a workload"},
    {"down", dhps_cmd_down, "stop every node of the local cluster started by `dhps up`"},
    {"start", dhps_cmd_start, "start one node (--node N) or all nodes of a `dhps up` cluster"},
    {"stop", dhps_cmd_stop, "stop one node (--node N) or all nodes of a `dhps up` cluster"},
    {"restart", dhps_cmd_restart, "stop, then start, one node or all nodes of a cluster"},
    {"get", dhps_cmd_get, "print the vectors of keys"},
    {"put", dhps_cmd_put, "write one key's vector"},
    {"delete", dhps_cmd_delete, "delete keys (every replica acks)"},
    {"info", dhps_cmd_info, "a table's dim, dtype, shards; per node: serving, ready"},
    {"stats", dhps_cmd_stats, "per-node table statistics (STATS)"},
    {"snapshot", dhps_cmd_snapshot, "snapshot every node now (SNAPSHOT)"},
    {"bench", dhps_cmd_bench, "lookup/update workloads, optionally beside redis and memcached"},
    {"chaos", dhps_cmd_chaos, "availability under killed, stopped and slowed nodes"},
    {"fault", dhps_cmd_fault, "set/clear/list a node's server-side rpc fault rules (/fault)"},
    {"traffic", dhps_cmd_traffic, "steady lookups; per interval, where the traffic goes"},
    {"node", dhps_cmd_node, "add|drain|remove|replace a node of a cluster whose map is in etcd"},
    {"rebalance", dhps_cmd_rebalance, "move shards to the placement (--dry-run: print the moves)"},
    {"controller", dhps_cmd_controller, "daemon: drive pending moves, re-replicate dead nodes"},
    {"membership", dhps_cmd_membership, "grow, shrink, replace, kill under load (etcd); JSON"},
    {"keygen", dhps_cmd_keygen, "write a new cluster secret file (32 random bytes, or a passphrase file; 0600)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dhps <command> [options]   (dhps <command> --help; dhps --version)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof dhps_cmds / sizeof dhps_cmds[0]; i++)
        fprintf(f, "  %-8s %s\n", dhps_cmds[i].name, dhps_cmds[i].help);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    /* --version anywhere before a subcommand's own arguments end: `dhps --version`,
     * `dhps get --version` */
    for (int i = 1; i < argc && i < 3; i++)
        if (!strcmp(argv[i], "--version")) {
            printf("dhps %s (protocol %d)\n", DHPS_VERSION_STRING, DHPS_PROTO_VERSION);
            return 0;
        }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof dhps_cmds / sizeof dhps_cmds[0]; i++)
        if (!strcmp(argv[1], dhps_cmds[i].name))
            return dhps_cmds[i].run(argc - 1, argv + 1);
    fprintf(stderr, "dhps: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
