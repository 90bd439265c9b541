/* Entry point of `dhps-bench rpc` (bench/rpc_bench.c), force-included into the C files
 * of dhps-bench by the dhps_rpc_bench interface target (src/rpc/CMakeLists.txt), so
 * that bench/main.c's subcommand table can name it. */
#ifndef DHPS_BENCH_RPC_H
#define DHPS_BENCH_RPC_H
int bench_rpc_main(int argc, char **argv);
#endif
