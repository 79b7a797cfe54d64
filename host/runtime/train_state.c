/* What leaves the training engine: exported models (trained tensors replaced, LoRA merged as
 * W + (alpha/r) B A), PEFT-named adapters, and checkpoints to resume from. A checkpoint is a
 * directory with train_state.safetensors (the f32 weights of every trainable tensor and their
 * AdamW moments: "param/<name>", "adam_m/<name>", "adam_v/<name>", and "state.step") and
 * train_state.json (step, dropout stream position, seed, the options and a fingerprint of the
 * model). Each file is written to a temporary name and renamed; the step is in both, so a pair
 * from two different saves is refused. */
#include "train_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quant.h"
#include "runtime.h"
#include "../util/fs.h"

#define F32 LLMOPT_DTYPE_F32

/* ---- export ---- */

static int set_new(llmopt_model *nm, const char *name, const llmopt_tensor *like, const float *w, llmopt_error *err) {
    llmopt_tensor *nt = rt_tensor_new(like->dtype, like->ndim, like->shape);
    if (!nt) return error_set(err, LLMOPT_ENOMEM, "out of memory for '%s'", name);
    tr_from_f32(nt, w, rt_tensor_numel(nt));
    int rc = rt_model_set(nm, name, nt);
    rt_tensor_unref(nt);
    return rc ? error_set(err, rc, "cannot set '%s' in the exported model", name) : 0;
}

/* W + s B A in W's layout and dtype. A block-quantized W (QLoRA's frozen base) is dequantized
 * and the sum is f32 in the layout a float checkpoint of the family has (a GPT-2 Conv1D weight
 * back to [in, out]), so the merged model is a plain HF checkpoint there. */
static int merge_one(const tr_trainer *t, const tr_linear *L, llmopt_model *nm, llmopt_error *err) {
    const llmopt_tensor *W = L->w.t;
    const llmopt_dtype_traits *tr = rt_dtype_traits(W->dtype);
    int quantized = tr && tr->is_quantized;
    if (W->dtype != F32 && W->dtype != LLMOPT_DTYPE_F16 && W->dtype != LLMOPT_DTYPE_BF16 && !quantized)
        return error_set(err, LLMOPT_EUNSUPPORTED, "cannot merge LoRA into '%s' of dtype %s: export the adapters instead",
                         L->w.name, tr ? tr->name : "?");
    int64_t in = L->in, out = L->out, r = t->o.lora_rank;
    float *w = malloc((size_t)(in * out) * sizeof(float));
    if (!w) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    int out_in = L->layout == LLMOPT_W_OUT_IN, rc = 0;
    llmopt_tensor *like = NULL;
    if (quantized) {
        llmopt_tensor *f = NULL;
        if ((rc = q_dequantize_tensor(W, &f, err)) != 0) {
            free(w);
            return rc;
        }
        memcpy(w, f->data, (size_t)(in * out) * sizeof(float));
        rt_tensor_unref(f);
        /* the float layout of this weight: [in, out] for GPT-2's Conv1D blocks */
        int float_in_out = t->c.family == ARCH_GPT2;
        like = rt_tensor_new(F32, 2, float_in_out ? (int64_t[]){in, out} : (int64_t[]){out, in});
        if (!like) {
            free(w);
            return error_set(err, LLMOPT_ENOMEM, "out of memory");
        }
        if (float_in_out) { /* dequantized [out, in] -> [in, out] */
            float *tw = like->data;
            for (int64_t o = 0; o < out; o++)
                for (int64_t i = 0; i < in; i++) tw[i * out + o] = w[o * in + i];
            memcpy(w, tw, (size_t)(in * out) * sizeof(float));
            out_in = 0;
        }
    } else {
        rt_tensor_read_f32(W, w);
    }
    const float *A = L->lora->A->w->data, *B = L->lora->B->w->data;
    float s = t->o.lora_alpha / (float)r;
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            float d = 0.0f;
            for (int64_t k = 0; k < r; k++) d += B[o * r + k] * A[k * in + i];
            w[out_in ? o * in + i : i * out + o] += s * d;
        }
    rc = set_new(nm, L->w.name, like ? like : W, w, err);
    rt_tensor_unref(like);
    free(w);
    return rc;
}

