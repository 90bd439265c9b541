/*
 * dhps-bench: benchmarks that print dhps beside peers measured in the same run.
 *
 *   dhps-bench <subcommand> [options]      dhps-bench <subcommand> --help
 *
 * To add a subcommand (e.g. "rpc"), write `int bench_rpc_main(int, char **)`, declare
 * it in bench.h and add one line to the table below.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

typedef struct bench_cmd {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *summary;
} bench_cmd;

static const bench_cmd bench_cmds[] = {
    {"store", bench_store_main,
     "store engine: batched lookups, upserts, memory; --peers adds std::unordered_map, "
     "absl::flat_hash_map, DPDK rte_hash"},
    {"rpc", bench_rpc_main, "rpc library: one transport (tcp|shm|verbs), calls/s, GB/s, latency, CPU/call; --peers adds redis PING/GET"},
    {"route", bench_route_main, "route library: one pick + report (tiers, P2C, breakers, weights) beside random and round-robin choice"},
    {"sync", bench_sync_main, "replica catch-up from a peer (keys/s, MB/s, restart to ready) beside loading the node's own snapshot"},
    {"wal", bench_wal_main, "update log: appends/s and MB/s per fsync policy, pwrite vs io_uring; --server: upserts with the log on / off"},
    /* {"name", bench_name_main, "summary"},  -- one line per further subcommand */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: dhps-bench <subcommand> [options]   (<subcommand> --help for its options)\n"
               "subcommands:\n");
    for (size_t i = 0; i < sizeof bench_cmds / sizeof bench_cmds[0]; i++)
        fprintf(f, "  %-8s %s\n", bench_cmds[i].name, bench_cmds[i].summary);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("dhps-bench %s\n", DHPS_VERSION_STRING);
        return 0;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof bench_cmds / sizeof bench_cmds[0]; i++)
        if (!strcmp(argv[1], bench_cmds[i].name))
            return bench_cmds[i].main(argc - 1, argv + 1);
    fprintf(stderr, "dhps-bench: unknown subcommand '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
