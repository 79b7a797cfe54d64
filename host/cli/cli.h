/* The llmopt-host command line: run, validate, plugins, describe, init. */
#ifndef HOST_CLI_CLI_H
#define HOST_CLI_CLI_H

/* Exit codes, documented in --help and the README. */
enum {
    EXIT_OK_ = 0,          /* success */
    EXIT_STAGE_FAILED = 1, /* the pipeline ran and at least one stage failed */
    EXIT_USAGE = 2,        /* bad command line */
    EXIT_CONFIG = 3,       /* the config (or an override) is invalid */
    EXIT_PLUGIN = 4,       /* a plugin directory or plugin could not be used */
    EXIT_IO = 5,           /* the run directory could not be written */
    EXIT_CANCELLED = 130   /* interrupted by SIGINT/SIGTERM */
};

int cli_main(int argc, char **argv);

#endif
