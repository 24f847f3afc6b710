/* What the agent knows about its one session, shared by its source files. */
#ifndef LINX_AGENT_H
#define LINX_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"

#define CONTROL_FD 3

/* Agent exit codes (PROTOCOL.md). */
#define EXIT_DONE 0
#define EXIT_CHANNEL 1
#define EXIT_MALFORMED 2
#define EXIT_CREATE 3
#define EXIT_INFRASTRUCTURE 4

/* Exit codes of a child that never reached execve; only the agent sees them. */
#define CHILD_EXIT_REPORT_FAILED 101
#define CHILD_EXIT_ABORTED 102
#define CHILD_EXIT_PROTOCOL 103
#define CHILD_EXIT_FAILED 127

struct stdio_directive {
    uint8_t kind;          /* STDIO_* */
    const char *path;      /* connect_unix only */
};

/* One `rlimit` field: setrlimit(resource, {soft, hard}); RLIM_INFINITY is all ones. */
struct rlimit_setting {
    uint8_t resource;
    uint64_t soft;
    uint64_t hard;
};

struct request {
    uint8_t mode;          /* MODE_SPAWN or MODE_ENTER */
    uint32_t target;       /* enter mode */
    const char **argv;     /* NULL-terminated, points into the request buffer */
    const char **env;      /* NULL-terminated */
    bool namespaces_given;
    uint32_t namespaces;   /* NS_* mask */
    const char *cwd;       /* NULL: inherit */
    struct stdio_directive stdio[3];
    bool pty;
    bool no_new_privs;
    uint8_t orphan_policy; /* ORPHAN_* */
    uint32_t orphan_grace_ms;
    uint32_t output_window; /* bytes, OUTPUT_WINDOW_MIN..OUTPUT_WINDOW_MAX */
    uint8_t output_mode;    /* OUTPUT_BLOCK or OUTPUT_DROP */
    /* hardening (docs/hardening.md, harden.c): each *_given false leaves that property unchanged */
    bool user_given;
    uint32_t user;
    bool group_given;
    uint32_t group;
    bool extra_groups_given;
    uint32_t extra_group_count;
    gid_t *extra_groups;                  /* allocated by the parser */
    uint32_t rlimit_count;
    struct rlimit_setting rlimits[RLIMIT_COUNT];
    bool umask_given;
    uint32_t umask;
    bool capabilities_given;
    uint64_t capabilities;                /* bit N: capability N */
    uint32_t seccomp_length;              /* instructions; 0: no filter */
    void *seccomp_program;                /* struct sock_filter[], allocated by the parser */
};

/* Records the child writes on the report pipe (fixed size, well under PIPE_BUF, so one
 * write is atomic). Error stages are the names PROTOCOL.md lists. */
enum report_kind { REPORT_READY = 1, REPORT_ERROR = 2 };
#define STAGE_NAME_MAX 32
struct child_report {
    int32_t kind;
    int32_t value;               /* ready: the child's own pid; error: errno */
    char stage[STAGE_NAME_MAX];  /* error: NUL-terminated stage name */
};

/* Flow control (PROTOCOL.md, "Flow control"): output bytes sent and not yet credited. */
struct output_window {
    uint32_t size;
    uint64_t in_flight;
    uint8_t mode;           /* OUTPUT_BLOCK or OUTPUT_DROP; the output_mode command changes it */
};

/* Everything the agent holds while it runs; -1 marks an fd it does not have. */
struct agent {
    struct request request;
    int stdio_fds[3];       /* prepared host-side: devnull, connected sockets, capture pipes' write ends; -1 inherit */
    int capture_fds[3];     /* the read ends of capture pipes (1 and 2 only); -1 none */
    bool held[3];           /* a held capture pipe (stdio kind 4): the Python side reads it, the agent
                             * only once told `relay` (or once nobody else will: hangup, stop) */
    int pty_master;
    int pty_slave;
    int report_pipe[2];     /* child -> agent */
    int go_pipe[2];         /* agent -> child */
    pid_t child;            /* as the agent's pid namespace sees it */
    int child_pidfd;
    bool control_open;      /* fd 3 still has a live peer */
    struct output_window output;
};

/* child.c: the clone3 child's whole life. Never returns. */
_Noreturn void run_child(struct agent *agent);

#endif
