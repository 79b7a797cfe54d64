/* The build's identity: the git revision of the checkout it was built from ("" outside one; a
 * "-dirty" suffix for uncommitted changes), generated at build time by cmake/git_rev.cmake. */
#ifndef HOST_UTIL_VERSION_H
#define HOST_UTIL_VERSION_H

extern const char llmopt_git_rev[];

#endif
