/* libFuzzer: the cluster secret file's parser, dhps_secret_parse (src/common/secret.h).
 * Input: a secret file's content (trailing newlines already stripped, as the loader
 * does). Every refusal comes with a reason; a random secret is one the rules allow; a
 * passphrase form has every field in range, its passphrase inside the input and free of
 * NUL/CR/LF, and written back in the canonical form it parses to the same fields. No
 * derivation (that is OpenSSL's scrypt, and slow by design). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dhps/error.h"
#include "secret.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1); /* exactly size bytes: ASan sees an overread */
    memcpy(buf, data, size);
    dhps_secret_kdf k;
    char why[400] = "";
    int rc = dhps_secret_parse(buf, size, &k, why, sizeof why);
    size_t pl = strlen(DHPS_SCRYPT_PREFIX);
    bool marked = size >= pl && !memcmp(buf, DHPS_SCRYPT_PREFIX, pl);
    if (rc == DHPS_E_CONFIG) {
        if (!why[0])
            abort();
    } else if (rc == 0) {
        if (marked || size < DHPS_SECRET_MIN_BYTES)
            abort();
    } else if (rc == 1) {
        if (!marked || k.n < DHPS_SCRYPT_N_MIN || k.n > DHPS_SCRYPT_N_MAX || (k.n & (k.n - 1)) ||
            k.r < DHPS_SCRYPT_R_MIN || k.r > DHPS_SCRYPT_R_MAX || k.p < DHPS_SCRYPT_P_MIN ||
            k.p > DHPS_SCRYPT_P_MAX || k.salt_len < DHPS_SECRET_SALT_MIN ||
            k.salt_len > DHPS_SECRET_SALT_MAX || 128ull * k.r * k.n > DHPS_SCRYPT_MEM_MAX ||
            k.pass < buf || k.pass + k.pass_len != buf + size ||
            k.pass_len < DHPS_PASSPHRASE_MIN_BYTES || memchr(k.pass, 0, k.pass_len) ||
            memchr(k.pass, '\n', k.pass_len) || memchr(k.pass, '\r', k.pass_len))
            abort();
        /* canonical form: the same fields */
        static char text[2 * DHPS_SECRET_FILE_MAX + 512];
        int n = snprintf(text, sizeof text, DHPS_SCRYPT_PREFIX "N=%u,r=%u,p=%u,salt=", k.n,
                         k.r, k.p);
        for (size_t i = 0; i < k.salt_len; i++)
            n += snprintf(text + n, sizeof text - (size_t)n, "%02x", k.salt[i]);
        text[n++] = ':';
        if ((size_t)n + k.pass_len > sizeof text)
            abort();
        memcpy(text + n, k.pass, k.pass_len);
        dhps_secret_kdf k2;
        if (dhps_secret_parse((const uint8_t *)text, (size_t)n + k.pass_len, &k2, why,
                              sizeof why) != 1 ||
            k2.n != k.n || k2.r != k.r || k2.p != k.p || k2.salt_len != k.salt_len ||
            memcmp(k2.salt, k.salt, k.salt_len) || k2.pass_len != k.pass_len ||
            memcmp(k2.pass, k.pass, k.pass_len))
            abort();
    } else {
        abort();
    }
    free(buf);
    return 0;
}
