/* `plugins`, `describe` and `init`: the commands a new user learns the tool from. */
#include "cli_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/pipeline.h"
#include "../runtime/runtime.h"
#include "../util/fs.h"
#include "../util/strutil.h"

int cmd_plugins(const cli_opts *o) {
    registry *reg = NULL;
    int rc = cli_load_plugins(o, &reg);
    printf("plugins (%zu found):\n", reg->n_plugins);
    for (size_t i = 0; i < reg->n_plugins; i++) {
        const plugin_rec *p = reg->plugins[i];
        if (p->state == PLUGIN_LOADED)
            printf("  %-8s %s %s  %s\n           %s\n", plugin_state_str(p->state), p->desc.id,
                   p->desc.version, p->path, p->desc.summary ? p->desc.summary : "");
        else
            printf("  %-8s %s\n           %s\n", plugin_state_str(p->state), p->path, p->reason ? p->reason : "");
    }
    cli_blas_hint();
    printf("\nstages (%zu):\n", reg->n_stages);
    for (size_t i = 0; i < reg->n_stages; i++)
        printf("  %-24s %s  [%s]\n", reg->stages[i]->desc.name, reg->stages[i]->desc.summary,
               reg->stages[i]->plugin->desc.id);
    printf("\nkernels (%zu):\n", reg->n_kernels);
    for (size_t i = 0; i < reg->n_kernels; i++) {
        const llmopt_kernel_desc *k = &reg->kernels[i]->desc;
        const llmopt_dtype_traits *t = rt_dtype_traits(k->dtype);
        printf("  %-16s %-5s %-5s %s  [%s]\n", k->op, rt_device_name(k->device), t ? t->name : "any",
               k->summary ? k->summary : "", reg->kernels[i]->plugin->desc.id);
    }
    if (reg->n_devices) {
        printf("\ndevices (%zu):\n", reg->n_devices);
        for (size_t i = 0; i < reg->n_devices; i++)
            printf("  %-16s %s  [%s]\n", rt_device_name(reg->devices[i]->ops.device), reg->devices[i]->ops.name,
                   reg->devices[i]->plugin->desc.id);
    }
    if (reg->n_stages) printf("\n'llmopt-host describe STAGE' shows a stage's parameters.\n");
    registry_free(reg);
    return rc;
}

/* A list parameter's default ("a|b|c" in the descriptor) as the YAML flow list a config would
 * hold: ["a", "b", "c"] (quoted: a glob starting with '*' is a YAML alias otherwise). */
static void list_yaml(const char *v, char *out, size_t n) {
    size_t k = 0;
    out[k++] = '[';
    for (const char *p = v; p && *p && k + 8 < n;) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        k += (size_t)snprintf(out + k, n - k, "%s\"%.*s\"", k > 1 ? ", " : "", (int)len, p);
        if (k >= n) k = n - 2;
        p = e ? e + 1 : NULL;
    }
    snprintf(out + k, n - k, "]");
}

static void describe_param(const llmopt_param_desc *d) {
    char range[160] = "";
    if (d->type == LLMOPT_PARAM_INT && d->min < d->max)
        snprintf(range, sizeof range, " in [%.0f, %.0f]", d->min, d->max);
    else if (d->type == LLMOPT_PARAM_FLOAT && d->min < d->max)
        snprintf(range, sizeof range, " in [%g, %g]", d->min, d->max);
    else if (d->type == LLMOPT_PARAM_ENUM && d->choices)
        snprintf(range, sizeof range, " one of %s", d->choices);
    char list[512];
    const char *def = d->default_value && *d->default_value ? d->default_value : "(empty)";
    if (d->type == LLMOPT_PARAM_LIST && d->default_value && *d->default_value) {
        list_yaml(d->default_value, list, sizeof list);
        def = list;
    }
    printf("  %-18s %s%s, %s%s\n", d->name, param_type_str(d->type), range, d->required ? "required" : "default ",
           d->required ? "" : def);
    if (d->doc) printf("  %-18s %s\n", "", d->doc);
}

