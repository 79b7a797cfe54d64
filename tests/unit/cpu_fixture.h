/* Unit-test fixture: the build's cpu.so alone (a temporary directory holding a link to it, so no
 * other plugin of the build interferes) loaded through the real loader into a fresh registry that
 * the host API's kernel lookups use. Include after cmocka.h. */
#ifndef TESTS_UNIT_CPU_FIXTURE_H
#define TESTS_UNIT_CPU_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "plugin/loader.h"
#include "runtime/threadpool.h"
#include "sched/stage_ctx.h"

static char cpu_fixture_dir[256];
static registry *cpu_fixture_reg;

/* Loads cpu.so from $LLMOPT_BUILD_PLUGINS with `threads` compute threads. 0 with *cpu set to the
 * plugin's record (its state says whether it loaded), or -1 after printing why. */
static inline int cpu_fixture_load(int threads, plugin_rec **cpu) {
    const char *build = getenv("LLMOPT_BUILD_PLUGINS");
    if (!build) {
        fprintf(stderr, "LLMOPT_BUILD_PLUGINS is not set (run through ctest)\n");
        return -1;
    }
    snprintf(cpu_fixture_dir, sizeof cpu_fixture_dir, "/tmp/llmopt-cpu-fixture-XXXXXX");
    if (!mkdtemp(cpu_fixture_dir)) return -1;
    char src[4096], dst[512];
    snprintf(src, sizeof src, "%s/cpu%s", build, LLMOPT_PLUGIN_SUFFIX);
    snprintf(dst, sizeof dst, "%s/cpu%s", cpu_fixture_dir, LLMOPT_PLUGIN_SUFFIX);
    if (symlink(src, dst) != 0) return -1;
    tp_set_threads(threads);
    cpu_fixture_reg = registry_new();
    const char *dirs[] = {cpu_fixture_dir};
    llmopt_error err = {0};
    if (!cpu_fixture_reg || loader_load_dirs(cpu_fixture_reg, dirs, 1, host_api_table(), &err) != 0 ||
        cpu_fixture_reg->n_plugins != 1) {
        fprintf(stderr, "loading %s failed: %s\n", dst, err.msg);
        return -1;
    }
    host_api_set_registry(cpu_fixture_reg);
    *cpu = cpu_fixture_reg->plugins[0];
    return 0;
}

static inline void cpu_fixture_unload(void) {
    char dst[512];
    snprintf(dst, sizeof dst, "%s/cpu%s", cpu_fixture_dir, LLMOPT_PLUGIN_SUFFIX);
    unlink(dst);
    rmdir(cpu_fixture_dir);
    host_api_set_registry(NULL);
    registry_free(cpu_fixture_reg);
    cpu_fixture_reg = NULL;
}

#endif
