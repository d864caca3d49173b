/* braid-bench experiment `sprites`: Kamaelia's smoke test as a benchmark.
 * Michael Sparks ("Pythonic concurrency", python-dev, 2005) reported that a
 * bouncing-sprites game written with Kamaelia components lost about 5 % of
 * its frame rate to the framework. The same game here, written twice:
 *
 *   plain            one loop: move every sprite, apply the mouse events,
 *                    clear the frame, draw every sprite
 *   components       one component per sprite, a renderer and an input
 *                    device. Per frame the renderer sends a tick (through a
 *                    splitter: one message, N destinations) to every sprite
 *                    and to the input; each sprite moves and sends itself to
 *                    the renderer's inbox as a draw command; the input sends
 *                    its burst of mouse moves as ONE message (batched); the
 *                    renderer applies the events, clears and draws when all N
 *                    sprites have reported, then starts the next frame
 *   components-unbatched  the same, the input sending each mouse move as its
 *                    own message
 *
 * Sprites (16x16 RGBA, a disc) move, bounce off the edges, rotate and scale
 * (0.5x to 2x), and flee the mouse pointer; they are software-rendered with
 * rotation and scale (nearest-neighbour inverse mapping, alpha test) into an
 * off-screen 320x240 RGBA buffer. The input device sends 32 mouse moves per
 * frame. Both versions do the same arithmetic in the same order and the
 * final frames are compared (a checksum): a run whose picture differs is
 * reported as failed. Metrics: frames per second, and the components'
 * overhead = (CPU time per frame with components / plain) - 1, run by run
 * (the thread's CPU time: steadier than wall time on a shared machine). */
#include "bench.h"
#include <braid.h>
#include <braid/component.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* CPU time of this thread: the game runs on one thread, and on a machine
 * shared with other work its CPU time is much steadier than wall time. */
static uint64_t cpu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define W 320
#define H 240
#define SPR 16
#define EVENTS 32

typedef struct sprite {
    float x, y, vx, vy, angle, va, phase;
    uint32_t color;
} sprite;

typedef struct world {
    int n;
    sprite *s;
    uint32_t *fb;
    uint32_t img[SPR * SPR];
    float px, py;          /* the mouse pointer */
    unsigned long ev_seq;  /* input device state */
} world;

static void world_init(world *w, int n) {
    w->n = n;
    w->s = calloc((size_t)n, sizeof *w->s);
    w->fb = calloc((size_t)W * H, sizeof *w->fb);
    uint32_t seed = 12345;
#define RND() (seed = seed * 1103515245u + 12345u, (float)((seed >> 8) & 0xffff) / 65536.0f)
    for (int i = 0; i < n; i++) {
        sprite *p = &w->s[i];
        p->x = RND() * W;
        p->y = RND() * H;
        p->vx = (RND() - 0.5f) * 4;
        p->vy = (RND() - 0.5f) * 4;
        p->angle = RND() * 6.28f;
        p->va = (RND() - 0.5f) * 0.2f;
        p->phase = RND() * 6.28f;
        p->color = 0xff000000u | (uint32_t)(RND() * 0xffffff);
    }
#undef RND
    for (int y = 0; y < SPR; y++)
        for (int x = 0; x < SPR; x++) {
            float dx = (float)x - 7.5f, dy = (float)y - 7.5f;
            w->img[y * SPR + x] = dx * dx + dy * dy < 56 ? 0xff000000u | (uint32_t)(x * 16 << 8 | y * 16) : 0;
        }
    w->px = W / 2.0f;
    w->py = H / 2.0f;
    w->ev_seq = 0;
}

static void world_free(world *w) {
    free(w->s);
    free(w->fb);
}

