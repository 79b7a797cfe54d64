/* The ONNX graph builder (ox.h): protobuf-c messages in an arena, packed to a file at the end. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx.pb-c.h"
#include "ox.h"

/* a growable array of pointers */
typedef struct ox_vec {
    void **v;
    size_t n, cap;
} ox_vec;

struct ox_graph {
    ox_vec mem;                        /* every allocation, freed together */
    ox_vec nodes, inits, inputs, outputs;
    Onnx__NodeProto *last;             /* the node ox_attr_* add to */
    size_t counter;                    /* for unique output names */
    const char *name;
    const char *domain; /* a non-default operator domain some node uses */
    int failed;
};

static int vec_push(ox_vec *v, void *p) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 64;
        void **nv = realloc(v->v, cap * sizeof *nv);
        if (!nv) return -1;
        v->v = nv, v->cap = cap;
    }
    v->v[v->n++] = p;
    return 0;
}

static void *alloc(ox_graph *g, size_t n) {
    if (g->failed) return NULL;
    void *p = calloc(1, n ? n : 1);
    if (!p || vec_push(&g->mem, p)) {
        free(p);
        g->failed = 1;
        return NULL;
    }
    return p;
}

void *ox_alloc(ox_graph *g, size_t n) { return alloc(g, n); }

static char *str(ox_graph *g, const char *s) {
    size_t n = strlen(s) + 1;
    char *p = alloc(g, n);
    if (p) memcpy(p, s, n);
    return p;
}

ox_graph *ox_graph_new(const char *name) {
    ox_graph *g = calloc(1, sizeof *g);
    if (g) g->name = str(g, name);
    return g;
}

void ox_graph_free(ox_graph *g) {
    if (!g) return;
    for (size_t i = 0; i < g->mem.n; i++) free(g->mem.v[i]);
    free(g->mem.v), free(g->nodes.v), free(g->inits.v), free(g->inputs.v), free(g->outputs.v);
    free(g);
}

int ox_failed(const ox_graph *g) { return g->failed; }

static void push(ox_graph *g, ox_vec *v, void *p) {
    if (!p || g->failed) return;
    if (vec_push(v, p)) g->failed = 1;
}

const char *ox_op(ox_graph *g, const char *op, const char *hint, ...) {
    const char *in[16];
    size_t n = 0;
    va_list ap;
    va_start(ap, hint);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL && n < 16;) in[n++] = s;
    va_end(ap);
    char name[256];
    snprintf(name, sizeof name, "%s_%zu", hint, g->counter++);
    Onnx__NodeProto *node = alloc(g, sizeof *node);
    char **ins = alloc(g, n * sizeof *ins), **outs = alloc(g, sizeof *outs);
    char *out = str(g, name), *nname = str(g, name), *opname = str(g, op);
    if (!node || !ins || !outs || !out || !nname || !opname) return "";
    onnx__node_proto__init(node);
    for (size_t i = 0; i < n; i++)
        if (!(ins[i] = str(g, in[i]))) return "";
    outs[0] = out;
    node->n_input = n, node->input = ins;
    node->n_output = 1, node->output = outs;
    node->name = nname, node->op_type = opname;
    push(g, &g->nodes, node);
    g->last = node;
    return out;
}

void ox_name_last(ox_graph *g, const char *name) {
    char *s = str(g, name);
    if (g->last && s) g->last->output[0] = s;
}

void ox_domain_last(ox_graph *g, const char *domain) {
    char *d = str(g, domain);
    if (!g->last || !d) return;
    g->last->domain = d;
    g->domain = d;
}

const char *ox_last_output(const ox_graph *g) { return g->last ? g->last->output[0] : ""; }

