/* fp16 <-> fp32 conversion: F16C when the CPU has it, a scalar path otherwise. */
#include <stdint.h>
#include <string.h>
#include <stdbool.h>
#include <cpuid.h>
#include <immintrin.h>

#include "dhps/server.h"

static int use_scalar = -1; /* -1: not decided; 0: F16C; 1: scalar */

/* F16C + AVX with the OS saving YMM state (CPUID.1:ECX bits 29, 28, 27; XCR0 bits 1-2). */
static bool have_f16c(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return false;
    if (!(c & (1u << 29)) || !(c & (1u << 28)) || !(c & (1u << 27)))
        return false;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6u) == 6u;
}

static bool scalar_path(void)
{
    int v = __atomic_load_n(&use_scalar, __ATOMIC_RELAXED);
    if (v < 0) {
        v = have_f16c() ? 0 : 1;
        __atomic_store_n(&use_scalar, v, __ATOMIC_RELAXED);
    }
    return v == 1;
}

bool dhps_fp16_force_scalar(bool scalar)
{
    bool h = have_f16c();
    __atomic_store_n(&use_scalar, (scalar || !h) ? 1 : 0, __ATOMIC_RELAXED);
    return h;
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t exp = (x >> 23) & 0xFFu, man = x & 0x7FFFFFu;
    if (exp == 0xFFu) /* inf or NaN (keep a quiet NaN payload bit) */
        return (uint16_t)(sign | 0x7C00u | (man ? (0x200u | (man >> 13)) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7C00u);
    if (e <= 0) { /* subnormal or zero */
        if (e < -10)
            return sign;
        man |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - e);
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
        h++; /* may carry into the exponent, up to inf: correct */
    return (uint16_t)(sign | h);
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t x;
    if (exp == 0) {
        if (man == 0) {
            x = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            x = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7F800000u | (man << 13) | (man ? 0x400000u : 0);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

__attribute__((target("avx,f16c"))) static void from_f16c(uint16_t *dst, const float *src,
                                                          size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(src + i);
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(void *)(dst + i), h);
    }
    for (; i < n; i++) {
        float f;
        memcpy(&f, (const char *)src + i * 4, 4);
        __m128i h = _mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        uint16_t r = (uint16_t)_mm_extract_epi16(h, 0);
        memcpy((char *)dst + i * 2, &r, 2);
    }
}

__attribute__((target("avx,f16c"))) static void to_f16c(float *dst, const uint16_t *src,
                                                        size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) {
        uint16_t r;
        memcpy(&r, (const char *)src + i * 2, 2);
        float f = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(r)));
        memcpy((char *)dst + i * 4, &f, 4);
    }
}

void dhps_fp16_from_fp32(uint16_t *dst, const float *src, size_t n)
{
    if (!scalar_path()) {
        from_f16c(dst, src, n);
        return;
    }
    for (size_t i = 0; i < n; i++) { /* memcpy: rows may sit unaligned in a message */
        float f;
        memcpy(&f, (const char *)src + i * 4, 4);
        uint16_t h = f32_to_f16(f);
        memcpy((char *)dst + i * 2, &h, 2);
    }
}

void dhps_fp16_to_fp32(float *dst, const uint16_t *src, size_t n)
{
    if (!scalar_path()) {
        to_f16c(dst, src, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, (const char *)src + i * 2, 2);
        float f = f16_to_f32(h);
        memcpy((char *)dst + i * 4, &f, 4);
    }
}
