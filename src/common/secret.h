/*
 * The cluster secret file: read the one way dhps-server, every dhps tool and the Python
 * binding (through dhps_client_secret_load) read it, and written by `dhps keygen`.
 * docs/security.md "The cluster secret" is the user-facing description.
 *
 * Two forms of the file's content (trailing \n and \r\n stripped):
 *   random      anything not starting with "scrypt:": the bytes are the key. At least
 *               DHPS_SECRET_MIN_BYTES bytes with DHPS_SECRET_MIN_DISTINCT distinct values
 *               (`dhps keygen FILE` writes 32 getrandom() bytes as 64 hex digits).
 *   passphrase  one line   scrypt:N=<N>,r=<r>,p=<p>,salt=<hex>:<passphrase>
 *               the key is scrypt(passphrase, salt, N, r, p), DHPS_SECRET_KEY_BYTES
 *               bytes (RFC 7914, OpenSSL's EVP_PBE_scrypt), derived once per process
 *               start. The fields in that order, decimal numbers without leading zeros,
 *               N a power of two; salt 16..64 bytes as hex; the passphrase is the rest of
 *               the line (any bytes but NUL, CR and LF).
 *
 * Why a KDF. The hello (docs/rpc.md) makes the client prove the secret first, so a peer
 *   that merely connects learns nothing; but a client that dials an impostor at a
 *   server's address hands it an HMAC over known nonces, against which the impostor can
 *   test guesses offline. A random 256-bit secret makes that useless. A passphrase has
 *   far less entropy, so each guess must cost a scrypt derivation: with the default cost
 *   and a 4-word diceware passphrase (51.7 bits) that is ~2^51 guesses x 32 MiB x ~0.2 s
 *   of one core.
 *   The salt is in the file, not on the wire, but is not counted as secret.
 *
 * Floors and ceilings (a weaker file is refused, naming the floor): N 2^14..2^20, r
 *   8..32, p 1..16, memory 128 * r * (N + p) bytes at most 1 GiB; a passphrase of at
 *   least DHPS_PASSPHRASE_MIN_BYTES bytes with DHPS_PASSPHRASE_MIN_DISTINCT distinct
 *   values. The defaults `dhps keygen --passphrase` writes: N 2^15, r 8, p 1 (32 MiB),
 *   measured 0.21-0.28 s per process start (median 0.22 s; the floor N 2^14: 0.11 s) on
 *   the 2-core test machine, docs/security.md "Cost, measured".
 */
#ifndef DHPS_SECRET_H
#define DHPS_SECRET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A random secret: least bytes and least distinct byte values. */
#define DHPS_SECRET_MIN_BYTES 32u
#define DHPS_SECRET_MIN_DISTINCT 10u
/* Longest secret file (bytes, before trailing newlines are stripped). */
#define DHPS_SECRET_FILE_MAX 4096u
/* The key a passphrase file derives. */
#define DHPS_SECRET_KEY_BYTES 32u
/* scrypt cost: floors, ceilings, defaults (see above). */
#define DHPS_SCRYPT_N_MIN (1u << 14)
#define DHPS_SCRYPT_N_MAX (1u << 20)
#define DHPS_SCRYPT_R_MIN 8u
#define DHPS_SCRYPT_R_MAX 32u
#define DHPS_SCRYPT_P_MIN 1u
#define DHPS_SCRYPT_P_MAX 16u
#define DHPS_SCRYPT_MEM_MAX (1ull << 30)
#define DHPS_SCRYPT_N_DEFAULT (1u << 15)
#define DHPS_SCRYPT_R_DEFAULT 8u
#define DHPS_SCRYPT_P_DEFAULT 1u
#define DHPS_SECRET_SALT_MIN 16u
#define DHPS_SECRET_SALT_MAX 64u
#define DHPS_SECRET_SALT_DEFAULT 16u
#define DHPS_PASSPHRASE_MIN_BYTES 16u
#define DHPS_PASSPHRASE_MIN_DISTINCT 8u
#define DHPS_SCRYPT_PREFIX "scrypt:"