static Onnx__AttributeProto *attr(ox_graph *g, const char *name, Onnx__AttributeProto__AttributeType type) {
    Onnx__NodeProto *node = g->last;
    Onnx__AttributeProto *a = alloc(g, sizeof *a);
    Onnx__AttributeProto **list = alloc(g, (node ? node->n_attribute + 1 : 1) * sizeof *list);
    if (!node || !a || !list) return NULL;
    onnx__attribute_proto__init(a);
    a->name = str(g, name);
    a->has_type = 1, a->type = type;
    if (node->n_attribute) memcpy(list, node->attribute, node->n_attribute * sizeof *list);
    list[node->n_attribute] = a;
    node->attribute = list, node->n_attribute++;
    return a;
}

void ox_attr_int(ox_graph *g, const char *name, int64_t v) {
    Onnx__AttributeProto *a = attr(g, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (a) a->has_i = 1, a->i = v;
}

void ox_attr_float(ox_graph *g, const char *name, float v) {
    Onnx__AttributeProto *a = attr(g, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    if (a) a->has_f = 1, a->f = v;
}

void ox_attr_ints(ox_graph *g, const char *name, const int64_t *v, size_t n) {
    Onnx__AttributeProto *a = attr(g, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    int64_t *c = alloc(g, n * sizeof *c);
    if (!a || !c) return;
    memcpy(c, v, n * sizeof *c);
    a->n_ints = n, a->ints = c;
}

static Onnx__TensorProto *tensor(ox_graph *g, const char *name, int type, int ndim, const int64_t *dims) {
    Onnx__TensorProto *t = alloc(g, sizeof *t);
    int64_t *d = alloc(g, (size_t)ndim * sizeof *d);
    if (!t || !d) return NULL;
    onnx__tensor_proto__init(t);
    if (ndim > 0) memcpy(d, dims, (size_t)ndim * sizeof *d); /* a scalar has no dims (and dims may be NULL) */
    t->n_dims = (size_t)ndim, t->dims = d;
    t->has_data_type = 1, t->data_type = type;
    t->name = str(g, name);
    push(g, &g->inits, t);
    return t;
}

const char *ox_weight(ox_graph *g, const char *name, const float *data, int ndim, const int64_t *dims) {
    Onnx__TensorProto *t = tensor(g, name, OX_FLOAT, ndim, dims);
    if (!t) return "";
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)dims[i];
    t->has_raw_data = 1;
    t->raw_data.len = n * sizeof(float); /* little-endian, as raw_data requires: x86 and arm64 */
    t->raw_data.data = (uint8_t *)data;
    return t->name;
}

const char *ox_weight_u8(ox_graph *g, const char *name, const uint8_t *data, int ndim, const int64_t *dims) {
    Onnx__TensorProto *t = tensor(g, name, OX_UINT8, ndim, dims);
    if (!t) return "";
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)dims[i];
    t->has_raw_data = 1;
    t->raw_data.len = n;
    t->raw_data.data = (uint8_t *)data;
    return t->name;
}

/* a constant initializer named after hint: n values of v (int64 or float, a copy), 1-D of n
 * or, with scalar, 0-D */
static const char *constant(ox_graph *g, const char *hint, int type, const void *v, size_t n, int scalar) {
    char name[256];
    snprintf(name, sizeof name, "%s_%zu", hint, g->counter++);
    const int64_t dims[1] = {(int64_t)n};
    Onnx__TensorProto *t = tensor(g, name, type, scalar ? 0 : 1, dims);
    const size_t size = type == OX_INT64 ? sizeof(int64_t) : sizeof(float);
    void *c = alloc(g, n * size);
    if (!t || !c) return "";
    memcpy(c, v, n * size);
    if (type == OX_INT64) t->n_int64_data = n, t->int64_data = c;
    else t->n_float_data = n, t->float_data = c;
    return t->name;
}

const char *ox_const_i64(ox_graph *g, const char *hint, const int64_t *v, size_t n) {
    return constant(g, hint, OX_INT64, v, n, 0);
}
const char *ox_const_f32(ox_graph *g, const char *hint, float v) { return constant(g, hint, OX_FLOAT, &v, 1, 1); }
const char *ox_scalar_i64(ox_graph *g, const char *hint, int64_t v) { return constant(g, hint, OX_INT64, &v, 1, 1); }

static Onnx__ValueInfoProto *value_info(ox_graph *g, const char *name, int elem_type, int ndim, const int64_t *dims,
                                        const char *const *sym) {
    Onnx__ValueInfoProto *vi = alloc(g, sizeof *vi);
    Onnx__TypeProto *tp = alloc(g, sizeof *tp);
    Onnx__TypeProto__Tensor *tt = alloc(g, sizeof *tt);
    Onnx__TensorShapeProto *sh = alloc(g, sizeof *sh);
    Onnx__TensorShapeProto__Dimension **dl = alloc(g, (size_t)ndim * sizeof *dl);
    if (!vi || !tp || !tt || !sh || !dl) return NULL;
    onnx__value_info_proto__init(vi);
    onnx__type_proto__init(tp);
    onnx__type_proto__tensor__init(tt);
    onnx__tensor_shape_proto__init(sh);
    for (int i = 0; i < ndim; i++) {
        Onnx__TensorShapeProto__Dimension *d = alloc(g, sizeof *d);
        if (!d) return NULL;
        onnx__tensor_shape_proto__dimension__init(d);
        if (dims[i] >= 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d->dim_param = str(g, sym[i]);
        }
        dl[i] = d;
    }
    sh->n_dim = (size_t)ndim, sh->dim = dl;
    tt->has_elem_type = 1, tt->elem_type = elem_type, tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, tp->tensor_type = tt;
    vi->name = str(g, name), vi->type = tp;
    return vi;
}

void ox_input(ox_graph *g, const char *name, int elem_type, int ndim, const int64_t *dims, const char *const *sym) {
    push(g, &g->inputs, value_info(g, name, elem_type, ndim, dims, sym));
}

void ox_output(ox_graph *g, const char *name, int elem_type, int ndim, const int64_t *dims, const char *const *sym) {
    push(g, &g->outputs, value_info(g, name, elem_type, ndim, dims, sym));
}

/* protobuf-c's output sink, appending to a FILE */
typedef struct file_buffer {
    ProtobufCBuffer base;
    FILE *f;
    int err;
} file_buffer;

static void file_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
    file_buffer *fb = (file_buffer *)b;
    if (!fb->err && fwrite(data, 1, len, fb->f) != len) fb->err = 1;
}

