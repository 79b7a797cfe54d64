/* Shared between the CLI's files: parsed options and the commands. */
#ifndef HOST_CLI_INTERNAL_H
#define HOST_CLI_INTERNAL_H

#include <stddef.h>
#include "cli.h"
#include "../plugin/registry.h"

typedef struct cli_opts {
    const char **plugin_dirs;
    size_t n_plugin_dirs;
    const char **sets;           /* --set KEY=VALUE */
    size_t n_sets;
    const char *out;             /* --out */
    int jobs;                    /* --jobs */
    const char *command;
    const char **args;           /* positional arguments after the command */
    size_t n_args;
    const char *argv0;
} cli_opts;

int cli_help(const char *topic);
/* Loads plugins from --plugins, LLMOPT_PLUGIN_PATH or the defaults. Returns 0, or EXIT_PLUGIN
 * after printing why (the registry is still usable). */
int cli_load_plugins(const cli_opts *o, registry **out);
/* Logs (info) that an inherited OPENBLAS_CORETYPE keeps OpenBLAS off this CPU's AVX-512, once a
 * process; called where compute starts, after a config or model was accepted (an error stays one line). */
void cli_blas_hint(void);

int cmd_run(const cli_opts *o);
int cmd_validate(const cli_opts *o);
int cmd_plugins(const cli_opts *o);
int cmd_describe(const cli_opts *o);
int cmd_init(const cli_opts *o);
int cmd_forward(const cli_opts *o);
int cmd_generate(const cli_opts *o);
int cmd_tokenize(const cli_opts *o);

#endif