static void sprite_move(sprite *p, float px, float py) {
    float dx = p->x - px, dy = p->y - py;
    if (dx * dx + dy * dy < 40 * 40) {   /* flee the pointer */
        p->vx = dx < 0 ? -fabsf(p->vx) : fabsf(p->vx);
        p->vy = dy < 0 ? -fabsf(p->vy) : fabsf(p->vy);
    }
    p->x += p->vx;
    p->y += p->vy;
    if (p->x < 0 || p->x >= W) p->vx = -p->vx, p->x = p->x < 0 ? 0 : W - 1;
    if (p->y < 0 || p->y >= H) p->vy = -p->vy, p->y = p->y < 0 ? 0 : H - 1;
    p->angle += p->va;
    p->phase += 0.05f;
}

static void sprite_draw(const world *w, const sprite *p) {
    float scale = 1.25f + 0.75f * sinf(p->phase);
    float c = cosf(p->angle) / scale, s = sinf(p->angle) / scale;
    int r = (int)(SPR * scale * 0.75f) + 1;
    int x0 = (int)p->x - r, x1 = (int)p->x + r, y0 = (int)p->y - r, y1 = (int)p->y + r;
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > W - 1) x1 = W - 1;
    if (y1 > H - 1) y1 = H - 1;
    for (int y = y0; y <= y1; y++) {
        float dy = (float)y - p->y;
        for (int x = x0; x <= x1; x++) {
            float dx = (float)x - p->x;
            int u = (int)(c * dx + s * dy + SPR / 2.0f), v = (int)(-s * dx + c * dy + SPR / 2.0f);
            if ((unsigned)u >= SPR || (unsigned)v >= SPR) continue;
            uint32_t px = w->img[v * SPR + u];
            if (px) w->fb[y * W + x] = px ^ (p->color & 0x00ffffffu);
        }
    }
}

/* The input device: a burst of mouse moves (a circle around the middle). */
typedef struct mouse_ev {
    float x, y;
} mouse_ev;
static void input_burst(world *w, mouse_ev *ev) {
    for (int i = 0; i < EVENTS; i++, w->ev_seq++) {
        float t = (float)w->ev_seq * 0.01f;
        ev[i].x = W / 2.0f + 100 * cosf(t);
        ev[i].y = H / 2.0f + 80 * sinf(t);
    }
}
static void apply_event(world *w, const mouse_ev *e) {
    w->px = e->x;
    w->py = e->y;
}

static uint64_t checksum(const world *w) {
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < W * H; i++) h = (h ^ w->fb[i]) * 1099511628211ull;
    return h;
}

/* ---- plain loop ----------------------------------------------------------------------- */
static double run_plain(int n, int frames, uint64_t *sum, double *cpu) {
    world w;
    world_init(&w, n);
    mouse_ev ev[EVENTS];
    uint64_t c0 = cpu_now_ns(), t0 = bench_now_ns();
    for (int f = 0; f < frames; f++) {
        float px = w.px, py = w.py;
        for (int i = 0; i < n; i++) sprite_move(&w.s[i], px, py);
        input_burst(&w, ev);
        for (int i = 0; i < EVENTS; i++) apply_event(&w, &ev[i]);
        memset(w.fb, 0, (size_t)W * H * sizeof *w.fb);
        for (int i = 0; i < n; i++) sprite_draw(&w, &w.s[i]);
    }
    double ns = (double)(bench_now_ns() - t0);
    *cpu = (double)(cpu_now_ns() - c0);
    *sum = checksum(&w);
    world_free(&w);
    return ns;
}

/* ---- components ------------------------------------------------------------------------ */
typedef struct tick {
    int frame;
    float px, py;
} tick;

typedef struct game {
    world w;
    int frames, frame, drawn;
    bool batched;
    int events_seen;
    tick t;
    braid_component *renderer, *input, *splitter;
    mouse_ev burst[EVENTS];
    mouse_ev single[EVENTS];
} game;

enum { R_EVENTS = 2 };   /* the renderer's "events" inbox */
enum { R_TICK_INPUT = 2 };   /* the renderer's "input" outbox */

typedef struct sprite_comp {
    game *g;
    sprite *p;
} sprite_comp;

