/* llmopt SDK umbrella header: include this one to write a plugin.
 * Contract version: ABI 1.LLMOPT_ABI_MINOR. See docs/plugin-authoring.md. */
#ifndef LLMOPT_H
#define LLMOPT_H

#include "common.h"
#include "tensor.h"
#include "model.h"
#include "stage.h"
#include "kernel.h"
#include "kernel_ops.h"
#include "device.h"
#include "plugin.h"
#include "host_api.h"

#endif
