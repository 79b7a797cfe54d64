/* The plugin loader: directory scan, dlopen, the descriptor check that runs before any plugin
 * code, variant groups resolved by score, then init with a registrar. Every plugin that does
 * not end up loaded gets one log line naming its file, its state and the reason. */
#define _GNU_SOURCE /* dladdr1 and RTLD_DL_SYMENT: the size of the exported descriptor */
#include "loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../util/fs.h"
#include "../util/log.h"
#include "blas_env.h"

/* The smallest descriptor ABI v1 accepts: the v1.0 struct, through shutdown. */
#define PLUGIN_DESC_V1_SIZE (offsetof(llmopt_plugin_desc, shutdown) + sizeof(void (*)(void)))

/* ---- the descriptor check ---- */

static int id_ok(const char *id) {
    if (!id[0]) return 0;
    for (const char *s = id; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

int loader_check_desc(const llmopt_plugin_desc *d, size_t avail, llmopt_error *why) {
    /* struct_size, abi_major and abi_minor are the first 8 bytes of every major's descriptor. */
    if (!d || avail < 8)
        return error_set(why, LLMOPT_EABI, "descriptor is %zu bytes, ABI v1 needs at least %zu",
                         d ? avail : (size_t)0, (size_t)PLUGIN_DESC_V1_SIZE);
    if (d->abi_major != LLMOPT_ABI_MAJOR)
        return error_set(why, LLMOPT_EABI, "built for ABI major %u, this host speaks ABI %d.%d",
                         (unsigned)d->abi_major, LLMOPT_ABI_MAJOR, LLMOPT_ABI_MINOR);
    if (d->abi_minor > LLMOPT_ABI_MINOR)
        return error_set(why, LLMOPT_EABI,
                         "built for ABI %d.%u, newer than this host's %d.%d: upgrade llmopt",
                         LLMOPT_ABI_MAJOR, (unsigned)d->abi_minor, LLMOPT_ABI_MAJOR,
                         LLMOPT_ABI_MINOR);
    size_t size = d->struct_size < avail ? d->struct_size : avail;
    if (size < PLUGIN_DESC_V1_SIZE)
        return error_set(why, LLMOPT_EABI, "descriptor is %zu bytes, ABI v1 needs at least %zu",
                         size, (size_t)PLUGIN_DESC_V1_SIZE);
    if (!d->id) return error_set(why, LLMOPT_EINVAL, "descriptor field 'id' is NULL");
    if (!id_ok(d->id))
        return error_set(why, LLMOPT_EINVAL, "descriptor field 'id' is '%s', must match [a-z0-9_-]+",
                         d->id);
    if (!d->version) return error_set(why, LLMOPT_EINVAL, "descriptor field 'version' is NULL");
    if (!d->init) return error_set(why, LLMOPT_EINVAL, "descriptor field 'init' is NULL");
    return 0;
}

/* ---- logging of outcomes ---- */

static void report(const plugin_rec *p) {
    if (p->state == PLUGIN_LOADED) {
        log_msg(LLMOPT_LOG_DEBUG, "%s: loaded '%s' %s (%zu stages, %zu kernels, %zu devices)", p->path,
                p->desc.id, p->desc.version, p->n_stages, p->n_kernels, p->n_devices);
        return;
    }
    int level = p->state == PLUGIN_SKIPPED ? LLMOPT_LOG_INFO : LLMOPT_LOG_ERROR;
    log_msg(level, "%s: %s: %s", p->path, plugin_state_str(p->state),
            p->reason ? p->reason : "");
}

/* ---- opening one file ---- */

/* Another major's symbol, so a plugin built for it is named as such rather than "not a plugin". */
static int other_major(void *h) {
    char sym[32];
    for (int major = LLMOPT_ABI_MAJOR + 1; major <= LLMOPT_ABI_MAJOR + 8; major++) {
        snprintf(sym, sizeof sym, "llmopt_plugin_v%d", major);
        if (dlsym(h, sym)) return major;
    }
    return 0;
}

/* Bytes of the symbol at addr as the ELF symbol table records them, or SIZE_MAX. */
static size_t symbol_size(const void *addr) {
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (dladdr1(addr, &info, (void **)&sym, RTLD_DL_SYMENT) && sym && sym->st_size > 0)
        return (size_t)sym->st_size;
    return SIZE_MAX;
}

/* dlopens p->path and checks its descriptor; leaves p REFUSED with a reason, or still LOADED
 * (meaning: accepted, not yet initialised) with p->desc filled. */
static void open_plugin(registry *reg, plugin_rec *p) {
    dlerror();
    p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
    if (!p->handle) {
        const char *e = dlerror();
        plugin_set_state(p, PLUGIN_REFUSED, "not a loadable shared object: %s",
                         e ? e : "unknown error");
        return;
    }
    const llmopt_plugin_desc *d = dlsym(p->handle, LLMOPT_PLUGIN_SYMBOL);
    if (!d) {
        int major = other_major(p->handle);
        if (major)
            plugin_set_state(p, PLUGIN_REFUSED,
                             "exports llmopt_plugin_v%d: built for ABI major %d, this host "
                             "speaks ABI %d.%d", major, major, LLMOPT_ABI_MAJOR, LLMOPT_ABI_MINOR);
        else
            plugin_set_state(p, PLUGIN_REFUSED, "no %s symbol (not an llmopt plugin, or built "
                             "for another ABI major)", LLMOPT_PLUGIN_SYMBOL);
        return;
    }
    size_t avail = symbol_size(d);
    llmopt_error why;
    error_clear(&why);
    if (loader_check_desc(d, avail, &why) != 0) {
        plugin_set_state(p, PLUGIN_REFUSED, "%s", why.msg);
        return;
    }
    size_t n = d->struct_size < avail ? d->struct_size : avail;
    if (n > sizeof p->desc) n = sizeof p->desc;
    memset(&p->desc, 0, sizeof p->desc);
    memcpy(&p->desc, d, n);

    for (size_t i = 0; i < reg->n_plugins; i++) {
        const plugin_rec *q = reg->plugins[i];
        if (q != p && q->state == PLUGIN_LOADED && q->desc.id &&
            strcmp(q->desc.id, p->desc.id) == 0) {
            plugin_set_state(p, PLUGIN_REFUSED, "plugin id '%s' already loaded from %s",
                             p->desc.id, q->path);
            return;
        }
    }
    plugin_set_state(p, PLUGIN_LOADED, NULL);
}

/* ---- directories ---- */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int has_suffix(const char *name, const char *suffix) {
    size_t n = strlen(name), s = strlen(suffix);
    return n > s && strcmp(name + n - s, suffix) == 0;
}

/* Adds a record for every plugin file in dir, sorted by name, and opens each. The new records
 * are appended to reg->plugins. */
static int scan_dir(registry *reg, const char *dir, llmopt_error *err) {
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return error_set(err, LLMOPT_ENOTFOUND, "%s: plugin directory not found", dir);
    DIR *dh = opendir(dir);
    if (!dh)
        return error_set(err, LLMOPT_EIO, "%s: cannot read plugin directory: %s", dir,
                         strerror(errno));
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(dh)) != NULL) {
        if (!has_suffix(e->d_name, LLMOPT_PLUGIN_SUFFIX)) continue;
        char *name = strdup(e->d_name);
        char **grown = name ? realloc(names, (n + 1) * sizeof *names) : NULL;
        if (!grown) {
            free(name);
            rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", dir);
            break;
        }
        names = grown;
        names[n++] = name;
    }
    closedir(dh);
    if (rc == 0) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char *path = rc == 0 ? fs_join(dir, names[i]) : NULL;
        plugin_rec *p = path ? registry_add_plugin(reg, path) : NULL;
        if (p)
            open_plugin(reg, p);
        else if (rc == 0)
            rc = error_set(err, LLMOPT_ENOMEM, "%s: out of memory", dir);
        free(path);
        free(names[i]);
    }
    free(names);
    return rc;
}

