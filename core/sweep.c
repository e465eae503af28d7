#include "sweep.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"
#include "metrics.h"

#define QT_INI_MAX_BYTES ((size_t)1 << 20)
#define QT_CELL_MAX_BYTES ((size_t)64 << 20)

/* ------------------------------------------------------------------ INI */

typedef struct ini_ctx {
    qt_sweep_config *cfg;
    char *dir; /* the INI's folder, for relative paths */
    char msg[512];
    /* Each key seen per section, to refuse duplicates of scalar keys. */
    char **seen;
    size_t n_seen;
} ini_ctx;

static char *resolve_path(const char *dir, const char *value)
{
    if (value[0] == '/' || !dir || !dir[0]) return strdup(value);
    return qt_path_join(dir, value);
}

static int valid_name(const char *s)
{
    if (!*s || strlen(s) > 100) return 0;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.') return 0;
    return s[0] != '.';
}

/* Appends the comma- (or, for plugins, whitespace-) separated items of
 * `value` to a list. */
static int append_items(char ***list, size_t *n, const char *value, int split_space)
{
    const char *p = value;
    while (*p) {
        while (*p && (*p == ',' || isspace((unsigned char)*p))) p++;
        if (!*p) break;
        const char *end = p;
        while (*end && *end != ',' && !(split_space && isspace((unsigned char)*end))) end++;
        const char *e = end;
        while (e > p && isspace((unsigned char)e[-1])) e--;
        char **nl = realloc(*list, (*n + 1) * sizeof *nl);
        if (!nl) return -1;
        *list = nl;
        if (!(nl[*n] = strndup(p, (size_t)(e - p)))) return -1;
        (*n)++;
        p = end;
    }
    return 0;
}

static int parse_nonneg(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    while (*end && isspace((unsigned char)*end)) end++;
    if (!*s || *end || errno || !isfinite(v) || v < 0) return -1;
    *out = v;
    return 0;
}

static int ini_err(ini_ctx *x, const char *fmt, ...) QTOOL_PRINTF(2, 3);
static int ini_err(ini_ctx *x, const char *fmt, ...)
{
    if (!x->msg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(x->msg, sizeof x->msg, fmt, ap);
        va_end(ap);
    }
    return 0; /* inih: error on this line */
}

/* 1 when section/key was seen before (and records it). -1 on OOM. */
static int seen_before(ini_ctx *x, const char *section, const char *key)
{
    size_t len = strlen(section) + strlen(key) + 2;
    char *k = malloc(len);
    if (!k) return -1;
    snprintf(k, len, "%s\x1f%s", section, key);
    for (size_t i = 0; i < x->n_seen; i++)
        if (strcmp(x->seen[i], k) == 0) {
            free(k);
            return 1;
        }
    char **ns = realloc(x->seen, (x->n_seen + 1) * sizeof *ns);
    if (!ns) {
        free(k);
        return -1;
    }
    x->seen = ns;
    ns[x->n_seen++] = k;
    return 0;
}

static int set_scalar(ini_ctx *x, const char *section, const char *key, char **dst, const char *value,
                      int is_path)
{
    int s = seen_before(x, section, key);
    if (s < 0) return ini_err(x, "out of memory");
    if (s) return ini_err(x, "duplicate key '%s' in [%s]", key, section);
    if (!*value) return ini_err(x, "'%s' in [%s] is empty", key, section);
    free(*dst);
    *dst = is_path ? resolve_path(x->dir, value) : strdup(value);
    if (!*dst) return ini_err(x, "out of memory");
    return 1;
}

static int set_number(ini_ctx *x, const char *section, const char *key, double *dst, const char *value)
{
    int s = seen_before(x, section, key);
    if (s < 0) return ini_err(x, "out of memory");
    if (s) return ini_err(x, "duplicate key '%s' in [%s]", key, section);
    if (parse_nonneg(value, dst)) return ini_err(x, "'%s' needs a non-negative number, not '%s'", key, value);
    return 1;
}

