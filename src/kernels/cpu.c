/* cpuid and xgetbv for cpu.h. A feature counts only when both the processor has it (cpuid) and
 * the OS saves and restores its registers across context switches (XCR0, read with xgetbv once
 * cpuid says OSXSAVE): a kernel that used zmm or tile registers the OS does not save would see
 * them change under it. */
#include "cpu.h"

#include <pthread.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

/* XCR0 state components: SSE and AVX (1, 2), opmask and the zmm registers (5, 6, 7), AMX tile
 * configuration and tile data (17, 18) */
enum {
    XCR0_AVX512 = (1 << 1) | (1 << 2) | (1 << 5) | (1 << 6) | (1 << 7),
    XCR0_AMX = (1 << 17) | (1 << 18),
    XFEATURE_XTILEDATA = 18,
    ARCH_GET_XCOMP_PERM_ = 0x1022,
    ARCH_REQ_XCOMP_PERM_ = 0x1023,
};

static uint64_t xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t)hi << 32 | lo;
}

static int bit(uint32_t r, int i) { return (int)(r >> i & 1); }

static cf_cpu_info detect(void) {
    cf_cpu_info f = {0, 0};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !bit(c, 27)) return f;   /* OSXSAVE: xgetbv usable */
    uint64_t os = xcr0();
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    unsigned max_sub = a, b7 = b, d7 = d;
    int avx512 = bit(b7, 16) && bit(b7, 30) && bit(b7, 31) &&          /* F, BW, VL */
                 (os & XCR0_AVX512) == XCR0_AVX512;
    int bf16 = 0;
    if (max_sub >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) bf16 = bit(a, 5);
    f.avx512bf16 = avx512 && bf16;
    /* AMX-BF16 (EDX 22) and AMX-TILE (EDX 24); the kernel assumes palette 1 has 8 tiles of up
     * to 16 rows of 64 bytes (cpuid leaf 0x1d subleaf 1) */
    if (bit(d7, 22) && bit(d7, 24) && (os & XCR0_AMX) == XCR0_AMX &&
        __get_cpuid_count(0x1d, 1, &a, &b, &c, &d))
        f.amx_bf16 = (b & 0xffff) >= 64 && (b >> 16) >= 8 && (c & 0xffff) >= 16;
    return f;
}

static cf_cpu_info info;
static int amx_permitted;
static pthread_once_t info_once = PTHREAD_ONCE_INIT, permit_once = PTHREAD_ONCE_INIT;

static void detect_once(void) { info = detect(); }

/* Linux (5.16 on) hands the large tile data state out only on request, once per process; the
 * answer covers every thread. An older kernel refuses the unknown request: no AMX then. */
static void permit_once_fn(void) {
    unsigned long granted = 0;
    amx_permitted = cf_cpu()->amx_bf16 &&
                    syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM_, XFEATURE_XTILEDATA) == 0 &&
                    syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM_, &granted) == 0 &&
                    (granted >> XFEATURE_XTILEDATA & 1);
}

const cf_cpu_info *cf_cpu(void) {
    pthread_once(&info_once, detect_once);
    return &info;
}

int cf_cpu_amx_permit(void) {
    pthread_once(&permit_once, permit_once_fn);
    return amx_permitted;
}

#else
static const cf_cpu_info none = {0, 0};
const cf_cpu_info *cf_cpu(void) { return &none; }
int cf_cpu_amx_permit(void) { return 0; }
#endif
