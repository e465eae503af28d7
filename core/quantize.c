/* Quantized checkpoints: save a packed model as a checkpoint folder, read
 * one back through the plugin that accepts its quantization_config, and
 * load calibration examples. */
#include "quantize.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"
#include "fsutil.h"
#include "gguf_model.h"
#include "safetensors.h"

/* ------------------------------------------------------ the config */

int qt_quant_config_read(const char *config_path, char **out)
{
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = qt_read_file(config_path, QT_MODEL_MAX_CONFIG_BYTES, &text, &len);
    if (rc) return rc;
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    free(text);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: line %d: %s", config_path, err.line, root ? "not an object" : err.text);
    }
    json_t *qc = json_object_get(root, "quantization_config");
    if (qc && !json_is_null(qc)) {
        if (!json_is_object(qc)) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: quantization_config must be an object", config_path);
        } else {
            *out = json_dumps(qc, 0);
            if (!*out) rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
    }
    json_decref(root);
    return rc;
}

const char *qt_quant_method(const char *quant_config, char *buf, size_t len)
{
    snprintf(buf, len, "?");
    json_t *root = quant_config ? json_loads(quant_config, 0, NULL) : NULL;
    const char *s = json_string_value(json_object_get(root, "quant_method"));
    if (s) snprintf(buf, len, "%s", s);
    json_decref(root);
    return buf;
}

static int accepts(const qt_plugin *p, const char *qc)
{
    return p->desc->accepts_config && p->desc->accepts_config(qc) == 1;
}

int qt_quant_find_plugin(qt_plugin_set *set, const qt_model *m, const char *wanted, qt_plugin **out)
{
    *out = NULL;
    if (!m->quant_config) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is not a quantized checkpoint", m->model_path);
    char method[64];
    qt_quant_method(m->quant_config, method, sizeof method);
    qt_plugin *found = NULL;
    for (size_t i = 0; i < set->n && !found; i++)
        if (accepts(set->plugins[i], m->quant_config)) found = set->plugins[i];
    if (wanted) {
        qt_plugin *p = NULL;
        int rc = qt_plugins_resolve(set, wanted, &p);
        if (rc) return rc;
        if (!accepts(p, m->quant_config)) {
            if (found)
                return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                               "%s is quantized with quant_method '%s', which plugin %s reads, not %s (leave out "
                               "--plugin)",
                               m->model_path, method, found->desc->name, p->desc->name);
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is quantized with quant_method '%s'; plugin %s does not read it",
                           m->model_path, method, p->desc->name);
        }
        *out = p;
        return 0;
    }
    if (!found) return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: no installed plugin reads quant_method '%s'", m->model_path, method);
    *out = found;
    return 0;
}

/* ------------------------------------------------------------ loading */

typedef struct ckpt_source {
    const qt_ckpt *ck;
    const char *prefix;
    char missing[512]; /* the last tensor asked for and absent */
} ckpt_source;

static const qt_st_tensor *source_find(ckpt_source *s, const char *suffix)
{
    char name[1024];
    if (!suffix || snprintf(name, sizeof name, "%s%s", s->prefix, suffix) >= (int)sizeof name) return NULL;
    const qt_st_tensor *t = qt_ckpt_find(s->ck, name);
    return t;
}

static int source_get(void *ctx, const char *suffix, qtool_tensor *out)
{
    ckpt_source *s = ctx;
    const qt_st_tensor *t = source_find(s, suffix);
    if (!t) {
        snprintf(s->missing, sizeof s->missing, "%s%s", s->prefix, suffix ? suffix : "(null)");
        qt_log(QTOOL_LOG_DEBUG, "%s: not in the checkpoint", s->missing);
        return QTOOL_ERR_FORMAT;
    }
    *out = t->view;
    return QTOOL_OK;
}

static int source_has(void *ctx, const char *suffix)
{
    return source_find(ctx, suffix) != NULL;
}

