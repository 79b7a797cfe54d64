/* Command-line parsing and plugin discovery for llmopt-host; the commands live in cmd_*.c. */
#define _XOPEN_SOURCE 700 /* realpath */
#include "cli_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../plugin/blas_env.h"
#include "../plugin/loader.h"
#include "../runtime/runtime.h"
#include "../runtime/threadpool.h"
#include "../sched/stage_ctx.h"
#include "../util/fs.h"
#include "../util/log.h"
#include "../util/version.h"

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "llmopt-host: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see 'llmopt-host --help')\n");
    return EXIT_USAGE;
}

/* The directory of this executable, for finding plugins built or installed beside it. */
static int exe_dir(char *buf, size_t n) {
    ssize_t len = readlink("/proc/self/exe", buf, n - 1);
    if (len <= 0) return -1;
    buf[len] = '\0';
    char *slash = strrchr(buf, '/');
    if (!slash) return -1;
    *slash = '\0';
    return 0;
}

int cli_load_plugins(const cli_opts *o, registry **out) {
    const char *dirs[64];
    size_t n = 0;
    char *env_copy = NULL, here[PATH_MAX], *fallback = NULL;
    for (size_t i = 0; i < o->n_plugin_dirs && n < 64; i++) dirs[n++] = o->plugin_dirs[i];
    const char *env = getenv("LLMOPT_PLUGIN_PATH");
    if (env && *env && (env_copy = strdup(env))) {
        char *save = NULL;
        for (char *t = strtok_r(env_copy, ":", &save); t && n < 64; t = strtok_r(NULL, ":", &save))
            if (*t) dirs[n++] = t;
    }
    if (n == 0) {
        /* build tree: build/host/llmopt-host next to build/plugins; else the install location */
        char *joined = exe_dir(here, sizeof here) == 0 ? fs_join(here, "../plugins") : NULL;
        if (joined && fs_is_dir(joined)) fallback = realpath(joined, NULL);
        free(joined);
        if (fallback)
            dirs[n++] = fallback;
        else
            dirs[n++] = LLMOPT_DEFAULT_PLUGIN_DIR;
    }
    registry *reg = registry_new();
    if (!reg) {
        free(env_copy);
        free(fallback);
        fprintf(stderr, "llmopt-host: out of memory\n");
        return EXIT_PLUGIN;
    }
    host_api_set_registry(reg);
    llmopt_error err = {0};
    int rc = loader_load_dirs(reg, dirs, n, host_api_table(), &err);
    free(env_copy);
    free(fallback);
    *out = reg;
    return rc == 0 ? 0 : EXIT_PLUGIN; /* the loader already logged the reason */
}

void cli_blas_hint(void) {
    static int done;
    char msg[256];
    if (!done && blas_env_weaker_than_cpu(msg, sizeof msg)) log_msg(LLMOPT_LOG_INFO, "%s", msg);
    done = 1;
}

/* Commands that parse options of their own: the rest of their arguments reach them in o.args. */
static int command_has_options(const char *cmd) {
    return strcmp(cmd, "tokenize") == 0 || strcmp(cmd, "forward") == 0 || strcmp(cmd, "generate") == 0;
}

static int parse_int(const char *s, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 1024) return -1;
    *out = (int)v;
    return 0;
}

/* A size as transformers' max_shard_size takes it: a number of bytes, or with a unit KB, MB,
 * GB (powers of 1000) or KiB, MiB, GiB (of 1024), any case ("500MB", "2GiB"). */
static int parse_size(const char *s, uint64_t *out) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 1)) return -1;
    static const struct { const char *unit; double mult; } units[] = {
        {"", 1}, {"b", 1}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
        {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0}, {"tib", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcasecmp(end, units[i].unit) == 0 && v * units[i].mult < 1.8e19) {
            *out = (uint64_t)(v * units[i].mult);
            return 0;
        }
    return -1;
}

