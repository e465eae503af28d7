#include "plugin_host.h"

#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

#define MAX_NAME_LEN 63
#define MAX_OPTIONS 256

/* Extra services tables, one per (CUDA device, stream) an instance was
 * created for; they live until unload because instances keep the pointer. */
typedef struct svc_node {
    qt_services s;
    struct svc_node *next;
} svc_node;

/* The public struct first, so a qt_plugin * is also a plugin_impl *. */
typedef struct plugin_impl {
    qt_plugin pub;
    /* The plugin's descriptor copied into the host's layout: slots beyond
     * the plugin's struct_size stay NULL, so any slot can be read safely. */
    qtool_plugin_desc desc;
    char *real_path;
    int init_done;
    pthread_mutex_t svc_lock;
    svc_node *svcs;
} plugin_impl;

static plugin_impl *impl_of(const qt_plugin *p) { return (plugin_impl *)p; }

/* dlopen hands out one handle per library however often it is opened (a
 * standalone load and a discovery may both reach the same file), so init
 * and shutdown are counted per handle: each runs once per library. The
 * services table init receives lives here, valid until shutdown. */
typedef struct lib_ref {
    void *handle;
    int count;
    qt_services init_services;
    struct lib_ref *next;
} lib_ref;

static pthread_mutex_t libs_lock = PTHREAD_MUTEX_INITIALIZER;
static lib_ref *libs;

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static char *vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) return NULL;
    return s;
}