/* "a.b.weight" -> length of "a.b." */
static size_t prefix_len(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot ? (size_t)(dot - name) + 1 : 0;
}

/* An input scale saved beside a layer, checked and copied. */
static int load_input_scale(const qt_model *m, qt_linear *l, const char *prefix)
{
    char name[1024];
    snprintf(name, sizeof name, "%s%s", prefix, QT_QUANT_INPUT_SCALE_SUFFIX);
    const qt_st_tensor *t = qt_ckpt_find(m->ckpt, name);
    if (!t) return 0;
    int64_t K = l->info.in_features;
    if (t->view.dtype != QTOOL_DTYPE_F32 || t->view.ndim != 1 || t->view.shape[0] != K)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: expected F32 [%" PRId64 "] in %s", name, K, m->model_path);
    float *s = qt_alloc(QTOOL_DEVICE_CPU, (size_t)K * sizeof(float), QTOOL_MEM_SCALES);
    if (!s) return QTOOL_ERR_OUT_OF_MEMORY;
    memcpy(s, t->view.data, (size_t)K * sizeof(float));
    for (int64_t k = 0; k < K; k++)
        if (!(s[k] != 0.0f) || !isfinite(s[k])) {
            double v = s[k];
            qt_free(QTOOL_DEVICE_CPU, s);
            return qt_fail(QTOOL_ERR_FORMAT, "%s: channel %" PRId64 " is %g (must be finite and non-zero)", name, k, v);
        }
    l->input_scale = s;
    return 0;
}

int qt_model_load_packed(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device)
{
    if (m->gguf) return qt_gguf_model_load_packed(m, desc, inst, device); /* its tensors are GGUF ones */
    if (m->desc) qt_model_unpack(m);
    if (!m->quant_config)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is not a quantized checkpoint (no quantization_config)",
                       m->model_path);
    if (!desc->load) return qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot load saved layers", desc->name);
    int rc_dev = qt_model_check_plugin_device(desc, device);
    if (rc_dev) return rc_dev;
    m->desc = desc;
    m->inst = inst;
    m->packed_device = device;
    for (size_t i = 0; i < m->n_linears; i++) {
        qt_linear *l = m->linears[i];
        size_t pl = prefix_len(l->name);
        char *prefix = strndup(l->name, pl);
        if (!prefix) {
            qt_model_unpack(m);
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
        ckpt_source cs = {m->ckpt, prefix, ""};
        qtool_load_source src = {&cs, source_get, source_has};
        qtool_packed *p = NULL;
        qt_clear_error();
        int rc = desc->load(inst, &l->info, device, &src, &p);
        if (rc || !p) {
            if (!rc) rc = QTOOL_ERR_INTERNAL;
            if (p && desc->free_packed) desc->free_packed(p);
            if (cs.missing[0])
                qt_fail(rc, "%s*: plugin %s could not load it: %s is missing from %s", prefix, desc->name, cs.missing,
                        m->model_path);
            else
                qt_fail(rc, "%s*: plugin %s could not load it from %s (%s)", prefix, desc->name, m->model_path,
                        qt_status_name(rc));
            free(prefix);
            qt_model_unpack(m);
            return rc;
        }
        l->packed = p;
        rc = load_input_scale(m, l, prefix);
        free(prefix);
        if (rc) {
            qt_model_unpack(m);
            return rc;
        }
    }
    return 0;
}

/* ------------------------------------------------------- output folder */

static int dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            empty = 0;
            break;
        }
    closedir(d);
    return empty;
}

static char *parent_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    return strndup(path, (size_t)(slash - path) + (slash == path));
}

/* The folder of a checkpoint: itself, or the folder of a .safetensors file. */
static char *model_dir_of(const char *model_path)
{
    return qt_is_dir(model_path) ? strdup(model_path) : parent_of(model_path);
}

