/* Datasets: which lines of a text a `split` selects ("0:90%", "90%:100%", line numbers
 * "0:1000"), checked when the config is validated and applied when a stage reads the data. */
#ifndef HOST_RUNTIME_DATA_H
#define HOST_RUNTIME_DATA_H

#include <stddef.h>
#include "../util/error.h"

/* Checks a split's syntax without text (for config validation). */
int rt_split_check(const char *split, llmopt_error *err);
/* Byte range [begin, end) of the lines a split selects; NULL or "" selects everything. */
int rt_text_split(const char *text, size_t len, const char *split, size_t *begin, size_t *end, llmopt_error *err);

#endif
