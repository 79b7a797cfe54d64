/* The quantization members of the host API table (quant_api.c): reference quantize/dequantize,
 * dtype conversion of tensors, calibration capture of linear-layer inputs, and GGUF export. */
#ifndef HOST_API_QUANT_API_H
#define HOST_API_QUANT_API_H

#include <llmopt/llmopt.h>

/* Fills the quantization members of the table. */
void quant_api_fill(llmopt_host_api *api);

#endif
