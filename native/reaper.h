/* The agent as its workload's subreaper (PROTOCOL.md, "Descendants"): everything the workload
 * forks stays below the agent, orphans are reaped as they exit, and the whole remaining tree is
 * ended and reaped before the terminal event. */
#ifndef LINX_REAPER_H
#define LINX_REAPER_H

#include <stdbool.h>
#include <sys/types.h>

/* Makes the agent a child subreaper and opens a signalfd for SIGCHLD (which it blocks).
 * Call before the child exists. Returns 0, or -1 with errno. */
int reaper_start(void);

/* The signalfd to poll (POLLIN: some child changed state); -1 before reaper_start. */
int reaper_signal_fd(void);

/* The workload: never reaped here (agent.c reaps it by its pidfd). -1 once it is reaped. */
void reaper_set_workload(pid_t workload);

/* Reaps every exited child except the workload and empties the signalfd; never blocks. */
void reaper_collect(void);

/* True while the agent has a child other than the workload (alive or not yet reaped). */
bool reaper_has_descendants(void);

/* SIGTERM (then SIGCONT, so a stopped one can act on it) to every descendant except the
 * workload. */
void reaper_terminate_descendants(void);

/* Ends the whole tree below the agent, the workload included: freezes it with SIGSTOP until a
 * scan finds nobody new (so nothing forks or slips away while it is killed), SIGKILLs it, waits
 * for each to exit (by pidfd), and reaps every child but the workload. Blocks until only the workload (dead or alive) is left,
 * or 5 s at most for processes that a SIGKILL does not end (stuck in the kernel). */
void reaper_kill_tree(void);

#endif