static int sweep_ini_handler(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx *x = user;
    qt_sweep_config *c = x->cfg;
    if (strncmp(section, "model", 5) == 0 && (section[5] == ' ' || section[5] == '\0')) {
        const char *mname = section + 5;
        while (*mname == ' ') mname++;
        if (!valid_name(mname))
            return ini_err(x, "[%s]: a model needs a name of letters, digits, '.', '_' or '-' ([model NAME])",
                           section);
        qt_sweep_model *m = NULL;
        for (size_t i = 0; i < c->n_models; i++)
            if (strcmp(c->models[i].name, mname) == 0) m = &c->models[i];
        if (!m) {
            qt_sweep_model *nm = realloc(c->models, (c->n_models + 1) * sizeof *nm);
            if (!nm) return ini_err(x, "out of memory");
            c->models = nm;
            m = &nm[c->n_models++];
            memset(m, 0, sizeof *m);
            if (!(m->name = strdup(mname))) return ini_err(x, "out of memory");
        }
        if (strcmp(name, "path") == 0) return set_scalar(x, section, name, &m->path, value, 1);
        if (strcmp(name, "config") == 0) return set_scalar(x, section, name, &m->config, value, 1);
        return ini_err(x, "unknown key '%s' in [%s] (known: path, config)", name, section);
    }
    if (strcmp(section, "data") == 0) {
        if (strcmp(name, "eval") == 0) return set_scalar(x, section, name, &c->eval, value, 1);
        if (strcmp(name, "train") == 0) return set_scalar(x, section, name, &c->train, value, 1);
        if (strcmp(name, "calib") == 0) return set_scalar(x, section, name, &c->calib, value, 1);
        if (strcmp(name, "head") == 0 || strcmp(name, "mid") == 0) {
            double v;
            int r = set_number(x, section, name, &v, value);
            if (!r) return 0;
            if (v != floor(v) || v > 1e7) return ini_err(x, "'%s' needs a whole number of classes", name);
            *(name[0] == 'h' ? &c->head : &c->mid) = (int64_t)v;
            return 1;
        }
        return ini_err(x, "unknown key '%s' in [data] (known: eval, train, calib, head, mid)", name);
    }
    if (strcmp(section, "plugins") == 0) {
        if (strcmp(name, "list") == 0) {
            size_t before = c->n_plugins;
            if (append_items(&c->plugins, &c->n_plugins, value, 1)) return ini_err(x, "out of memory");
            for (size_t i = before; i < c->n_plugins; i++)
                if (!valid_name(c->plugins[i])) return ini_err(x, "'%s' is not a plugin name", c->plugins[i]);
            if (c->n_plugins == 0) return ini_err(x, "[plugins] list is empty");
            return 1;
        }
        if (strcmp(name, "reference") == 0) return set_scalar(x, section, name, &c->reference, value, 0);
        if (strncmp(name, "options.", 8) == 0 && valid_name(name + 8)) {
            int s = seen_before(x, section, name);
            if (s) return ini_err(x, s < 0 ? "out of memory" : "duplicate key '%s' in [plugins]", name);
            char **np = realloc(c->opt_plugin, (c->n_opts + 1) * sizeof *np);
            if (!np) return ini_err(x, "out of memory");
            c->opt_plugin = np;
            char **nv = realloc(c->opt_value, (c->n_opts + 1) * sizeof *nv);
            if (!nv) return ini_err(x, "out of memory");
            c->opt_value = nv;
            np[c->n_opts] = strdup(name + 8);
            nv[c->n_opts] = strdup(value);
            c->n_opts++;
            if (!np[c->n_opts - 1] || !nv[c->n_opts - 1]) return ini_err(x, "out of memory");
            return 1;
        }
        return ini_err(x, "unknown key '%s' in [plugins] (known: list, reference, options.NAME)", name);
    }
    if (strcmp(section, "envelope") == 0) {
        c->has_env = 1;
        if (strcmp(name, "device") == 0) return set_scalar(x, section, name, &c->env.device, value, 0);
        static const char *keys[] = {"max_ms_per_example", "min_macro_f1", "max_ece_post", "max_vram_gb",
                                     "f1_tolerance"};
        double *dst[] = {&c->env.max_ms_per_example, &c->env.min_macro_f1, &c->env.max_ece_post,
                         &c->env.max_vram_gb, &c->env.f1_tolerance};
        for (size_t i = 0; i < 5; i++)
            if (strcmp(name, keys[i]) == 0) return set_number(x, section, name, dst[i], value);
        return ini_err(x,
                       "unknown key '%s' in [envelope] (known: device, max_ms_per_example, min_macro_f1, "
                       "max_ece_post, max_vram_gb, f1_tolerance)",
                       name);
    }
    if (strcmp(section, "output") == 0) {
        if (strcmp(name, "dir") == 0) return set_scalar(x, section, name, &c->out_dir, value, 1);
        if (strcmp(name, "cell_timeout_s") == 0) return set_number(x, section, name, &c->cell_timeout_s, value);
        return ini_err(x, "unknown key '%s' in [output] (known: dir, cell_timeout_s)", name);
    }
    if (strcmp(section, "named_classes") == 0) {
        if (strcmp(name, "names") == 0) {
            if (append_items(&c->named, &c->n_named, value, 0)) return ini_err(x, "out of memory");
            return 1;
        }
        return ini_err(x, "unknown key '%s' in [named_classes] (known: names)", name);
    }
    if (!section[0]) return ini_err(x, "key '%s' outside any section", name);
    return ini_err(x, "unknown section [%s] (known: model NAME, data, plugins, envelope, output, named_classes)",
                   section);
}

/* The text's next line from *p (advanced past it); when it is a section
 * header "[ name ]", its name, trimmed as inih trims it, goes to `name`.
 * Returns 0 at the end of the text, 1 for a line without a header, 2 for
 * a header. */
static int next_ini_line(const char **p, char *name, size_t name_len)
{
    if (!**p) return 0;
    const char *line = *p, *e = strchr(line, '\n');
    size_t len = e ? (size_t)(e - line) : strlen(line);
    *p = e ? e + 1 : line + len;
    const char *q = line;
    while (q < line + len && isspace((unsigned char)*q)) q++;
    const char *close = q < line + len && *q == '[' ? memchr(q, ']', (size_t)(line + len - q)) : NULL;
    if (!close) return 1;
    size_t n = (size_t)(close - q - 1);
    if (n >= name_len) n = name_len - 1;
    memcpy(name, q + 1, n);
    name[n] = '\0';
    char *s = name;
    while (isspace((unsigned char)*s)) s++;
    char *t = s + strlen(s);
    while (t > s && isspace((unsigned char)t[-1])) *--t = '\0';
    memmove(name, s, strlen(s) + 1);
    return 2;
}

/* "model" or "model NAME". */
static int is_model_section(const char *s) { return strncmp(s, "model", 5) == 0 && (s[5] == ' ' || !s[5]); }

/* inih never calls the handler for an empty section: find section lines
 * ourselves, so an unknown or incomplete one is still reported with its
 * line. Returns the line of section `want` (or of the first unknown one
 * when want is NULL), 0 when none. */
static int section_line(const char *text, const char *want, char *unknown, size_t unknown_len)
{
    char name[256];
    int line = 0, kind;
    for (const char *p = text; (kind = next_ini_line(&p, name, sizeof name)); ) {
        line++;
        if (kind != 2) continue;
        if (want && strcmp(name, want) == 0) return line;
        if (!want) {
            int known = strcmp(name, "data") == 0 || strcmp(name, "plugins") == 0 || strcmp(name, "envelope") == 0 ||
                        strcmp(name, "output") == 0 || strcmp(name, "named_classes") == 0 || is_model_section(name);
            if (!known) {
                snprintf(unknown, unknown_len, "%s", name);
                return line;
            }
        }
    }
    return 0;
}

/* The line of the first [model NAME] section that gave no path= (inih
 * never reports a section without keys), with "model NAME" in `which`. */