int cmd_describe(const cli_opts *o) {
    registry *reg = NULL;
    int rc = cli_load_plugins(o, &reg);
    const char *name = o->args[0];
    const stage_rec *s = registry_find_stage(reg, name);
    if (!s) {
        const char **names = calloc(reg->n_stages + 1, sizeof *names);
        for (size_t i = 0; names && i < reg->n_stages; i++) names[i] = reg->stages[i]->desc.name;
        const char *hint = names ? str_suggest(name, names, reg->n_stages) : NULL;
        fprintf(stderr, "llmopt-host: unknown stage '%s'%s%s%s; 'llmopt-host plugins' lists the %zu stages loaded\n",
                name, hint ? " (did you mean '" : "", hint ? hint : "", hint ? "'?)" : "", reg->n_stages);
        free(names);
        registry_free(reg);
        return rc ? rc : EXIT_USAGE;
    }
    const llmopt_stage_desc *d = &s->desc;
    printf("%s: %s\n", d->name, d->summary);
    printf("plugin: %s %s (%s)\n", s->plugin->desc.id, s->plugin->desc.version, s->plugin->path);
    if (d->doc) printf("\n%s\n", d->doc);
    printf("\ninputs:\n");
    for (size_t i = 0; i < d->n_inputs; i++)
        printf("  %-18s %s%s%s\n", s->inputs[i].name, s->inputs[i].required ? "required" : "optional",
               s->inputs[i].doc ? ": " : "", s->inputs[i].doc ? s->inputs[i].doc : "");
    printf("output: %s\n", (d->flags & LLMOPT_STAGE_OUTPUTS_MODEL) ? "a model (name the stage in 'outputs:' to save it)"
                                                                 : "metrics only");
    printf("\nparameters (under 'with:'):\n");
    if (d->n_params == 0) printf("  (none)\n");
    for (size_t i = 0; i < d->n_params; i++) describe_param(&s->params[i]);
    printf("\nexample:\n  - id: my_step\n    uses: %s\n", d->name);
    if (d->n_params) printf("    with:\n");
    for (size_t i = 0; i < d->n_params; i++) {
        const llmopt_param_desc *p = &s->params[i];
        const char *v = p->default_value && *p->default_value ? p->default_value : "";
        char list[512];
        if (p->type == LLMOPT_PARAM_LIST) {
            list_yaml(v, list, sizeof list);
            printf("      %s: %s\n", p->name, list);
        }
        else printf("      %s: %s%s\n", p->name, p->required ? "<required>" : v, "");
    }
    registry_free(reg);
    return rc;
}

static const char *const starter_head =
"# llmopt pipeline. Check it with `llmopt-host validate FILE`, run it with `llmopt-host run FILE`.\n"
"# Every key is documented in the README's configuration reference.\n"
"name: my-pipeline            # names the run directory: runs/<name>-<timestamp>/\n"
"# model: models/my-model     # a Hugging Face directory (config.json, *.safetensors, tokenizer.json)\n"
"device: auto                 # auto | cpu | cuda\n"
"# matmul_precision: medium   # highest (default) | medium: bf16 products, ~2x faster prompts on AVX-512 BF16\n"
"seed: 0                      # every stage gets a seed derived from this and its id\n"
"# data:                      # named datasets stages can read\n"
"#   train: {path: data/train.txt, split: \"0:90%\"}\n"
"#   eval:  {path: data/train.txt, split: \"90%:100%\"}\n"
"stages:                      # run in dependency order, independent ones in parallel\n";

int cmd_init(const cli_opts *o) {
    const char *path = o->n_args ? o->args[0] : "pipeline.yaml";
    registry *reg = NULL;
    cli_load_plugins(o, &reg); /* a missing plugin dir only makes the template generic */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        registry_free(reg);
        return EXIT_IO;
    }
    fputs(starter_head, f);
    const stage_rec *s = reg->n_stages ? reg->stages[0] : NULL;
    if (s) {
        fprintf(f, "  - id: first                # unique id; other stages name it in 'inputs:'\n");
        fprintf(f, "    uses: %s   # %s ('llmopt-host describe %s')\n", s->desc.name, s->desc.summary,
                s->desc.name);
        if (s->desc.n_params) fprintf(f, "    with:\n");
        for (size_t i = 0; i < s->desc.n_params; i++) {
            const llmopt_param_desc *p = &s->params[i];
            fprintf(f, "      %s: %s%s%s   # %s\n", p->name, p->type == LLMOPT_PARAM_LIST ? "[" : "",
                    p->default_value ? p->default_value : "", p->type == LLMOPT_PARAM_LIST ? "]" : "",
                    p->doc ? p->doc : param_type_str(p->type));
        }
        fprintf(f, "  # - id: second\n  #   uses: %s\n  #   inputs: {model: first}   # runs after 'first', on its output\n",
                s->desc.name);
    } else {
        fprintf(f, "  - id: first\n    uses: family.method       # see `llmopt-host plugins` for the stages loaded\n"
                   "    with: {}\n");
    }
    fprintf(f, "# outputs: [first]           # stages whose output models are saved in the run directory\n");
    fclose(f);
    registry_free(reg);
    int rc = 0;
    if (strcmp(path, "-") == 0) {
        fwrite(buf, 1, len, stdout);
    } else if (fs_exists(path)) {
        fprintf(stderr, "llmopt-host: %s already exists; not overwriting it\n", path);
        rc = EXIT_IO;
    } else {
        llmopt_error err = {0};
        if (fs_write_atomic(path, buf, len, &err) != 0) {
            fprintf(stderr, "llmopt-host: %s\n", err.msg);
            rc = EXIT_IO;
        } else {
            printf("wrote %s; next: llmopt-host validate %s\n", path, path);
        }
    }
    free(buf);
    return rc;
}
