/* Models: an architecture config (jansson object, config.json order kept), named tensor
 * references in checkpoint order with an open-addressing name index, and provenance. Clones
 * share tensors (copy on write at the tensor level) and deep-copy the JSON. Only the refcount
 * is atomic: a model is changed by the one stage that owns it; shared inputs are read-only. */
#include "runtime.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* A file that travels with the model unchanged (tokenizer.json, generation_config.json, ...),
 * shared by clones, with a cache for its parsed form (the tokenizer). */
typedef struct rt_blob {
    atomic_long refs;
    char *data;
    size_t len;
    pthread_mutex_t mu;          /* guards parsed */
    void *parsed;
    void (*free_parsed)(void *);
} rt_blob;

typedef struct model_file {
    char *name;
    rt_blob *blob;
} model_file;

struct llmopt_model {
    atomic_long refs;
    model_file *files;   /* side files, saved verbatim beside the weights */
    size_t n_files;
    char *arch;
    json_t *config;      /* object */
    json_t *provenance;  /* array of {"stage": id, "uses": stage name} */
    size_t n, cap;       /* tensors, in insertion (checkpoint) order */
    char **names;
    const llmopt_tensor **tensors;
    size_t *slots;       /* name index: index+1 into names, 0 = empty; linear probing */
    size_t nslots;       /* power of two, at least 2*n */
    char *source;        /* the weights file it was loaded from; NULL when made in memory */
};

/* FNV-1a, 64-bit. */
static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The slot holding name, or the empty slot where it would go. */
static size_t find_slot(const llmopt_model *m, const char *name) {
    size_t mask = m->nslots - 1, i = (size_t)hash_name(name) & mask;
    while (m->slots[i] != 0 && strcmp(m->names[m->slots[i] - 1], name) != 0) i = (i + 1) & mask;
    return i;
}

static int index_rebuild(llmopt_model *m, size_t nslots) {
    size_t *slots = calloc(nslots, sizeof *slots);
    if (!slots) return LLMOPT_ENOMEM;
    free(m->slots);
    m->slots = slots;
    m->nslots = nslots;
    for (size_t k = 0; k < m->n; k++) m->slots[find_slot(m, m->names[k])] = k + 1;
    return 0;
}