static int model_without_path(const char *text, const qt_sweep_config *c, char *which, size_t which_len)
{
    char name[256];
    int line = 0, kind;
    for (const char *p = text; (kind = next_ini_line(&p, name, sizeof name)); ) {
        line++;
        if (kind != 2 || !is_model_section(name)) continue;
        const char *m = name + 5;
        while (*m == ' ') m++;
        int has_path = 0;
        for (size_t i = 0; i < c->n_models; i++)
            if (strcmp(c->models[i].name, m) == 0 && c->models[i].path) has_path = 1;
        if (!has_path) {
            snprintf(which, which_len, "%s", name);
            return line;
        }
    }
    return 0;
}

void qt_sweep_config_free(qt_sweep_config *c)
{
    if (!c) return;
    free(c->ini_path);
    for (size_t i = 0; i < c->n_models; i++) {
        free(c->models[i].name);
        free(c->models[i].path);
        free(c->models[i].config);
    }
    free(c->models);
    free(c->eval), free(c->train), free(c->calib), free(c->reference), free(c->out_dir);
    for (size_t i = 0; i < c->n_plugins; i++) free(c->plugins[i]);
    free(c->plugins);
    for (size_t i = 0; i < c->n_opts; i++) free(c->opt_plugin[i]), free(c->opt_value[i]);
    free(c->opt_plugin), free(c->opt_value);
    for (size_t i = 0; i < c->n_named; i++) free(c->named[i]);
    free(c->named);
    qt_envelope_free(&c->env);
    memset(c, 0, sizeof *c);
}

static int config_load(const char *path, qt_sweep_config *out, int full)
{
    memset(out, 0, sizeof *out);
    qt_envelope_init(&out->env);
    out->head = QT_METRICS_HEAD;
    out->mid = QT_METRICS_MID;
    char *text;
    size_t len;
    int rc = qt_read_file(path, QT_INI_MAX_BYTES, &text, &len);
    if (rc) return rc;
    if (memchr(text, '\0', len)) {
        free(text);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: not a text file", path);
    }
    ini_ctx x = {.cfg = out};
    const char *slash = strrchr(path, '/');
    x.dir = slash ? strndup(path, (size_t)(slash - path + (slash == path))) : strdup(".");
    out->ini_path = strdup(path);
    if (!x.dir || !out->ini_path) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    int line = ini_parse_string(text, sweep_ini_handler, &x);
    if (line != 0) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s:%d: %s", path, line,
                     line < 0 ? "cannot parse" : x.msg[0] ? x.msg : "syntax error (expected [section] or key = value)");
        goto done;
    }
    char unknown[256];
    if ((line = section_line(text, NULL, unknown, sizeof unknown))) {
        rc = qt_fail(QTOOL_ERR_FORMAT,
                     "%s:%d: unknown section [%s] (known: model NAME, data, plugins, envelope, output, named_classes)",
                     path, line, unknown);
        goto done;
    }
    if (!full) goto done;
    if ((line = model_without_path(text, out, unknown, sizeof unknown))) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s:%d: [%s] has no path=", path, line, unknown);
        goto done;
    }
    if (out->n_models == 0) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: no [model NAME] section", path);
        goto done;
    }
    if (!out->eval) {
        line = section_line(text, "data", unknown, sizeof unknown);
        if (line)
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s:%d: [data] needs eval= (the evaluation JSONL)", path, line);
        else
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: no [data] section with eval= (the evaluation JSONL)", path);
        goto done;
    }
    if (!out->out_dir && !(out->out_dir = resolve_path(x.dir, "results"))) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
done:
    for (size_t i = 0; i < x.n_seen; i++) free(x.seen[i]);
    free(x.seen);
    free(x.dir);
    free(text);
    if (rc) qt_sweep_config_free(out);
    return rc;
}

int qt_sweep_config_load(const char *path, qt_sweep_config *out) { return config_load(path, out, 1); }

int qt_sweep_envelope_load(const char *path, qt_envelope *env)
{
    qt_sweep_config c;
    qt_envelope_init(env);
    int rc = config_load(path, &c, 0);
    if (rc) return rc;
    if (!c.has_env) {
        qt_sweep_config_free(&c);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: no [envelope] section", path);
    }
    *env = c.env;
    c.env.device = NULL; /* moved */
    qt_sweep_config_free(&c);
    return 0;
}

void qt_sweep_plugins_free(qt_sweep_plugin *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(p[i].name);
        free(p[i].version);
        free(p[i].reason);
    }
    free(p);
}

/* ----------------------------------------------------------------- cells */

typedef struct cell {
    size_t model;
    const char *plugin;
    const qt_sweep_plugin *info; /* NULL with a substitute runner */
    int refused;
    const char *reason;
    const char *options; /* "K=V K=V" or NULL */
    char *base;          /* cells/<model>__<plugin> */
} cell;

static const char *find_options(const qt_sweep_config *cfg, const char *plugin)
{
    for (size_t i = 0; i < cfg->n_opts; i++)
        if (strcmp(cfg->opt_plugin[i], plugin) == 0) return cfg->opt_value[i];
    return NULL;
}

static char *strcat3(const char *a, const char *b, const char *c)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s%s%s", a, b, c);
    return s;
}

