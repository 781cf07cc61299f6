/* cli_watch.c — `chordctl jobs watch ID`: follows GET /v1/jobs/ID/events (Server-Sent Events)
 * until the job ends, and shows it the way a person or a script wants it:
 *
 *   - stdout a terminal: one live line, redrawn at most 10 times a second —
 *       job_…  running  [██████░░░░░░░░░░] 3/6  50%  ETA 0:04  reward 0.5  acc 0.25  loss 0.012
 *     checkpoints printed above it as they are saved, then a final line in its place:
 *       job_… succeeded: 6/6 steps in 0:12  reward 0.5  acc 0.25  loss 0.012
 *   - stdout not a terminal: one line per step (`step 3/6  reward 0.5  ...  ETA 0:04`), a line
 *     per checkpoint and state change, the same final line;
 *   - --json: every event as one JSON line, {"event": "step", "data": {...the server's...}}.
 *
 * The ETA is (steps left) x the server's own `time/step`, smoothed, so replayed history does
 * not distort it; without that metric, the rate at which steps arrive. A stream that ends before
 * the job does (a server restart, a watcher that fell behind) is reopened from the next step;
 * a server that stays unreachable for 60 s ends the watch with exit status 3.
 * Exit status: 0 when the job succeeded, 5 when it failed or was cancelled. */
#include <math.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clients/cli/cli.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"

static const char usage_watch[] = "chordctl jobs watch ID [--since-step N]";

/* The metrics a person watches, as they are named on the bar. */
static const struct {
    const char *metric;
    const char *label;
} key_metrics[] = {
    {"reward_mean", "reward"}, {"accuracy", "acc"}, {"loss", "loss"}, {"eval/accuracy", "eval"}};
enum { N_KEY = sizeof key_metrics / sizeof key_metrics[0] };

typedef struct watch {
    cli *c;
    const char *id;
    /* the event being read */
    chord_buf line;  /* an incomplete line */
    chord_buf event; /* the event's name */
    chord_buf data;  /* its data lines, joined */
    /* what is known of the job */
    char state[32];
    long steps; /* total */
    long step;  /* the last step seen (0: none) */
    double key[N_KEY];
    int have_key[N_KEY];
    double step_seconds;  /* smoothed time/step (0: unknown) */
    double first_arrival; /* when the first step event arrived, and its step */
    long first_arrival_step;
    double started_at, finished_at; /* the job's own timestamps */
    char error[512];
    int terminal; /* a final state event arrived */
    /* drawing */
    int bar_drawn;
    double last_draw;
    int fatal; /* an event the watch cannot go on from */
} watch;

/* Ctrl-C while the bar is drawn: end its line, so the shell's prompt starts on a fresh one,
 * then die of the signal as before (exit status 130 to the shell). */
static volatile sig_atomic_t bar_on_screen;

