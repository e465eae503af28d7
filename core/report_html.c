/* report.html: one self-contained file (inline CSS, inline SVG, no scripts,
 * no external assets), readable offline and printable. Every string that
 * came from results.json is escaped. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "report.h"

static const char *palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
#define N_PALETTE (sizeof palette / sizeof palette[0])
/* Plugins get their own colours (grey first, as 8-bit usually is), so a
 * colour never means a model in one chart and a plugin in another. */
static const char *plugin_palette[] = {"#8c8c8c", "#e15759", "#f28e2b", "#59a14f", "#76b7b2",
                                       "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#4e79a7"};
#define N_PLUGIN_PALETTE (sizeof plugin_palette / sizeof plugin_palette[0])

/* ------------------------------------------------------------- escaping */

static void esc(FILE *f, const char *s)
{
    if (!s) {
        fputs("-", f);
        return;
    }
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default:
            if (*p < 0x20 && *p != '\n' && *p != '\t')
                fputc(' ', f); /* control characters are not allowed in HTML text */
            else
                fputc(*p, f);
        }
    }
}

static void esc_label(FILE *f, const qt_row *w)
{
    esc(f, w->model);
    fputs(" / ", f);
    esc(f, w->plugin);
}

static void num(FILE *f, double v, const char *fmt)
{
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fputs("<span class=\"na\">-</span>", f);
}

/* ----------------------------------------------------------------- scales */

typedef struct scale {
    double lo, hi;   /* data domain */
    double p0, p1;   /* pixel range */
    int log;
} scale;

static double sc(const scale *s, double v)
{
    double a = s->lo, b = s->hi, x = v;
    if (s->log) {
        a = log10(a), b = log10(b), x = log10(v > 0 ? v : s->lo);
    }
    if (b <= a) return (s->p0 + s->p1) / 2;
    return s->p0 + (x - a) / (b - a) * (s->p1 - s->p0);
}

static double nice_step(double range, int target)
{
    if (!(range > 0)) return 1;
    double raw = range / target, mag = pow(10, floor(log10(raw))), r = raw / mag;
    double m = r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10;
    return m * mag;
}

/* Linear domain widened to whole ticks. */
static void nice_domain(double *lo, double *hi, int target)
{
    if (!(*hi > *lo)) {
        double d = fabs(*lo) > 0 ? fabs(*lo) * 0.1 : 1;
        *lo -= d;
        *hi += d;
    }
    double st = nice_step(*hi - *lo, target);
    *lo = floor(*lo / st + 1e-9) * st;
    *hi = ceil(*hi / st - 1e-9) * st;
}

static void fmt_tick(char *buf, size_t len, double v, double step)
{
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    if (dec > 6) dec = 6;
    if (fabs(v) < step * 1e-6) v = 0;
    snprintf(buf, len, "%.*f", dec, v);
}

/* Axis lines, ticks, grid and labels for x (bottom) and/or y (left). */
static void draw_y_axis(FILE *f, const scale *y, double x0, double x1, const char *label, int target)
{
    double st = nice_step(y->hi - y->lo, target);
    char b[32];
    for (double v = ceil(y->lo / st - 1e-9) * st; v <= y->hi + st * 1e-9; v += st) {
        double py = sc(y, v);
        fmt_tick(b, sizeof b, v, st);
        fprintf(f, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x0, py, x1, py);
        fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", x0 - 6,
                py + 4, b);
    }
    fprintf(f, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x0, y->p0, x0, y->p1);
    double my = (y->p0 + y->p1) / 2;
    fprintf(f, "<text class=\"alabel\" transform=\"translate(%.1f %.1f) rotate(-90)\" text-anchor=\"middle\">",
            x0 - 48, my);
    esc(f, label);
    fputs("</text>\n", f);
}

static void draw_x_axis(FILE *f, const scale *x, double y0, double y1, const char *label, int target)
{
    char b[32];
    if (x->log) {
        for (int e = (int)floor(log10(x->lo)); e <= (int)ceil(log10(x->hi)); e++) {
            static const double mult[] = {1, 2, 5};
            for (int k = 0; k < 3; k++) {
                double v = mult[k] * pow(10, e);
                if (v < x->lo * (1 - 1e-9) || v > x->hi * (1 + 1e-9)) continue;
                double px = sc(x, v);
                fmt_tick(b, sizeof b, v, v);
                fprintf(f, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", px, y0,
                        px, y1);
                fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", px,
                        y0 + 16, b);
            }
        }
    } else {
        double st = nice_step(x->hi - x->lo, target);
        for (double v = ceil(x->lo / st - 1e-9) * st; v <= x->hi + st * 1e-9; v += st) {
            double px = sc(x, v);
            fmt_tick(b, sizeof b, v, st);
            fprintf(f, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", px, y0, px, y1);
            fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", px,
                    y0 + 16, b);
        }
    }
    fprintf(f, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x->p0, y0, x->p1, y0);
    fprintf(f, "<text class=\"alabel\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (x->p0 + x->p1) / 2,
            y0 + 36);
    esc(f, label);
    fputs("</text>\n", f);
}

/* Marker by weight bits: 16+ circle, 5-15 (8) square, 1-4 triangle, unknown diamond. */
static void marker(FILE *f, int bits, double x, double y, double r, const char *stroke, const char *fill,
                   double sw)
{
    if (bits >= 16) {
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" stroke=\"%s\" fill=\"%s\" stroke-width=\"%.1f\"/>",
                x, y, r, stroke, fill, sw);
    } else if (bits > 4) {
        fprintf(f,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" stroke=\"%s\" fill=\"%s\" "
                "stroke-width=\"%.1f\"/>",
                x - r * 0.9, y - r * 0.9, r * 1.8, r * 1.8, stroke, fill, sw);
    } else if (bits > 0) {
        fprintf(f,
                "<polygon points=\"%.1f,%.1f %.1f,%.1f %.1f,%.1f\" stroke=\"%s\" fill=\"%s\" "
                "stroke-width=\"%.1f\"/>",
                x, y - r * 1.2, x - r * 1.1, y + r * 0.8, x + r * 1.1, y + r * 0.8, stroke, fill, sw);
    } else {
        fprintf(f,
                "<polygon points=\"%.1f,%.1f %.1f,%.1f %.1f,%.1f %.1f,%.1f\" stroke=\"%s\" fill=\"%s\" "
                "stroke-width=\"%.1f\"/>",
                x, y - r * 1.2, x + r * 1.2, y, x, y + r * 1.2, x - r * 1.2, y, stroke, fill, sw);
    }
}

static int first_of_model(const qt_results *r, size_t a)
{
    for (size_t b = 0; b < a; b++)
        if (strcmp(r->rows[b].model, r->rows[a].model) == 0) return 0;
    return 1;
}

