/* Progress display: live lines on a TTY (erased and redrawn around log lines), throttled plain
 * lines otherwise. Runs on the loop thread; reads each stage's progress under its lock. */
#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../util/log.h"

static const run_result *g_r;
static int g_tty;
static int g_drawn;          /* live lines currently on screen */
static double g_last_plain;  /* when plain progress lines were last printed */

static int term_cols(void) {
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20) return ws.ws_col;
    return 80;
}

/* "  q4        [#######.............]  35%  layer 3/12  4.1s" */
static void format_line(llmopt_stage_ctx *c, char *buf, size_t n, int bar) {
    pthread_mutex_lock(&c->lock);
    double f = c->progress;
    char msg[sizeof c->progress_msg];
    memcpy(msg, c->progress_msg, sizeof msg);
    pthread_mutex_unlock(&c->lock);
    double el = now_monotonic() - c->start_s;
    char pct[64] = "";
    if (f >= 0) {
        if (bar) {
            char b[21];
            int full = (int)(f * 20 + 0.5);
            for (int i = 0; i < 20; i++) b[i] = i < full ? '#' : '.';
            b[20] = '\0';
            snprintf(pct, sizeof pct, "[%s] %3d%%", b, (int)(f * 100 + 0.5));
        } else {
            snprintf(pct, sizeof pct, "%3d%%", (int)(f * 100 + 0.5));
        }
    }
    snprintf(buf, n, "  %-12s %s  %s  %.1fs", c->ps->id, pct, msg, el);
}

static void erase(void) {
    if (g_drawn > 0) fprintf(stderr, "\033[%dA\r\033[J", g_drawn);
    g_drawn = 0;
}

static void draw(void) {
    if (!g_r) return;
    int cols = term_cols();
    for (size_t i = 0; i < g_r->n_stages; i++) {
        llmopt_stage_ctx *c = &g_r->stages[i];
        if (c->status != STAGE_RUNNING) continue;
        char line[512];
        format_line(c, line, sizeof line, 1);
        if ((int)strlen(line) >= cols) line[cols - 1] = '\0';
        fprintf(stderr, "%s\n", line);
        g_drawn++;
    }
}

void progress_begin(const run_result *r, int tty) {
    g_r = r;
    g_tty = tty;
    g_drawn = 0;
    g_last_plain = now_monotonic();
    if (tty) log_set_hooks(erase, draw);
}

void progress_update(void) {
    if (!g_r) return;
    if (g_tty) {
        log_lock();
        erase();
        draw();
        fflush(stderr);
        log_unlock();
        return;
    }
    double now = now_monotonic();
    if (now - g_last_plain < 10.0) return;
    g_last_plain = now;
    for (size_t i = 0; i < g_r->n_stages; i++) {
        llmopt_stage_ctx *c = &g_r->stages[i];
        if (c->status != STAGE_RUNNING) continue;
        char line[512];
        format_line(c, line, sizeof line, 0);
        log_msg(LLMOPT_LOG_INFO, "progress:%s", line + 1);
    }
}

void progress_end(void) {
    if (g_tty) {
        log_set_hooks(NULL, NULL);
        log_lock();
        erase();
        fflush(stderr);
        log_unlock();
    }
    g_r = NULL;
}