static int sprite_run(braid_component *c, void *st) {
    sprite_comp *sc = st;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        const tick *t = m.ptr;
        sprite_move(sc->p, t->px, t->py);
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, sc->p, NULL) < 0) return BRAID_EBOX_FULL;
    }
    return braid_component_handle_control(c);
}

static int input_run(braid_component *c, void *st) {
    game *g = st;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        if (braid_component_is_shutdown_msg(m.ptr)) return BRAID_COMPONENT_DONE;
        if (g->batched) {
            input_burst(&g->w, g->burst);
            if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, g->burst, NULL) < 0) return BRAID_EBOX_FULL;
        } else {
            input_burst(&g->w, g->single);
            for (int i = 0; i < EVENTS; i++)
                if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, &g->single[i], NULL) < 0) return BRAID_EBOX_FULL;
        }
    }
    return braid_component_handle_control(c);
}

static void start_frame(braid_component *c, game *g) {
    g->t = (tick){ g->frame, g->w.px, g->w.py };
    g->drawn = 0;
    g->events_seen = 0;
    braid_component_send(c, BRAID_COMPONENT_OUTBOX, &g->t, NULL);       /* to the splitter: every sprite */
    braid_component_send(c, R_TICK_INPUT, &g->t, NULL);                 /* to the input */
}

static int renderer_run(braid_component *c, void *st) {
    game *g = st;
    braid_component_msg m;
    if (g->frame < 0) {   /* the activation run starts frame 0 */
        g->frame = 0;
        start_frame(c, g);
        return BRAID_COMPONENT_IDLE;
    }
    while (braid_component_recv(c, R_EVENTS, &m) == 0) {
        if (g->batched) {
            const mouse_ev *ev = m.ptr;
            for (int i = 0; i < EVENTS; i++) apply_event(&g->w, &ev[i]);
            g->events_seen += EVENTS;
        } else {
            apply_event(&g->w, m.ptr);
            g->events_seen++;
        }
    }
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) g->drawn++;
    if (g->drawn < g->w.n || g->events_seen < EVENTS) return BRAID_COMPONENT_IDLE;
    /* all sprites have moved (in splitter order = sprite order): draw them */
    memset(g->w.fb, 0, (size_t)W * H * sizeof *g->w.fb);
    for (int i = 0; i < g->w.n; i++) sprite_draw(&g->w, &g->w.s[i]);
    if (++g->frame == g->frames) {
        braid_component_send(c, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_SHUTDOWN, NULL);
        braid_component_send(c, R_TICK_INPUT, BRAID_COMPONENT_SHUTDOWN, NULL);
        return BRAID_COMPONENT_DONE;
    }
    start_frame(c, g);
    return BRAID_COMPONENT_IDLE;
}

/* The sprites draw in the order their draw commands arrive, which is the
 * splitter's order; the plain loop draws in index order: the same. The
 * renderer draws from w.s directly since each draw message is its sprite. */