int qt_quant_check_out(const char *out_dir, const char *model_path, int force)
{
    struct stat st;
    if (stat(out_dir, &st) != 0) return 0; /* absent: fine */
    if (!S_ISDIR(st.st_mode)) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--out %s exists and is not a folder", out_dir);
    char *md = model_dir_of(model_path);
    char a[PATH_MAX], b[PATH_MAX];
    int same = md && realpath(md, a) && realpath(out_dir, b) && strcmp(a, b) == 0;
    free(md);
    if (same) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--out %s is the model's own folder", out_dir);
    if (!force && !dir_is_empty(out_dir))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--out %s exists and is not empty (pass --force to replace it)",
                       out_dir);
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void remove_tree(const char *path)
{
    if (path) nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* ------------------------------------------------------------- saving */

typedef struct save_ctx {
    qt_st_writer *w;
    const char *prefix;
} save_ctx;

static int save_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    save_ctx *s = ctx;
    if (!suffix || !t) return QTOOL_ERR_INVALID_ARGUMENT;
    size_t n = strlen(s->prefix) + strlen(suffix) + 1;
    char *name = malloc(n);
    if (!name) return QTOOL_ERR_OUT_OF_MEMORY;
    snprintf(name, n, "%s%s", s->prefix, suffix);
    int rc = qt_st_writer_add(s->w, name, t);
    free(name);
    return rc;
}

/* Is `name` the weight or bias of a block Linear (written by the plugin)? */
static int is_linear_tensor(const qt_model *m, const char *name)
{
    for (size_t i = 0; i < m->n_linears; i++) {
        const char *ln = m->linears[i]->name;
        size_t pl = prefix_len(ln);
        if (!strcmp(name, ln) || (!strncmp(name, ln, pl) && !strcmp(name + pl, "bias"))) return 1;
    }
    return 0;
}

/* A norm whose weights folding changed, and the checkpoint names it has. */
typedef struct folded_norm {
    const qt_norm *norm;
    char weight[512], bias[512];
    int written;
} folded_norm;

static int norm_names(const qt_model *m, int64_t block, int which, folded_norm *f)
{
    static const char *const dec[2] = {"input_layernorm", "post_attention_layernorm"};
    static const char *const mb[2] = {"attn_norm", "mlp_norm"};
    const char *part = m->cfg.arch == QT_ARCH_MODERNBERT ? mb[which] : dec[which];
    char base[256];
    snprintf(base, sizeof base, "model.layers.%" PRId64 ".%s", block, part);
    /* The spelling in use: with the base-model prefix or without. */
    for (int v = 0; v < 2; v++) {
        const char *b = v == 0 ? base : base + strlen("model.");
        snprintf(f->weight, sizeof f->weight, "%s.weight", b);
        snprintf(f->bias, sizeof f->bias, "%s.bias", b);
        if (qt_ckpt_find(m->ckpt, f->weight)) return 0;
    }
    return qt_fail(QTOOL_ERR_INTERNAL, "%s: cannot find the norm %s that an input scale was folded into",
                   m->model_path, base);
}

static int add_f32(qt_st_writer *w, const char *name, const float *v, int64_t n)
{
    qtool_tensor t = {0};
    t.data = (void *)v;
    t.dtype = QTOOL_DTYPE_F32;
    t.device = QTOOL_DEVICE_CPU;
    t.ndim = 1;
    t.shape[0] = n;
    return qt_st_writer_add(w, name, &t);
}

