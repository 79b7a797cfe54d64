/* A small builder of ONNX graphs over protobuf-c's generated types (onnx.pb-c.h, made from
 * Debian's onnx.proto at build time): nodes with unique output names, initializers that borrow
 * their data until the model is written, graph inputs and outputs with symbolic dimensions, and
 * the writer (a ModelProto streamed to a file). Everything the builder makes lives in its arena
 * and goes with ox_graph_free. */
#ifndef PLUGINS_ONNX_OX_H
#define PLUGINS_ONNX_OX_H

#include <stddef.h>
#include <stdint.h>

typedef struct ox_graph ox_graph;

ox_graph *ox_graph_new(const char *name);
void ox_graph_free(ox_graph *g);
/* non-zero once an allocation failed: every call after it does nothing, ox_write reports it */
int ox_failed(const ox_graph *g);

/* A node of op with the inputs that follow hint (NULL-terminated, at most 16) and one new output
 * named after hint; returns the output's name. */
const char *ox_op(ox_graph *g, const char *op, const char *hint, ...);
/* Gives the last node's output the exact name (a graph output's); call before anything reads it. */
void ox_name_last(ox_graph *g, const char *name);
/* the last node's output name */
const char *ox_last_output(const ox_graph *g);
/* The last node's operator domain (e.g. "com.microsoft"); the model then imports it at version 1. */
void ox_domain_last(ox_graph *g, const char *domain);
/* Attributes of the last node made. */
void ox_attr_int(ox_graph *g, const char *name, int64_t v);
void ox_attr_float(ox_graph *g, const char *name, float v);
void ox_attr_ints(ox_graph *g, const char *name, const int64_t *v, size_t n);

/* Initializers. ox_weight borrows data (float32, row-major) until ox_write returns; the consts
 * are copied. They return the initializer's name. */
const char *ox_weight(ox_graph *g, const char *name, const float *data, int ndim, const int64_t *dims);
const char *ox_weight_u8(ox_graph *g, const char *name, const uint8_t *data, int ndim, const int64_t *dims);
const char *ox_const_i64(ox_graph *g, const char *hint, const int64_t *v, size_t n);
/* n zeroed bytes that live as long as the graph (for initializers made here), NULL when out of memory */
void *ox_alloc(ox_graph *g, size_t n);
const char *ox_const_f32(ox_graph *g, const char *hint, float v); /* a scalar */
const char *ox_scalar_i64(ox_graph *g, const char *hint, int64_t v);

enum { OX_FLOAT = 1, OX_UINT8 = 2, OX_INT64 = 7 }; /* TensorProto.DataType */
/* A graph input or output; dims[i] < 0 is the symbolic dimension sym[i]. */
void ox_input(ox_graph *g, const char *name, int elem_type, int ndim, const int64_t *dims, const char *const *sym);
void ox_output(ox_graph *g, const char *name, int elem_type, int ndim, const int64_t *dims, const char *const *sym);

/* Writes the model (IR version 8, the default domain at opset) to path through path.tmp; 0, or
 * -1 with the reason in msg. external: OX_EXTERNAL_NEVER keeps every weight inside the file
 * (which then must stay under protobuf's 2 GiB); ALWAYS puts the weights (ox_weight's) in
 * path.data beside it, each at a 4096-byte aligned offset, as ONNX's external data; AUTO does so
 * when the file would be 2 GiB or more. */
enum { OX_EXTERNAL_NEVER = 0, OX_EXTERNAL_ALWAYS = 1, OX_EXTERNAL_AUTO = 2 };
int ox_write(ox_graph *g, const char *path, int64_t opset, const char *producer, const char *version, int external,
             char *msg, size_t msg_len);

#endif