/* What a finished cell must match to be reused on rerun. */
static char *cell_key(const qt_sweep_config *cfg, const cell *c)
{
    const qt_sweep_model *m = &cfg->models[c->model];
    json_t *k = json_pack("{s:s, s:s?, s:s, s:s?, s:s, s:s?, s:s?}", "model_path", m->path, "config", m->config,
                          "plugin", c->plugin, "options", c->options, "eval", cfg->eval, "calib", cfg->calib, "device",
                          c->info ? c->info->device : NULL);
    char *s = k ? json_dumps(k, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(k);
    return s;
}

static json_t *load_json_file(const char *path, size_t limit, char *why, size_t why_len)
{
    char *text;
    size_t len;
    if (qt_read_file(path, limit, &text, &len)) {
        snprintf(why, why_len, "%s", qt_last_error());
        return NULL;
    }
    json_error_t err;
    json_t *j = json_loadb(text, len, 0, &err);
    free(text);
    if (!j) {
        snprintf(why, why_len, "%s:%d: %s", path, err.line, err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        snprintf(why, why_len, "%s: not a JSON object", path);
        json_decref(j);
        return NULL;
    }
    return j;
}

static void copy_trunc(char *dst, size_t len, const char *src)
{
    size_t n = strlen(src);
    if (n >= len) n = len - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The last non-empty line of a file (at most its last 64 KiB), and its tail. */
static void file_tail(const char *path, char *last, size_t last_len, char *tail, size_t tail_len)
{
    last[0] = tail[0] = '\0';
    FILE *f = fopen(path, "rb");
    if (!f) return;
    char buf[65536];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long start = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    fseek(f, start, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\0') buf[i] = ' ';
    size_t t0 = n > tail_len - 1 ? n - (tail_len - 1) : 0;
    copy_trunc(tail, tail_len, buf + t0);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = '\0';
    char *p = strrchr(buf, '\n');
    char *line = p ? p + 1 : buf;
    /* A usage error ends with "Try 'qtool eval --help'."; the line before
     * it says what was wrong. */
    if (strncmp(line, "Try '", 5) == 0 && p) {
        *p = '\0';
        char *q = strrchr(buf, '\n');
        line = q ? q + 1 : buf;
    }
    copy_trunc(last, last_len, line);
}

typedef struct child_result {
    int exited, code, signaled, sig, timed_out, spawn_failed;
    double wall_s;
} child_result;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int run_child(char **argv, const char *out_path, const char *err_path, double timeout_s,
                     child_result *res)
{
    memset(res, 0, sizeof *res);
    pid_t parent = getpid();
    double t0 = now_s();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return qt_fail(QTOOL_ERR_INTERNAL, "fork failed: %s", strerror(errno));
    if (pid == 0) {
        /* Only async-signal-safe calls until exec. The cell dies with the
         * sweep, so a killed sweep leaves no orphan writing into cells/. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        int fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fo < 0 || fe < 0) _exit(126);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(argv[0], argv);
        static const char msg[] = "qtool sweep: cannot execute the cell command\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, timeout_s > 0 ? WNOHANG : 0);
        if (w == pid) break;
        if (w < 0 && errno != EINTR) return qt_fail(QTOOL_ERR_INTERNAL, "waitpid failed: %s", strerror(errno));
        if (w == 0) {
            if (now_s() - t0 > timeout_s) {
                kill(pid, SIGKILL);
                res->timed_out = 1;
                while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
                }
                break;
            }
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    res->wall_s = now_s() - t0;
    if (WIFEXITED(st)) {
        res->exited = 1;
        res->code = WEXITSTATUS(st);
        res->spawn_failed = res->code == 126 || res->code == 127;
    } else if (WIFSIGNALED(st)) {
        res->signaled = 1;
        res->sig = WTERMSIG(st);
    }
    return 0;
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGKILL: return "SIGKILL";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    default: return "signal";
    }
}

static int set_str(json_t *o, const char *key, const char *v)
{
    return json_object_set_new(o, key, v ? json_string(v) : json_null());
}

/* Builds argv for one cell: the eval contract of docs/measurements.md. */
static char **cell_argv(const qt_sweep_config *cfg, const cell *c, const qt_sweep_options *opt, const char *exe,
                        const char *json_out, const char *logits_out, char **opt_storage, size_t *n_storage)
{
    const qt_sweep_model *m = &cfg->models[c->model];
    size_t cap = 32 + 2 * 64;
    char **a = calloc(cap, sizeof *a);
    if (!a) return NULL;
    size_t n = 0;
    if (opt->cell_cmd) {
        a[n++] = (char *)"/bin/sh";
        a[n++] = (char *)"-c";
        /* exec, so a signal that kills the command is the cell's own. */
        a[n++] = opt_storage[(*n_storage)++] = strcat3("exec ", opt->cell_cmd, " \"$@\"");
        a[n++] = (char *)"qtool-cell";
    } else {
        a[n++] = (char *)exe;
    }
    a[n++] = (char *)"eval";
    a[n++] = (char *)"--model";
    a[n++] = m->path;
    if (m->config) {
        a[n++] = (char *)"--config";
        a[n++] = m->config;
    }
    a[n++] = (char *)"--plugin";
    a[n++] = (char *)c->plugin;
    if (c->info && c->info->device) {
        a[n++] = (char *)"--device";
        a[n++] = (char *)c->info->device;
    }
    if (c->options) {
        char **items = NULL;
        size_t ni = 0;
        if (append_items(&items, &ni, c->options, 1)) {
            free(a);
            return NULL;
        }
        for (size_t i = 0; i < ni; i++) {
            if (n + 4 >= cap || *n_storage >= 64) {
                free(items[i]);
                continue;
            }
            a[n++] = (char *)"--opt";
            a[n++] = opt_storage[(*n_storage)++] = items[i];
        }
        free(items);
    }
    a[n++] = (char *)"--data";
    a[n++] = cfg->eval;
    if (cfg->calib) {
        a[n++] = (char *)"--calib";
        a[n++] = cfg->calib;
    }
    a[n++] = (char *)"--json-out";
    a[n++] = (char *)json_out;
    a[n++] = (char *)"--logits-out";
    a[n++] = (char *)logits_out;
    a[n] = NULL;
    return a;
}

/* Runs one cell and writes its record atomically. `*rec_out` gets it. */
static int run_cell(const qt_sweep_config *cfg, const cell *c, const qt_sweep_options *opt, const char *exe,
                    const char *key, json_t **rec_out)
{
    *rec_out = NULL;
    char *final = strcat3(c->base, ".json", "");
    char *partial = strcat3(c->base, ".partial.json", "");
    char *logits = strcat3(c->base, ".logits.safetensors", "");
    char *outlog = strcat3(c->base, ".stdout.log", "");
    char *errlog = strcat3(c->base, ".stderr.log", "");
    char *storage[64] = {0};
    size_t n_storage = 0;
    char **argv = NULL;
    json_t *rec = NULL;
    int rc = 0;
    if (!final || !partial || !logits || !outlog || !errlog) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    unlink(partial);
    unlink(logits);
    argv = cell_argv(cfg, c, opt, exe, partial, logits, storage, &n_storage);
    if (!argv) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    child_result res;
    if ((rc = run_child(argv, outlog, errlog, cfg->cell_timeout_s, &res))) goto done;
    char last[512], tail[2048], why[600];
    file_tail(errlog, last, sizeof last, tail, sizeof tail);
    json_t *child = NULL;
    char reason[1200] = "";
    const char *status = "ok";
    if (res.timed_out) {
        status = "failed";
        snprintf(reason, sizeof reason, "timed out after %.0f s (killed)%s%s", cfg->cell_timeout_s,
                 last[0] ? "; last stderr: " : "", last);
    } else if (res.signaled) {
        status = "failed";
        snprintf(reason, sizeof reason, "killed by signal %d (%s%s)%s%s", res.sig, signal_name(res.sig),
                 res.sig == SIGKILL ? ": out of memory or killed" : "", last[0] ? "; last stderr: " : "", last);
    } else if (res.exited && res.code != 0) {
        status = "failed";
        snprintf(reason, sizeof reason, "exit code %d%s%s", res.code, last[0] ? ": " : "", last);
    } else if (!(child = load_json_file(partial, QT_CELL_MAX_BYTES, why, sizeof why))) {
        status = "failed";
        snprintf(reason, sizeof reason, "exited 0 but left no valid result: %s", why);
    }
    rec = child ? child : json_object();
    if (!rec) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if (child) {
        /* The cell may report its own failure or refusal. */
        json_t *st = json_object_get(child, "status");
        const char *s = json_is_string(st) ? json_string_value(st) : "ok";
        if (strcmp(s, "failed") == 0 || strcmp(s, "refused") == 0) {
            status = s;
            json_t *rs = json_object_get(child, "reason");
            snprintf(reason, sizeof reason, "%s", json_is_string(rs) ? json_string_value(rs) : "no reason given");
        }
    }
    json_t *st_copy = json_string(status);
    json_object_set_new(rec, "status", st_copy);
    set_str(rec, "reason", reason[0] ? reason : NULL);
    set_str(rec, "model", cfg->models[c->model].name);
    set_str(rec, "plugin", c->plugin);
    json_t *cellinfo = json_object();
    json_object_set_new(cellinfo, "key", json_string(key));
    if (res.exited) json_object_set_new(cellinfo, "exit_code", json_integer(res.code));
    if (res.signaled) json_object_set_new(cellinfo, "signal", json_integer(res.sig));
    json_object_set_new(cellinfo, "timed_out", json_boolean(res.timed_out));
    json_object_set_new(cellinfo, "wall_s", json_real(res.wall_s));
    json_object_set_new(cellinfo, "stderr_last_line", json_string(last));
    json_object_set_new(cellinfo, "stderr_tail", json_string(tail));
    json_object_set_new(cellinfo, "logits", json_string(logits));
    time_t now = time(NULL);
    struct tm tmv;
    char when[32];
    gmtime_r(&now, &tmv);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    json_object_set_new(cellinfo, "finished", json_string(when));
    json_object_set_new(rec, "cell", cellinfo);
    char *text = json_dumps(rec, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) {
        /* Non-UTF-8 stderr or an unencodable value: keep the outcome. */
        json_object_set_new(cellinfo, "stderr_tail", json_string("(not valid UTF-8)"));
        json_object_set_new(cellinfo, "stderr_last_line", json_string("(not valid UTF-8)"));
        text = json_dumps(rec, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    }
    if (!text) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: cannot encode the cell record", final);
        goto done;
    }
    rc = qt_write_file_atomic(final, text, strlen(text));
    free(text);
    if (!rc) unlink(partial);
done:
    free(argv);
    for (size_t i = 0; i < n_storage; i++) free(storage[i]);
    free(final), free(partial), free(logits), free(outlog), free(errlog);
    if (rc)
        json_decref(rec);
    else
        *rec_out = rec;
    return rc;
}

/* ------------------------------------------------------------ assembly */

typedef struct model_data {
    qt_label_names names;
    int has_names;
    int32_t *labels;
    int64_t n;
    int32_t *train;
    int64_t n_train;
} model_data;

static void model_data_free(model_data *d)
{
    qt_label_names_free(&d->names);
    free(d->labels);
    free(d->train);
}

/* config.json of a model: config=, else beside or inside the path. */
static char *model_config_path(const qt_sweep_model *m)
{
    if (m->config) return strdup(m->config);
    if (qt_is_dir(m->path)) {
        char *p = qt_path_join(m->path, "config.json");
        if (p && qt_file_exists(p)) return p;
        free(p);
        return NULL;
    }
    const char *slash = strrchr(m->path, '/');
    char *dir = slash ? strndup(m->path, (size_t)(slash - m->path)) : strdup(".");
    char *p = dir ? qt_path_join(dir, "config.json") : NULL;
    free(dir);
    if (p && qt_file_exists(p)) return p;
    free(p);
    return NULL;
}

static int model_data_load(const qt_sweep_config *cfg, const qt_sweep_model *m, model_data *d)
{
    memset(d, 0, sizeof *d);
    char *config = model_config_path(m);
    int rc = 0;
    if (config) {
        if (qt_label_names_load(config, &d->names) == 0)
            d->has_names = 1;
        else
            qt_log(QTOOL_LOG_DEBUG, "sweep: %s: no label names (%s)", config, qt_last_error());
        free(config);
    }
    const qt_label_names *names = d->has_names ? &d->names : NULL;
    if ((rc = qt_labels_read_jsonl(cfg->eval, names, 0, &d->labels, &d->n))) return rc;
    if (cfg->train && (rc = qt_labels_read_jsonl(cfg->train, names, 0, &d->train, &d->n_train))) return rc;
    return 0;
}

static double jnum(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v)) return (double)json_integer_value(v);
    if (json_is_real(v)) return json_real_value(v);
    return NAN;
}

static json_t *jreal(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* Overrides the logit-derived fields of `row` from the cell's logits. */
static void metrics_from_logits(json_t *row, const qt_sweep_config *cfg, const model_data *d, const char *logits_path,
                                const float *ref, int64_t ref_n, int64_t ref_c, int is_reference)
{
    float *z = NULL;
    int64_t n = 0, c = 0;
    if (qt_logits_load(logits_path, "logits", &z, &n, &c)) {
        json_object_set_new(row, "metrics_note", json_string(qt_last_error()));
        return;
    }
    if (n != d->n) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s has %lld rows but the data has %lld examples; kept the cell's own numbers",
                 logits_path, (long long)n, (long long)d->n);
        json_object_set_new(row, "metrics_note", json_string(msg));
        free(z);
        return;
    }
    int64_t *counts = NULL;
    if (d->train) {
        counts = calloc((size_t)c, sizeof *counts);
        for (int64_t i = 0; counts && i < d->n_train; i++) {
            if (d->train[i] >= c) {
                free(counts);
                counts = NULL;
                json_object_set_new(row, "metrics_note",
                                    json_string("a training label is outside the model's classes: no tiers"));
                break;
            }
            counts[d->train[i]]++;
        }
    }
    qt_logits m = {z, n, c, d->labels};
    qt_logits r = {ref, ref_n, ref_c, d->labels};
    int use_ref = ref && !is_reference && ref_n == n && ref_c == c;
    qt_metrics_report rep;
    if (qt_metrics_compute(&m, use_ref ? &r : NULL, counts, cfg->head, cfg->mid, NULL, &rep)) {
        json_object_set_new(row, "metrics_note", json_string(qt_last_error()));
        free(z);
        free(counts);
        return;
    }
    json_t *j = qt_metrics_report_json(&rep, NULL);
    static const char *keys[] = {"n", "accuracy", "macro_f1", "nll", "ece", "temperature", "nll_post", "ece_post",
                                 "split_val", "tiers", "bootstrap"};
    for (size_t k = 0; j && k < sizeof keys / sizeof keys[0]; k++) {
        json_t *v = json_object_get(j, keys[k]);
        if (v) json_object_set(row, keys[k], v);
    }
    if (is_reference) json_object_set_new(row, "tiers", json_null());
    /* Named classes: recall of each, by name (or id). */
    if (cfg->n_named) {
        json_t *ca = json_object();
        for (size_t k = 0; k < cfg->n_named; k++) {
            int64_t id = qt_label_names_lookup(d->has_names ? &d->names : NULL, cfg->named[k]);
            double acc = NAN;
            for (size_t i = 0; id >= 0 && i < rep.n_per_class; i++)
                if (rep.per_class[i].label == id && rep.per_class[i].support > 0) acc = rep.per_class[i].recall;
            json_object_set_new(ca, cfg->named[k], jreal(acc));
        }
        json_object_set_new(row, "class_accuracy", ca);
    }
    json_object_set_new(row, "metrics_source", json_string("logits"));
    json_decref(j);
    qt_metrics_report_free(&rep);
    free(z);
    free(counts);
}

/* Named-class accuracies from a cell's own per_class list (no logits). */
static void named_from_cell(json_t *row, const qt_sweep_config *cfg, const model_data *d)
{
    json_t *pc = json_object_get(row, "per_class");
    if (!cfg->n_named || !json_is_array(pc) || json_object_get(row, "class_accuracy")) return;
    json_t *ca = json_object();
    for (size_t k = 0; k < cfg->n_named; k++) {
        int64_t id = qt_label_names_lookup(d->has_names ? &d->names : NULL, cfg->named[k]);
        double acc = NAN;
        size_t i;
        json_t *e;
        json_array_foreach(pc, i, e) {
            json_t *nm = json_object_get(e, "name");
            int match = (json_is_string(nm) && strcmp(json_string_value(nm), cfg->named[k]) == 0) ||
                        (id >= 0 && jnum(e, "label") == (double)id);
            if (match) acc = jnum(e, "recall");
        }
        json_object_set_new(ca, cfg->named[k], jreal(acc));
    }
    json_object_set_new(row, "class_accuracy", ca);
}

/* Macro-F1 of a cell's logits, for its progress line (NAN when unknown). */
static double quick_f1(const char *logits_path, const model_data *d)
{
    float *z = NULL;
    int64_t n = 0, c = 0;
    double f1 = NAN;
    if (!qt_file_exists(logits_path) || qt_logits_load(logits_path, "logits", &z, &n, &c)) return NAN;
    int32_t *pred = n == d->n ? malloc((size_t)n * sizeof *pred) : NULL;
    int ok = pred != NULL;
    for (int64_t i = 0; ok && i < n; i++) ok = d->labels[i] < c;
    if (ok) {
        qt_metrics_argmax(z, n, c, pred);
        qt_class_stats *cs;
        size_t ncs;
        if (qt_metrics_per_class(pred, d->labels, n, c, &cs, &ncs, &f1) == 0) free(cs);
    }
    free(pred);
    free(z);
    return f1;
}

static void progress(const qt_sweep_options *opt, size_t k, size_t total, const char *model, const char *plugin,
                     json_t *rec, const char *note, double logits_f1)
{
    if (opt->quiet) return;
    const char *st = json_string_value(json_object_get(rec, "status"));
    fprintf(stderr, "[%zu/%zu] %s x %s: %s", k, total, model, plugin, st ? st : "?");
    if (st && strcmp(st, "ok") == 0) {
        double f1 = isfinite(logits_f1) ? logits_f1 : jnum(rec, "macro_f1");
        double ms = jnum(rec, "ms_per_example"), vb = jnum(rec, "peak_vram_bytes");
        if (isfinite(f1)) fprintf(stderr, "  macro-F1 %.4f", f1);
        if (isfinite(ms)) fprintf(stderr, "  %.3f ms/example", ms);
        if (isfinite(vb)) fprintf(stderr, "  %.3f GB", vb / 1e9);
    } else {
        const char *why = json_string_value(json_object_get(rec, "reason"));
        if (why) fprintf(stderr, ": %s", why);
    }
    double wall = jnum(json_object_get(rec, "cell"), "wall_s");
    if (note) fprintf(stderr, "  (%s)", note);
    else if (isfinite(wall)) fprintf(stderr, "  (%.1f s)", wall);
    fputc('\n', stderr);
}

int qt_sweep_run(const qt_sweep_config *cfg, const qt_sweep_plugin *plugins, size_t n_plugins,
                 const qt_sweep_options *opt, size_t *n_failed)
{
    *n_failed = 0;
    int rc = 0;
    char exe_buf[4096];
    const char *exe = opt->exe;
    if (!exe && !opt->cell_cmd) {
        ssize_t n = readlink("/proc/self/exe", exe_buf, sizeof exe_buf - 1);
        if (n <= 0) return qt_fail(QTOOL_ERR_INTERNAL, "cannot find the qtool binary (/proc/self/exe)");
        exe_buf[n] = '\0';
        exe = exe_buf;
    }
    if (!cfg->plugins && !plugins)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: no [plugins] list= and no plugins found", cfg->ini_path);

    /* The plugin list: configured, or everything installed. */
    size_t np = cfg->plugins ? cfg->n_plugins : n_plugins;
    const char **pnames = calloc(np + 1, sizeof *pnames);
    const qt_sweep_plugin **pinfo = calloc(np + 1, sizeof *pinfo);
    cell *cells = calloc(cfg->n_models * (np + 1) + 1, sizeof *cells);
    model_data *md = calloc(cfg->n_models + 1, sizeof *md);
    json_t *rows = json_array(), *root = NULL;
    char *cells_dir = qt_path_join(cfg->out_dir, "cells");
    size_t n_cells = 0;
    if (!pnames || !pinfo || !cells || !md || !rows || !cells_dir) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < np; i++) {
        pnames[i] = cfg->plugins ? cfg->plugins[i] : plugins[i].name;
        for (size_t j = 0; j < n_plugins; j++)
            if (strcmp(plugins[j].name, pnames[i]) == 0) pinfo[i] = &plugins[j];
    }
    const char *reference = cfg->reference;
    for (size_t i = 0; !reference && i < np; i++)
        if (pinfo[i] && pinfo[i]->baseline) reference = pnames[i];
    for (size_t i = 0; !reference && i < np; i++)
        if (strcmp(pnames[i], "fp16") == 0) reference = pnames[i];
    if (!reference) qt_log(QTOOL_LOG_WARN, "sweep: no reference plugin in the list: no tier deltas");

    /* Data first: a bad data file should fail before hours of cells. */
    for (size_t m = 0; m < cfg->n_models; m++)
        if ((rc = model_data_load(cfg, &cfg->models[m], &md[m]))) goto done;
    if ((rc = qt_mkdirs(cells_dir))) goto done;

    for (size_t m = 0; m < cfg->n_models; m++) {
        /* The reference runs first within each model. */
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < np; i++) {
                int is_ref = reference && strcmp(pnames[i], reference) == 0;
                if (is_ref != (pass == 0)) continue;
                cell *c = &cells[n_cells++];
                c->model = m;
                c->plugin = pnames[i];
                c->info = pinfo[i];
                c->options = find_options(cfg, pnames[i]);
                if (!opt->cell_cmd && !pinfo[i]) {
                    c->refused = 1;
                    c->reason = "not installed (no plugin of that name was found)";
                } else if (pinfo[i] && !pinfo[i]->allowed) {
                    c->refused = 1;
                    c->reason = pinfo[i]->reason ? pinfo[i]->reason : "refused by its probe";
                } else if (pinfo[i] && pinfo[i]->needs_calibration && !cfg->calib) {
                    /* Calibrating on the evaluation set would leak it. */
                    c->refused = 1;
                    c->reason = "needs calibration data: add [data] calib= (examples other than the eval set)";
                }
                char name[256];
                snprintf(name, sizeof name, "%s__%s", cfg->models[m].name, pnames[i]);
                if (!(c->base = qt_path_join(cells_dir, name))) {
                    rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
                    goto done;
                }
            }
    }

    size_t n_run = 0;
    for (size_t k = 0; k < n_cells; k++) n_run += !cells[k].refused;
    if (!opt->quiet)
        fprintf(stderr, "sweep: %zu model(s) x %zu plugin(s): %zu cell(s) to measure, %zu refused; results in %s\n",
                cfg->n_models, np, n_run, n_cells - n_run, cfg->out_dir);

    size_t done_k = 0;
    json_t **recs = calloc(n_cells + 1, sizeof *recs);
    if (!recs) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    for (size_t k = 0; k < n_cells && !rc; k++) {
        cell *c = &cells[k];
        if (c->refused) {
            recs[k] = json_pack("{s:s, s:s, s:s, s:s}", "model", cfg->models[c->model].name, "plugin", c->plugin,
                                "status", "refused", "reason", c->reason);
            if (!opt->quiet)
                fprintf(stderr, "[-/%zu] %s x %s: refused: %s\n", n_run, cfg->models[c->model].name, c->plugin,
                        c->reason);
            continue;
        }
        done_k++;
        char *key = cell_key(cfg, c);
        char *final = strcat3(c->base, ".json", "");
        if (!key || !final) {
            free(key), free(final);
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            break;
        }
        /* Resume: a finished cell with the same key is kept. */
        char why[600];
        json_t *prev = opt->force || !qt_file_exists(final) ? NULL : load_json_file(final, QT_CELL_MAX_BYTES, why, sizeof why);
        const char *note = NULL;
        if (prev) {
            const char *pk = json_string_value(json_object_get(json_object_get(prev, "cell"), "key"));
            const char *ps = json_string_value(json_object_get(prev, "status"));
            int same = pk && strcmp(pk, key) == 0;
            int failed = !ps || strcmp(ps, "ok") != 0;
            if (same && !(failed && opt->retry_failed)) {
                recs[k] = prev;
                note = "finished earlier; kept";
            } else {
                json_decref(prev);
                if (!same) qt_log(QTOOL_LOG_INFO, "sweep: %s: configuration changed; running again", final);
            }
        }
        if (!recs[k]) rc = run_cell(cfg, c, opt, exe, key, &recs[k]);
        free(key);
        free(final);
        if (rc) break;
        double f1 = NAN;
        if (!opt->quiet) {
            char *lp = strcat3(c->base, ".logits.safetensors", "");
            if (lp) f1 = quick_f1(lp, &md[c->model]);
            free(lp);
        }
        progress(opt, done_k, n_run, cfg->models[c->model].name, c->plugin, recs[k], note, f1);
    }
    if (rc) goto done_recs;

    /* Assemble rows: logit-derived measurements from the logits files. */
    for (size_t m = 0; m < cfg->n_models; m++) {
        float *ref = NULL;
        int64_t ref_n = 0, ref_c = 0;
        for (size_t k = 0; k < n_cells; k++) {
            cell *c = &cells[k];
            if (c->model != m || !reference || strcmp(c->plugin, reference) != 0 || c->refused) continue;
            const char *st = json_string_value(json_object_get(recs[k], "status"));
            char *lp = strcat3(c->base, ".logits.safetensors", "");
            if (st && strcmp(st, "ok") == 0 && lp && qt_file_exists(lp) && qt_logits_load(lp, "logits", &ref, &ref_n, &ref_c))
                ref = NULL;
            free(lp);
        }
        for (size_t k = 0; k < n_cells; k++) {
            cell *c = &cells[k];
            if (c->model != m) continue;
            json_t *row = json_deep_copy(recs[k]);
            if (!row) {
                free(ref);
                rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
                goto done_recs;
            }
            const char *st = json_string_value(json_object_get(row, "status"));
            int ok = st && strcmp(st, "ok") == 0;
            if (!ok) (*n_failed) += st && strcmp(st, "failed") == 0;
            int is_ref = reference && strcmp(c->plugin, reference) == 0;
            json_object_set_new(row, "model_path", json_string(cfg->models[m].path));
            json_object_set_new(row, "is_reference", json_boolean(is_ref));
            set_str(row, "reference", reference);
            if (c->options && !json_object_get(row, "options")) json_object_set_new(row, "options", json_string(c->options));
            if (c->info) {
                if (!json_is_integer(json_object_get(row, "weight_bits")))
                    json_object_set_new(row, "weight_bits", json_integer(c->info->weight_bits));
                if (!json_is_integer(json_object_get(row, "activation_bits")))
                    json_object_set_new(row, "activation_bits", json_integer(c->info->activation_bits));
            }
            json_t *ver = json_object_get(row, "versions");
            if (!json_is_object(ver)) {
                ver = json_object();
                json_object_set_new(row, "versions", ver);
            }
            if (!json_object_get(ver, "qtool")) json_object_set_new(ver, "qtool", json_string(QTOOL_VERSION));
            if (c->info && c->info->version && !json_object_get(ver, "plugin"))
                json_object_set_new(ver, "plugin", json_string(c->info->version));
            json_t *seeds = json_pack("{s:i, s:i, s:i, s:s}", "bootstrap", QT_METRICS_SEED, "split_val",
                                      QT_METRICS_SEED, "bootstrap_resamples", QT_METRICS_BOOTSTRAP, "rng",
                                      "xoshiro256** seeded by splitmix64");
            json_object_set_new(row, "seeds", seeds);
            if (ok) {
                char *lp = strcat3(c->base, ".logits.safetensors", "");
                if (lp && qt_file_exists(lp))
                    metrics_from_logits(row, cfg, &md[m], lp, ref, ref_n, ref_c, is_ref);
                else if (lp)
                    json_object_set_new(row, "metrics_source", json_string("cell"));
                free(lp);
                named_from_cell(row, cfg, &md[m]);
            }
            /* Per-class lists stay in the cell files; rows stay small. */
            json_object_del(row, "per_class");
            json_array_append_new(rows, row);
        }
        free(ref);
    }

    {
        time_t now = time(NULL);
        struct tm tmv;
        char when[32];
        gmtime_r(&now, &tmv);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tmv);
        json_t *named = json_array();
        for (size_t i = 0; i < cfg->n_named; i++) json_array_append_new(named, json_string(cfg->named[i]));
        root = json_object();
        json_object_set_new(root, "schema", json_string(QT_RESULTS_SCHEMA));
        json_object_set_new(root, "created", json_string(when));
        json_object_set_new(root, "qtool_version", json_string(QTOOL_VERSION));
        json_object_set_new(root, "config", json_string(cfg->ini_path));
        json_object_set_new(root, "envelope", qt_envelope_json(&cfg->env));
        json_object_set_new(root, "named_classes", named);
        json_object_set_new(root, "data", json_pack("{s:s, s:s?, s:s?}", "eval", cfg->eval, "train", cfg->train,
                                                    "calib", cfg->calib));
        json_object_set_new(root, "tiers", json_pack("{s:I, s:I, s:i}", "head", (json_int_t)cfg->head, "mid",
                                                     (json_int_t)cfg->mid, "min_flips", QT_METRICS_MIN_FLIPS));
        set_str(root, "reference", reference);
        json_object_set(root, "rows", rows);
        char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        char *path = qt_path_join(cfg->out_dir, "results.json");
        if (!text || !path)
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        else
            rc = qt_write_file_atomic(path, text, strlen(text));
        free(text);
        if (!rc && !opt->quiet) fprintf(stderr, "sweep: wrote %s\n", path);
        free(path);
    }
    if (!rc && !opt->no_report) {
        qt_results res;
        rc = qt_results_from_json(root, "results.json", &res);
        if (!rc) {
            rc = qt_report_write(cfg->out_dir, &res, NULL);
            qt_results_free(&res);
        }
        if (!rc && !opt->quiet) fprintf(stderr, "sweep: report in %s/report.html\n", cfg->out_dir);
    }
done_recs:
    for (size_t k = 0; k < n_cells; k++) json_decref(recs[k]);
    free(recs);
done:
    for (size_t k = 0; k < n_cells; k++) free(cells[k].base);
    for (size_t m = 0; md && m < cfg->n_models; m++) model_data_free(&md[m]);
    free(md);
    free(cells);
    free(pnames);
    free(pinfo);
    free(cells_dir);
    json_decref(rows);
    json_decref(root);
    return rc;
}
