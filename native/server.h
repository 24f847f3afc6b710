/* The spawn server: the agent binary's second mode (PROTOCOL.md, "Spawn server"). */
#ifndef LINX_SERVER_H
#define LINX_SERVER_H

/* The argument that starts the binary as a spawn server: `linx-agent --spawn-server`. */
#define SERVER_ARGUMENT "--spawn-server"

/* Serves spawn requests on fd 3 until the Python side hangs up (then the process exits).
 * Returns only in a freshly forked agent, whose fds 0-3 and cwd are then what a directly
 * spawned agent's would be: the caller goes on with the agent's life. `mode_argument` is the
 * argv string that asked for this mode: a forked agent blanks it, so that its command line
 * (ps, /proc/PID/cmdline) reads as a directly spawned agent's. */
void serve_spawn_requests(char *mode_argument);

#endif