/* Position of a row's model among the models in order of first appearance. */
static size_t model_index(const qt_results *r, size_t row)
{
    size_t idx = 0;
    for (size_t a = 0; a < r->n; a++) {
        if (!first_of_model(r, a)) continue;
        if (strcmp(r->rows[a].model, r->rows[row].model) == 0) return idx;
        idx++;
    }
    return idx;
}

/* Colour of a non-reference plugin: by order of first appearance. */
static const char *plugin_color(const qt_results *r, const char *plugin)
{
    size_t idx = 0;
    for (size_t a = 0; a < r->n; a++) {
        const qt_row *w = &r->rows[a];
        if (w->is_reference) continue;
        int first = 1;
        for (size_t b = 0; b < a && first; b++)
            first = r->rows[b].is_reference || strcmp(r->rows[b].plugin, w->plugin) != 0;
        if (!first) continue;
        if (strcmp(w->plugin, plugin) == 0) return plugin_palette[idx % N_PLUGIN_PALETTE];
        idx++;
    }
    return plugin_palette[idx % N_PLUGIN_PALETTE];
}

static const char *model_color(const qt_results *r, size_t row)
{
    return palette[model_index(r, row) % N_PALETTE];
}

/* ------------------------------------------------------------ Pareto plot */

static void pareto_svg(FILE *f, const qt_results *r, const qt_envelope *e, int cost, long rec)
{
    const double W = 560, H = 380, L = 70, R = 20, T = 30, B = 92;
    int *front = calloc(r->n + 1, sizeof *front);
    size_t *order = calloc(r->n + 1, sizeof *order);
    if (!front || !order) {
        free(front);
        free(order);
        return;
    }
    qt_pareto_front(r, cost, NULL, front);
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    size_t np = 0;
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        double x = cost == 0 ? w->ms_per_example : w->peak_vram_bytes / 1e9;
        if (!qt_row_ok(w) || !isfinite(x) || !isfinite(w->macro_f1)) continue;
        np++;
        xlo = fmin(xlo, x), xhi = fmax(xhi, x);
        ylo = fmin(ylo, w->macro_f1), yhi = fmax(yhi, w->macro_f1);
    }
    const char *title = cost == 0 ? "Latency vs macro-F1" : "Peak VRAM vs macro-F1";
    const char *xlabel = cost == 0 ? "ms per example (batch 32)" : "peak VRAM (GB, allocator)";
    fprintf(f, "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.0f %.0f\" width=\"%.0f\" "
               "height=\"%.0f\" role=\"img\" aria-label=\"%s\">\n",
            W, H, W, H, title);
    fprintf(f, "<text class=\"ctitle\" x=\"%.1f\" y=\"18\" text-anchor=\"middle\">%s</text>\n", W / 2, title);
    if (np == 0) {
        fprintf(f, "<text class=\"empty\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no configuration has "
                   "both values</text></svg></figure>\n",
                W / 2, H / 2);
        free(front);
        free(order);
        return;
    }
    /* Envelope thresholds join the domain when they are near the data. */
    double xt = cost == 0 ? e->max_ms_per_example : e->max_vram_gb, yt = e->min_macro_f1;
    double xr = xhi - xlo > 0 ? xhi - xlo : fabs(xhi) + 1e-9, yr = yhi - ylo > 0 ? yhi - ylo : fabs(yhi) + 1e-9;
    int x_in = isfinite(xt) && xt >= xlo - 2 * xr && xt <= xhi + 2 * xr;
    int y_in = isfinite(yt) && yt >= ylo - 2 * yr && yt <= yhi + 2 * yr;
    if (x_in) xlo = fmin(xlo, xt), xhi = fmax(xhi, xt);
    if (y_in) ylo = fmin(ylo, yt), yhi = fmax(yhi, yt);
    scale xs = {xlo, xhi, L, W - R, 0}, ys = {ylo, yhi, H - B, T, 0};
    if (xlo > 0 && xhi / xlo > 30) {
        xs.log = 1;
        xs.lo = pow(10, floor(log10(xlo) * 4) / 4);
        xs.hi = pow(10, ceil(log10(xhi) * 4) / 4);
    } else {
        double pad = (xhi - xlo) * 0.08;
        xs.lo = xlo - pad, xs.hi = xhi + pad;
        if (xlo >= 0 && xs.lo < 0) xs.lo = 0;
        nice_domain(&xs.lo, &xs.hi, 6);
    }
    double pad = (yhi - ylo) * 0.1;
    ys.lo = ylo - pad, ys.hi = yhi + pad;
    nice_domain(&ys.lo, &ys.hi, 5);
    draw_y_axis(f, &ys, L, W - R, "macro-F1", 5);
    char xlab[160];
    if (isfinite(xt) && !x_in)
        snprintf(xlab, sizeof xlab, "%s; envelope limit %g is off the chart", xlabel, xt);
    else
        snprintf(xlab, sizeof xlab, "%s", xlabel);
    draw_x_axis(f, &xs, H - B, T, xlab, 6);
    if (x_in)
        fprintf(f, "<line class=\"limit\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"><title>envelope: "
                   "%s &lt;= %g</title></line>\n",
                sc(&xs, xt), (double)T, sc(&xs, xt), H - B, cost == 0 ? "max_ms_per_example" : "max_vram_gb", xt);
    if (y_in)
        fprintf(f, "<line class=\"limit\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"><title>envelope: "
                   "min_macro_f1 &gt;= %g</title></line>\n",
                L, sc(&ys, yt), W - R, sc(&ys, yt), yt);
    /* Frontier: staircase through its points by increasing cost. */
    size_t nf = 0;
    for (size_t i = 0; i < r->n; i++)
        if (front[i]) order[nf++] = i;
    for (size_t a = 1; a < nf; a++)
        for (size_t b = a; b > 0; b--) {
            const qt_row *p = &r->rows[order[b - 1]], *q = &r->rows[order[b]];
            double cp = cost == 0 ? p->ms_per_example : p->peak_vram_bytes;
            double cq = cost == 0 ? q->ms_per_example : q->peak_vram_bytes;
            if (cq < cp) {
                size_t t = order[b];
                order[b] = order[b - 1];
                order[b - 1] = t;
            }
        }
    if (nf > 0) {
        fputs("<polyline class=\"front\" points=\"", f);
        for (size_t k = 0; k < nf; k++) {
            const qt_row *p = &r->rows[order[k]];
            double x = sc(&xs, cost == 0 ? p->ms_per_example : p->peak_vram_bytes / 1e9);
            double y = sc(&ys, p->macro_f1);
            if (k > 0) {
                const qt_row *q = &r->rows[order[k - 1]];
                fprintf(f, "%.1f,%.1f ", x, sc(&ys, q->macro_f1));
            }
            fprintf(f, "%.1f,%.1f ", x, y);
        }
        /* Extend right: everything beyond is dominated by the best point. */
        fprintf(f, "%.1f,%.1f\"/>\n", W - R, sc(&ys, r->rows[order[nf - 1]].macro_f1));
    }
    /* Obstacles for labels: every marker, then each label placed. */
    double boxes[512][4];
    size_t n_boxes = 0;
    for (size_t i = 0; i < r->n && n_boxes < 256; i++) {
        const qt_row *w = &r->rows[i];
        double xv = cost == 0 ? w->ms_per_example : w->peak_vram_bytes / 1e9;
        if (!qt_row_ok(w) || !isfinite(xv) || !isfinite(w->macro_f1)) continue;
        boxes[n_boxes][0] = sc(&xs, xv) - 7, boxes[n_boxes][1] = sc(&ys, w->macro_f1) - 7;
        boxes[n_boxes][2] = boxes[n_boxes][3] = 14;
        n_boxes++;
    }
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        double xv = cost == 0 ? w->ms_per_example : w->peak_vram_bytes / 1e9;
        if (!qt_row_ok(w) || !isfinite(xv) || !isfinite(w->macro_f1)) continue;
        double x = sc(&xs, xv), y = sc(&ys, w->macro_f1);
        const char *col = model_color(r, i);
        int viable = qt_row_viable(e, w);
        fputs("<g>", f);
        fputs("<title>", f);
        esc_label(f, w);
        fprintf(f, ": macro-F1 %.4f, %s %.4g%s%s</title>", w->macro_f1, cost == 0 ? "ms/example" : "GB", xv,
                front[i] ? ", on the frontier" : "", viable ? ", viable" : ", not viable");
        if ((long)i == rec)
            fprintf(f, "<circle class=\"rec\" cx=\"%.1f\" cy=\"%.1f\" r=\"13\"/>", x, y);
        marker(f, w->weight_bits, x, y, front[i] ? 6.5 : 5.5, col, viable ? col : "#ffffff", front[i] ? 2.5 : 1.5);
        /* Labels try four spots around the point and take the first that
         * does not overlap a label already placed. */
        double tw = 6.0 * (double)(strlen(w->plugin) > 24 ? 24 : strlen(w->plugin)) + 4, th = 12;
        static const double dx[] = {9, 9, -9, -9}, dy[] = {-7, 15, -7, 15};
        int spot = 0;
        for (int s = 0; s < 4; s++) {
            double bx = dx[s] > 0 ? x + dx[s] : x + dx[s] - tw, by = y + dy[s] - th + 2;
            int clash = 0;
            for (size_t q = 0; q < n_boxes && !clash; q++)
                clash = bx < boxes[q][0] + boxes[q][2] && boxes[q][0] < bx + tw && by < boxes[q][1] + boxes[q][3] &&
                        boxes[q][1] < by + th;
            if (!clash) {
                spot = s;
                break;
            }
        }
        double bx = dx[spot] > 0 ? x + dx[spot] : x + dx[spot] - tw;
        if (n_boxes < 512) {
            boxes[n_boxes][0] = bx, boxes[n_boxes][1] = y + dy[spot] - th + 2;
            boxes[n_boxes][2] = tw, boxes[n_boxes][3] = th;
            n_boxes++;
        }
        fprintf(f, "<text class=\"plabel\" x=\"%.1f\" y=\"%.1f\"%s>", x + dx[spot], y + dy[spot],
                dx[spot] < 0 ? " text-anchor=\"end\"" : "");
        esc(f, w->plugin);
        fputs("</text></g>\n", f);
    }
    /* Legend: models, markers, frontier, fill. */
    double ly = H - 36, lx = L;
    for (size_t i = 0; i < r->n; i++) {
        if (!first_of_model(r, i)) continue;
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>", lx, ly - 9,
                model_color(r, i));
        fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">", lx + 14, ly);
        esc(f, r->rows[i].model);
        fputs("</text>", f);
        lx += 24 + 7.0 * (double)(strlen(r->rows[i].model) > 20 ? 20 : strlen(r->rows[i].model));
    }
    ly += 18, lx = L;
    static const int bits[] = {16, 8, 4};
    static const char *bl[] = {"16-bit", "8-bit", "4-bit"};
    for (int k = 0; k < 3; k++) {
        marker(f, bits[k], lx + 5, ly - 4, 5, "#333", "#333", 1);
        fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">%s</text>", lx + 14, ly, bl[k]);
        lx += 66;
    }
    marker(f, 16, lx + 5, ly - 4, 5, "#333", "#ffffff", 1.5);
    fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">not viable</text>", lx + 14, ly);
    lx += 86;
    fprintf(f, "<line class=\"front\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", lx, ly - 4, lx + 20, ly - 4);
    fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">frontier</text>", lx + 24, ly);
    lx += 84;
    if (rec >= 0) {
        fprintf(f, "<circle class=\"rec\" cx=\"%.1f\" cy=\"%.1f\" r=\"6\"/>", lx + 5, ly - 4);
        fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">recommended</text>", lx + 14, ly);
    }
    fputs("</svg></figure>\n", f);
    free(front);
    free(order);
}

