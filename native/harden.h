/* Hardening the child just before execve (docs/hardening.md): groups, ids, rlimits, umask,
 * capabilities, seccomp, in that order. */
#ifndef LINX_HARDEN_H
#define LINX_HARDEN_H

#include "agent.h"

/* How a step reports a kernel refusal: the errno and the stage name. It must not return. */
typedef void (*harden_failure)(int error, const char *stage);

/* Applies every hardening field of the request to the calling (child) process. Re-arms the
 * parent-death signal after each credential change and exits at once if the agent is gone. */
void apply_hardening(const struct agent *agent, harden_failure fail);

#endif