/* ---- variant groups ---- */

/* Scores every accepted variant (first..n_plugins), skips those that cannot run here, and in
 * each group skips all but the highest score (ties: the first found). */
static void resolve_variants(registry *reg, size_t first) {
    for (size_t i = first; i < reg->n_plugins; i++) {
        plugin_rec *p = reg->plugins[i];
        if (p->state != PLUGIN_LOADED || !p->desc.variant_of) continue;
        char why[256] = "";
        p->score = p->desc.score ? p->desc.score(why, sizeof why) : 1;
        why[sizeof why - 1] = '\0';
        if (p->score <= 0) {
            p->score = 0;
            plugin_set_state(p, PLUGIN_SKIPPED, "cannot run on this machine: %s",
                             why[0] ? why : "score 0");
        }
    }
    for (size_t i = first; i < reg->n_plugins; i++) {
        plugin_rec *best = reg->plugins[i];
        if (best->state != PLUGIN_LOADED || !best->desc.variant_of) continue;
        /* best is the first live member of its group not yet beaten: find the group's winner. */
        for (size_t j = i + 1; j < reg->n_plugins; j++) {
            plugin_rec *q = reg->plugins[j];
            if (q->state == PLUGIN_LOADED && q->desc.variant_of &&
                strcmp(q->desc.variant_of, best->desc.variant_of) == 0 && q->score > best->score)
                best = q;
        }
        for (size_t j = i; j < reg->n_plugins; j++) {
            plugin_rec *q = reg->plugins[j];
            if (q == best || q->state != PLUGIN_LOADED || !q->desc.variant_of ||
                strcmp(q->desc.variant_of, best->desc.variant_of) != 0)
                continue;
            if (q->score == best->score)
                plugin_set_state(q, PLUGIN_SKIPPED, "variant %s scored the same (%d) and was "
                                 "found first", best->desc.id, best->score);
            else
                plugin_set_state(q, PLUGIN_SKIPPED, "variant %s scored higher (%d > %d)",
                                 best->desc.id, best->score, q->score);
        }
    }
}