static double run_components(int n, int frames, bool batched, uint64_t *sum, double *cpu) {
    game *g = calloc(1, sizeof *g);
    if (!g) return NAN;
    world_init(&g->w, n);
    g->frames = frames;
    g->frame = -1;
    g->batched = batched;
    braid_loop *loop;
    double ns = NAN;
    if (braid_loop_new(NULL, &loop) < 0) goto out0;
    braid_component **sp = calloc((size_t)n, sizeof *sp);
    sprite_comp *sc = calloc((size_t)n, sizeof *sc);
    if (!sp || !sc) goto out;
    braid_component_box_spec rin[] = { { "events", "mouse moves", 4096 } };
    braid_component_box_spec rout[] = { { "input", "a tick for the input device", 0 } };
    braid_component_options ro = { .name = "renderer", .inboxes = rin, .n_inboxes = 1, .outboxes = rout,
                                   .n_outboxes = 1, .capacity = (uint32_t)n + 16 };
    braid_component_options io = { .name = "input" };
    braid_component_splitter_options so = { .base = { .name = "ticks" } };
    if (braid_component_new(loop, renderer_run, g, &ro, &g->renderer) < 0) goto out;
    if (braid_component_new(loop, input_run, g, &io, &g->input) < 0) goto out;
    if (braid_component_splitter_new(loop, &so, &g->splitter) < 0) goto out;
    braid_component_link(g->renderer, "outbox", g->splitter, "inbox", 0);
    braid_component_link(g->renderer, "signal", g->splitter, "control", 0);
    braid_component_link(g->renderer, "input", g->input, "inbox", 0);
    braid_component_link(g->input, "outbox", g->renderer, "events", 0);
    for (int i = 0; i < n; i++) {
        sc[i] = (sprite_comp){ g, &g->w.s[i] };
        braid_component_options o = { .name = "sprite", .capacity = 4 };
        if (braid_component_new(loop, sprite_run, &sc[i], &o, &sp[i]) < 0) goto out;
        braid_component_splitter_add(g->splitter, sp[i], "inbox", 0);
        braid_component_link(sp[i], "outbox", g->renderer, "inbox", 0);
    }
    /* at the end the renderer's shutdown stops the splitter and the input;
     * the sprites stay idle (they cost nothing) until freed */
    for (int i = 0; i < n; i++) braid_component_activate(sp[i]);
    braid_component_activate(g->input);
    braid_component_activate(g->splitter);
    uint64_t c0 = cpu_now_ns(), t0 = bench_now_ns();
    braid_component_activate(g->renderer);
    braid_loop_run(loop);
    ns = (double)(bench_now_ns() - t0);
    *cpu = (double)(cpu_now_ns() - c0);
    if (g->frame != frames) ns = NAN;
    *sum = checksum(&g->w);
out:
    for (int i = 0; sp && i < n; i++) braid_component_free(sp[i]);
    braid_component_free(g->splitter);
    braid_component_free(g->input);
    braid_component_free(g->renderer);
    free(sp);
    free(sc);
    braid_loop_free(loop);
out0:
    world_free(&g->w);
    free(g);
    return ns;
}

/* ---- the experiment ---------------------------------------------------------------------- */
enum { I_PLAIN, I_COMP, I_UNBATCHED, NIMPL };
static const char *const impl_names[NIMPL] = { "plain", "components", "components-unbatched" };
static const int sizes[] = { 100, 200, 1000 };
#define NSIZES 3

typedef struct sstate {
    int k, frames;
    double fps[NSIZES][NIMPL][BENCH_MAX_RUNS];
    double us[NSIZES][NIMPL][BENCH_MAX_RUNS], cpu_us[NSIZES][NIMPL][BENCH_MAX_RUNS];
    uint64_t sum[NIMPL];
    bool mismatch;
} sstate;

static void measure(bench_ctx *ctx, int impl, int run, void *arg) {
    (void)ctx;
    sstate *s = arg;
    int n = sizes[s->k];
    uint64_t sum = 0;
    double cpu = NAN;
    double ns = impl == I_PLAIN ? run_plain(n, s->frames, &sum, &cpu)
                                : run_components(n, s->frames, impl == I_COMP, &sum, &cpu);
    s->sum[impl] = sum;
    if (impl != I_PLAIN && s->sum[I_PLAIN] && sum != s->sum[I_PLAIN]) {
        s->mismatch = true;
        ns = NAN;
    }
    s->fps[s->k][impl][run] = (double)s->frames / ns * 1e9;
    s->us[s->k][impl][run] = ns / s->frames / 1000;
    s->cpu_us[s->k][impl][run] = cpu / s->frames / 1000;
}