int tr_export(tr_trainer *t, int merge_lora, llmopt_model **out, llmopt_error *err) {
    *out = NULL;
    tr_free_buffers(t); /* a GPT-2 124M batch of 4 x 128 holds ~0.5 GB, as much as its copy */
    llmopt_model *nm = rt_model_clone(t->m);
    if (!nm) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    int rc = 0;
    if (t->o.lora_rank == 0) {
        for (size_t i = 0; !rc && i < t->n_params; i++) {
            const tr_param *p = t->params[i];
            /* finished, nothing writes the master again: an f32 one is the exported tensor */
            if (t->finished && p->src->dtype == F32) {
                if ((rc = rt_model_set(nm, p->name, p->w)) != 0)
                    rc = error_set(err, rc, "cannot set '%s' in the exported model", p->name);
            } else {
                rc = set_new(nm, p->name, p->src, p->w->data, err);
            }
        }
    } else if (merge_lora) {
        for (size_t i = 0; !rc && i < t->n_linears; i++)
            if (t->linears[i]->lora) rc = merge_one(t, t->linears[i], nm, err);
    }
    if (rc) {
        rt_model_unref(nm);
        return rc;
    }
    *out = nm;
    return 0;
}

int tr_lora_export(tr_trainer *t, llmopt_model **out, llmopt_error *err) {
    *out = NULL;
    if (t->o.lora_rank == 0) return error_set(err, LLMOPT_EINVAL, "this trainer has no LoRA adapters");
    llmopt_model *nm = rt_model_new("peft-lora");
    if (!nm) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    for (size_t i = 0; i < t->n_params; i++) {
        int rc = set_new(nm, t->params[i]->name, t->params[i]->w, t->params[i]->w->data, err);
        if (rc) {
            rt_model_unref(nm);
            return rc;
        }
    }
    *out = nm;
    return 0;
}

/* ---- the model's fingerprint ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* FNV-1a over every tensor's name, dtype and shape and a sample of its bytes (all of a small
 * tensor, else 64 windows of 64 bytes spread over it): cheap on a large model, yet two random
 * initialisations of one config differ. */
static uint64_t model_fingerprint(const llmopt_model *m) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < rt_model_n_tensors(m); i++) {
        const char *name = rt_model_tensor_name(m, i);
        const llmopt_tensor *t = rt_model_get(m, name);
        h = fnv(h, name, strlen(name) + 1);
        h = fnv(h, &t->dtype, sizeof t->dtype);
        h = fnv(h, t->shape, sizeof t->shape);
        if (t->nbytes <= 4096) {
            h = fnv(h, t->data, t->nbytes);
            continue;
        }
        for (size_t w = 0; w < 64; w++) h = fnv(h, (const char *)t->data + (t->nbytes - 64) / 63 * w, 64);
    }
    return h;
}

/* ---- checkpoints ---- */

static json_t *str_list(const char *const *s, size_t n) {
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_string(s[i]));
    return a;
}

static const char *optimizer_name(const tr_trainer *t) { return t->o.optimizer_bits == 8 ? "adamw_8bit" : "adamw"; }

static json_t *state_json(const tr_trainer *t) {
    const arch_config *c = &t->c;
    char fp[32], seed[32];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)model_fingerprint(t->m));
    snprintf(seed, sizeof seed, "%016llx", (unsigned long long)t->o.seed);
    json_t *params = json_array();
    for (size_t i = 0; i < t->n_params; i++) json_array_append_new(params, json_string(t->params[i]->name));
    json_t *js = json_pack("{s:s, s:i, s:i, s:I, s:{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s}, "
                     "s:{s:o, s:i, s:f, s:f, s:o, s:f, s:f, s:f, s:f, s:s}, s:o}",
                     "format", "llmopt-train-state", "version", 1, "step", t->step, "micro_batches", (json_int_t)t->micro,
                     "model", "model_type", c->family == ARCH_GPT2 ? "gpt2" : "llama", "n_layer", c->n_layer, "n_embd",
                     c->n_embd, "n_head", c->n_head, "n_kv_head", c->n_kv_head, "n_ff", c->n_ff, "vocab", c->vocab,
                     "n_ctx", c->n_ctx, "fingerprint", fp,
                     "options", "trainable", str_list(t->o.trainable, t->o.n_trainable), "lora_rank", t->o.lora_rank,
                     "lora_alpha", (double)t->o.lora_alpha, "lora_dropout", (double)t->o.lora_dropout, "lora_targets",
                     str_list(t->o.lora_targets, t->o.n_lora_targets), "beta1", (double)t->o.beta1, "beta2",
                     (double)t->o.beta2, "eps", (double)t->o.eps, "weight_decay", (double)t->o.weight_decay, "seed", seed,
                     "params", params);
    /* only 8-bit trainers write it: checkpoints from before the option read as f32 moments */
    if (js && t->o.optimizer_bits == 8)
        json_object_set_new(json_object_get(js, "options"), "optimizer", json_string(optimizer_name(t)));
    return js;
}

static int wrap_into(llmopt_model *sm, const char *prefix, const char *name, const llmopt_tensor *src, llmopt_error *err) {
    char full[400];
    snprintf(full, sizeof full, "%s/%s", prefix, name);
    llmopt_tensor *w = rt_tensor_wrap(src->dtype, src->ndim, src->shape, src->data, src->nbytes, NULL, NULL);
    if (!w) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    int rc = rt_model_set(sm, full, w);
    rt_tensor_unref(w);
    return rc ? error_set(err, rc, "cannot add '%s' to the checkpoint", full) : 0;
}