int cli_main(int argc, char **argv) {
    cli_opts o;
    memset(&o, 0, sizeof o);
    o.jobs = 2;
    o.argv0 = argv[0];
    /* every array holds at most argc entries */
    o.plugin_dirs = calloc((size_t)argc + 1, sizeof *o.plugin_dirs);
    o.sets = calloc((size_t)argc + 1, sizeof *o.sets);
    o.args = calloc((size_t)argc + 1, sizeof *o.args);
    int rc = 0, want_help = 0;
    if (!o.plugin_dirs || !o.sets || !o.args) {
        rc = EXIT_USAGE;
        goto done;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--plugins") == 0 || strcmp(a, "--set") == 0 || strcmp(a, "--out") == 0 ||
            strcmp(a, "--jobs") == 0) {
            if (!val) {
                rc = usage_error("%s needs a value", a);
                goto done;
            }
            i++;
            if (a[2] == 'p') o.plugin_dirs[o.n_plugin_dirs++] = val;
            else if (a[2] == 's') o.sets[o.n_sets++] = val;
            else if (a[2] == 'o') o.out = val;
            else if (parse_int(val, &o.jobs) != 0) {
                rc = usage_error("--jobs wants a whole number from 1 to 1024, not '%s'", val);
                goto done;
            }
        } else if (strncmp(a, "--plugins=", 10) == 0) {
            o.plugin_dirs[o.n_plugin_dirs++] = a + 10;
        } else if (strncmp(a, "--set=", 6) == 0) {
            o.sets[o.n_sets++] = a + 6;
        } else if (strncmp(a, "--out=", 6) == 0) {
            o.out = a + 6;
        } else if (strncmp(a, "--jobs=", 7) == 0) {
            if (parse_int(a + 7, &o.jobs) != 0) {
                rc = usage_error("--jobs wants a whole number from 1 to 1024, not '%s'", a + 7);
                goto done;
            }
        } else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0) {
            log_set_level(LLMOPT_LOG_WARN);
        } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            log_set_level(LLMOPT_LOG_DEBUG);
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            want_help = 1;
        } else if (strcmp(a, "--version") == 0) {
            printf("llmopt-host %s (ABI %d.%d, git %s)\n", LLMOPT_VERSION, LLMOPT_ABI_MAJOR,
                   LLMOPT_ABI_MINOR, *llmopt_git_rev ? llmopt_git_rev : "unknown");
            goto done;
        } else if (strcmp(a, "--max-shard-size") == 0 || strncmp(a, "--max-shard-size=", 17) == 0) {
            const char *v = a[16] == '=' ? a + 17 : (i + 1 < argc ? argv[++i] : "");
            uint64_t bytes = 0;
            if (parse_size(v, &bytes) != 0) {
                rc = usage_error("--max-shard-size wants a size such as 5GB, 500MB or 2GiB, not '%s'", v);
                goto done;
            }
            rt_set_max_shard_bytes(bytes);
        } else if (strcmp(a, "--threads") == 0 || strncmp(a, "--threads=", 10) == 0) {
            const char *v = a[9] == '=' ? a + 10 : (i + 1 < argc ? argv[++i] : "");
            int n = 0;
            if (parse_int(v, &n) != 0) {
                rc = usage_error("--threads wants a whole number from 1 to 1024, not '%s'", v);
                goto done;
            }
            tp_set_threads(n);
        } else if (a[0] == '-' && a[1] != '\0' && !(o.command && command_has_options(o.command))) {
            rc = usage_error("unknown option '%s'", a);
            goto done;
        } else if (!o.command) {
            o.command = a;
        } else {
            o.args[o.n_args++] = a;
        }
    }
    if (want_help || !o.command) {
        rc = cli_help(want_help ? o.command : NULL);
        if (!want_help && !o.command) rc = EXIT_USAGE;
        goto done;
    }
    struct { const char *name; int (*fn)(const cli_opts *); size_t min_args, max_args; } cmds[] = {
        {"run", cmd_run, 1, 1},         {"validate", cmd_validate, 1, 1}, {"plugins", cmd_plugins, 0, 0},
        {"describe", cmd_describe, 1, 1}, {"init", cmd_init, 0, 1},
        {"forward", cmd_forward, 1, 64},  {"generate", cmd_generate, 1, 64},
        {"tokenize", cmd_tokenize, 1, 16},
    };
    if (strcmp(o.command, "help") == 0) {
        rc = cli_help(o.n_args ? o.args[0] : NULL);
        goto done;
    }
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(o.command, cmds[i].name) != 0) continue;
        if (o.n_args < cmds[i].min_args || o.n_args > cmds[i].max_args) {
            fprintf(stderr, "llmopt-host: wrong number of arguments for '%s'\n\n", o.command);
            cli_help(o.command);
            rc = EXIT_USAGE;
        } else {
            rc = cmds[i].fn(&o);
        }
        goto done;
    }
    rc = usage_error("unknown command '%s'; commands are run, validate, plugins, describe, init, generate, forward, help",
                     o.command);
done:
    /* -v: what the command cost in memory (VmHWM: this process's own peak, not its parent's) */
    if (o.command) log_msg(LLMOPT_LOG_DEBUG, "peak RSS %.1f MiB", (double)peak_rss_bytes() / 1048576.0);
    free(o.plugin_dirs);
    free(o.sets);
    free(o.args);
    return rc;
}