static int run(bench_ctx *ctx) {
    sstate *s = calloc(1, sizeof *s);
    if (!s) return -1;
    for (s->k = 0; s->k < NSIZES; s->k++) {
        int n = sizes[s->k];
        s->frames = ctx->smoke ? 3 : (ctx->full ? 400000 : 30000) / n;
        memset(s->sum, 0, sizeof s->sum);
        /* the plain loop's picture first, so every component run is checked */
        double cpu;
        run_plain(n, s->frames, &s->sum[I_PLAIN], &cpu);
        char label[64];
        snprintf(label, sizeof label, "%d sprites", n);
        bench_alternate(ctx, label, NIMPL, impl_names, measure, s);
        for (int i = 0; i < NIMPL; i++) {
            bench_row *r = bench_row_begin(ctx, impl_names[i], "");
            bench_row_param_int(r, "sprites", n);
            bench_row_metric(r, "fps", s->fps[s->k][i], ctx->runs, "frame/s");
            bench_row_metric(r, "us_per_frame", s->us[s->k][i], ctx->runs, "us");
            bench_row_metric(r, "cpu_us_per_frame", s->cpu_us[s->k][i], ctx->runs, "us");
            if (i != I_PLAIN) {
                double ov[BENCH_MAX_RUNS];
                for (int j = 0; j < ctx->runs; j++)
                    ov[j] = (s->cpu_us[s->k][i][j] / s->cpu_us[s->k][I_PLAIN][j] - 1) * 100;
                bench_row_metric(r, "overhead_pct", ov, ctx->runs, "%");
            }
            bench_row_end(r);
        }
        bench_note(ctx, "%d sprites: %d frames a run, %dx%d RGBA, %d mouse moves a frame", n, s->frames, W, H, EVENTS);
        bench_progress_fraction(ctx, (double)(s->k + 1) / NSIZES);
    }
    if (s->mismatch) bench_note(ctx, "a component run drew a different picture from the plain loop: reported as failed");
    free(s);
    return 0;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    fputs("<p>Components' overhead on the frame time (median of run-by-run ratios to the plain loop): ", html);
    for (int k = 0; k < NSIZES; k++) {
        char f[32];
        snprintf(f, sizeof f, "sprites=%d", sizes[k]);
        const bench_row *rc = bench_find_row(ctx, "components", NULL, f, NULL);
        const bench_row *ru = bench_find_row(ctx, "components-unbatched", NULL, f, NULL);
        double oc = NAN, ou = NAN;
        if (rc) bench_row_metric_get(rc, "overhead_pct", &oc, NULL, NULL);
        if (ru) bench_row_metric_get(ru, "overhead_pct", &ou, NULL, NULL);
        fprintf(html, "%s%d sprites %.1f %% batched, %.1f %% with one message per mouse move", k ? "; " : "", sizes[k], oc,
                ou);
    }
    fputs(". Kamaelia reported about 5 % for its Python version. The components' cost is a few message sends per "
          "sprite per frame (a tick in, a draw command out) against the microseconds of rotating and scaling a "
          "sprite in software: where it shows, it is at the small sizes, where a frame is cheap.</p>\n", html);
}

BENCH_EXPERIMENT(sprites,
    .title = "Bouncing sprites: the cost of components in a game (Kamaelia's 5 %)",
    .question = "Kamaelia's authors measured that writing a bouncing-sprites game as components cost about 5 % of its "
                "frame rate. What does a braid component per sprite cost against the same game written as one plain "
                "loop, and what does an input device that sends every mouse move as its own message add?",
    .method = "The same game twice, bit for bit the same picture (checked by checksum): 100, 200 and 1,000 16x16 "
              "sprites that move, bounce, rotate, scale and flee the pointer, software-rendered with rotation and "
              "scale into a 320x240 RGBA buffer, and 32 simulated mouse moves a frame. Components: one per sprite, a "
              "renderer (ticks every sprite through a splitter, draws when all have reported), an input device (its "
              "burst as one message, or one message per move). Overhead is taken on the thread's CPU time per frame, run by run against the plain loop (wall time is reported too). Quick: 30,000/N frames a run; implementations "
              "alternate run by run.",
    .run = run, .conclude = conclude, .ratio_base = "plain", .quick_seconds = 20, .full_seconds = 200,
    .plot_x = "sprites", .plot_metric = "fps", .headline = "fps,overhead_pct");
