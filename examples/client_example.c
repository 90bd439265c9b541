/* dhps client example: write a few rows, read them back with two keys never written.
 * Usage: client_example MAP SECRET_FILE [TABLE [DIM]]   (TABLE emb, DIM 32: `dhps up`'s)
 * Exit 0 when the rows read back equal and the unwritten keys were answered "absent". */
#include <dhps/client.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 6       /* keys looked up: 4 written, 2 never written */
#define MAXDIM 64

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s MAP SECRET_FILE [TABLE [DIM]]\n", argv[0]);
        return 2;
    }
    const char *table = argc > 3 ? argv[3] : "emb";
    unsigned dim = argc > 4 ? (unsigned)atoi(argv[4]) : 32;
    char secret[256];
    FILE *f = fopen(argv[2], "rb");
    size_t secret_len = f ? fread(secret, 1, sizeof secret, f) : 0;
    if (f)
        fclose(f);
    while (secret_len > 0 && secret[secret_len - 1] == '\n')
        secret_len--;                      /* as dhps-server reads secret_file */
    if (secret_len == 0 || dim == 0 || dim > MAXDIM) {
        fprintf(stderr, "cannot read secret %s, or dim not 1..%d\n", argv[2], MAXDIM);
        return 2;
    }

    dhps_client_params p;
    dhps_client_params_init(&p);
    p.map_path = argv[1];                  /* the cluster map (cluster.h) */
    p.secret = secret;                     /* the cluster secret, copied */
    p.secret_len = secret_len;
    dhps_client *c;
    int rc = dhps_client_create(&p, &c);
    if (rc < 0) {
        fprintf(stderr, "dhps_client_create: %s\n", dhps_strerror(rc));
        return 1;
    }

    /* Update: 4 rows, acknowledged by every replica. */
    uint64_t keys[N] = {1000001, 1000002, 1000003, 1000004, 2000001, 2000002};
    static float values[4 * MAXDIM], out[N * MAXDIM]; /* rows packed, dim floats each */
    for (unsigned i = 0; i < 4 * dim; i++)
        values[i] = (float)(i / dim + 1) + (float)(i % dim) / 100;
    uint64_t failed[1] = {0};
    dhps_client_result r;
    rc = dhps_client_update(c, table, keys, values, 4, dim, DHPS_FP32,
                            DHPS_CLIENT_TTL_DEFAULT, DHPS_ACK_ALL, 1000000, failed, &r);
    printf("update: %s, version %llu, failed mask %#llx\n", dhps_strerror(rc),
           (unsigned long long)r.version, (unsigned long long)failed[0]);

    /* Lookup: 6 keys; missing = not found or not answered, unanswered = no ready replica
     * answered. rc 0: every missing key was answered "absent" by a ready replica. */
    uint64_t missing[1] = {0}, unanswered[1] = {0};
    int lrc = dhps_client_lookup_masks(c, table, keys, N, out, dim, DHPS_FP32, missing,
                                       unanswered, 1000000, &r);
    printf("lookup: %s, %zu found, %zu missing, of which %zu unanswered\n",
           dhps_strerror(lrc), r.found, r.missing, r.unanswered);
    int bad = rc != 0 || lrc != 0;
    for (int i = 0; i < N; i++) {
        int miss = missing[0] >> i & 1, unans = unanswered[0] >> i & 1;
        const char *what = !miss ? "found" : unans ? "unanswered (no ready replica)" : "absent";
        printf("  key %llu: %s", (unsigned long long)keys[i], what);
        if (!miss)
            printf(" [%.2f %.2f ...]", out[i * dim], out[i * dim + 1]);
        printf("\n");
        if (i < 4 && (miss || memcmp(out + i * dim, values + i * dim, dim * sizeof(float))))
            bad = 1; /* a written row must read back equal */
        if (i >= 4 && (!miss || unans))
            bad = 1; /* a key never written must be answered "absent" */
    }
    dhps_client_destroy(c);
    printf("%s\n", bad ? "client_example: FAILED" : "client_example: ok");
    return bad;
}