static char *format(const char *fmt, ...) QTOOL_PRINTF(1, 2);
static char *format(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

/* ------------------------------------------------------------ options */

const char *qt_option_type_name(int type)
{
    switch (type) {
    case QTOOL_OPT_INT: return "int";
    case QTOOL_OPT_FLOAT: return "float";
    case QTOOL_OPT_BOOL: return "bool";
    case QTOOL_OPT_STRING: return "string";
    case QTOOL_OPT_ENUM: return "enum";
    default: return "?";
    }
}

static int has_range(const qtool_option_desc *o)
{
    return (o->type == QTOOL_OPT_INT || o->type == QTOOL_OPT_FLOAT) && o->min_value <= o->max_value;
}

int qt_option_describe(const qtool_option_desc *o, char *buf, size_t len)
{
    const char *type = o->type == QTOOL_OPT_ENUM && o->choices ? o->choices : qt_option_type_name(o->type);
    const char *def = o->default_value ? o->default_value : "";
    char range[80] = "";
    if (has_range(o)) snprintf(range, sizeof range, ", %.15g..%.15g", o->min_value, o->max_value);
    if (o->type == QTOOL_OPT_STRING && !def[0])
        return snprintf(buf, len, "%s (%s, default \"\")", o->name, type);
    return snprintf(buf, len, "%s (%s, default %s%s)", o->name, type, def, range);
}

/* Finds `text` among the '|'-separated choices; -1 when absent. */
static int64_t enum_index(const char *choices, const char *text)
{
    size_t tl = strlen(text);
    int64_t idx = 0;
    const char *c = choices;
    for (;;) {
        const char *bar = strchr(c, '|');
        size_t n = bar ? (size_t)(bar - c) : strlen(c);
        if (n == tl && memcmp(c, text, n) == 0) return idx;
        if (!bar) return -1;
        c = bar + 1;
        idx++;
    }
}

int qt_option_parse_value(const qtool_option_desc *o, const char *text, qtool_option_value *v,
                          char *err, size_t err_len)
{
    memset(v, 0, sizeof *v);
    v->name = o->name;
    v->type = o->type;
    v->s = text;
    switch (o->type) {
    case QTOOL_OPT_INT: {
        char *end = NULL;
        errno = 0;
        long long x = text[0] && !isspace((unsigned char)text[0]) ? strtoll(text, &end, 10) : 0;
        if (!end || end == text || *end) {
            snprintf(err, err_len, "'%s' is not an integer", text);
            return -1;
        }
        if (errno == ERANGE) {
            snprintf(err, err_len, "'%s' does not fit a 64-bit integer", text);
            return -1;
        }
        if (has_range(o) && ((double)x < o->min_value || (double)x > o->max_value)) {
            snprintf(err, err_len, "%lld is outside %.15g..%.15g", x, o->min_value, o->max_value);
            return -1;
        }
        v->i = x;
        v->f = (double)x;
        return 0;
    }
    case QTOOL_OPT_FLOAT: {
        char *end = NULL;
        double x = text[0] && !isspace((unsigned char)text[0]) ? strtod(text, &end) : 0;
        if (!end || end == text || *end) {
            snprintf(err, err_len, "'%s' is not a number", text);
            return -1;
        }
        if (!isfinite(x)) {
            snprintf(err, err_len, "'%s' is not a finite number", text);
            return -1;
        }
        if (has_range(o) && (x < o->min_value || x > o->max_value)) {
            snprintf(err, err_len, "%s is outside %.15g..%.15g", text, o->min_value, o->max_value);
            return -1;
        }
        v->f = x;
        return 0;
    }
    case QTOOL_OPT_BOOL: {
        static const char *const yes[] = {"1", "true", "yes", "on"};
        static const char *const no[] = {"0", "false", "no", "off"};
        for (size_t k = 0; k < 4; k++) {
            if (strcasecmp(text, yes[k]) == 0) { v->i = 1; return 0; }
            if (strcasecmp(text, no[k]) == 0) { v->i = 0; return 0; }
        }
        snprintf(err, err_len, "'%s' is not a boolean (0/1/true/false/yes/no/on/off)", text);
        return -1;
    }
    case QTOOL_OPT_STRING:
        return 0;
    case QTOOL_OPT_ENUM: {
        int64_t idx = o->choices ? enum_index(o->choices, text) : -1;
        if (idx < 0) {
            snprintf(err, err_len, "'%s' is not one of %s", text, o->choices ? o->choices : "(none)");
            return -1;
        }
        v->i = idx;
        return 0;
    }
    default:
        snprintf(err, err_len, "unknown option type %d", (int)o->type);
        return -1;
    }
}

/* "valid options: a (int, default 1), b (...)" into a new string. */
static char *valid_options_text(const qtool_plugin_desc *d)
{
    if (d->n_options == 0) return xstrdup("this plugin takes no options");
    size_t cap = 64 + 96 * (size_t)d->n_options, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    len = (size_t)snprintf(s, cap, "valid options: ");
    for (uint32_t k = 0; k < d->n_options; k++) {
        char one[512];
        int n = qt_option_describe(&d->options[k], one, sizeof one);
        if (n < 0) n = 0;
        if ((size_t)n >= sizeof one) n = (int)strlen(one);
        if (len + (size_t)n + 3 > cap) {
            cap = (len + (size_t)n + 3) * 2;
            char *g = realloc(s, cap);
            if (!g) { free(s); return NULL; }
            s = g;
        }
        len += (size_t)snprintf(s + len, cap - len, "%s%s", k ? ", " : "", one);
    }
    return s;
}

/* An option name fits in a "KEY=VALUE" argument and a JSON key. */
static int valid_option_name(const char *n)
{
    size_t len = strnlen(n, MAX_NAME_LEN + 1);
    if (len == 0 || len > MAX_NAME_LEN) return 0;
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)n[k];
        if (!(isalnum(c) || c == '_' || c == '-' || c == '.')) return 0;
    }
    return 1;
}

/* Checks the declared options; on a problem returns a new cause string. */
static char *check_options(const qtool_plugin_desc *d)
{
    if (d->n_options == 0) return NULL;
    if (!d->options) return format("declares %u options but the options table is NULL", d->n_options);
    if (d->n_options > MAX_OPTIONS)
        return format("declares %u options; at most %d are allowed", d->n_options, MAX_OPTIONS);
    for (uint32_t k = 0; k < d->n_options; k++) {
        const qtool_option_desc *o = &d->options[k];
        if (!o->name || !valid_option_name(o->name))
            return format("option %u has an invalid name (use letters, digits, '_', '-', '.'; at most %d)",
                          k, MAX_NAME_LEN);
        for (uint32_t j = 0; j < k; j++)
            if (strcmp(d->options[j].name, o->name) == 0) return format("option '%s' is declared twice", o->name);
        if (o->type < QTOOL_OPT_INT || o->type > QTOOL_OPT_ENUM)
            return format("option '%s' has unknown type %d", o->name, (int)o->type);
        if (o->type == QTOOL_OPT_ENUM) {
            if (!o->choices || !o->choices[0]) return format("enum option '%s' has no choices", o->name);
            const char *c = o->choices;
            for (;;) {
                const char *bar = strchr(c, '|');
                size_t n = bar ? (size_t)(bar - c) : strlen(c);
                if (n == 0) return format("enum option '%s' has an empty choice in '%s'", o->name, o->choices);
                /* A later equal choice would be unreachable. */
                const char *e = bar ? bar + 1 : NULL;
                while (e) {
                    const char *b2 = strchr(e, '|');
                    size_t n2 = b2 ? (size_t)(b2 - e) : strlen(e);
                    if (n2 == n && memcmp(e, c, n) == 0)
                        return format("enum option '%s' lists '%.*s' twice", o->name, (int)n, c);
                    e = b2 ? b2 + 1 : NULL;
                }
                if (!bar) break;
                c = bar + 1;
            }
        }
        if (!o->default_value) {
            if (o->type != QTOOL_OPT_STRING) return format("option '%s' has no default", o->name);
            continue;
        }
        qtool_option_value v;
        char err[256];
        if (qt_option_parse_value(o, o->default_value, &v, err, sizeof err) != 0)
            return format("option '%s': default %s", o->name, err);
    }
    return NULL;
}