static void on_interrupt(int sig) {
    if (bar_on_screen) {
        ssize_t ignored = write(STDOUT_FILENO, "\n", 1);
        (void)ignored;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static int terminal_state(const char *s) {
    return strcmp(s, "succeeded") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0;
}

/* "reward 0.5  acc 0.25  loss 0.012" for the metrics known so far, cut to fit n. */
static void metrics_text(const watch *w, char *out, size_t n, int long_names) {
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < N_KEY; i++) {
        if (!w->have_key[i]) continue;
        char piece[96];
        int len = snprintf(piece, sizeof piece, "%s%s %.4g", used ? "  " : "",
                           long_names ? key_metrics[i].metric : key_metrics[i].label, w->key[i]);
        if (len < 0 || used + (size_t)len + 1 > n) break;
        memcpy(out + used, piece, (size_t)len + 1);
        used += (size_t)len;
    }
}

static double eta_seconds(const watch *w) {
    long left = w->steps - w->step;
    if (left <= 0) return 0;
    if (w->step_seconds > 0) return (double)left * w->step_seconds;
    if (w->step > w->first_arrival_step) {
        double rate = (chord_now() - w->first_arrival) / (double)(w->step - w->first_arrival_step);
        return (double)left * rate;
    }
    return -1;
}

static void clear_bar(watch *w) {
    if (w->bar_drawn) {
        fputs("\r\033[K", stdout);
        w->bar_drawn = 0;
        bar_on_screen = 0;
    }
}

/* Prints at most cols columns of a UTF-8 line (continuation bytes take no column). */
static void put_cut(const char *line, int cols) {
    const char *p = line;
    for (int used = 0; *p; p++) {
        if (((unsigned char)*p & 0xC0) != 0x80 && used++ == cols) break;
    }
    fwrite(line, 1, (size_t)(p - line), stdout);
}

static void draw_bar(watch *w, int force) {
    double now = chord_now();
    if (!force && now - w->last_draw < 0.1) return;
    w->last_draw = now;
    int cols = cli_term_columns(STDOUT_FILENO) - 1; /* never the last column: no wrap */
    char head[160], counts[64], eta[32], metrics[256], bar[256], total[24], line[1024];
    double fraction = w->steps > 0 ? (double)w->step / (double)w->steps : 0;
    const char *state = w->state[0] ? w->state : "waiting";
    int digits = snprintf(total, sizeof total, "%ld", w->steps); /* a steady width: no jitter */
    snprintf(counts, sizeof counts, "%*ld/%s  %3.0f%%", digits, w->step, total, fraction * 100);
    cli_duration_text(eta_seconds(w), eta, sizeof eta);
    metrics_text(w, metrics, sizeof metrics, 0);
    /* the bar takes what the text leaves, 10 to 30 cells; when short of room the job's id goes
     * first (the watcher knows it), then the metrics; what still does not fit is cut */
    snprintf(head, sizeof head, "%s  %s", w->id, state);
    int fixed = 2 + 2 + 2 + (int)strlen(counts) + 6 + (int)strlen(eta);
    int metrics_len = metrics[0] ? 2 + (int)strlen(metrics) : 0;
    int width = cols - fixed - (int)strlen(head) - metrics_len;
    if (width < 10) {
        snprintf(head, sizeof head, "%s", state);
        width = cols - fixed - (int)strlen(head) - metrics_len;
    }
    if (width < 10) {
        metrics_len = 0;
        width = cols - fixed - (int)strlen(head);
    }
    if (width > 30) width = 30;
    if (width < 10) width = 10;
    cli_bar_text(w->c, fraction, width, bar, sizeof bar);
    snprintf(line, sizeof line, "%s  [%s]  %s  ETA %s%s%.*s", head, bar, counts, eta,
             metrics_len ? "  " : "", metrics_len ? (int)strlen(metrics) : 0, metrics);
    fputs("\r\033[K", stdout);
    put_cut(line, cols);
    fflush(stdout);
    w->bar_drawn = 1;
    bar_on_screen = 1;
}

/* Prints a line that stays (a checkpoint, a state change): above the bar on a terminal. */
static void print_line(watch *w, const char *text) {
    clear_bar(w);
    printf("%s\n", text);
    if (w->c->tty_out) draw_bar(w, 1);
    fflush(stdout);
}

static void on_state(watch *w, const json_t *job) {
    const char *state = chord_json_string_or(job, "state", "");
    int changed = strcmp(state, w->state) != 0;
    snprintf(w->state, sizeof w->state, "%s", state);
    double steps = chord_json_number_or(job, "steps", 0);
    if (steps > 0) w->steps = (long)steps;
    double current = chord_json_number_or(job, "current_step", -1);
    if (current > w->step && terminal_state(state)) w->step = (long)current;
    w->started_at = cli_time_parse(chord_json_string_or(job, "started_at", NULL));
    w->finished_at = cli_time_parse(chord_json_string_or(job, "finished_at", NULL));
    snprintf(w->error, sizeof w->error, "%s", chord_json_string_or(job, "error", ""));
    if (terminal_state(state)) {
        w->terminal = 1;
        return;
    }
    if (!changed) return;
    if (w->c->tty_out) {
        draw_bar(w, 1);
    } else {
        char text[256];
        const char *device = chord_json_string_or(job, "device", NULL);
        snprintf(text, sizeof text, "%s %s%s%s", w->id, state, device ? " on " : "",
                 device ? device : "");
        print_line(w, text);
    }
}

static void on_step(watch *w, const json_t *ev) {
    long step = (long)chord_json_number_or(ev, "step", 0);
    const json_t *metrics = json_object_get(ev, "metrics");
    if (step <= w->step && w->step > 0) return; /* already seen (a reopened stream) */
    w->step = step;
    if (w->first_arrival == 0) {
        w->first_arrival = chord_now();
        w->first_arrival_step = step;
    }
    for (int i = 0; i < N_KEY; i++) {
        const json_t *v = json_object_get(metrics, key_metrics[i].metric);
        if (v && json_is_number(v)) {
            w->key[i] = json_number_value(v);
            w->have_key[i] = 1;
        }
    }
    const json_t *t = json_object_get(metrics, "time/step");
    if (t && json_is_number(t) && json_number_value(t) > 0)
        w->step_seconds = w->step_seconds > 0 ? 0.7 * w->step_seconds + 0.3 * json_number_value(t)
                                              : json_number_value(t);
    if (w->c->tty_out) {
        draw_bar(w, step == w->steps);
        return;
    }
    char text[512], m[320], eta[32];
    metrics_text(w, m, sizeof m, 1);
    cli_duration_text(eta_seconds(w), eta, sizeof eta);
    snprintf(text, sizeof text, "step %ld/%ld  %s  ETA %s", step, w->steps, m, eta);
    print_line(w, text);
}

static void on_checkpoint(watch *w, const json_t *ck) {
    char text[256], size[32];
    cli_bytes_text(chord_json_number_or(ck, "bytes", 0), size, sizeof size);
    snprintf(text, sizeof text, "checkpoint at step %.0f: %s (%s)",
             chord_json_number_or(ck, "step", 0), chord_json_string_or(ck, "id", "?"), size);
    print_line(w, text);
}

static int dispatch(watch *w) {
    const char *name = w->event.len ? w->event.data : "message";
    json_error_t jerr;
    json_t *data = json_loadb(w->data.data, w->data.len, 0, &jerr);
    if (!data) {
        clear_bar(w);
        cli_fail(CLI_REFUSED, "an event from the server is not JSON: %.200s", w->data.data);
        w->fatal = CLI_REFUSED;
        return -1;
    }
    if (w->c->json) {
        json_t *line = json_pack("{s:s, s:O}", "event", name, "data", data);
        char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
        json_decref(line);
        if (!text) {
            json_decref(data);
            cli_fail(CLI_LOCAL, "out of memory");
            w->fatal = CLI_LOCAL;
            return -1;
        }
        printf("%s\n", text);
        fflush(stdout);
        free(text);
    }
    if (strcmp(name, "state") == 0) {
        if (w->c->json) { /* only what the exit status needs */
            snprintf(w->state, sizeof w->state, "%s", chord_json_string_or(data, "state", ""));
            w->terminal = terminal_state(w->state);
        } else {
            on_state(w, data);
        }
    } else if (strcmp(name, "step") == 0) {
        if (!w->c->json)
            on_step(w, data);
        else
            w->step = (long)chord_json_number_or(data, "step", (double)w->step);
    } else if (strcmp(name, "checkpoint") == 0) {
        if (!w->c->json) on_checkpoint(w, data);
    } else if (strcmp(name, "error") == 0) {
        /* a watcher that fell behind: the stream ends and is reopened from the next step */
        const char *msg =
            chord_json_string_or(json_object_get(data, "error"), "message", "stream error");
        if (!w->c->json) {
            clear_bar(w);
            fprintf(stderr, "chordctl: %s\n", msg);
        }
    }
    json_decref(data);
    return 0;
}

/* One line of the stream (its newline removed). */
static int on_line(watch *w, char *line, size_t len) {
    if (len && line[len - 1] == '\r') line[--len] = '\0';
    if (len == 0) {
        int rc = 0;
        if (w->data.len) rc = dispatch(w);
        w->event.len = 0;
        w->data.len = 0;
        if (w->event.data) w->event.data[0] = '\0';
        if (w->data.data) w->data.data[0] = '\0';
        return rc;
    }
    if (line[0] == ':') return 0; /* a comment: the heartbeat */
    char *colon = strchr(line, ':');
    size_t field_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : "";
    if (*value == ' ') value++;
    if (field_len == 5 && strncmp(line, "event", 5) == 0) {
        w->event.len = 0;
        return chord_buf_append(&w->event, value, strlen(value));
    }
    if (field_len == 4 && strncmp(line, "data", 4) == 0) {
        if (w->data.len && chord_buf_append(&w->data, "\n", 1) != 0) return -1;
        return chord_buf_append(&w->data, value, strlen(value));
    }
    return 0; /* id, retry: the step events carry their step themselves */
}

static int on_data(void *user, const char *data, size_t n) {
    watch *w = user;
    for (size_t i = 0; i < n; i++) {
        if (data[i] != '\n') {
            if (chord_buf_append(&w->line, data + i, 1) != 0) goto oom;
            continue;
        }
        if (chord_buf_append(&w->line, "", 0) != 0) goto oom;
        int rc = on_line(w, w->line.data, w->line.len);
        w->line.len = 0;
        if (rc != 0) {
            if (!w->fatal) goto oom;
            return -1;
        }
    }
    return 0;
oom:
    clear_bar(w);
    w->fatal = cli_fail(CLI_LOCAL, "out of memory");
    return -1;
}

static void final_line(watch *w) {
    char text[1024], m[320], took[32] = "";
    if (w->c->json) return;
    clear_bar(w);
    metrics_text(w, m, sizeof m, 0);
    double seconds = w->finished_at - w->started_at;
    if (isfinite(seconds) && seconds >= 0) {
        char d[24];
        cli_duration_text(seconds, d, sizeof d);
        snprintf(took, sizeof took, " in %s", d);
    }
    if (strcmp(w->state, "succeeded") == 0)
        snprintf(text, sizeof text, "%s succeeded: %ld/%ld steps%s%s%s", w->id, w->step, w->steps,
                 took, m[0] ? "  " : "", m);
    else if (strcmp(w->state, "cancelled") == 0)
        snprintf(text, sizeof text, "%s cancelled at step %ld/%ld%s%s%s", w->id, w->step, w->steps,
                 took, m[0] ? "  " : "", m);
    else
        snprintf(text, sizeof text, "%s failed at step %ld/%ld%s: %s", w->id, w->step, w->steps,
                 took, w->error[0] ? w->error : "(no reason given)");
    printf("%s\n", text);
    fflush(stdout);
}

int cli_watch_job(cli *c, const char *id, long since_step) {
    watch w = {.c = c, .id = id};
    json_t *job = NULL;
    chord_buf path = {0};
    int rc;
    /* the job first: a wrong id is refused here with the server's message, and the bar knows
     * its total before the first event */
    if ((rc = cli_call_id(c, "GET", "/v1/jobs/", id, NULL, &job, NULL)) != CLI_OK) return rc;
    w.steps = (long)chord_json_number_or(job, "steps", 0);
    struct sigaction sa = {.sa_handler = on_interrupt}, old_sa;
    int handler = c->tty_out && !c->json && sigaction(SIGINT, &sa, &old_sa) == 0;
    json_decref(job);
    if (since_step > 1) w.step = since_step - 1;
    double unreachable_since = 0;
    for (;;) {
        path.len = 0;
        if (cli_bufprintf(&path, "/v1/jobs/") != 0 || cli_escape(c, &path, id) != 0 ||
            cli_bufprintf(&path, "/events?since_step=%ld", w.step > 0 ? w.step + 1 : 0) != 0) {
            rc = cli_fail(CLI_LOCAL, "out of memory");
            break;
        }
        cli_result r = {0};
        cli_transfer t = {.method = "GET",
                          .path = path.data,
                          .accept = "text/event-stream",
                          .on_data = on_data,
                          .user = &w,
                          .streaming = 1,
                          .quiet_unreachable = 1};
        w.line.len = w.event.len = w.data.len = 0;
        rc = cli_perform(c, &t, &r);
        chord_buf_free(&r.body);
        if (w.fatal) {
            rc = w.fatal;
            break;
        }
        if (w.terminal) {
            final_line(&w);
            rc = strcmp(w.state, "succeeded") == 0 ? CLI_OK : CLI_WORK_FAILED;
            break;
        }
        if (rc == CLI_REFUSED || rc == CLI_LOCAL) break;
        /* the stream ended before the job: reopen it from the next step */
        double now = chord_now();
        if (rc == CLI_UNREACHABLE) {
            if (unreachable_since == 0) {
                unreachable_since = now;
                clear_bar(&w);
                fflush(stdout);
                cli_fail(rc, "lost the connection to %s; trying again for 60 s", c->server);
            }
            if (now - unreachable_since > 60) {
                cli_fail(rc, "cannot reach %s", c->server);
                break;
            }
        } else {
            unreachable_since = 0;
        }
        sleep(1);
    }
    clear_bar(&w);
    fflush(stdout);
    if (handler) sigaction(SIGINT, &old_sa, NULL);
    chord_buf_free(&path);
    chord_buf_free(&w.line);
    chord_buf_free(&w.event);
    chord_buf_free(&w.data);
    return rc;
}

int cli_jobs_watch(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{.name = "--since-step", .takes_value = 1}, {0}};
    const char *pos[1];
    int npos, rc;
    long since = 0;
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage_watch)) == CLI_OK) {
        cli_opt *s = cli_opt_get(opts, "--since-step");
        if (npos != 1)
            rc = cli_fail(CLI_USAGE, "usage: %s", usage_watch);
        else if (!s->seen || (rc = cli_opt_long(s, 0, 2147483647L, &since)) == CLI_OK)
            rc = cli_watch_job(c, pos[0], since);
    }
    cli_opts_free(opts);
    return rc;
}
