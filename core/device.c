#include "device.h"

#include <ctype.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "cuda_rt.h"
#include "error.h"

/* ----------------------------------------------------------------- CPU */

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    size_t i = 0;
    while (s[i] && isspace((unsigned char)s[i])) i++;
    if (i) memmove(s, s + i, n - i + 1);
}

/* The first "model name" (x86) or "Processor"/"Hardware"/"uarch" line of
 * /proc/cpuinfo; lines are read with a bounded buffer and a bounded count. */
static void cpu_model_name(char *out, size_t len)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        static const char *const keys[] = {"model name", "Processor", "Hardware", "uarch", "cpu model"};
        char line[512];
        for (int lines = 0; lines < 100000 && fgets(line, sizeof line, f); lines++) {
            char *colon = strchr(line, ':');
            if (!colon) continue;
            *colon = '\0';
            trim(line);
            for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
                if (strcmp(line, keys[k]) == 0) {
                    char *v = colon + 1;
                    trim(v);
                    if (*v) {
                        snprintf(out, len, "%s", v);
                        fclose(f);
                        return;
                    }
                }
            }
        }
        fclose(f);
    }
    struct utsname u;
    if (uname(&u) == 0) snprintf(out, len, "%s CPU", u.machine);
    else snprintf(out, len, "unknown CPU");
}

static int usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static uint32_t cpu_features(void)
{
    uint32_t f = 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) f |= QTOOL_CPU_AVX2;
    if (__builtin_cpu_supports("fma")) f |= QTOOL_CPU_FMA;
    if (__builtin_cpu_supports("avx512f")) f |= QTOOL_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) f |= QTOOL_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vnni")) f |= QTOOL_CPU_AVX512VNNI;
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    if (__builtin_cpu_supports("f16c")) f |= QTOOL_CPU_F16C;
#else
    /* Older compilers do not name f16c: CPUID leaf 1, ECX bit 29. */
    {
        unsigned a = 1, b, c = 0, d;
        __asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
        if (c & (1u << 29)) f |= QTOOL_CPU_F16C;
    }
#endif
#endif
    return f;
}

void qt_device_cpu_info(qtool_device_info *out)
{
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->kind = QTOOL_DEVICE_CPU;
    out->index = 0;
    out->cpu_threads = usable_cpus();
    out->cpu_features = cpu_features();
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) out->total_memory = (uint64_t)pages * (uint64_t)page;
    cpu_model_name(out->name, sizeof out->name);
}

const char *qt_cpu_features_str(uint32_t features, char *buf, size_t len)
{
    static const struct { uint32_t bit; const char *name; } names[] = {
        {QTOOL_CPU_AVX2, "avx2"},         {QTOOL_CPU_FMA, "fma"},
        {QTOOL_CPU_AVX512F, "avx512f"},   {QTOOL_CPU_AVX512BW, "avx512bw"},
        {QTOOL_CPU_AVX512VNNI, "avx512vnni"}, {QTOOL_CPU_F16C, "f16c"}};
    size_t o = 0;
    if (len) buf[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!(features & names[i].bit)) continue;
        int w = snprintf(buf + o, len > o ? len - o : 0, "%s%s", o ? " " : "", names[i].name);
        if (w < 0 || (size_t)w >= len - o) break;
        o += (size_t)w;
    }
    return buf;
}

/* ---------------------------------------------------------------- CUDA */

int qt_devices_query(qt_device_list *out)
{
    memset(out, 0, sizeof *out);
    qt_device_cpu_info(&out->cpu);
    int n = qt_cuda_device_count(out->no_cuda_reason, sizeof out->no_cuda_reason);
    if (n <= 0) {
        if (!out->no_cuda_reason[0]) snprintf(out->no_cuda_reason, sizeof out->no_cuda_reason, "none found");
        return 0;
    }
    out->cuda = calloc((size_t)n, sizeof *out->cuda);
    if (!out->cuda) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory listing CUDA devices");
    for (int i = 0; i < n; i++) {
        qtool_device_info d;
        if (qt_cuda_device_info(i, &d) != 0) {
            qt_log(QTOOL_LOG_WARN, "CUDA device %d skipped: %s", i, qt_last_error());
            continue;
        }
        out->cuda[out->n_cuda++] = d;
    }
    if (out->n_cuda == 0)
        snprintf(out->no_cuda_reason, sizeof out->no_cuda_reason, "%d device(s) found but none readable", n);
    return 0;
}

void qt_devices_free(qt_device_list *list)
{
    free(list->cuda);
    memset(list, 0, sizeof *list);
}

/* ----------------------------------------------------------- simulated */

typedef struct card {
    const char *key;
    const char *name;
    int major, minor;
    int sms;
    double mem_gb;             /* as sold (10^9 bytes) */
    uint32_t smem_optin;       /* bytes of shared memory per block, opt-in */
} card;