/* ------------------------------------------------------------ bar charts */

typedef struct bars {
    const char *title, *ylabel;
    size_t ncat, nser;
    char **cats;            /* ncat labels (escaped when drawn) */
    const char **ser_names; /* nser */
    const char **ser_colors;
    double *val;  /* [ser * ncat + cat] */
    double *lo, *hi; /* whiskers, may be NULL */
    char **ann;   /* text over each bar, may be NULL */
    int *faded;   /* drawn lighter with a dashed outline, may be NULL */
    double ref;   /* horizontal line, NAN for none */
    const char *ref_label;
    const char *fmt; /* value format for tooltips */
    const char *ann_unit; /* appended to the annotation in tooltips */
} bars;

static void bars_svg(FILE *f, const bars *b)
{
    int rotate = 0;
    for (size_t c = 0; c < b->ncat; c++) rotate |= strlen(b->cats[c]) * 6.5 > 520.0 / (double)b->ncat;
    const double W = b->ncat > 8 ? 40 + 64.0 * (double)b->ncat : 560, L = 70, R = 20, T = 30;
    const double B = rotate ? 120 : 62, legend_h = b->nser > 1 ? 22 : 0;
    const double H = 330 + (rotate ? 58 : 0) + legend_h;
    double lo = 0, hi = 0;
    for (size_t k = 0; k < b->ncat * b->nser; k++) {
        if (isfinite(b->val[k])) lo = fmin(lo, b->val[k]), hi = fmax(hi, b->val[k]);
        if (b->lo && isfinite(b->lo[k])) lo = fmin(lo, b->lo[k]);
        if (b->hi && isfinite(b->hi[k])) hi = fmax(hi, b->hi[k]);
    }
    if (isfinite(b->ref)) lo = fmin(lo, b->ref), hi = fmax(hi, b->ref);
    double pad = (hi - lo) * 0.12;
    if (hi > 0) hi += pad;
    if (lo < 0) lo -= pad;
    nice_domain(&lo, &hi, 5);
    scale ys = {lo, hi, H - B - legend_h, T, 0};
    fprintf(f, "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.0f %.0f\" width=\"%.0f\" "
               "height=\"%.0f\" role=\"img\" aria-label=\"",
            W, H, W, H);
    esc(f, b->title);
    fputs("\">\n", f);
    fprintf(f, "<text class=\"ctitle\" x=\"%.1f\" y=\"18\" text-anchor=\"middle\">", W / 2);
    esc(f, b->title);
    fputs("</text>\n", f);
    draw_y_axis(f, &ys, L, W - R, b->ylabel, 5);
    double y0 = sc(&ys, 0);
    double band = (W - L - R) / (double)(b->ncat ? b->ncat : 1);
    double bw = band * 0.78 / (double)(b->nser ? b->nser : 1);
    for (size_t c = 0; c < b->ncat; c++) {
        double cx = L + band * ((double)c + 0.5);
        for (size_t s = 0; s < b->nser; s++) {
            size_t k = s * b->ncat + c;
            double v = b->val[k];
            if (!isfinite(v)) continue;
            double x = L + band * (double)c + band * 0.11 + bw * (double)s;
            double yv = sc(&ys, v);
            int faded = b->faded && b->faded[k];
            fputs("<g><title>", f);
            esc(f, b->cats[c]);
            fputs(" - ", f);
            esc(f, b->ser_names[s]);
            fputs(": ", f);
            fprintf(f, b->fmt, v);
            if (b->lo && isfinite(b->lo[k])) {
                fputs(" [", f);
                fprintf(f, b->fmt, b->lo[k]);
                fputs(", ", f);
                fprintf(f, b->fmt, b->hi[k]);
                fputs("]", f);
            }
            if (b->ann && b->ann[k]) {
                fputs(", ", f);
                esc(f, b->ann[k]);
                if (b->ann_unit) fputs(b->ann_unit, f);
            }
            fputs("</title>", f);
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"%s/>", x,
                    fmin(yv, y0), bw * 0.92, fmax(fabs(y0 - yv), 0.8), b->ser_colors[s],
                    faded ? " class=\"faded\"" : "");
            double top = v >= 0 ? yv : y0;
            if (b->lo && b->hi && isfinite(b->lo[k]) && isfinite(b->hi[k])) {
                double wx = x + bw * 0.46, ya = sc(&ys, b->lo[k]), yb = sc(&ys, b->hi[k]);
                fprintf(f,
                        "<line class=\"whisker\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                        "<line class=\"whisker\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                        "<line class=\"whisker\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>",
                        wx, ya, wx, yb, wx - 4, ya, wx + 4, ya, wx - 4, yb, wx + 4, yb);
                top = fmin(top, fmin(ya, yb));
            }
            if (b->ann && b->ann[k]) {
                fprintf(f, "<text class=\"ann\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", x + bw * 0.46,
                        top - 4);
                esc(f, b->ann[k]);
                fputs("</text>", f);
            }
            fputs("</g>\n", f);
        }
        if (rotate) {
            fprintf(f, "<text class=\"tick\" transform=\"translate(%.1f %.1f) rotate(-35)\" text-anchor=\"end\">",
                    cx, H - B - legend_h + 14);
        } else {
            fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", cx,
                    H - B - legend_h + 16);
        }
        esc(f, b->cats[c]);
        fputs("</text>\n", f);
    }
    fprintf(f, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", L, y0, W - R, y0);
    if (isfinite(b->ref)) {
        double yr = sc(&ys, b->ref);
        fprintf(f, "<line class=\"limit\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", L, yr, W - R, yr);
        fprintf(f, "<text class=\"note\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", W - R - 2, yr - 4);
        esc(f, b->ref_label);
        fputs("</text>\n", f);
    }
    if (b->nser > 1) {
        double lx = L, ly = H - 10;
        for (size_t s = 0; s < b->nser; s++) {
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>", lx, ly - 9,
                    b->ser_colors[s]);
            fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">", lx + 14, ly);
            esc(f, b->ser_names[s]);
            fputs("</text>", f);
            size_t len = strlen(b->ser_names[s]);
            lx += 30 + 6.5 * (double)(len > 30 ? 30 : len);
        }
        fputc('\n', f);
    }
    fputs("</svg></figure>\n", f);
}

