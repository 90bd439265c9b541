/*
 * dhps keygen FILE [--force]: write a new cluster secret (docs/security.md): 32 random
 * bytes, hex-encoded, mode 0600.
 * dhps keygen --passphrase FILE [--force] [--scrypt-n N] [--scrypt-r R] [--scrypt-p P]:
 * write a passphrase file instead (src/common/secret.h): the passphrase from the terminal
 * (asked twice, not echoed) or from stdin's first line, a random salt, the scrypt cost;
 * then load it once and print what the derivation costs.
 * Both refuse to replace an existing file without --force.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "dhps/error.h"
#include "secret.h"
#include "util.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: dhps keygen FILE [--force]\n"
            "       dhps keygen --passphrase FILE [--force] [--scrypt-n N] [--scrypt-r R]\n"
            "                   [--scrypt-p P]\n"
            "Write a new cluster secret to FILE, mode 0600 (docs/security.md).\n"
            "Without --passphrase: 32 random bytes (getrandom), hex.\n"
            "--passphrase: a passphrase file, scrypt:N=..,r=..,p=..,salt=<random hex>:<pass>;\n"
            "  every process that loads it derives the key with scrypt, once at start. The\n"
            "  passphrase is asked on the terminal (twice, not echoed) or, when stdin is\n"
            "  not a terminal, read from stdin's first line: at least %u bytes with %u\n"
            "  distinct values; use 4 or more random words. Every node and client of the\n"
            "  cluster needs this same file: the salt is in it, and the same passphrase\n"
            "  written again gets another salt, hence another key.\n"
            "--scrypt-n N  a power of two, %u..%u (default %u)\n"
            "--scrypt-r R  %u..%u (default %u); --scrypt-p P  %u..%u (default %u)\n"
            "--force replaces an existing FILE (atomically).\n",
            DHPS_PASSPHRASE_MIN_BYTES, DHPS_PASSPHRASE_MIN_DISTINCT, DHPS_SCRYPT_N_MIN,
            DHPS_SCRYPT_N_MAX, DHPS_SCRYPT_N_DEFAULT, DHPS_SCRYPT_R_MIN, DHPS_SCRYPT_R_MAX,
            DHPS_SCRYPT_R_DEFAULT, DHPS_SCRYPT_P_MIN, DHPS_SCRYPT_P_MAX,
            DHPS_SCRYPT_P_DEFAULT);
}

/* One line from fd into buf (cap bytes), the line break stripped. Its length, or -1 when
 * nothing could be read or the line does not fit. */
static long read_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t k = read(fd, &c, 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        if (c == '\n')
            break;
        if (n + 1 >= cap)
            return -1;
        buf[n++] = c;
    }
    if (n && buf[n - 1] == '\r')
        n--;
    buf[n] = 0;
    return (long)n;
}

/* The passphrase: from the terminal, asked twice without echo; or stdin's first line. */
static long read_passphrase(char *buf, size_t cap)
{
    if (!isatty(STDIN_FILENO)) {
        long n = read_line(STDIN_FILENO, buf, cap);
        if (n < 0)
            fprintf(stderr, "dhps keygen: the passphrase on stdin is longer than %zu bytes\n",
                    cap - 1);
        return n;
    }
    int tty = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (tty < 0) {
        fprintf(stderr, "dhps keygen: /dev/tty: %s\n", strerror(errno));
        return -1;
    }
    struct termios old, quiet;
    bool restore = tcgetattr(tty, &old) == 0;
    if (restore) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        tcsetattr(tty, TCSAFLUSH, &quiet);
    }
    char *again = malloc(cap);
    long n = -1, m = -1;
    if (again && dprintf(tty, "passphrase: ") > 0 && (n = read_line(tty, buf, cap)) >= 0 &&
        dprintf(tty, "again: ") > 0)
        m = read_line(tty, again, cap);
    if (restore)
        tcsetattr(tty, TCSAFLUSH, &old);
    close(tty);
    if (n >= 0 && (m != n || memcmp(buf, again, (size_t)n))) {
        fprintf(stderr, "dhps keygen: the two passphrases differ\n");
        n = -1;
    }
    if (again) {
        explicit_bzero(again, cap);
        free(again);
    }
    return n;
}