/* path + suffix into buf; -1 when it does not fit */
static int with_suffix(char *buf, size_t n, const char *path, const char *suffix) {
    return snprintf(buf, n, "%s%s", path, suffix) < (int)n ? 0 : -1;
}

/* Moves every weight's values into the file data_tmp (offsets 4096-aligned) and points its
 * TensorProto there (location: the final file's base name). */
static int write_external(ox_graph *g, const char *data_tmp, const char *location, char *msg, size_t msg_len) {
    FILE *f = fopen(data_tmp, "wb");
    if (!f) {
        snprintf(msg, msg_len, "cannot create %s", data_tmp);
        return -1;
    }
    static const uint8_t zeros[4096];
    uint64_t off = 0;
    int err = 0;
    for (size_t i = 0; !err && i < g->inits.n; i++) {
        Onnx__TensorProto *t = g->inits.v[i];
        if (!t->has_raw_data) continue;
        const uint64_t pad = (4096 - off % 4096) % 4096, len = t->raw_data.len;
        if ((pad && fwrite(zeros, 1, pad, f) != pad) || fwrite(t->raw_data.data, 1, len, f) != len) err = 1;
        off += pad;
        char num[32];
        Onnx__StringStringEntryProto **kv = alloc(g, 3 * sizeof *kv);
        for (int k = 0; kv && k < 3; k++) {
            kv[k] = alloc(g, sizeof *kv[k]);
            if (!kv[k]) break;
            onnx__string_string_entry_proto__init(kv[k]);
        }
        if (g->failed) break;
        kv[0]->key = "location", kv[0]->value = (char *)location;
        snprintf(num, sizeof num, "%llu", (unsigned long long)off);
        kv[1]->key = "offset", kv[1]->value = str(g, num);
        snprintf(num, sizeof num, "%llu", (unsigned long long)len);
        kv[2]->key = "length", kv[2]->value = str(g, num);
        t->has_raw_data = 0, t->raw_data.len = 0, t->raw_data.data = NULL;
        t->n_external_data = 3, t->external_data = kv;
        t->has_data_location = 1, t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
        off += len;
    }
    if (fclose(f) != 0) err = 1;
    if (err || g->failed) {
        remove(data_tmp);
        snprintf(msg, msg_len, g->failed ? "out of memory" : "cannot write %s", data_tmp);
        return -1;
    }
    return 0;
}