/* ------------------------------------------------------------ line chart */

static void lines_svg(FILE *f, const char *title, char **cats, size_t ncat, char **series, size_t nser,
                      const double *val /* [s * ncat + c] */)
{
    int rotate = 0;
    for (size_t c = 0; c < ncat; c++) rotate |= strlen(cats[c]) * 6.5 > 480.0 / (double)(ncat ? ncat : 1);
    const double W = 560, L = 70, R = 20, T = 30, B = rotate ? 110 : 56;
    const double legend_rows = (double)((nser + 3) / 4), H = 300 + (rotate ? 54 : 0) + 18 * legend_rows;
    scale ys = {0, 1, H - B - 18 * legend_rows, T, 0};
    fprintf(f, "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.0f %.0f\" width=\"%.0f\" "
               "height=\"%.0f\" role=\"img\" aria-label=\"",
            W, H, W, H);
    esc(f, title);
    fputs("\">\n<text class=\"ctitle\" x=\"280\" y=\"18\" text-anchor=\"middle\">", f);
    esc(f, title);
    fputs("</text>\n", f);
    draw_y_axis(f, &ys, L, W - R, "per-class accuracy (recall)", 5);
    double step = ncat > 1 ? (W - L - R - 60) / (double)(ncat - 1) : 0;
    for (size_t c = 0; c < ncat; c++) {
        double x = ncat > 1 ? L + 30 + step * (double)c : (L + W - R) / 2;
        double yb = ys.p0;
        if (rotate)
            fprintf(f, "<text class=\"tick\" transform=\"translate(%.1f %.1f) rotate(-35)\" text-anchor=\"end\">", x,
                    yb + 14);
        else
            fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", x, yb + 16);
        esc(f, cats[c]);
        fputs("</text>\n", f);
    }
    fprintf(f, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", L, ys.p0, W - R, ys.p0);
    for (size_t s = 0; s < nser; s++) {
        const char *col = palette[s % N_PALETTE];
        fputs("<g>", f);
        fprintf(f, "<polyline class=\"traj\" stroke=\"%s\" points=\"", col);
        for (size_t c = 0; c < ncat; c++) {
            double v = val[s * ncat + c];
            if (!isfinite(v)) continue;
            double x = ncat > 1 ? L + 30 + step * (double)c : (L + W - R) / 2;
            fprintf(f, "%.1f,%.1f ", x, sc(&ys, v));
        }
        fputs("\"/>", f);
        for (size_t c = 0; c < ncat; c++) {
            double v = val[s * ncat + c];
            if (!isfinite(v)) continue;
            double x = ncat > 1 ? L + 30 + step * (double)c : (L + W - R) / 2;
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"><title>", x, sc(&ys, v), col);
            esc(f, series[s]);
            fputs(" at ", f);
            esc(f, cats[c]);
            fprintf(f, ": %.4f</title></circle>", v);
        }
        fputs("</g>\n", f);
    }
    for (size_t s = 0; s < nser; s++) {
        double lx = L + 120.0 * (double)(s % 4), ly = H - 10 - 18 * (legend_rows - 1 - (double)(s / 4));
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>", lx, ly - 9,
                palette[s % N_PALETTE]);
        fprintf(f, "<text class=\"legend\" x=\"%.1f\" y=\"%.1f\">", lx + 14, ly);
        char shortname[24];
        snprintf(shortname, sizeof shortname, "%s", series[s]);
        esc(f, shortname);
        fputs("</text>", f);
    }
    fputs("\n</svg></figure>\n", f);
}