/* A parsed passphrase form. */
typedef struct dhps_secret_kdf {
    uint32_t n, r, p;
    uint8_t salt[DHPS_SECRET_SALT_MAX];
    size_t salt_len;
    const uint8_t *pass;         /* points into the parsed text */
    size_t pass_len;
} dhps_secret_kdf;

/*
 * Judge a secret file's content text[0..len) (trailing newlines already stripped).
 * Returns 0 for a random secret that is strong enough (its bytes are the key), 1 for a
 * passphrase form that parsed and meets the floors (*kdf filled; kdf->pass points into
 * text), or DHPS_E_CONFIG with one line in why (no path; it names what is wrong and the
 * expected form or floor). Pure, thread-safe (fuzzed: fuzz_secret).
 */
int dhps_secret_parse(const uint8_t *text, size_t len, dhps_secret_kdf *kdf, char *why,
                      size_t whylen);

/* scrypt(kdf->pass, kdf->salt, n, r, p) into key (DHPS_SECRET_KEY_BYTES). 0, or -ENOMEM
 * / -EINVAL when OpenSSL refuses (out of memory, parameters it rejects). Thread-safe;
 * takes the time and memory documented above. */
int dhps_secret_derive(const dhps_secret_kdf *kdf, uint8_t *key);

/*
 * The cluster secret file at path, read the one way the server and every tool read it:
 * at most DHPS_SECRET_FILE_MAX bytes, trailing newlines stripped, judged by
 * dhps_secret_parse; a passphrase form is derived (dhps_secret_derive). On success 0 and
 * the key in buf[0..*len) (a random secret must fit in cap bytes; a derived key is
 * DHPS_SECRET_KEY_BYTES, cap must allow it). buf NULL: check the file only, without the
 * derivation (*len is then 0). On failure DHPS_E_CONFIG with one line in err naming the
 * path and why: cannot open (strerror); readable or writable by group or others (chmod
 * 600); empty; longer than cap (random) or DHPS_SECRET_FILE_MAX; a weak random secret or
 * passphrase, weak or malformed scrypt parameters (`dhps keygen` named); the derivation
 * failing (out of memory). buf and every copy of the file's bytes are then wiped.
 * Thread-safe.
 */
int dhps_secret_load(const char *path, uint8_t *buf, size_t cap, size_t *len, char *err,
                     size_t errlen);

/* Write a new random cluster secret to path: 32 bytes from getrandom(), hex-encoded (64
 * bytes, no newline), mode 0600, fsync'ed. Refuses to replace an existing file unless
 * replace (then written beside it and renamed over it). Returns 0 or -errno (-EEXIST:
 * exists). */
int dhps_secret_generate(const char *path, bool replace);

/*
 * Write a passphrase secret file to path: "scrypt:N=n,r=r,p=p,salt=<16 random bytes as
 * hex>:<pass>" (no newline), mode 0600, fsync'ed, as dhps_secret_generate writes (replace
 * as there). pass[0..pass_len) and the cost are judged by dhps_secret_parse first.
 * Returns 0, DHPS_E_CONFIG (a weak or malformed passphrase or cost; why in err), or
 * -errno (-EEXIST: exists; err says so too). Every copy of the passphrase is wiped.
 */
int dhps_secret_passphrase_write(const char *path, const uint8_t *pass, size_t pass_len,
                                 uint32_t n, uint32_t r, uint32_t p, bool replace, char *err,
                                 size_t errlen);

/* A file holding a private secret (the cluster secret, a TLS private key) must be one
 * that neither its group nor others may read or change. fd: the file opened
 * (so the bytes read next are the ones checked); path and what ("secret file", "tls key
 * file") name it in the message, why says what the file protects. 0, or DHPS_E_CONFIG
 * with one line in err: fstat failed (strerror), or the mode (naming `chmod 600 PATH`).
 * Thread-safe. */
int dhps_private_file_check_fd(int fd, const char *path, const char *what, const char *why,
                               char *err, size_t errlen);
/* The same for a path (opened read-only, checked, closed); cannot open: strerror. */
int dhps_private_file_check(const char *path, const char *what, const char *why, char *err,
                            size_t errlen);

#endif
