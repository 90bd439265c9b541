/* Fuzz the CPU list parser of dhps bench --server-cpus (src/tools/tools.c): the first
 * byte picks the machine's CPU count (1..256), the rest is the list. An accepted list
 * sets only CPUs below the count, as many as it returns; the formatter's output has the
 * length it reports and parses back to the same set. A refused one gives a reason. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t ncpu = (uint32_t)data[0] + 1;
    char *s = malloc(size); /* exact size: the list and its NUL */
    memcpy(s, data + 1, size - 1);
    s[size - 1] = 0;
    bool *in = malloc(ncpu), *back = malloc(ncpu);
    char why[96] = "", out[1200];
    int n = tools_parse_cpu_list(s, ncpu, in, why, sizeof why);
    if (n < 0) {
        if (n != -1 || !why[0] || strlen(why) >= sizeof why)
            abort();
    } else {
        int k = 0;
        for (uint32_t c = 0; c < ncpu; c++)
            k += in[c];
        if (n != k || n < 1)
            abort();
        size_t len = tools_format_cpu_list(in, ncpu, out, sizeof out);
        if (len >= sizeof out || strlen(out) != len ||
            tools_parse_cpu_list(out, ncpu, back, why, sizeof why) != n ||
            memcmp(in, back, ncpu) != 0)
            abort();
    }
    free(back);
    free(in);
    free(s);
    return 0;
}