static int write_tensors(const qt_model *m, const char *path)
{
    const qtool_plugin_desc *d = m->desc;
    int64_t L = m->cfg.n_layers;
    folded_norm *fn = calloc((size_t)(2 * L + 1), sizeof *fn);
    qt_st_writer *w = qt_st_writer_new();
    size_t n_fn = 0;
    int rc = 0;
    if (!fn || !w) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < L && !rc; i++) {
        const qt_norm *nm[2] = {&m->blocks[i].norm1, &m->blocks[i].norm2};
        for (int j = 0; j < 2 && !rc; j++) {
            if (!nm[j]->orig_weight) continue;
            fn[n_fn].norm = nm[j];
            rc = norm_names(m, i, j, &fn[n_fn++]);
        }
    }
    if (rc) goto done;
    /* The checkpoint's own tensors, byte for byte, except the Linears (the
     * plugin writes those) and folded norms (their new values). */
    for (size_t i = 0; i < qt_ckpt_count(m->ckpt) && !rc; i++) {
        const qt_st_tensor *t = qt_ckpt_at(m->ckpt, i);
        if (is_linear_tensor(m, t->name)) continue;
        const float *folded = NULL;
        for (size_t k = 0; k < n_fn && !folded; k++) {
            if (!strcmp(t->name, fn[k].weight)) {
                folded = fn[k].norm->weight;
                fn[k].written |= 1;
            } else if (!strcmp(t->name, fn[k].bias) && fn[k].norm->bias) {
                folded = fn[k].norm->bias;
                fn[k].written |= 2;
            }
        }
        if (folded) rc = add_f32(w, t->name, folded, fn[0].norm->dim);
        else rc = qt_st_writer_add_raw(w, t->name, t->dtype_name, t->ndim, t->shape, t->view.data, t->nbytes);
    }
    for (size_t k = 0; k < n_fn && !rc; k++)
        if (fn[k].written != (fn[k].norm->bias ? 3 : 1))
            rc = qt_fail(QTOOL_ERR_INTERNAL, "%s: the folded norm %s was not written", m->model_path, fn[k].weight);
    for (size_t i = 0; i < m->n_linears && !rc; i++) {
        const qt_linear *l = m->linears[i];
        char *prefix = strndup(l->name, prefix_len(l->name));
        if (!prefix) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            break;
        }
        save_ctx sc = {w, prefix};
        qtool_save_sink sink = {&sc, save_put};
        qt_clear_error();
        rc = d->save(l->packed, &sink);
        if (rc) {
            char why[512];
            snprintf(why, sizeof why, "%s", qt_last_error());
            rc = qt_fail(rc, "%s: plugin %s could not save it (%s%s%s)", l->name, d->name, qt_status_name(rc),
                         why[0] ? ": " : "", why);
        } else if (l->input_scale) {
            char name[1024];
            snprintf(name, sizeof name, "%s%s", prefix, QT_QUANT_INPUT_SCALE_SUFFIX);
            rc = add_f32(w, name, l->input_scale, l->info.in_features);
        }
        free(prefix);
    }
    if (!rc) rc = qt_st_writer_set_metadata(w, "format", "pt");
    if (!rc) rc = qt_st_writer_set_metadata(w, "quantized_with", d->name);
    if (!rc) rc = qt_st_writer_commit(w, path);
done:
    qt_st_writer_free(w);
    free(fn);
    return rc;
}