/* ----------------------------------------------------------------- page */

static const char *css =
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;background:#fafafa;margin:0}"
    "main{max-width:1180px;margin:0 auto;padding:24px 28px;background:#fff}"
    "h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}"
    ".meta{color:#666;margin:0 0 12px}"
    ".rec{font-size:17px;background:#eef6ee;border-left:4px solid #2ca02c;padding:10px 14px}"
    ".rec.none{background:#fbeeee;border-color:#d62728}"
    "table{border-collapse:collapse;margin:8px 0;font-size:12.5px}"
    "th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}"
    "th{background:#f2f2f2}td.l,th.l{text-align:left}"
    "td.pass{background:#e3f4e3}td.fail{background:#f9dede;font-weight:600}td.missing{background:#fff3cd}"
    "td.viable{font-weight:700;color:#1a7a1a}tr.recrow td{box-shadow:inset 0 2px 0 #2ca02c,inset 0 -2px 0 #2ca02c}"
    ".na{color:#aaa}.status-failed,.status-refused{color:#b22}"
    ".scroll{overflow-x:auto}"
    "figure{margin:10px 0;display:inline-block;vertical-align:top}"
    "svg{background:#fff;font-family:system-ui,sans-serif}"
    "svg .grid{stroke:#eee}svg .axis{stroke:#444}svg .tick{font-size:11px;fill:#444}"
    "svg .alabel{font-size:12px;fill:#222}svg .ctitle{font-size:14px;font-weight:600;fill:#222}"
    "svg .plabel{font-size:10.5px;fill:#333;paint-order:stroke;stroke:#fff;stroke-width:3px}svg .legend{font-size:11px;fill:#333}"
    "svg .ann{font-size:10px;fill:#333}svg .note{font-size:11px;fill:#b22;paint-order:stroke;stroke:#fff;stroke-width:3px}svg .empty{font-size:13px;fill:#999}"
    "svg .limit{stroke:#b22;stroke-dasharray:6 4;stroke-width:1.5}"
    "svg .front{fill:none;stroke:#555;stroke-dasharray:3 3;stroke-width:1.5}"
    "svg .rec{fill:none;stroke:#111;stroke-width:2}"
    "svg .whisker{stroke:#111;stroke-width:1.3}"
    "svg .faded{opacity:.45;stroke:#333;stroke-dasharray:3 2}"
    "svg .traj{fill:none;stroke-width:2}"
    "ul.cf li{margin:4px 0}"
    "@media print{main{max-width:none}}";

static void td_num(FILE *f, double v, const char *fmt)
{
    fputs("<td>", f);
    num(f, v, fmt);
    fputs("</td>", f);
}

static void td_label(FILE *f, const qt_row *w)
{
    fputs("<td class=\"l\">", f);
    esc_label(f, w);
    if (w->is_reference) fputs(" <small>(reference)</small>", f);
    fputs("</td>", f);
}

static void threshold_text(FILE *f, const qt_envelope *e, int c)
{
    switch (c) {
    case QT_C_DEVICE:
        if (e->device)
            esc(f, e->device);
        else
            fputs("any", f);
        break;
    case QT_C_LATENCY: num(f, e->max_ms_per_example, "&lt;= %g ms"); break;
    case QT_C_F1: num(f, e->min_macro_f1, "&gt;= %g"); break;
    case QT_C_ECE: num(f, e->max_ece_post, "&lt;= %g"); break;
    case QT_C_VRAM: num(f, e->max_vram_gb, "&lt;= %g GB"); break;
    }
}

/* The envelope in prose: unset limits say so. */
static void threshold_words(FILE *f, const qt_envelope *e, int c)
{
    qt_envelope tmp = *e;
    double v = c == QT_C_LATENCY ? tmp.max_ms_per_example
               : c == QT_C_F1    ? tmp.min_macro_f1
               : c == QT_C_ECE   ? tmp.max_ece_post
               : c == QT_C_VRAM  ? tmp.max_vram_gb
                                 : 0;
    if (c != QT_C_DEVICE && !isfinite(v))
        fputs("none", f);
    else
        threshold_text(f, e, c);
}