static const card cards[] = {
    {"t4", "Tesla T4", 7, 5, 40, 16, 65536},
    {"v100", "Tesla V100-SXM2-16GB", 7, 0, 80, 16, 98304},
    {"a10", "NVIDIA A10", 8, 6, 72, 24, 101376},
    {"a100", "NVIDIA A100-SXM4-80GB", 8, 0, 108, 80, 166912},
    {"l4", "NVIDIA L4", 8, 9, 58, 24, 101376},
    {"l40s", "NVIDIA L40S", 8, 9, 142, 48, 101376},
    {"h100", "NVIDIA H100 80GB HBM3", 9, 0, 132, 80, 232448},
    {"h200", "NVIDIA H200", 9, 0, 132, 141, 232448},
    {"b200", "NVIDIA B200", 10, 0, 148, 180, 232448},
};
#define N_CARDS (sizeof cards / sizeof cards[0])

const char *qt_device_simulated_names(void)
{
    return "sm_XY, sm_X.Y, X.Y (e.g. sm_75, sm_8.9, 9.0), t4, v100, a10, a100, l4, l40s, h100, h200, b200";
}

static void fill(qtool_device_info *out, const char *name, int major, int minor, int sms, double mem_gb,
                 uint32_t smem)
{
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->kind = QTOOL_DEVICE_CUDA;
    out->index = 0;
    out->cc_major = major;
    out->cc_minor = minor;
    out->multiprocessors = sms;
    out->total_memory = (uint64_t)(mem_gb * 1e9);
    out->shared_memory_per_block_optin = smem;
    out->simulated = 1;
    snprintf(out->name, sizeof out->name, "%s", name);
}

/* "75" -> 7.5, "100" -> 10.0, "7.5" -> 7.5; 0 on success. */
static int parse_cc(const char *s, int *major, int *minor)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5) return -1;
    const char *dot = strchr(s, '.');
    if (dot) {
        size_t a = (size_t)(dot - s), b = n - a - 1;
        if (a < 1 || a > 2 || b != 1) return -1;
        for (size_t i = 0; i < n; i++)
            if (i != a && !isdigit((unsigned char)s[i])) return -1;
        *major = atoi(s);
        *minor = dot[1] - '0';
    } else {
        if (n < 2 || n > 3) return -1;
        for (size_t i = 0; i < n; i++)
            if (!isdigit((unsigned char)s[i])) return -1;
        int v = atoi(s);
        *major = v / 10;
        *minor = v % 10;
    }
    return *major >= 1 && *major <= 15 ? 0 : -1;
}

int qt_device_simulate(const char *card_text, qtool_device_info *out)
{
    if (!card_text) card_text = "";
    char low[32];
    size_t n = strlen(card_text);
    if (n == 0 || n >= sizeof low)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "unknown card '%.40s'; accepted: %s", card_text,
                       qt_device_simulated_names());
    for (size_t i = 0; i <= n; i++) low[i] = (char)tolower((unsigned char)card_text[i]);
    for (size_t i = 0; i < N_CARDS; i++) {
        if (strcmp(low, cards[i].key) == 0) {
            fill(out, cards[i].name, cards[i].major, cards[i].minor, cards[i].sms, cards[i].mem_gb,
                 cards[i].smem_optin);
            return 0;
        }
    }
    const char *num = strncmp(low, "sm_", 3) == 0 ? low + 3 : strncmp(low, "sm", 2) == 0 ? low + 2 : low;
    int major, minor;
    if (parse_cc(num, &major, &minor) != 0)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "unknown card '%s'; accepted: %s", card_text,
                       qt_device_simulated_names());
    /* A generic card of that architecture: shared memory from a known card
     * of the same compute capability, size fields left at zero. */
    uint32_t smem = 0;
    for (size_t i = 0; i < N_CARDS; i++)
        if (cards[i].major == major && cards[i].minor == minor) smem = cards[i].smem_optin;
    char name[64];
    snprintf(name, sizeof name, "sm_%d%d", major, minor);
    fill(out, name, major, minor, 0, 0, smem);
    return 0;
}

/* ------------------------------------------------------------- verdicts */

const char *qt_device_label(const qtool_device_info *d, char *buf, size_t len)
{
    if (d->kind == QTOOL_DEVICE_CPU) snprintf(buf, len, "cpu");
    else if (d->simulated) snprintf(buf, len, "cuda:sim");
    else snprintf(buf, len, "cuda:%d", d->index);
    return buf;
}

int qt_device_plugin_supported(const qtool_plugin_desc *desc, const qtool_device_info *d, char *reason,
                               size_t reason_len)
{
    if (reason_len) reason[0] = '\0';
    uint32_t bit = d->kind == QTOOL_DEVICE_CUDA ? QTOOL_DEVMASK_CUDA : QTOOL_DEVMASK_CPU;
    if (!(desc->devices & bit)) {
        if (desc->devices & (QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA))
            snprintf(reason, reason_len, "%s", d->kind == QTOOL_DEVICE_CUDA ? "CPU only" : "CUDA only");
        else
            snprintf(reason, reason_len, "declares no device");
        return 0;
    }
    if (!desc->probe) return 1;
    char buf[512];
    buf[0] = '\0';
    int rc = desc->probe(d, buf, sizeof buf);
    buf[sizeof buf - 1] = '\0';
    if (rc == QTOOL_OK) return 1;
    /* One line, whatever the plugin wrote. */
    for (char *c = buf; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
    if (buf[0]) snprintf(reason, reason_len, "%s", buf);
    else snprintf(reason, reason_len, "not supported (%s)", qt_status_name(rc));
    return 0;
}
