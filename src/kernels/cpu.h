/* What the processor the program runs on can do, for kernels chosen at run time. The build's
 * -march says which instructions the compiler may use everywhere; a kernel for a newer extension
 * is compiled for it alone (a target attribute) and called only when this says the machine, and
 * the operating system, support it. Internal to src/kernels/. */
#ifndef CF_KERNELS_CPU_H
#define CF_KERNELS_CPU_H

typedef struct {
    int avx512bf16;    /* AVX512F, BW, VL and AVX512_BF16, and the OS saves zmm and mask state */
    int amx_bf16;      /* AMX-TILE and AMX-BF16, palette 1 with 8 tiles of 16 rows x 64 bytes, and
                        * the OS saves the tile state (XCR0); Linux still has to permit tile data:
                        * cf_cpu_amx_permit */
} cf_cpu_info;

/* the features, read with cpuid and xgetbv on the first call (all zero off x86-64) */
const cf_cpu_info *cf_cpu(void);

/* Asks Linux, on the first call, for the per-process permission to use AMX tile data
 * (arch_prctl ARCH_REQ_XCOMP_PERM); 1 when granted, 0 when refused or not x86-64 Linux. */
int cf_cpu_amx_permit(void);

#endif