static void measurement_table(FILE *f, const qt_results *r, long rec)
{
    fputs("<div class=\"scroll\"><table><tr><th class=\"l\">configuration</th><th class=\"l\">status</th>"
          "<th class=\"l\">device</th><th>bits</th><th>accuracy</th><th>macro-F1</th><th>NLL</th><th>ECE</th>"
          "<th>ECE post</th><th>T</th><th>ms/example</th><th>examples/s</th><th>peak VRAM GB</th>"
          "<th>device peak GB</th><th>load s</th><th>quantize s</th><th>weights MB</th></tr>\n",
          f);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        fprintf(f, "<tr%s>", (long)i == rec ? " class=\"recrow\"" : "");
        td_label(f, w);
        fprintf(f, "<td class=\"l status-%s\">", qt_row_ok(w) ? "ok" : (strcmp(w->status, "refused") == 0 ? "refused" : "failed"));
        esc(f, w->status);
        if (!qt_row_ok(w) && w->reason) {
            /* The full reason is in the failures list and the tooltip. */
            char shortr[64];
            size_t n = strlen(w->reason);
            snprintf(shortr, sizeof shortr, "%.*s%s", n > 48 ? 45 : (int)n, w->reason, n > 48 ? "..." : "");
            fputs(": <span title=\"", f);
            esc(f, w->reason);
            fputs("\">", f);
            esc(f, shortr);
            fputs("</span>", f);
        }
        fputs("</td><td class=\"l\">", f);
        esc(f, w->card ? w->card : w->device);
        fputs("</td>", f);
        if (w->weight_bits > 0)
            fprintf(f, "<td>%d</td>", w->weight_bits);
        else
            fputs("<td><span class=\"na\">-</span></td>", f);
        td_num(f, w->accuracy, "%.4f");
        td_num(f, w->macro_f1, "%.4f");
        td_num(f, w->nll, "%.4f");
        td_num(f, w->ece, "%.4f");
        td_num(f, w->ece_post, "%.4f");
        td_num(f, w->temperature, "%.3f");
        td_num(f, w->ms_per_example, "%.4f");
        td_num(f, w->examples_per_s, "%.0f");
        td_num(f, w->peak_vram_bytes / 1e9, "%.3f");
        td_num(f, w->peak_vram_device_bytes / 1e9, "%.3f");
        td_num(f, w->load_s, "%.2f");
        td_num(f, w->quantize_s, "%.2f");
        td_num(f, w->weight_bytes / 1e6, "%.1f");
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

/* The allocator's peak split by category, as the cells report it. */
static void memory_table(FILE *f, const qt_results *r)
{
    static const char *cats[] = {"weights", "scales", "nested_scales", "outliers", "workspace", "activations", "other"};
    int any = 0;
    for (size_t i = 0; i < r->n && !any; i++)
        any = json_is_object(json_object_get(json_object_get(r->rows[i].json, "peak_vram"), "by_category"));
    if (!any) return;
    fputs("<p>Peak memory by category (MB, the allocator's figures at its peak):</p>\n<div class=\"scroll\"><table><tr>"
          "<th class=\"l\">configuration</th>",
          f);
    for (size_t c = 0; c < sizeof cats / sizeof cats[0]; c++) fprintf(f, "<th>%s</th>", cats[c]);
    fputs("<th>total</th></tr>\n", f);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        json_t *bc = json_object_get(json_object_get(w->json, "peak_vram"), "by_category");
        if (!qt_row_ok(w) || !json_is_object(bc)) continue;
        fputs("<tr>", f);
        td_label(f, w);
        for (size_t c = 0; c < sizeof cats / sizeof cats[0]; c++) {
            json_t *v = json_object_get(bc, cats[c]);
            td_num(f, json_is_number(v) ? json_number_value(v) / 1e6 : NAN, "%.2f");
        }
        td_num(f, w->peak_vram_bytes / 1e6, "%.2f");
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

static void envelope_table(FILE *f, const qt_results *r, const qt_envelope *e, long rec)
{
    fputs("<div class=\"scroll\"><table><tr><th class=\"l\">configuration</th>", f);
    for (int c = 0; c < QT_C_COUNT; c++) {
        fprintf(f, "<th>%s<br><small>", qt_constraint_key(c));
        threshold_text(f, e, c);
        fputs("</small></th>", f);
    }
    fputs("<th>viable</th></tr>\n", f);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        fprintf(f, "<tr%s>", (long)i == rec ? " class=\"recrow\"" : "");
        td_label(f, w);
        for (int c = 0; c < QT_C_COUNT; c++) {
            if (!qt_row_ok(w)) {
                fputs("<td><span class=\"na\">-</span></td>", f);
                continue;
            }
            switch (qt_constraint_check(e, w, c)) {
            case QT_CHECK_PASS: fputs("<td class=\"pass\">pass</td>", f); break;
            case QT_CHECK_FAIL: fputs("<td class=\"fail\">FAIL</td>", f); break;
            case QT_CHECK_MISSING: fputs("<td class=\"missing\">not measured</td>", f); break;
            default: fputs("<td><span class=\"na\">no limit</span></td>", f);
            }
        }
        if (qt_row_viable(e, w))
            fputs("<td class=\"viable\">yes</td>", f);
        else if (qt_row_ok(w))
            fputs("<td>no</td>", f);
        else {
            fputs("<td class=\"status-failed\">", f);
            esc(f, w->status);
            fputs("</td>", f);
        }
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n<p>Viable set:", f);
    int any = 0;
    for (size_t i = 0; i < r->n; i++)
        if (qt_row_viable(e, &r->rows[i])) {
            fputs(any ? ", " : " ", f);
            fputs("<b>", f);
            esc_label(f, &r->rows[i]);
            fputs("</b>", f);
            any = 1;
        }
    fputs(any ? ".</p>\n" : " none.</p>\n", f);
}

/* Distinct models in order of first appearance. */
static size_t list_models(const qt_results *r, const char **models)
{
    size_t nm = 0;
    for (size_t i = 0; i < r->n; i++) {
        int seen = 0;
        for (size_t k = 0; k < nm && !seen; k++) seen = strcmp(models[k], r->rows[i].model) == 0;
        if (!seen) models[nm++] = r->rows[i].model;
    }
    return nm;
}

static char *row_name(const qt_row *w)
{
    size_t n = strlen(w->model) + strlen(w->plugin) + 4;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", w->model, w->plugin);
    return s;
}

static int tiers_section(FILE *f, const qt_results *r, const char **models, size_t nm)
{
    fprintf(f, "<p>Accuracy change per class-frequency tier against the model's reference run, in "
               "percentage points, with 95%% paired-bootstrap whiskers (1000 resamples over the "
               "examples of the tier, seed 42). The number over each bar is the count of flipped "
               "predictions (examples the two runs predict differently); faded bars with a dagger "
               "rest on fewer than %d flips and are directional "
               "only, even where the interval excludes zero: re-split with other seeds (reshuffle "
               "replication) before believing them.</p>\n",
            QT_METRICS_MIN_FLIPS);
    int drawn = 0;
    for (size_t m = 0; m < nm; m++) {
        size_t idx[256], ns = 0;
        const char *refname = NULL;
        for (size_t i = 0; i < r->n && ns < 256; i++) {
            const qt_row *w = &r->rows[i];
            if (strcmp(w->model, models[m]) != 0 || !qt_row_ok(w)) continue;
            if (w->is_reference) refname = w->plugin;
            else if (w->has_tiers) idx[ns++] = i;
        }
        if (!ns) continue;
        const size_t nc = QT_TIER_COUNT;
        double *val = calloc(ns * nc * 3, sizeof *val);
        char **ann = calloc(ns * nc, sizeof *ann);
        int *faded = calloc(ns * nc, sizeof *faded);
        const char **names = calloc(ns, sizeof *names), **cols = calloc(ns, sizeof *cols);
        char *cats[QT_TIER_COUNT];
        char catbuf[QT_TIER_COUNT][64];
        if (!val || !ann || !faded || !names || !cols) {
            free(val), free(ann), free(faded), free(names), free(cols);
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
        for (size_t t = 0; t < nc; t++) {
            const qt_tier_result *x = &r->rows[idx[0]].tiers[t];
            snprintf(catbuf[t], sizeof catbuf[t], "%s (n=%lld)", qt_tier_name((int)t), (long long)x->n);
            cats[t] = catbuf[t];
        }
        for (size_t s = 0; s < ns; s++) {
            const qt_row *w = &r->rows[idx[s]];
            names[s] = w->plugin;
            cols[s] = plugin_color(r, w->plugin);
            for (size_t t = 0; t < nc; t++) {
                const qt_tier_result *x = &w->tiers[t];
                size_t k = s * nc + t;
                val[k] = x->delta * 100;
                val[ns * nc + k] = x->ci_low * 100;
                val[2 * ns * nc + k] = x->ci_high * 100;
                faded[k] = x->n > 0 && x->directional;
                ann[k] = malloc(32);
                if (ann[k]) {
                    if (x->flips >= 0)
                        snprintf(ann[k], 32, "%lld%s", (long long)x->flips, faded[k] ? "\xe2\x80\xa0" : "");
                    else
                        snprintf(ann[k], 32, "?");
                }
            }
        }
        char title[256];
        snprintf(title, sizeof title, "%s: accuracy delta vs %s by tier", models[m], refname ? refname : "reference");
        bars b = {title, "delta accuracy (pp)", nc, ns, cats, names, cols, val, val + ns * nc,
                  val + 2 * ns * nc, ann, faded, NAN, NULL, "%+.2f pp", " flipped predictions"};
        bars_svg(f, &b);
        drawn = 1;
        for (size_t k = 0; k < ns * nc; k++) free(ann[k]);
        free(val), free(ann), free(faded), free(names), free(cols);
    }
    if (!drawn)
        fputs("<p><i>No tier results: they need each model's reference run and the training labels "
              "(<code>[data] train=</code>).</i></p>\n",
              f);
    /* The same numbers as a table. */
    fputs("<div class=\"scroll\"><table><tr><th class=\"l\">configuration</th><th class=\"l\">tier</th><th>n</th>"
          "<th>classes</th><th>accuracy</th><th>reference</th><th>delta pp</th><th>95% CI pp</th><th>flips</th>"
          "<th class=\"l\">reading</th></tr>\n",
          f);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        if (!qt_row_ok(w) || !w->has_tiers || w->is_reference) continue;
        for (int t = 0; t < QT_TIER_COUNT; t++) {
            const qt_tier_result *x = &w->tiers[t];
            fputs("<tr>", f);
            td_label(f, w);
            fprintf(f, "<td class=\"l\">%s</td><td>%lld</td><td>%lld</td>", qt_tier_name(t), (long long)x->n,
                    (long long)x->classes);
            td_num(f, x->accuracy, "%.4f");
            td_num(f, x->reference_accuracy, "%.4f");
            td_num(f, x->delta * 100, "%+.2f");
            fputs("<td>[", f);
            num(f, x->ci_low * 100, "%+.2f");
            fputs(", ", f);
            num(f, x->ci_high * 100, "%+.2f");
            fprintf(f, "]</td><td>%lld</td><td class=\"l\">", (long long)x->flips);
            int excl = isfinite(x->ci_low) && (x->ci_low > 0 || x->ci_high < 0);
            if (x->n == 0)
                fputs("no examples", f);
            else if (x->directional)
                fprintf(f, "directional (%lld &lt; %d flips)%s", (long long)x->flips, QT_METRICS_MIN_FLIPS,
                        excl ? "; CI excludes 0" : "");
            else
                fputs(excl ? "CI excludes 0" : "CI includes 0", f);
            fputs("</td></tr>\n", f);
        }
    }
    fputs("</table></div>\n", f);
    return 0;
}

static int calibration_section(FILE *f, const qt_results *r, const qt_envelope *e)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n; i++) n += qt_row_ok(&r->rows[i]);
    if (!n) {
        fputs("<p><i>No configuration ran.</i></p>\n", f);
        return 0;
    }
    char **cats = calloc(n, sizeof *cats);
    double *val = calloc(4 * n, sizeof *val);
    if (!cats || !val) {
        free(cats), free(val);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        if (!qt_row_ok(w)) continue;
        cats[k] = row_name(w);
        val[k] = w->ece;
        val[n + k] = w->ece_post;
        val[2 * n + k] = w->sv_ece_before;
        val[3 * n + k] = w->sv_ece_after;
        k++;
    }
    static const char *s1[] = {"ECE before scaling", "ECE after temperature scaling"};
    static const char *c1[] = {"#9ecae1", "#08519c"};
    char reflabel[64];
    snprintf(reflabel, sizeof reflabel, "max_ece_post %g", e->max_ece_post);
    bars b = {"ECE before and after temperature scaling (T fitted on all examples)", "ECE", n, 2, cats, s1, c1,
              val, NULL, NULL, NULL, NULL, e->max_ece_post, reflabel, "%.4f", NULL};
    bars_svg(f, &b);
    static const char *s2[] = {"half B, T = 1", "half B, T from half A"};
    static const char *c2[] = {"#fdae6b", "#a63603"};
    bars b2 = {"Split-val: T fitted on half A, ECE measured on half B", "ECE on half B", n, 2, cats, s2, c2,
               val + 2 * n, NULL, NULL, NULL, NULL, e->max_ece_post, reflabel, "%.4f", NULL};
    bars_svg(f, &b2);
    fputs("<div class=\"scroll\"><table><tr><th class=\"l\">configuration</th><th>ECE</th><th>ECE post</th><th>T</th>"
          "<th>split-val T (half A)</th><th>half-B ECE before</th><th>half-B ECE after</th><th>recovery</th>"
          "<th>n A / B</th></tr>\n",
          f);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        if (!qt_row_ok(w)) continue;
        fputs("<tr>", f);
        td_label(f, w);
        td_num(f, w->ece, "%.4f");
        td_num(f, w->ece_post, "%.4f");
        td_num(f, w->temperature, "%.3f");
        td_num(f, w->sv_temperature, "%.3f");
        td_num(f, w->sv_ece_before, "%.4f");
        td_num(f, w->sv_ece_after, "%.4f");
        td_num(f, w->sv_ece_before - w->sv_ece_after, "%+.4f");
        if (w->sv_n_a >= 0)
            fprintf(f, "<td>%lld / %lld</td>", (long long)w->sv_n_a, (long long)w->sv_n_b);
        else
            fputs("<td><span class=\"na\">-</span></td>", f);
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n", f);
    for (size_t i = 0; i < n; i++) free(cats[i]);
    free(cats), free(val);
    return 0;
}