static size_t index_lookup(const llmopt_model *m, const char *name) {  /* index+1, 0 = none */
    return name ? m->slots[find_slot(m, name)] : 0;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

llmopt_model *rt_model_new(const char *arch) {
    llmopt_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    atomic_init(&m->refs, 1);
    m->arch = dup_str(arch ? arch : "");
    m->config = json_object();
    m->provenance = json_array();
    m->nslots = 16;
    m->slots = calloc(m->nslots, sizeof *m->slots);
    if (!m->arch || !m->config || !m->provenance || !m->slots) {
        rt_model_unref(m);
        return NULL;
    }
    return m;
}

static void blob_unref(rt_blob *b) {
    if (!b || atomic_fetch_sub(&b->refs, 1) != 1) return;
    if (b->parsed && b->free_parsed) b->free_parsed(b->parsed);
    pthread_mutex_destroy(&b->mu);
    free(b->data);
    free(b);
}

static void free_files(llmopt_model *m) {
    for (size_t i = 0; i < m->n_files; i++) {
        free(m->files[i].name);
        blob_unref(m->files[i].blob);
    }
    free(m->files);
    m->files = NULL;
    m->n_files = 0;
}

static int copy_files(llmopt_model *m, const llmopt_model *src) {
    if (!src->n_files) return 0;
    m->files = calloc(src->n_files, sizeof *m->files);
    if (!m->files) return LLMOPT_ENOMEM;
    for (size_t i = 0; i < src->n_files; i++) {
        m->files[i].name = dup_str(src->files[i].name);
        if (!m->files[i].name) return LLMOPT_ENOMEM;
        m->files[i].blob = src->files[i].blob;
        atomic_fetch_add(&m->files[i].blob->refs, 1);
        m->n_files = i + 1;
    }
    return 0;
}

int rt_model_set_file(llmopt_model *m, const char *name, const void *data, size_t len) {
    rt_blob *b = calloc(1, sizeof *b);
    char *copy = malloc(len + 1);
    if (!b || !copy) {
        free(b);
        free(copy);
        return LLMOPT_ENOMEM;
    }
    memcpy(copy, data, len);
    copy[len] = '\0';
    atomic_init(&b->refs, 1);
    b->data = copy;
    b->len = len;
    pthread_mutex_init(&b->mu, NULL);
    for (size_t i = 0; i < m->n_files; i++) {
        if (strcmp(m->files[i].name, name) != 0) continue;
        blob_unref(m->files[i].blob);
        m->files[i].blob = b;
        return 0;
    }
    model_file *nf = realloc(m->files, (m->n_files + 1) * sizeof *nf);
    char *nm = dup_str(name);
    if (!nf || !nm) {
        if (nf) m->files = nf;
        free(nm);
        blob_unref(b);
        return LLMOPT_ENOMEM;
    }
    m->files = nf;
    m->files[m->n_files++] = (model_file){nm, b};
    return 0;
}

const char *rt_model_get_file(const llmopt_model *m, const char *name, size_t *len) {
    for (size_t i = 0; i < m->n_files; i++)
        if (strcmp(m->files[i].name, name) == 0) {
            if (len) *len = m->files[i].blob->len;
            return m->files[i].blob->data;
        }
    return NULL;
}

size_t rt_model_n_files(const llmopt_model *m) { return m->n_files; }
const char *rt_model_file_name(const llmopt_model *m, size_t i) { return i < m->n_files ? m->files[i].name : NULL; }

void *rt_model_file_parsed(const llmopt_model *m, const char *name, void *(*parse)(const char *data, size_t len, void *arg),
                           void (*free_parsed)(void *), void *arg) {
    for (size_t i = 0; i < m->n_files; i++) {
        if (strcmp(m->files[i].name, name) != 0) continue;
        rt_blob *b = m->files[i].blob;
        pthread_mutex_lock(&b->mu);
        if (!b->parsed && (b->parsed = parse(b->data, b->len, arg))) b->free_parsed = free_parsed;
        void *p = b->parsed;
        pthread_mutex_unlock(&b->mu);
        return p;
    }
    return NULL;
}

static void model_free(llmopt_model *m) {
    free_files(m);
    for (size_t i = 0; i < m->n; i++) {
        free(m->names[i]);
        rt_tensor_unref(m->tensors[i]);
    }
    free(m->names);
    free(m->tensors);
    free(m->slots);
    json_decref(m->config);
    json_decref(m->provenance);
    free(m->arch);
    free(m->source);
    free(m);
}

llmopt_model *rt_model_clone(const llmopt_model *src) {
    if (!src) return NULL;
    llmopt_model *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    atomic_init(&m->refs, 1);
    m->arch = dup_str(src->arch);
    m->config = json_deep_copy(src->config);
    m->provenance = json_deep_copy(src->provenance);
    m->cap = src->n;
    m->names = calloc(m->cap ? m->cap : 1, sizeof *m->names);
    m->tensors = calloc(m->cap ? m->cap : 1, sizeof *m->tensors);
    m->slots = malloc(src->nslots * sizeof *m->slots);
    if (!m->arch || !m->config || !m->provenance || !m->names || !m->tensors || !m->slots) {
        model_free(m);
        return NULL;
    }
    m->nslots = src->nslots;
    memcpy(m->slots, src->slots, src->nslots * sizeof *m->slots);
    if (copy_files(m, src) != 0) {
        model_free(m);
        return NULL;
    }
    for (size_t i = 0; i < src->n; i++) {
        m->names[i] = dup_str(src->names[i]);
        if (!m->names[i]) {
            model_free(m);
            return NULL;
        }
        m->tensors[i] = rt_tensor_ref(src->tensors[i]);
        m->n = i + 1;
    }
    return m;
}

llmopt_model *rt_model_ref(llmopt_model *m) {
    if (m) atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

void rt_model_unref(llmopt_model *m) {
    if (m && atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) model_free(m);
}

const char *rt_model_arch(const llmopt_model *m) { return m->arch; }

size_t rt_model_n_tensors(const llmopt_model *m) { return m->n; }

const char *rt_model_tensor_name(const llmopt_model *m, size_t i) {
    return i < m->n ? m->names[i] : NULL;
}

const llmopt_tensor *rt_model_get(const llmopt_model *m, const char *name) {
    size_t k = index_lookup(m, name);
    return k ? m->tensors[k - 1] : NULL;
}

int rt_model_set(llmopt_model *m, const char *name, const llmopt_tensor *t) {
    if (!m || !name || !*name || !t) return LLMOPT_EINVAL;
    size_t k = index_lookup(m, name);
    if (k) {
        const llmopt_tensor *old = m->tensors[k - 1];
        m->tensors[k - 1] = rt_tensor_ref(t);  /* ref before unref: t may be old */
        rt_tensor_unref(old);
        return 0;
    }
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        char **names = realloc(m->names, cap * sizeof *names);
        if (!names) return LLMOPT_ENOMEM;
        m->names = names;
        const llmopt_tensor **tensors = realloc(m->tensors, cap * sizeof *tensors);
        if (!tensors) return LLMOPT_ENOMEM;
        m->tensors = tensors;
        m->cap = cap;
    }
    if (2 * (m->n + 1) > m->nslots && index_rebuild(m, m->nslots * 2) != 0) return LLMOPT_ENOMEM;
    char *copy = dup_str(name);
    if (!copy) return LLMOPT_ENOMEM;
    m->names[m->n] = copy;
    m->tensors[m->n] = rt_tensor_ref(t);
    m->n++;
    m->slots[find_slot(m, copy)] = m->n;
    return 0;
}

int rt_model_remove(llmopt_model *m, const char *name) {
    size_t k = index_lookup(m, name);
    if (!k) return LLMOPT_ENOTFOUND;
    size_t i = k - 1;
    free(m->names[i]);
    rt_tensor_unref(m->tensors[i]);
    memmove(m->names + i, m->names + i + 1, (m->n - i - 1) * sizeof *m->names);
    memmove(m->tensors + i, m->tensors + i + 1, (m->n - i - 1) * sizeof *m->tensors);
    m->n--;
    /* Removal is rare (pruning whole layers): rebuild the index rather than keep tombstones.
     * Rebuilding in place at the same size cannot fail for lack of memory if we reuse it. */
    memset(m->slots, 0, m->nslots * sizeof *m->slots);
    for (size_t j = 0; j < m->n; j++) m->slots[find_slot(m, m->names[j])] = j + 1;
    return 0;
}

int rt_model_cfg_get_num(const llmopt_model *m, const char *key, double *out) {
    json_t *v = key ? json_object_get(m->config, key) : NULL;
    if (!json_is_number(v)) return LLMOPT_ENOTFOUND;
    if (out) *out = json_number_value(v);
    return 0;
}

const char *rt_model_cfg_get_str(const llmopt_model *m, const char *key) {
    return key ? json_string_value(json_object_get(m->config, key)) : NULL;
}

int rt_model_cfg_set_num(llmopt_model *m, const char *key, double v) {
    if (!key || v != v) return LLMOPT_EINVAL;  /* NaN has no JSON spelling */
    /* Whole numbers become JSON integers ("hidden_size": 768, not 768.0: Python readers pass
     * them to int-only APIs), unless the key already holds a real ("rope_theta": 10000.0). */
    json_t *old = json_object_get(m->config, key);
    int whole = v > -9007199254740992.0 && v < 9007199254740992.0 && (double)(json_int_t)v == v;
    json_t *j = whole && !json_is_real(old) ? json_integer((json_int_t)v) : json_real(v);
    if (!j) return LLMOPT_EINVAL;  /* json_real refuses infinities */
    return json_object_set_new(m->config, key, j) == 0 ? 0 : LLMOPT_ENOMEM;
}

int rt_model_cfg_set_str(llmopt_model *m, const char *key, const char *v) {
    if (!key || !v) return LLMOPT_EINVAL;
    json_t *j = json_string(v);
    if (!j) return LLMOPT_EINVAL;  /* not UTF-8 */
    return json_object_set_new(m->config, key, j) == 0 ? 0 : LLMOPT_ENOMEM;
}

int rt_model_cfg_set_json(llmopt_model *m, const char *key, const char *json) {
    if (!m || !key) return LLMOPT_EINVAL;
    if (!json) return json_object_del(m->config, key) == 0 ? 0 : LLMOPT_ENOTFOUND;
    json_t *v = json_loads(json, JSON_DECODE_ANY, NULL);
    if (!v) return LLMOPT_EINVAL;
    return json_object_set_new(m->config, key, v) == 0 ? 0 : LLMOPT_ENOMEM;
}

char *rt_model_cfg_get_json(const llmopt_model *m, const char *key) {
    json_t *v = m && key ? json_object_get(m->config, key) : NULL;
    return v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER) : NULL;
}

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)*(const llmopt_tensor *const *)a;
    uintptr_t y = (uintptr_t)*(const llmopt_tensor *const *)b;
    return x < y ? -1 : x > y;
}