static int write_config(const qt_model *m, const char *config_path, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    int rc = qt_read_file(config_path, QT_MODEL_MAX_CONFIG_BYTES, &text, &len);
    if (rc) return rc;
    json_error_t err;
    json_t *cfg = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    free(text);
    if (!cfg || !json_is_object(cfg)) {
        json_decref(cfg);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: line %d: %s", config_path, err.line, cfg ? "not an object" : err.text);
    }
    const qtool_plugin_desc *d = m->desc;
    if (d->quant_config_json) {
        char buf[16384];
        rc = d->quant_config_json(m->inst, buf, sizeof buf);
        json_t *qc = rc ? NULL : json_loads(buf, 0, &err);
        if (rc || !json_is_object(qc)) {
            json_decref(qc);
            json_decref(cfg);
            return qt_fail(rc ? rc : QTOOL_ERR_INTERNAL, "plugin %s: %s", d->name,
                           rc ? "cannot describe its quantization_config" : "its quantization_config is not a JSON object");
        }
        json_object_set_new(cfg, "quantization_config", qc);
    } else {
        json_object_del(cfg, "quantization_config");
    }
    char *out = json_dumps(cfg, JSON_INDENT(2));
    json_decref(cfg);
    if (!out) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    size_t n = strlen(out);
    char *nl = realloc(out, n + 2);
    if (!nl) {
        free(out);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    nl[n] = '\n';
    nl[n + 1] = '\0';
    rc = qt_write_file_atomic(path, nl, n + 1);
    free(nl);
    return rc;
}

/* Files a checkpoint folder carries besides its weights and config. */
static const char *const aux_files[] = {"tokenizer.json",    "tokenizer_config.json", "special_tokens_map.json",
                                        "vocab.txt",         "vocab.json",            "merges.txt",
                                        "tokenizer.model",   "added_tokens.json",     "generation_config.json",
                                        "chat_template.jinja"};

static int copy_aux(const char *src_dir, const char *dst_dir, int *copied)
{
    *copied = 0;
    for (size_t i = 0; i < sizeof aux_files / sizeof aux_files[0]; i++) {
        char *src = qt_path_join(src_dir, aux_files[i]), *dst = qt_path_join(dst_dir, aux_files[i]);
        struct stat st;
        int rc = 0;
        if (!src || !dst) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        } else if (stat(src, &st) == 0 && S_ISREG(st.st_mode)) {
            char *data = NULL;
            size_t len = 0;
            rc = qt_read_file(src, (size_t)1 << 30, &data, &len);
            if (!rc) rc = qt_write_file_atomic(dst, data, len);
            free(data);
            if (!rc) (*copied)++;
        }
        free(src);
        free(dst);
        if (rc) return rc;
    }
    return 0;
}

static char *config_of(const qt_model *m, const char *config_path)
{
    if (config_path) return strdup(config_path);
    char *dir = model_dir_of(m->model_path);
    char *p = dir ? qt_path_join(dir, "config.json") : NULL;
    free(dir);
    return p;
}

int qt_quant_save(const qt_model *m, const char *config_path, const char *out_dir, int force)
{
    const qtool_plugin_desc *d = m->desc;
    if (!d) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "save of a model that is not packed");
    if (!d->save) return qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot save packed layers", d->name);
    if (m->quant_config) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is already quantized", m->model_path);
    for (size_t i = 0; i < m->n_linears; i++) {
        if (!m->linears[i]->packed) return qt_fail(QTOOL_ERR_INTERNAL, "%s is not packed", m->linears[i]->name);
        if (m->linears[i]->input_scale && !d->quant_config_json)
            return qt_fail(QTOOL_ERR_UNSUPPORTED,
                           "plugin %s has no quantization_config, so the input scale of %s could not be read back",
                           d->name, m->linears[i]->name);
    }
    int rc = qt_quant_check_out(out_dir, m->model_path, force);
    if (rc) return rc;

    /* Everything goes into a fresh folder beside the output, renamed into
     * place at the end. */
    size_t n = strlen(out_dir);
    while (n > 1 && out_dir[n - 1] == '/') n--;
    char *final = strndup(out_dir, n);
    char *parent = final ? parent_of(final) : NULL;
    char *tmp = final ? malloc(n + 32) : NULL, *old = final ? malloc(n + 32) : NULL;
    char *cfg_src = config_of(m, config_path), *src_dir = model_dir_of(m->model_path);
    char *st_path = NULL, *cfg_path = NULL;
    int made_tmp = 0, made_old = 0;
    if (!final || !parent || !tmp || !old || !cfg_src || !src_dir) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if ((rc = qt_mkdirs(parent))) goto done;
    snprintf(tmp, n + 32, "%s.tmp-XXXXXX", final);
    if (!mkdtemp(tmp)) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot create a folder beside it: %s", final, strerror(errno));
        goto done;
    }
    made_tmp = 1;
    chmod(tmp, 0755);
    st_path = qt_path_join(tmp, "model.safetensors");
    cfg_path = qt_path_join(tmp, "config.json");
    if (!st_path || !cfg_path) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if (!qt_file_exists(cfg_src)) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: no config.json to copy (pass --config FILE)", m->model_path);
        goto done;
    }
    int copied = 0;
    if ((rc = write_tensors(m, st_path)) || (rc = write_config(m, cfg_src, cfg_path)) ||
        (rc = copy_aux(src_dir, tmp, &copied)))
        goto done;

    struct stat st;
    if (stat(final, &st) == 0) {
        if (dir_is_empty(final)) {
            if (rmdir(final) != 0) {
                rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot replace: %s", final, strerror(errno));
                goto done;
            }
        } else if (force) {
            /* Moves the old folder aside (onto an empty placeholder, which
             * rename replaces), then deletes it once the new one is there. */
            snprintf(old, n + 32, "%s.old-XXXXXX", final);
            if (!mkdtemp(old) || rename(final, old) != 0) {
                rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot move the old folder aside: %s", final,
                             strerror(errno));
                goto done;
            }
            made_old = 1;
        } else {
            rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--out %s exists and is not empty (pass --force to replace it)",
                         final);
            goto done;
        }
    }
    if (rename(tmp, final) != 0) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot rename %s into place: %s", final, tmp, strerror(errno));
        if (made_old && rename(old, final) == 0) made_old = 0;
        goto done;
    }
    made_tmp = 0;
    sync_dir(parent);
    if (made_old) {
        remove_tree(old);
        made_old = 0;
    }