static bool u32_opt(const char *name, const char *v, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long x = v ? strtoul(v, &end, 10) : 0;
    if (!v || errno || *end || !*v || x > UINT32_MAX || *v == '-') {
        fprintf(stderr, "dhps keygen: %s needs a number\n", name);
        return false;
    }
    *out = (uint32_t)x;
    return true;
}

static int passphrase_file(const char *path, bool force, uint32_t n, uint32_t r, uint32_t p)
{
    char pass[DHPS_SECRET_FILE_MAX + 2], err[600];
    if (!force && access(path, F_OK) == 0) { /* before asking for the passphrase */
        fprintf(stderr, "dhps keygen: %s exists; --force replaces it (every node and client "
                        "of the cluster then needs the new one)\n", path);
        return 1;
    }
    long len = read_passphrase(pass, sizeof pass);
    if (len < 0)
        return 1;
    int rc = dhps_secret_passphrase_write(path, (const uint8_t *)pass, (size_t)len, n, r, p,
                                          force, err, sizeof err);
    explicit_bzero(pass, sizeof pass);
    if (rc == -EEXIST) {
        fprintf(stderr, "dhps keygen: %s exists; --force replaces it (every node and client "
                        "of the cluster then needs the new one)\n", path);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "dhps keygen: %s\n", err);
        return rc == DHPS_E_CONFIG ? 2 : 1;
    }
    /* load it as every process will, and say what that costs */
    uint8_t key[DHPS_SECRET_KEY_BYTES];
    size_t kl;
    uint64_t t0 = dhps_mono_ns();
    rc = dhps_secret_load(path, key, sizeof key, &kl, err, sizeof err);
    double s = (double)(dhps_mono_ns() - t0) / 1e9;
    explicit_bzero(key, sizeof key);
    if (rc) {
        fprintf(stderr, "dhps keygen: written, but it does not load: %s\n", err);
        return 1;
    }
    printf("dhps keygen: %s: passphrase file, scrypt N=%u r=%u p=%u (%llu MiB): deriving the "
           "key took %.2f s here; every process that loads the file pays that once at "
           "start\n", path, n, r, p, (unsigned long long)((128ull * r * n) >> 20), s);
    return 0;
}

int dhps_cmd_keygen(int argc, char **argv)
{
    const char *path = NULL;
    bool force = false, pass = false;
    uint32_t n = DHPS_SCRYPT_N_DEFAULT, r = DHPS_SCRYPT_R_DEFAULT, p = DHPS_SCRYPT_P_DEFAULT;
    bool cost = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--force")) {
            force = true;
        } else if (!strcmp(a, "--passphrase")) {
            pass = true;
        } else if (!strcmp(a, "--scrypt-n") || !strcmp(a, "--scrypt-r") ||
                   !strcmp(a, "--scrypt-p")) {
            uint32_t *dst = a[9] == 'n' ? &n : a[9] == 'r' ? &r : &p;
            if (!u32_opt(a, i + 1 < argc ? argv[i + 1] : NULL, dst))
                return 2;
            i++;
            cost = true;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-' || path) {
            fprintf(stderr, "dhps keygen: unexpected argument %s (dhps keygen --help)\n", a);
            return 2;
        } else {
            path = a;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    if (cost && !pass) {
        fprintf(stderr, "dhps keygen: --scrypt-* go with --passphrase\n");
        return 2;
    }
    if (pass)
        return passphrase_file(path, force, n, r, p);
    int rc = dhps_secret_generate(path, force);
    if (rc == -EEXIST) {
        fprintf(stderr, "dhps keygen: %s exists; --force replaces it (every node and client "
                        "of the cluster then needs the new one)\n", path);
        return 1;
    }
    if (rc < 0) {
        fprintf(stderr, "dhps keygen: %s: %s\n", path, strerror(-rc));
        return 1;
    }
    return 0;
}