size_t rt_model_nbytes(const llmopt_model *m) {
    /* Tied weights (lm_head = wte) appear under two names but cost their bytes once. */
    if (m->n == 0) return 0;
    const llmopt_tensor **sorted = malloc(m->n * sizeof *sorted);
    size_t total = 0;
    if (!sorted) {  /* no memory for the dedup: an upper bound is better than nothing */
        for (size_t i = 0; i < m->n; i++) total += m->tensors[i]->nbytes;
        return total;
    }
    memcpy(sorted, m->tensors, m->n * sizeof *sorted);
    qsort(sorted, m->n, sizeof *sorted, cmp_ptr);
    for (size_t i = 0; i < m->n; i++)
        if (i == 0 || sorted[i] != sorted[i - 1]) total += sorted[i]->nbytes;
    free(sorted);
    return total;
}

int rt_model_add_provenance(llmopt_model *m, const char *stage_id, const char *uses) {
    if (!stage_id || !uses) return LLMOPT_EINVAL;
    json_t *e = json_pack("{s:s, s:s}", "stage", stage_id, "uses", uses);
    if (!e) return LLMOPT_EINVAL;
    return json_array_append_new(m->provenance, e) == 0 ? 0 : LLMOPT_ENOMEM;
}

size_t rt_model_n_provenance(const llmopt_model *m) { return json_array_size(m->provenance); }

