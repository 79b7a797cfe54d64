/* llmopt SDK: status codes, versions and the macros every other SDK header uses.
 * Part of the public plugin contract (ABI v1); C11, no third-party headers. */
#ifndef LLMOPT_COMMON_H
#define LLMOPT_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** ABI major version: a plugin whose major differs from the host's is refused. */
#define LLMOPT_ABI_MAJOR 1
/** ABI minor version: a plugin built against a newer minor than the host's is refused;
 *  an older one is accepted (structs only ever grow at their end). */
#define LLMOPT_ABI_MINOR 0

/** Status codes. Every SDK function that can fail returns one (0 ok, negative error). */
typedef enum llmopt_status {
    LLMOPT_OK = 0,
    LLMOPT_EINVAL = -1,      /**< invalid argument, parameter or config */
    LLMOPT_ENOMEM = -2,      /**< allocation failed */
    LLMOPT_EIO = -3,         /**< reading or writing a file failed */
    LLMOPT_ENOTFOUND = -4,   /**< a named thing (tensor, stage, kernel, file) does not exist */
    LLMOPT_EEXIST = -5,      /**< a name is already taken */
    LLMOPT_ECANCELED = -6,   /**< the run was cancelled (SIGINT/SIGTERM) */
    LLMOPT_EABI = -7,        /**< ABI version or struct size mismatch */
    LLMOPT_EFORMAT = -8,     /**< malformed file contents */
    LLMOPT_EUNSUPPORTED = -9,/**< valid request this build or machine cannot do */
    LLMOPT_EFAIL = -10       /**< any other failure; the message says what */
} llmopt_status;

/** Log levels for llmopt_host_api.log. */
typedef enum llmopt_log_level {
    LLMOPT_LOG_ERROR = 0,
    LLMOPT_LOG_WARN = 1,
    LLMOPT_LOG_INFO = 2,
    LLMOPT_LOG_DEBUG = 3
} llmopt_log_level;

/** Marks the one symbol a plugin exports. Build plugins with -fvisibility=hidden. */
#if defined(_WIN32)
#define LLMOPT_EXPORT __declspec(dllexport)
#else
#define LLMOPT_EXPORT __attribute__((visibility("default")))
#endif

/** printf-style format checking for SDK function pointers. */
#if defined(__GNUC__)
#define LLMOPT_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define LLMOPT_PRINTF(fmt_idx, arg_idx)
#endif

/** Layout pins: every append-only SDK struct has its field offsets fixed for LP64 targets. */
#if UINTPTR_MAX == 0xffffffffffffffffu && !defined(__cplusplus)
#define LLMOPT_PIN(type, field, off) \
    _Static_assert(offsetof(type, field) == (off), "ABI v1 layout of " #type "." #field " changed")
#else
#define LLMOPT_PIN(type, field, off)
#endif

#ifdef __cplusplus
}
#endif
#endif