static int named_section(FILE *f, const qt_results *r, const char **models, size_t nm)
{
    if (!r->n_named) {
        fputs("<p><i>No named classes (<code>[named_classes] names=</code> in sweep.ini).</i></p>\n", f);
        return 0;
    }
    fputs("<p>Per-class accuracy (recall) of the chosen classes across precisions, highest precision "
          "first.</p>\n",
          f);
    for (size_t m = 0; m < nm; m++) {
        size_t idx[256], nc = 0;
        for (size_t i = 0; i < r->n && nc < 256; i++)
            if (strcmp(r->rows[i].model, models[m]) == 0 && qt_row_ok(&r->rows[i])) idx[nc++] = i;
        if (!nc) continue;
        /* Highest weight precision first; stable by plugin name. */
        for (size_t a = 1; a < nc; a++)
            for (size_t b = a; b > 0; b--) {
                const qt_row *p = &r->rows[idx[b - 1]], *q = &r->rows[idx[b]];
                int bp = p->weight_bits > 0 ? p->weight_bits : 0, bq = q->weight_bits > 0 ? q->weight_bits : 0;
                if (bq > bp || (bq == bp && strcmp(q->plugin, p->plugin) < 0)) {
                    size_t t = idx[b];
                    idx[b] = idx[b - 1];
                    idx[b - 1] = t;
                }
            }
        char **cats = calloc(nc, sizeof *cats);
        double *val = calloc(nc * r->n_named, sizeof *val);
        if (!cats || !val) {
            free(cats), free(val);
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
        for (size_t c = 0; c < nc; c++) {
            const qt_row *w = &r->rows[idx[c]];
            size_t len = strlen(w->plugin) + 16;
            cats[c] = malloc(len);
            if (cats[c]) {
                if (w->weight_bits > 0)
                    snprintf(cats[c], len, "%s (%d-bit)", w->plugin, w->weight_bits);
                else
                    snprintf(cats[c], len, "%s", w->plugin);
            }
            for (size_t s = 0; s < r->n_named; s++) val[s * nc + c] = w->class_accuracy[s];
        }
        int ok = 1;
        for (size_t c = 0; c < nc; c++) ok &= cats[c] != NULL;
        if (ok) {
            char title[256];
            snprintf(title, sizeof title, "%s: named-class accuracy across precisions", models[m]);
            lines_svg(f, title, cats, nc, r->named_classes, r->n_named, val);
        }
        for (size_t c = 0; c < nc; c++) free(cats[c]);
        free(cats), free(val);
    }
    return 0;
}

static void provenance(FILE *f, const qt_results *r)
{
    fputs("<div class=\"scroll\"><table><tr><th class=\"l\">configuration</th><th class=\"l\">options</th>"
          "<th class=\"l\">versions</th><th class=\"l\">seeds</th></tr>\n",
          f);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        fputs("<tr>", f);
        td_label(f, w);
        fputs("<td class=\"l\">", f);
        esc(f, w->options && *w->options ? w->options : "defaults");
        fputs("</td>", f);
        static const char *keys[] = {"versions", "seeds"};
        for (int k = 0; k < 2; k++) {
            json_t *v = json_object_get(w->json, keys[k]);
            char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
            fputs("<td class=\"l\">", f);
            esc(f, s ? s : "-");
            fputs("</td>", f);
            free(s);
        }
        fputs("</tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

int qt_report_write_html(FILE *f, const qt_results *r, const qt_envelope *e)
{
    long rec = qt_recommend(r, e);
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
               "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
               "<title>qtool report</title>\n<style>%s</style>\n</head>\n<body>\n<main>\n",
            css);
    fputs("<h1>qtool report</h1>\n<p class=\"meta\">", f);
    fprintf(f, "%zu configurations", r->n);
    json_t *created = json_object_get(r->root, "created"), *ver = json_object_get(r->root, "qtool_version");
    if (json_is_string(created)) {
        fputs(", measured ", f);
        esc(f, json_string_value(created));
    }
    if (json_is_string(ver)) {
        fputs(" with qtool ", f);
        esc(f, json_string_value(ver));
    }
    fputs(". Envelope:", f);
    for (int c = 0; c < QT_C_COUNT; c++) {
        fprintf(f, " %s ", qt_constraint_key(c));
        threshold_words(f, e, c);
        fputs(c + 1 < QT_C_COUNT ? ";" : ".", f);
    }
    fputs("</p>\n", f);

    fputs("<section id=\"recommendation\"><h2>Recommendation</h2>\n", f);
    if (rec >= 0) {
        fputs("<p class=\"rec\">Recommended: <b>", f);
        esc_label(f, &r->rows[rec]);
        fputs("</b></p>\n", f);
    } else {
        fputs("<p class=\"rec none\">No recommendation: no configuration is viable.</p>\n", f);
    }
    char *why = qt_recommend_reasoning(r, e, rec);
    fputs("<p>", f);
    esc(f, why ? why : "");
    fputs("</p>\n", f);
    free(why);
    qt_counterfactual *cf;
    size_t ncf;
    int rc = qt_counterfactuals(r, e, &cf, &ncf);
    if (rc) return rc;
    fputs("<h3>Counterfactuals</h3>\n<p>The nearest single change to each constraint that changes the "
          "recommendation, computed by re-running the recommendation at every threshold where some "
          "configuration's pass/fail flips.</p>\n<ul class=\"cf\">\n",
          f);
    for (size_t i = 0; i < ncf; i++) {
        fputs("<li>", f);
        esc(f, cf[i].text);
        fputs("</li>\n", f);
    }
    if (!ncf) fputs("<li>No single constraint change alters the recommendation.</li>\n", f);
    fputs("</ul></section>\n", f);
    qt_counterfactuals_free(cf, ncf);

    fputs("<section id=\"measurements\"><h2>Configurations &#215; measurements</h2>\n", f);
    measurement_table(f, r, rec);
    memory_table(f, r);
    fputs("<p>Latency: batch 32, median of 5 timed batches after 3 warm-up batches. Peak VRAM: the "
          "allocator's peak (weights, activations, workspace); the device peak adds what the driver and "
          "libraries hold. GB = 10<sup>9</sup> bytes.</p></section>\n",
          f);

    fputs("<section id=\"envelope\"><h2>Envelope check</h2>\n", f);
    envelope_table(f, r, e, rec);
    fputs("</section>\n", f);

    fputs("<section id=\"pareto\"><h2>Pareto frontiers</h2>\n<p>Every configuration that ran. Up and left is "
          "better. Points on the dashed staircase are on the frontier (no other configuration is at least as "
          "good on both axes); hollow markers fail the envelope; the ring marks the recommendation.</p>\n",
          f);
    pareto_svg(f, r, e, 0, rec);
    pareto_svg(f, r, e, 1, rec);
    fputs("</section>\n", f);

    const char **models = calloc(r->n + 1, sizeof *models);
    if (!models) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    size_t nm = list_models(r, models);
    fputs("<section id=\"tiers\"><h2>Per-tier accuracy deltas</h2>\n", f);
    rc = tiers_section(f, r, models, nm);
    fputs("</section>\n<section id=\"calibration\"><h2>Calibration</h2>\n", f);
    if (!rc) rc = calibration_section(f, r, e);
    fputs("</section>\n<section id=\"named\"><h2>Named-class trajectories</h2>\n", f);
    if (!rc) rc = named_section(f, r, models, nm);
    fputs("</section>\n", f);
    free(models);
    if (rc) return rc;

    int any = 0;
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        if (qt_row_ok(w)) continue;
        if (!any) fputs("<section id=\"failures\"><h2>Failed or refused configurations</h2>\n<ul>\n", f);
        any = 1;
        fputs("<li><b>", f);
        esc_label(f, w);
        fputs("</b>: ", f);
        esc(f, w->status);
        fputs(" &#8212; ", f);
        esc(f, w->reason ? w->reason : "no reason recorded");
        fputs("</li>\n", f);
    }
    if (any) fputs("</ul></section>\n", f);

    fputs("<section id=\"provenance\"><h2>Options, versions and seeds</h2>\n", f);
    provenance(f, r);
    fputs("</section>\n</main>\n</body>\n</html>\n", f);
    return ferror(f) ? qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "report.html: write failed") : 0;
}