const char *rt_model_provenance_stage(const llmopt_model *m, size_t i) {
    return json_string_value(json_object_get(json_array_get(m->provenance, i), "stage"));
}

const char *rt_model_provenance_uses(const llmopt_model *m, size_t i) {
    return json_string_value(json_object_get(json_array_get(m->provenance, i), "uses"));
}

struct json_t *rt_model_config_json(const llmopt_model *m) { return m->config; }

char *rt_model_config_dump(const llmopt_model *m) {
    json_t *out = json_copy(m->config);  /* shallow: we only add keys to the copy */
    if (!out) return NULL;
    if (!json_object_get(out, "model_type") && m->arch[0])
        json_object_set_new(out, "model_type", json_string(m->arch));
    json_object_set(out, "llmopt_provenance", m->provenance);
    char *text = json_dumps(out, JSON_INDENT(2));  /* insertion order, as config.json had it */
    json_decref(out);
    return text;
}

int rt_model_config_load(llmopt_model *m, const char *text, size_t len, llmopt_error *err) {
    json_error_t je;
    json_t *cfg = json_loadb(text, len, 0, &je);
    if (!cfg) return error_set(err, LLMOPT_EFORMAT, "config: line %d: %s", je.line, je.text);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return error_set(err, LLMOPT_EFORMAT, "config: expected a JSON object");
    }
    json_t *prov = json_object_get(cfg, "llmopt_provenance");
    if (prov) {
        if (!json_is_array(prov)) {
            json_decref(cfg);
            return error_set(err, LLMOPT_EFORMAT, "config: llmopt_provenance is not a list");
        }
        json_decref(m->provenance);
        m->provenance = json_incref(prov);
        json_object_del(cfg, "llmopt_provenance");
    }
    json_decref(m->config);
    m->config = cfg;
    return 0;
}

int rt_model_set_source(llmopt_model *m, const char *path) {
    char *p = path ? dup_str(path) : NULL;
    if (path && !p) return LLMOPT_ENOMEM;
    free(m->source);
    m->source = p;
    return 0;
}

const char *rt_model_source(const llmopt_model *m) { return m->source; }