/* ---- init and the registrar ---- */

/* What the registrar's host_private points at while one plugin's init runs. */
typedef struct init_ctx {
    registry *reg;
    plugin_rec *plugin;
    char init_msg[1024];     /* from reg->set_error */
    llmopt_error refused;    /* the first registration refused; status 0 when none */
} init_ctx;

static int reg_add_stage(llmopt_registrar *r, const llmopt_stage_desc *d) {
    init_ctx *c = r->host_private;
    llmopt_error e;
    error_clear(&e);
    int rc = registry_add_stage(c->reg, c->plugin, d, &e);
    if (rc != 0 && c->refused.status == 0) c->refused = e;
    return rc;
}

static int reg_add_kernel(llmopt_registrar *r, const llmopt_kernel_desc *d) {
    init_ctx *c = r->host_private;
    llmopt_error e;
    error_clear(&e);
    int rc = registry_add_kernel(c->reg, c->plugin, d, &e);
    if (rc != 0 && c->refused.status == 0) c->refused = e;
    return rc;
}

static int reg_add_device(llmopt_registrar *r, const llmopt_device_ops *d) {
    init_ctx *c = r->host_private;
    llmopt_error e;
    error_clear(&e);
    int rc = registry_add_device(c->reg, c->plugin, d, &e);
    if (rc != 0 && c->refused.status == 0) c->refused = e;
    return rc;
}

static void reg_set_error(llmopt_registrar *r, const char *fmt, ...) {
    init_ctx *c = r->host_private;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->init_msg, sizeof c->init_msg, fmt, ap);
    va_end(ap);
}

/* Runs p's init. A failed init, or any registration refused during it (even if init then
 * returns 0), fails the plugin and rolls its registrations back: a half-registered plugin
 * would make pipelines behave differently from what its author tested. The reason is the
 * plugin's own message (set_error), else the refused registration's, else the status, so the
 * log line reads "<file>: init failed: <why>". */
static void init_plugin(registry *reg, plugin_rec *p, const llmopt_host_api *api) {
    init_ctx c;
    memset(&c, 0, sizeof c);
    c.reg = reg;
    c.plugin = p;
    llmopt_registrar r = {
        .struct_size = sizeof r,
        .add_stage = reg_add_stage,
        .add_kernel = reg_add_kernel,
        .set_error = reg_set_error,
        .host_private = &c,
        .add_device = reg_add_device,
    };
    int rc = p->desc.init(api, &r);
    if (rc != 0) {
        registry_remove_owner(reg, p);
        if (c.init_msg[0])
            plugin_set_state(p, PLUGIN_INIT_FAILED, "%s", c.init_msg);
        else if (c.refused.status != 0)
            plugin_set_state(p, PLUGIN_INIT_FAILED, "%s", c.refused.msg);
        else
            plugin_set_state(p, PLUGIN_INIT_FAILED, "init returned %d (%s)", rc, status_str(rc));
    } else if (c.refused.status != 0) {
        registry_remove_owner(reg, p);
        plugin_set_state(p, PLUGIN_INIT_FAILED, "%s", c.refused.msg);
    }
}

int loader_load_dirs(registry *reg, const char *const *dirs, size_t n_dirs,
                     const llmopt_host_api *api, llmopt_error *err) {
    if (!reg) return error_set(err, LLMOPT_EINVAL, "no registry");
    const char *core = NULL;
    if (blas_env_prepare(&core))
        log_msg(LLMOPT_LOG_DEBUG, "OPENBLAS_CORETYPE=%s set from this CPU's features (blas_env.h)", core);
    size_t first = reg->n_plugins;
    llmopt_error first_err;
    error_clear(&first_err);
    for (size_t i = 0; i < n_dirs; i++) {
        llmopt_error e;
        error_clear(&e);
        if (scan_dir(reg, dirs[i], &e) != 0) {
            log_msg(LLMOPT_LOG_ERROR, "%s", e.msg);
            if (first_err.status == 0) first_err = e;
        }
    }
    resolve_variants(reg, first);
    for (size_t i = first; i < reg->n_plugins; i++) {
        plugin_rec *p = reg->plugins[i];
        if (p->state == PLUGIN_LOADED) init_plugin(reg, p, api);
        report(p);
    }
    if (first_err.status != 0) {
        if (err) *err = first_err;
        return first_err.status;
    }
    return 0;
}