void qt_plugin_options_free(qt_plugin_options *o)
{
    if (!o) return;
    for (size_t k = 0; k < o->n_owned; k++) free(o->owned[k]);
    free(o->owned);
    free(o->values);
    memset(o, 0, sizeof *o);
}

static const char *own(qt_plugin_options *o, const char *text, size_t len)
{
    char **g = realloc(o->owned, (o->n_owned + 1) * sizeof *g);
    if (!g) return NULL;
    o->owned = g;
    char *s = malloc(len + 1);
    if (!s) return NULL;
    memcpy(s, text, len);
    s[len] = '\0';
    o->owned[o->n_owned++] = s;
    return s;
}

int qt_plugin_parse_options(const qt_plugin *p, char *const *kv, size_t n_kv, qt_plugin_options *out)
{
    const qtool_plugin_desc *d = p->desc;
    memset(out, 0, sizeof *out);
    out->n = d->n_options;
    out->values = calloc(d->n_options ? d->n_options : 1, sizeof *out->values);
    if (!out->values) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", d->name);
    char err[512];
    for (uint32_t k = 0; k < d->n_options; k++) {
        const qtool_option_desc *o = &d->options[k];
        const char *def = own(out, o->default_value ? o->default_value : "",
                              strlen(o->default_value ? o->default_value : ""));
        if (!def) goto oom;
        /* Checked at load, so this only fails on a broken descriptor. */
        if (qt_option_parse_value(o, def, &out->values[k], err, sizeof err) != 0) {
            qt_fail(QTOOL_ERR_INTERNAL, "%s: option '%s': default %s", d->name, o->name, err);
            qt_plugin_options_free(out);
            return QTOOL_ERR_INTERNAL;
        }
    }
    for (size_t a = 0; a < n_kv; a++) {
        const char *arg = kv[a];
        const char *eq = strchr(arg, '=');
        const char *problem = NULL;
        char *list = NULL;
        size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
        uint32_t k = 0;
        if (!eq || klen == 0) {
            problem = "is not KEY=VALUE";
        } else {
            for (k = 0; k < d->n_options; k++)
                if (strlen(d->options[k].name) == klen && memcmp(d->options[k].name, arg, klen) == 0) break;
        }
        if (problem || k == d->n_options) {
            list = valid_options_text(d);
            if (problem)
                qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: option '%s' %s; %s", d->name, arg, problem,
                        list ? list : "");
            else
                qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: unknown option '%.*s'; %s", d->name, (int)klen, arg,
                        list ? list : "");
            free(list);
            qt_plugin_options_free(out);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
        const char *val = own(out, eq + 1, strlen(eq + 1));
        if (!val) goto oom;
        qtool_option_value v;
        if (qt_option_parse_value(&d->options[k], val, &v, err, sizeof err) != 0) {
            list = valid_options_text(d);
            qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: bad value for option '%s': %s; %s", d->name,
                    d->options[k].name, err, list ? list : "");
            free(list);
            qt_plugin_options_free(out);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
        out->values[k] = v; /* the last value given wins */
    }
    return 0;
oom:
    qt_plugin_options_free(out);
    return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", d->name);
}

/* ------------------------------------------------------------- loading */