done:
    if (made_tmp) remove_tree(tmp);
    if (made_old) rmdir(old); /* only the empty placeholder can be left */
    free(final);
    free(parent);
    free(tmp);
    free(old);
    free(cfg_src);
    free(src_dir);
    free(st_path);
    free(cfg_path);
    return rc;
}

/* --------------------------------------------------------- calibration */

static int64_t any_label(void *ctx, const char *name)
{
    (void)ctx;
    (void)name;
    return 0; /* labels play no part in calibration */
}

int qt_calib_set_load(const char *path, const qt_model *m, const struct qt_tokenizer *tok, int64_t samples,
                      int64_t max_length, int64_t batch_tokens, qt_calib_set *out)
{
    memset(out, 0, sizeof *out);
    qt_data_options o = {0};
    o.vocab_size = m->cfg.vocab_size;
    o.max_length = max_length;
    o.label_lookup = any_label;
    o.tokenizer = tok;
    int rc = qt_data_load(path, &o, &out->data);
    if (rc) return rc;
    int64_t n = out->data.n < samples ? out->data.n : samples;
    if (n < 1) {
        qt_calib_set_free(out);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: no calibration examples", path);
    }
    out->ids = malloc((size_t)n * sizeof *out->ids);
    out->lengths = malloc((size_t)n * sizeof *out->lengths);
    out->batches = malloc((size_t)n * sizeof *out->batches);
    if (!out->ids || !out->lengths || !out->batches) {
        qt_calib_set_free(out);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int64_t i = 0; i < n; i++) {
        out->ids[i] = qt_dataset_ids(&out->data, i);
        out->lengths[i] = out->data.examples[i].length;
        if (out->lengths[i] < 1) {
            int64_t line = out->data.examples[i].line;
            qt_calib_set_free(out);
            return qt_fail(QTOOL_ERR_FORMAT, "%s:%" PRId64 ": a calibration example needs at least one token", path,
                           line);
        }
    }
    for (int64_t s = 0; s < n;) {
        int64_t e = s, tok = 0;
        while (e < n && (e == s || tok + out->lengths[e] <= batch_tokens)) tok += out->lengths[e++];
        qt_batch b = {e - s, out->ids + s, out->lengths + s};
        out->batches[out->n_batches++] = b;
        out->n_tokens += tok;
        s = e;
    }
    out->n_examples = n;
    return 0;
}

void qt_calib_set_free(qt_calib_set *s)
{
    qt_dataset_free(&s->data);
    free(s->batches);
    free(s->ids);
    free(s->lengths);
    memset(s, 0, sizeof *s);
}
