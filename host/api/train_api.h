/* The training and file-writing members of the host API table (train_api.c). */
#ifndef HOST_API_TRAIN_API_H
#define HOST_API_TRAIN_API_H

#include <llmopt/llmopt.h>

/* Fills the trainer, model-saving, side-file and chat-template members of the table. */
void train_api_fill(llmopt_host_api *api);

#endif