static int valid_plugin_name(const char *n, size_t *len_out)
{
    size_t len = strnlen(n, MAX_NAME_LEN + 1);
    *len_out = len;
    if (len == 0 || len > MAX_NAME_LEN) return 0;
    for (size_t k = 0; k < len; k++) {
        char c = n[k];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return 0;
    }
    return 1;
}

/* dlerror() usually starts with the path; the refusal line already has it. */
static const char *strip_path_prefix(const char *msg, const char *path)
{
    size_t n = strlen(path);
    if (strncmp(msg, path, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ') return msg + n + 2;
    return msg;
}

static int is_elf(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    unsigned char magic[4] = {0};
    ssize_t n = read(fd, magic, sizeof magic);
    close(fd);
    return n == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' && magic[3] == 'F';
}

static const qt_plugin *find_loaded(const qt_plugin_set *set, const char *name)
{
    if (!set) return NULL;
    for (size_t k = 0; k < set->n; k++)
        if (strcmp(set->plugins[k]->desc->name, name) == 0) return set->plugins[k];
    return NULL;
}

/* Validates the descriptor copy; returns a new cause string on refusal. */
static char *check_descriptor(const qtool_plugin_desc *d)
{
    size_t name_len = 0;
    if (!d->name || !d->name[0]) return xstrdup("descriptor has no name");
    if (!valid_plugin_name(d->name, &name_len)) {
        if (name_len > MAX_NAME_LEN)
            return format("invalid plugin name '%.*s...': longer than %d characters", 40, d->name, MAX_NAME_LEN);
        return format("invalid plugin name '%s': use [a-z0-9_]+, at most %d characters", d->name, MAX_NAME_LEN);
    }
    uint32_t known = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA;
    if (d->devices == 0) return xstrdup("declares no devices (devices = 0)");
    if (d->devices & ~known) return format("declares unknown device bits 0x%x", d->devices & ~known);
    struct {
        const char *name;
        int present;
    } slots[] = {
        {"probe", d->probe != NULL},
        {"create", d->create != NULL},
        {"destroy", d->destroy != NULL},
        {"pack", d->pack != NULL},
        {"free_packed", d->free_packed != NULL},
        {"memory", d->memory != NULL},
        {"matmul_cpu", !(d->devices & QTOOL_DEVMASK_CPU) || d->matmul_cpu != NULL},
        {"matmul_cuda", !(d->devices & QTOOL_DEVMASK_CUDA) || d->matmul_cuda != NULL},
    };
    for (size_t k = 0; k < sizeof slots / sizeof slots[0]; k++) {
        if (!slots[k].present) {
            if (k >= 6)
                return format("missing required slot '%s' (devices lists %s)", slots[k].name,
                              k == 6 ? "cpu" : "cuda");
            return format("missing required slot '%s'", slots[k].name);
        }
    }
    return check_options(d);
}

/* Opens and checks one file. `dups` (may be NULL) is checked for a plugin
 * of the same name before init runs. On refusal returns non-zero with a
 * new cause string in *cause. */
static int open_plugin(const char *path, const qt_plugin_set *dups, plugin_impl **out, char **cause)
{
    *out = NULL;
    *cause = NULL;
    struct stat st;
    if (stat(path, &st) != 0) {
        *cause = format("cannot open: %s", strerror(errno));
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (!S_ISREG(st.st_mode)) {
        *cause = xstrdup("not a regular file");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    /* Without a '/', dlopen would search the system library path. */
    char *dl_path = strchr(path, '/') ? xstrdup(path) : format("./%s", path);
    if (!dl_path) goto oom;
    dlerror();
    void *handle = dlopen(dl_path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char *e = dlerror();
        e = e ? strip_path_prefix(e, dl_path) : "unknown dlopen failure";
        *cause = is_elf(dl_path) ? format("cannot load: %s", e) : format("not a shared object: %s", e);
        free(dl_path);
        return QTOOL_ERR_FORMAT;
    }
    free(dl_path);

    int status = QTOOL_ERR_FORMAT;
    union {
        void *obj;
        qtool_plugin_entry_fn fn;
    } sym;
    dlerror();
    sym.obj = dlsym(handle, QTOOL_PLUGIN_ENTRY_SYMBOL);
    if (!sym.obj) {
        *cause = xstrdup("no " QTOOL_PLUGIN_ENTRY_SYMBOL " symbol (export it with QTOOL_PLUGIN_ENTRY)");
        goto refuse;
    }
    const qtool_plugin_desc *pd = sym.fn();
    if (!pd) {
        *cause = xstrdup(QTOOL_PLUGIN_ENTRY_SYMBOL " returned NULL");
        goto refuse;
    }
    uint32_t abi = pd->abi_version, size = pd->struct_size;
    if (QTOOL_ABI_MAJOR_OF(abi) != QTOOL_ABI_MAJOR) {
        *cause = format("built for plugin ABI %u.%u, this qtool speaks ABI %d.x", QTOOL_ABI_MAJOR_OF(abi),
                        QTOOL_ABI_MINOR_OF(abi), QTOOL_ABI_MAJOR);
        status = QTOOL_ERR_UNSUPPORTED;
        goto refuse;
    }
    if (size < QTOOL_PLUGIN_DESC_MIN_SIZE) {
        *cause = format("descriptor is %u bytes, ABI %d needs at least %zu", size, QTOOL_ABI_MAJOR,
                        (size_t)QTOOL_PLUGIN_DESC_MIN_SIZE);
        goto refuse;
    }
    plugin_impl *pi = calloc(1, sizeof *pi);
    if (!pi) {
        dlclose(handle);
        goto oom;
    }
    memcpy(&pi->desc, pd, size < sizeof pi->desc ? size : sizeof pi->desc);
    if (!pi->desc.version) pi->desc.version = "";
    if (!pi->desc.summary) pi->desc.summary = "";
    pi->pub.desc = &pi->desc;
    pi->pub.handle = handle;
    pthread_mutex_init(&pi->svc_lock, NULL);

    *cause = check_descriptor(&pi->desc);
    if (*cause) goto refuse_pi;
    const qt_plugin *dup = find_loaded(dups, pi->desc.name);
    if (dup) {
        *cause = format("duplicate plugin name '%s', already loaded from %s", pi->desc.name, dup->path);
        status = QTOOL_ERR_INVALID_ARGUMENT;
        goto refuse_pi;
    }
    pi->pub.path = xstrdup(path);
    char *rp = realpath(path, NULL);
    pi->real_path = rp ? rp : xstrdup(path);
    if (!pi->pub.path || !pi->real_path) {
        *cause = xstrdup("out of memory");
        status = QTOOL_ERR_OUT_OF_MEMORY;
        goto refuse_pi;
    }
    qt_services_init(&pi->pub.services, pi->desc.name, -1, NULL);
    pthread_mutex_lock(&libs_lock);
    lib_ref *ref = libs;
    while (ref && ref->handle != handle) ref = ref->next;
    if (ref) {
        ref->count++; /* already initialised through another qt_plugin */
    } else if (!(ref = calloc(1, sizeof *ref))) {
        pthread_mutex_unlock(&libs_lock);
        *cause = xstrdup("out of memory");
        status = QTOOL_ERR_OUT_OF_MEMORY;
        goto refuse_pi;
    } else {
        qt_services_init(&ref->init_services, pi->desc.name, -1, NULL);
        if (pi->desc.init) {
            char msg[512] = "";
            int rc = pi->desc.init(&ref->init_services.table, msg, sizeof msg);
            msg[sizeof msg - 1] = '\0';
            if (rc != QTOOL_OK) {
                pthread_mutex_unlock(&libs_lock);
                free(ref);
                *cause = msg[0] ? format("init failed: %s", msg) : format("init failed (%s)", qt_status_name(rc));
                status = rc;
                goto refuse_pi;
            }
        }
        ref->handle = handle;
        ref->count = 1;
        ref->next = libs;
        libs = ref;
    }
    pthread_mutex_unlock(&libs_lock);
    pi->init_done = 1;
    *out = pi;
    return 0;

refuse_pi:
    pthread_mutex_destroy(&pi->svc_lock);
    free(pi->pub.path);
    free(pi->real_path);
    free(pi);
refuse:
    dlclose(handle);
    if (!*cause) return QTOOL_ERR_OUT_OF_MEMORY;
    return status;
oom:
    *cause = NULL;
    return QTOOL_ERR_OUT_OF_MEMORY;
}

int qt_plugin_load(const char *path, qt_plugin **out)
{
    plugin_impl *pi;
    char *cause;
    *out = NULL;
    int rc = open_plugin(path, NULL, &pi, &cause);
    if (rc != 0) {
        qt_fail(rc, "%s: %s", path, cause ? cause : "out of memory");
        free(cause);
        return rc;
    }
    *out = &pi->pub;
    return 0;
}

void qt_plugin_unload(qt_plugin *p)
{
    if (!p) return;
    plugin_impl *pi = impl_of(p);
    if (pi->init_done) {
        pthread_mutex_lock(&libs_lock);
        lib_ref **at = &libs;
        while (*at && (*at)->handle != p->handle) at = &(*at)->next;
        lib_ref *ref = *at;
        if (ref && --ref->count == 0) {
            *at = ref->next;
            if (pi->desc.shutdown) pi->desc.shutdown();
            free(ref);
        }
        pthread_mutex_unlock(&libs_lock);
    }
    for (svc_node *n = pi->svcs; n;) {
        svc_node *next = n->next;
        free(n);
        n = next;
    }
    pthread_mutex_destroy(&pi->svc_lock);
    if (p->handle) dlclose(p->handle);
    free(p->path);
    free(pi->real_path);
    free(pi);
}

/* ----------------------------------------------------------- discovery */

typedef struct discovery {
    qt_plugin_set *set;
    int quiet;
    char **seen; /* real paths of files already tried */
    size_t n_seen;
    int oom;
} discovery;

static int seen_before(discovery *dv, const char *path)
{
    char *rp = realpath(path, NULL);
    if (!rp) rp = xstrdup(path);
    if (!rp) { dv->oom = 1; return 1; }
    for (size_t k = 0; k < dv->n_seen; k++) {
        if (strcmp(dv->seen[k], rp) == 0) {
            free(rp);
            return 1;
        }
    }
    char **g = realloc(dv->seen, (dv->n_seen + 1) * sizeof *g);
    if (!g) { free(rp); dv->oom = 1; return 1; }
    dv->seen = g;
    dv->seen[dv->n_seen++] = rp;
    return 0;
}

static void add_refusal(discovery *dv, const char *path, const char *cause)
{
    qt_plugin_set *set = dv->set;
    if (!dv->quiet) qt_log(QTOOL_LOG_WARN, "%s: %s", path, cause);
    qt_plugin_refusal *g = realloc(set->refused, (set->n_refused + 1) * sizeof *g);
    if (!g) { dv->oom = 1; return; }
    set->refused = g;
    char *p = xstrdup(path), *r = xstrdup(cause);
    if (!p || !r) {
        free(p);
        free(r);
        dv->oom = 1;
        return;
    }
    set->refused[set->n_refused++] = (qt_plugin_refusal){p, r};
}

static int add_plugin(qt_plugin_set *set, qt_plugin *p)
{
    qt_plugin **g = realloc(set->plugins, (set->n + 1) * sizeof *g);
    if (!g) return -1;
    set->plugins = g;
    set->plugins[set->n++] = p;
    return 0;
}

static void try_file(discovery *dv, const char *path)
{
    if (seen_before(dv, path)) return;
    plugin_impl *pi;
    char *cause;
    int rc = open_plugin(path, dv->set, &pi, &cause);
    if (rc != 0) {
        if (!cause) { dv->oom = 1; return; }
        add_refusal(dv, path, cause);
        free(cause);
        return;
    }
    if (add_plugin(dv->set, &pi->pub) != 0) {
        qt_plugin_unload(&pi->pub);
        dv->oom = 1;
        return;
    }
    qt_log(QTOOL_LOG_DEBUG, "loaded plugin %s %s from %s", pi->desc.name, pi->desc.version, path);
}

static int is_plugin_file_name(const char *n)
{
    size_t len = strlen(n);
    return len > 6 && strncmp(n, "lib", 3) == 0 && strcmp(n + len - 3, ".so") == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void scan_dir(discovery *dv, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        qt_log(QTOOL_LOG_DEBUG, "cannot read plugin folder %s: %s", dir, strerror(errno));
        return;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_plugin_file_name(e->d_name)) continue;
        char **g = realloc(names, (n + 1) * sizeof *g);
        if (!g) { dv->oom = 1; break; }
        names = g;
        if (!(names[n] = format("%s/%s", dir, e->d_name))) { dv->oom = 1; break; }
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t k = 0; k < n; k++) {
        struct stat st;
        /* Folders named lib*.so and dangling links are not plugins. */
        if (!dv->oom && stat(names[k], &st) == 0 && S_ISREG(st.st_mode)) try_file(dv, names[k]);
        free(names[k]);
    }
    free(names);
}

static void note_searched(discovery *dv, const char *place)
{
    qt_plugin_set *set = dv->set;
    for (size_t k = 0; k < set->n_searched; k++)
        if (strcmp(set->searched[k], place) == 0) return;
    char **g = realloc(set->searched, (set->n_searched + 1) * sizeof *g);
    if (!g) { dv->oom = 1; return; }
    set->searched = g;
    if (!(set->searched[set->n_searched] = xstrdup(place))) { dv->oom = 1; return; }
    set->n_searched++;
}

/* kind: 0 explicit (missing is a refusal), 1 QTOOL_PLUGIN_PATH, 2 default. */
static void search_place(discovery *dv, const char *place, int kind)
{
    if (!place[0]) return;
    struct stat st;
    if (stat(place, &st) != 0) {
        if (kind == 0) {
            char *cause = format("cannot open: %s", strerror(errno));
            if (cause) add_refusal(dv, place, cause);
            else dv->oom = 1;
            free(cause);
        } else if (kind == 1) {
            qt_log(QTOOL_LOG_DEBUG, "QTOOL_PLUGIN_PATH entry %s: %s", place, strerror(errno));
        }
        return;
    }
    char *rp = realpath(place, NULL);
    note_searched(dv, rp ? rp : place);
    /* Paths the user typed are shown as typed; default folders such as
     * <exe>/../lib/qtool/plugins are shown resolved. */
    const char *base = kind == 2 && rp ? rp : place;
    if (S_ISDIR(st.st_mode))
        scan_dir(dv, base);
    else
        try_file(dv, base);
    free(rp);
}

static void search_list(discovery *dv, const char *list, int kind)
{
    char *copy = xstrdup(list);
    if (!copy) { dv->oom = 1; return; }
    char *save = NULL;
    for (char *tok = strtok_r(copy, ":", &save); tok && !dv->oom; tok = strtok_r(NULL, ":", &save))
        search_place(dv, tok, kind);
    free(copy);
}

static int cmp_plugin(const void *a, const void *b)
{
    const qt_plugin *x = *(qt_plugin *const *)a, *y = *(qt_plugin *const *)b;
    return strcmp(x->desc->name, y->desc->name);
}

static int defaults_disabled(void)
{
    const char *v = getenv("QTOOL_NO_DEFAULT_PLUGINS");
    return v && v[0] && strcmp(v, "0") != 0;
}

int qt_plugins_discover(qt_plugin_set *set, const char *explicit_path, int quiet)
{
    memset(set, 0, sizeof *set);
    discovery dv = {.set = set, .quiet = quiet};
    if (explicit_path && explicit_path[0]) search_list(&dv, explicit_path, 0);
    const char *env = getenv("QTOOL_PLUGIN_PATH");
    if (env && env[0] && !dv.oom) search_list(&dv, env, 1);
    if (!defaults_disabled() && !dv.oom) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash) {
                *slash = '\0';
                char *dir = format("%s/%s", exe[0] ? exe : "", QTOOL_PLUGIN_RELDIR);
                if (dir) search_place(&dv, dir, 2);
                else dv.oom = 1;
                free(dir);
            }
        }
        if (!dv.oom) search_place(&dv, QTOOL_INSTALL_PLUGIN_DIR, 2);
    }
    for (size_t k = 0; k < dv.n_seen; k++) free(dv.seen[k]);
    free(dv.seen);
    if (dv.oom) {
        qt_plugins_free(set);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "plugin discovery: out of memory");
    }
    if (set->n > 1) qsort(set->plugins, set->n, sizeof *set->plugins, cmp_plugin);
    return 0;
}