int ox_write(ox_graph *g, const char *path, int64_t opset, const char *producer, const char *version, int external,
             char *msg, size_t msg_len) {
    if (g->failed) {
        snprintf(msg, msg_len, "out of memory building the graph");
        return -1;
    }
    Onnx__GraphProto graph;
    Onnx__ModelProto model;
    Onnx__OperatorSetIdProto op, op_dom;
    Onnx__OperatorSetIdProto *ops[2] = {&op, &op_dom};
    onnx__graph_proto__init(&graph);
    onnx__model_proto__init(&model);
    onnx__operator_set_id_proto__init(&op);
    onnx__operator_set_id_proto__init(&op_dom);
    op_dom.domain = (char *)g->domain, op_dom.has_version = 1, op_dom.version = 1;
    graph.name = (char *)g->name;
    graph.n_node = g->nodes.n, graph.node = (Onnx__NodeProto **)g->nodes.v;
    graph.n_initializer = g->inits.n, graph.initializer = (Onnx__TensorProto **)g->inits.v;
    graph.n_input = g->inputs.n, graph.input = (Onnx__ValueInfoProto **)g->inputs.v;
    graph.n_output = g->outputs.n, graph.output = (Onnx__ValueInfoProto **)g->outputs.v;
    op.domain = "", op.has_version = 1, op.version = opset;
    model.has_ir_version = 1, model.ir_version = 8; /* ONNX 1.10+, what opset 15-17 go with */
    model.n_opset_import = g->domain ? 2 : 1, model.opset_import = ops;
    model.producer_name = (char *)producer, model.producer_version = (char *)version;
    model.graph = &graph;
    char tmp[4096], data[4096], data_tmp[4096];
    if (with_suffix(tmp, sizeof tmp, path, ".tmp") || with_suffix(data, sizeof data, path, ".data") ||
        with_suffix(data_tmp, sizeof data_tmp, path, ".data.tmp")) {
        snprintf(msg, msg_len, "path too long");
        return -1;
    }
    /* a protobuf message is limited to 2 GiB */
    const size_t limit = (size_t)1 << 31;
    int ext = external == OX_EXTERNAL_ALWAYS || (external == OX_EXTERNAL_AUTO && onnx__model_proto__get_packed_size(&model) >= limit);
    const char *base = strrchr(data, '/');
    if (ext && write_external(g, data_tmp, base ? base + 1 : data, msg, msg_len)) return -1;
    size_t size = onnx__model_proto__get_packed_size(&model);
    if (size >= limit) {
        if (ext) remove(data_tmp);
        snprintf(msg, msg_len, "the model is %zu bytes; one ONNX file holds under 2 GiB (external_data: auto or "
                 "always puts the weights beside it)", size);
        return -1;
    }
    file_buffer fb = {.base = {.append = file_append}, .f = fopen(tmp, "wb")};
    if (!fb.f) {
        if (ext) remove(data_tmp);
        snprintf(msg, msg_len, "cannot create %s", tmp);
        return -1;
    }
    onnx__model_proto__pack_to_buffer(&model, &fb.base);
    if (fclose(fb.f) != 0) fb.err = 1;
    if (fb.err || (ext && rename(data_tmp, data) != 0) || rename(tmp, path) != 0) {
        remove(tmp);
        if (ext) remove(data_tmp), remove(data);
        snprintf(msg, msg_len, "cannot write %s", path);
        return -1;
    }
    return 0;
}