int tr_save_state(const tr_trainer *t, const char *dir, llmopt_error *err) {
    if (t->finished) return tr_refuse_finished("save_state", err);
    json_t *js = state_json(t);
    char *text = js ? json_dumps(js, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(js);
    llmopt_model *sm = rt_model_new("llmopt-train-state");
    int64_t step = t->step;
    llmopt_tensor *ts = rt_tensor_wrap(LLMOPT_DTYPE_I64, 1, (int64_t[]){1}, &step, sizeof step, NULL, NULL);
    int rc = !text || !sm || !ts ? error_set(err, LLMOPT_ENOMEM, "out of memory") : 0;
    if (!rc) rc = rt_model_config_load(sm, text, strlen(text), err);
    if (!rc && rt_model_set(sm, "state.step", ts)) rc = error_set(err, LLMOPT_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < t->n_params; i++) {
        const tr_param *p = t->params[i];
        if ((rc = wrap_into(sm, "param", p->name, p->w, err)) || (rc = wrap_into(sm, "adam_m", p->name, p->m, err)))
            break;
        if ((rc = wrap_into(sm, "adam_v", p->name, p->v, err))) break;
        if (p->m_absmax && ((rc = wrap_into(sm, "adam_m_absmax", p->name, p->m_absmax, err)) ||
                            (rc = wrap_into(sm, "adam_v_absmax", p->name, p->v_absmax, err))))
            break;
    }
    /* rt_model_save writes model.safetensors and config.json (each via a temporary name) into a
     * private directory; they are renamed into place as the checkpoint's two files */
    char tmp[4096], a[4200], b[4200];
    if (strlen(dir) > 3900) rc = rc ? rc : error_set(err, LLMOPT_EINVAL, "%.64s...: path too long", dir);
    snprintf(tmp, sizeof tmp, "%s/.tmp-train-state-%ld", dir, (long)getpid());
    if (!rc) rc = fs_mkdirs(dir, err);
    if (!rc) rc = rt_model_save(sm, tmp, err);
    if (!rc) {
        snprintf(a, sizeof a, "%s/model.safetensors", tmp), snprintf(b, sizeof b, "%s/train_state.safetensors", dir);
        if (rename(a, b) != 0) rc = error_set(err, LLMOPT_EIO, "%s: cannot rename into place: %s", b, strerror(errno));
    }
    if (!rc) {
        snprintf(a, sizeof a, "%s/config.json", tmp), snprintf(b, sizeof b, "%s/train_state.json", dir);
        if (rename(a, b) != 0) rc = error_set(err, LLMOPT_EIO, "%s: cannot rename into place: %s", b, strerror(errno));
    }
    fs_rmtree(tmp);
    rt_tensor_unref(ts);
    rt_model_unref(sm);
    free(text);
    return rc;
}

/* The first difference between the checkpoint's model/options and this trainer's, or 0. */
static int compare(const tr_trainer *t, json_t *got, const char *dir, llmopt_error *err) {
    json_t *want = state_json(t);
    if (!want) return error_set(err, LLMOPT_ENOMEM, "out of memory");
    int rc = 0;
    const char *sections[] = {"model", "options"};
    for (int s = 0; s < 2 && !rc; s++) {
        json_t *w = json_object_get(want, sections[s]), *g = json_object_get(got, sections[s]);
        const char *key;
        json_t *wv;
        json_object_foreach(w, key, wv) {
            json_t *gv = json_object_get(g, key);
            /* floats went through text: compare as f32, as the trainer holds them */
            int same = json_is_real(wv) && json_is_number(gv)
                           ? (float)json_number_value(wv) == (float)json_number_value(gv)
                           : json_equal(wv, gv);
            if (same) continue;
            char *ws = json_dumps(wv, JSON_ENCODE_ANY | JSON_COMPACT), *gs = gv ? json_dumps(gv, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
            if (strcmp(key, "fingerprint") == 0)
                rc = error_set(err, LLMOPT_EINVAL, "%s is a checkpoint of another model: same architecture, different "
                               "weights (fingerprint %s, this model %s)", dir, gs ? gs : "none", ws ? ws : "?");
            else
                rc = error_set(err, LLMOPT_EINVAL, "%s was saved with %s %s = %s; this trainer has %s", dir,
                               sections[s], key, gs ? gs : "(missing)", ws ? ws : "?");
            free(ws), free(gs);
            break;
        }
    }
    if (!rc && !json_equal(json_object_get(want, "params"), json_object_get(got, "params")))
        rc = error_set(err, LLMOPT_EINVAL, "%s holds other trainable tensors than this trainer", dir);
    json_decref(want);
    return rc;
}

static const rt_safetensors_entry *entry(const rt_safetensors_entry *es, size_t n, const char *prefix, const char *name) {
    size_t pl = strlen(prefix);
    for (size_t i = 0; i < n; i++)
        if (strncmp(es[i].name, prefix, pl) == 0 && es[i].name[pl] == '/' && strcmp(es[i].name + pl + 1, name) == 0)
            return &es[i];
    return NULL;
}

int tr_load_state(tr_trainer *t, const char *dir, llmopt_error *err) {
    if (t->finished) return tr_refuse_finished("load_state", err);
    char path[4096], spath[4096];
    snprintf(path, sizeof path, "%s/train_state.json", dir);
    snprintf(spath, sizeof spath, "%s/train_state.safetensors", dir);
    char *text = NULL, *buf = NULL;
    size_t len = 0, blen = 0;
    int rc = fs_read_all(path, &text, &len, err);
    if (rc) return rc;
    json_error_t jerr;
    json_t *js = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!js || strcmp(json_string_value(json_object_get(js, "format")) ? json_string_value(json_object_get(js, "format")) : "",
                      "llmopt-train-state") != 0) {
        json_decref(js);
        return error_set(err, LLMOPT_EFORMAT, "%s: not an llmopt training state%s%s", path, js ? "" : ": ", js ? "" : jerr.text);
    }
    /* the optimizer first: its moments' form decides which tensors the checkpoint holds */
    const char *saved_opt = json_string_value(json_object_get(json_object_get(js, "options"), "optimizer"));
    if (strcmp(saved_opt ? saved_opt : "adamw", optimizer_name(t)) != 0) {
        rc = error_set(err, LLMOPT_EINVAL, "%s was saved with optimizer %s; this trainer uses %s (the moments are "
                       "kept in another form: resume with the same optimizer)", dir, saved_opt ? saved_opt : "adamw",
                       optimizer_name(t));
        json_decref(js);
        return rc;
    }
    if ((rc = compare(t, js, dir, err))) {
        json_decref(js);
        return rc;
    }
    json_int_t step = json_integer_value(json_object_get(js, "step"));
    json_int_t micro = json_integer_value(json_object_get(js, "micro_batches"));
    json_decref(js);
    rt_safetensors_entry *es = NULL;
    size_t n = 0;
    if ((rc = fs_read_all(spath, &buf, &blen, err)) ||
        (rc = rt_safetensors_parse_header(spath, (const uint8_t *)buf, blen, &es, &n, err))) {
        free(buf);
        return rc;
    }
    /* check everything before writing anything, so a refused checkpoint leaves the trainer as it was */
    const rt_safetensors_entry *se = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(es[i].name, "state.step") == 0) se = &es[i];
    int64_t fstep = -1;
    if (se && se->dtype == LLMOPT_DTYPE_I64 && se->nbytes == 8) memcpy(&fstep, buf + se->offset, 8);
    if (fstep != step)
        rc = error_set(err, LLMOPT_EFORMAT, "%s: step %lld, but train_state.json says %lld (files of two different saves?)",
                       spath, (long long)fstep, (long long)step);
    const char *prefixes[] = {"param", "adam_m", "adam_v", "adam_m_absmax", "adam_v_absmax"};
    for (size_t i = 0; !rc && i < t->n_params; i++) {
        tr_param *p = t->params[i];
        llmopt_tensor *dst[5] = {p->w, p->m, p->v, p->m_absmax, p->v_absmax};
        for (int k = 0; !rc && k < (p->m_absmax ? 5 : 3); k++) {
            const rt_safetensors_entry *e = entry(es, n, prefixes[k], p->name);
            if (!e || e->dtype != dst[k]->dtype || e->nbytes != dst[k]->nbytes)
                rc = error_set(err, LLMOPT_EFORMAT, "%s: '%s/%s' is missing or not %s of the trainer's shape", spath,
                               prefixes[k], p->name, rt_dtype_traits(dst[k]->dtype)->name);
        }
    }
    for (size_t i = 0; !rc && i < t->n_params; i++) {
        tr_param *p = t->params[i];
        llmopt_tensor *dst[5] = {p->w, p->m, p->v, p->m_absmax, p->v_absmax};
        for (int k = 0; k < (p->m_absmax ? 5 : 3); k++) {
            const rt_safetensors_entry *e = entry(es, n, prefixes[k], p->name);
            memcpy(dst[k]->data, buf + e->offset, e->nbytes);
        }
        memset(p->g->data, 0, p->g->nbytes);
    }
    if (!rc) {
        t->step = (int)step;
        t->micro = (uint64_t)micro;
        t->acc_targets = 0;
    }
    rt_safetensors_free(es, n);
    free(buf);
    return rc;
}