void qt_plugins_free(qt_plugin_set *set)
{
    if (!set) return;
    for (size_t k = 0; k < set->n; k++) qt_plugin_unload(set->plugins[k]);
    free(set->plugins);
    for (size_t k = 0; k < set->n_refused; k++) {
        free(set->refused[k].path);
        free(set->refused[k].reason);
    }
    free(set->refused);
    for (size_t k = 0; k < set->n_searched; k++) free(set->searched[k]);
    free(set->searched);
    memset(set, 0, sizeof *set);
}

qt_plugin *qt_plugins_find(const qt_plugin_set *set, const char *name)
{
    return (qt_plugin *)find_loaded(set, name);
}

static int looks_like_path(const char *s)
{
    size_t n = strlen(s);
    return strchr(s, '/') != NULL || (n >= 3 && strcmp(s + n - 3, ".so") == 0);
}

int qt_plugins_resolve(qt_plugin_set *set, const char *name_or_path, qt_plugin **out)
{
    *out = NULL;
    if (!looks_like_path(name_or_path)) {
        qt_plugin *p = qt_plugins_find(set, name_or_path);
        if (p) {
            *out = p;
            return 0;
        }
        size_t cap = 64;
        for (size_t k = 0; k < set->n; k++) cap += strlen(set->plugins[k]->desc->name) + 2;
        char *names = malloc(cap);
        if (!names) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        size_t len = 0;
        names[0] = '\0';
        for (size_t k = 0; k < set->n; k++)
            len += (size_t)snprintf(names + len, cap - len, "%s%s", k ? ", " : "", set->plugins[k]->desc->name);
        qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "no plugin named '%s'; %s%s (see 'qtool plugins')", name_or_path,
                set->n ? "loaded: " : "no plugins were found", names);
        free(names);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    char *rp = realpath(name_or_path, NULL);
    if (rp) {
        for (size_t k = 0; k < set->n; k++) {
            if (strcmp(impl_of(set->plugins[k])->real_path, rp) == 0) {
                free(rp);
                *out = set->plugins[k];
                return 0;
            }
        }
        free(rp);
    }
    plugin_impl *pi;
    char *cause;
    int rc = open_plugin(name_or_path, set, &pi, &cause);
    if (rc != 0) {
        qt_fail(rc, "%s: %s", name_or_path, cause ? cause : "out of memory");
        free(cause);
        return rc;
    }
    if (add_plugin(set, &pi->pub) != 0) {
        qt_plugin_unload(&pi->pub);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    qsort(set->plugins, set->n, sizeof *set->plugins, cmp_plugin);
    *out = &pi->pub;
    return 0;
}

/* ------------------------------------------------------------ instances */

static qt_services *services_for(plugin_impl *pi, int cuda_device, void *stream)
{
    if (cuda_device < 0 && !stream) return &pi->pub.services;
    pthread_mutex_lock(&pi->svc_lock);
    svc_node *n = pi->svcs;
    while (n && !(n->s.table.cuda_device == cuda_device && n->s.table.cuda_stream == stream)) n = n->next;
    if (!n && (n = calloc(1, sizeof *n)) != NULL) {
        qt_services_init(&n->s, pi->desc.name, cuda_device, stream);
        n->next = pi->svcs;
        pi->svcs = n;
    }
    pthread_mutex_unlock(&pi->svc_lock);
    return n ? &n->s : NULL;
}

int qt_plugin_create(qt_plugin *p, const qt_plugin_options *opts, int cuda_device, void *stream,
                     qtool_instance **out)
{
    plugin_impl *pi = impl_of(p);
    const qtool_plugin_desc *d = &pi->desc;
    *out = NULL;
    qt_plugin_options defaults;
    int own_defaults = 0;
    if (!opts) {
        int rc = qt_plugin_parse_options(p, NULL, 0, &defaults);
        if (rc != 0) return rc;
        opts = &defaults;
        own_defaults = 1;
    }
    int rc;
    if (opts->n != d->n_options) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: %u option values given, the plugin declares %u", d->name,
                     opts->n, d->n_options);
        goto done;
    }
    qt_services *svc = services_for(pi, cuda_device, stream);
    if (!svc) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", d->name);
        goto done;
    }
    char msg[512] = "";
    qtool_instance *inst = NULL;
    rc = d->create(&svc->table, opts->values, opts->n, &inst, msg, sizeof msg);
    msg[sizeof msg - 1] = '\0';
    if (rc == QTOOL_OK && !inst) rc = QTOOL_ERR_INTERNAL;
    if (rc != QTOOL_OK) {
        /* On failure `inst` is not the plugin's to hand over; nothing to destroy. */
        qt_fail(rc, "%s: %s", d->name, msg[0] ? msg : qt_status_name(rc));
        goto done;
    }
    *out = inst;
done:
    if (own_defaults) qt_plugin_options_free(&defaults);
    return rc;
}
