/* The spawn server: one long-lived, single-threaded process per Python process that forks a
 * fresh agent per session on request, sparing the Python side a posix_spawn and the agent an
 * execve. Each forked agent is made the Python process's child (CLONE_PARENT), so the server
 * has no children, its death touches no session, and the Python side reaps agents as before.
 *
 * State a forked agent takes from the server rather than from its caller (namespaces, root,
 * credentials, cgroup, rlimits, ...) is read per request from the calling thread and from the
 * server itself (what the agent would really inherit, whoever changed it since), and any
 * difference, any seccomp filter on either side, or a file too long to read whole answers
 * `stale`: the Python side spawns that agent directly. It never runs a workload itself, never
 * holds a session's fd after the fork, and exits when the Python side hangs up.
 * The protocol is PROTOCOL.md, "Spawn server". */
#define _GNU_SOURCE
#include "server.h"
#include "agent.h"
#include "protocol.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/ioprio.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ---- the state a forked agent inherits from the server -------------------------------- */

enum piece_kind { PIECE_NAMESPACE, PIECE_INODE, PIECE_TEXT, PIECE_STATUS, PIECE_LIMITS, PIECE_SCHEDULING };

/* Read relative to /proc/<pid>/task/<tid>/ of the calling thread and /proc/thread-self/ of
 * the server, the cheapest way each (a namespace's readlink names its inode without making a
 * dentry: a third of a stat's cost; the limits by prlimit, not by formatting and parsing
 * `limits`). A piece a kernel does not have (ENOENT) reads as absent, alike for both sides.
 * What a thread cannot change is not read: ns/pid and ns/time (setns and unshare change only
 * the *_for_children ones a child gets) and ns/user (a threaded process can neither unshare
 * nor setns one). */
static const struct state_piece {
    const char *name; /* as a stale answer names it */
    const char *path;
    enum piece_kind kind;
    /* Another process can change the server's (taskset, cgroup.procs, renice, ionice, chrt,
     * prlimit, oom_score_adj): read per request. The rest only the server itself could change,
     * and it never does: its own are read once, at the hello. */
    bool changeable_from_outside;
} state_pieces[] = {
    {"ns/cgroup", "ns/cgroup", PIECE_NAMESPACE, false},
    {"ns/ipc", "ns/ipc", PIECE_NAMESPACE, false},
    {"ns/mnt", "ns/mnt", PIECE_NAMESPACE, false},
    {"ns/net", "ns/net", PIECE_NAMESPACE, false},
    {"ns/pid_for_children", "ns/pid_for_children", PIECE_NAMESPACE, false},
    {"ns/time_for_children", "ns/time_for_children", PIECE_NAMESPACE, false},
    {"ns/uts", "ns/uts", PIECE_NAMESPACE, false},
    {"root", "root", PIECE_INODE, false},
    {"credentials", "status", PIECE_STATUS, true}, /* CPU and memory-node affinity */
    {"personality", "personality", PIECE_TEXT, false},
    {"scheduling", NULL, PIECE_SCHEDULING, true},
    {"cgroup", "cgroup", PIECE_TEXT, true},
    /* The process-wide ones last: a stale answer naming one of these says every thread's
     * request would be stale, and the Python side replaces the server (spawn_server.py). */
    {"limits", NULL, PIECE_LIMITS, true},
    {"oom_score_adj", "oom_score_adj", PIECE_TEXT, true},
};
#define PIECE_COUNT (sizeof state_pieces / sizeof state_pieces[0])
/* Room for a piece; a `status` is read whole into a buffer of READ_MAX (700 supplementary
 * groups already pass 4 KiB) and only its inherited lines kept. A piece or file that does not
 * fit is never compared cut: it answers stale (PIECE_TOO_LONG). */
#define PIECE_MAX 16384
#define READ_MAX 65536
#define PIECE_TOO_LONG 1

/* The lines of `status` that a child inherits: credentials, capabilities, umask,
 * no_new_privs, seccomp, CPU and memory-node affinity, transparent huge pages (the mm's
 * PR_SET_THP_DISABLE) and the speculation mitigations (PR_SET_SPECULATION_CTRL). */
static const char *const status_fields[] = {
    "Umask:",       "Uid:",        "Gid:",        "Groups:",    "NoNewPrivs:",
    "Seccomp:",     "Seccomp_filters:",           "CapInh:",    "CapPrm:",
    "CapEff:",      "CapBnd:",     "CapAmb:",     "Cpus_allowed_list:",     "Mems_allowed_list:",
    "THP_enabled:", "Speculation_Store_Bypass:",  "SpeculationIndirectBranch:",
};
#define STATUS_FIELD_COUNT (sizeof status_fields / sizeof status_fields[0])

struct state {
    char pieces[PIECE_COUNT][PIECE_MAX];
};

/* Whose state: the calling thread of the Python process, or the server itself (0 for the
 * pids: the calling thread or process, as prlimit, getpriority and the sched_* calls take it). */
struct subject {
    char task[64]; /* its /proc task directory */
    pid_t process;
    pid_t thread;
};

static struct state server_state; /* the server's own, per request */
static struct state caller_state; /* the calling thread's, per request */
static char read_buffer[READ_MAX];
static bool hello_done;
static pid_t python_pid;

/* Reads a whole file into `text` (at most `size` - 1 bytes and a NUL): 0, PIECE_TOO_LONG if
 * it does not fit, -1 with errno. */
static int read_text(int task, const char *path, char *text, size_t size)
{
    int fd = openat(task, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t used = 0;
    ssize_t got = 1;
    while (used < size - 1 && (got = read(fd, text + used, size - 1 - used)) != 0) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            break;
        used += (size_t)got;
    }
    int error = errno;
    if (close(fd) < 0 && errno != EINTR)
        return -1;
    text[used] = '\0';
    errno = error;
    if (got < 0)
        return -1;
    return got != 0 ? PIECE_TOO_LONG : 0; /* a full buffer before end-of-file: cut */
}

static bool is_inherited_status_line(const char *line)
{
    for (size_t i = 0; i < STATUS_FIELD_COUNT; i++)
        if (strncmp(line, status_fields[i], strlen(status_fields[i])) == 0)
            return true;
    return false;
}

/* Copies the inherited lines of a status text into `piece`: 0, or PIECE_TOO_LONG. */
static int filter_status(const char *text, char *piece)
{
    size_t kept = 0;
    for (const char *line = text; *line;) {
        const char *end = strchrnul(line, '\n');
        size_t length = (size_t)(end - line) + (*end == '\n');
        if (is_inherited_status_line(line)) {
            if (kept + length >= PIECE_MAX)
                return PIECE_TOO_LONG;
            memcpy(piece + kept, line, length);
            kept += length;
        }
        line += length;
    }
    piece[kept] = '\0';
    return 0;
}

/* True if a filtered status shows a seccomp mode: two filters are not comparable from /proc
 * (same count, other rules), so a thread or server under one never gets a forked agent. */
static bool under_seccomp(const char *status)
{
    const char *line = strstr(status, "Seccomp:");
    return line != NULL && line[strspn(line + 8, " \t") + 8] != '0';
}

/* The soft and hard limit of every resource of `process` (0: the server), by `prlimit`. */
static int read_limits(pid_t process, char *text)
{
    size_t used = 0;
    for (int resource = 0; resource < RLIM_NLIMITS; resource++) {
        struct rlimit limit;
        if (prlimit(process, resource, NULL, &limit) < 0)
            return -1;
        used += (size_t)snprintf(text + used, PIECE_MAX - used, "%llu:%llu ", (unsigned long long)limit.rlim_cur,
                                 (unsigned long long)limit.rlim_max);
    }
    return 0;
}

/* The thread's nice value, scheduling policy and real-time priority, and I/O priority (all
 * per thread on Linux, all inherited). */
static int read_scheduling(pid_t thread, char *text)
{
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, (id_t)thread);
    if (nice == -1 && errno != 0)
        return -1;
    int policy = sched_getscheduler(thread);
    if (policy < 0)
        return -1;
    struct sched_param parameter;
    if (sched_getparam(thread, &parameter) < 0)
        return -1;
    long io_priority = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, thread);
    if (io_priority < 0)
        return -1;
    snprintf(text, PIECE_MAX, "%d:%d:%d:%ld", nice, policy, parameter.sched_priority, io_priority);
    return 0;
}

/* Reads one piece: 0, PIECE_TOO_LONG, or -1 with errno. */
static int read_piece(int task, const struct subject *subject, const struct state_piece *piece, char *text)
{
    struct stat status;
    ssize_t length;
    int result = 0;
    switch (piece->kind) {
    case PIECE_NAMESPACE:
        length = readlinkat(task, piece->path, text, PIECE_MAX - 1);
        if (length < 0)
            return errno == ENOENT ? snprintf(text, PIECE_MAX, "absent"), 0 : -1;
        text[length] = '\0';
        return 0;
    case PIECE_INODE:
        if (fstatat(task, piece->path, &status, 0) < 0)
            return errno == ENOENT ? snprintf(text, PIECE_MAX, "absent"), 0 : -1;
        snprintf(text, PIECE_MAX, "%lu:%lu", (unsigned long)status.st_dev, (unsigned long)status.st_ino);
        return 0;
    case PIECE_LIMITS:
        return read_limits(subject->process, text);
    case PIECE_SCHEDULING:
        return read_scheduling(subject->thread, text);
    case PIECE_TEXT:
        result = read_text(task, piece->path, text, PIECE_MAX);
        break;
    case PIECE_STATUS:
        result = read_text(task, piece->path, read_buffer, sizeof read_buffer);
        if (result == 0)
            result = filter_status(read_buffer, text);
        break;
    }
    if (result < 0 && errno == ENOENT)
        return snprintf(text, PIECE_MAX, "absent"), 0;
    return result;
}

/* Reads the state of `subject` (only the pieces changeable from outside if `changeable_only`),
 * and opens its cwd (O_PATH) into `cwd` unless that is NULL: the calling thread's own, as
 * posix_spawn from it would give the agent, without the caller opening and sending it. 0;
 * PIECE_TOO_LONG with `*too_long` the piece that did not fit; or -1 with errno. */
static int read_state(const struct subject *subject, struct state *state, bool changeable_only, int *cwd,
                      const char **too_long)
{
    int task = open(subject->task, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (task < 0)
        return -1;
    int result = 0;
    for (size_t i = 0; i < PIECE_COUNT && result == 0; i++) {
        if (changeable_only && !state_pieces[i].changeable_from_outside)
            continue;
        result = read_piece(task, subject, &state_pieces[i], state->pieces[i]);
        if (result == PIECE_TOO_LONG)
            *too_long = state_pieces[i].name;
    }
    if (result == 0 && cwd != NULL) {
        *cwd = openat(task, "cwd", O_PATH | O_DIRECTORY | O_CLOEXEC);
        result = *cwd < 0 ? -1 : 0;
    }
    int error = errno;
    if (close(task) < 0 && errno != EINTR)
        return -1;
    errno = error;
    return result;
}

static void caller_subject(uint32_t tid, struct subject *subject)
{
    snprintf(subject->task, sizeof subject->task, "/proc/%d/task/%u", (int)python_pid, tid);
    subject->process = python_pid;
    subject->thread = (pid_t)tid;
}

static const struct subject server_subject = {"/proc/thread-self", 0, 0};

/* The first piece that differs between the caller and the server, "seccomp" if either is under
 * a filter, or NULL. */
static const char *stale_piece(void)
{
    for (size_t i = 0; i < PIECE_COUNT; i++) {
        if (strcmp(server_state.pieces[i], caller_state.pieces[i]) != 0)
            return state_pieces[i].name;
        if (state_pieces[i].kind == PIECE_STATUS && under_seccomp(caller_state.pieces[i]))
            return "seccomp";
    }
    return NULL;
}

/* ---- the messages ----------------------------------------------------------------------- */

struct server_request {
    uint8_t type;
    uint32_t tid;
    uint8_t stdio_mask;                /* bit N: the caller's fd N came along */
    int fds[SERVER_SPAWN_FDS_MAX];     /* as received: the session's socket, then the stdio fds */
    int fd_count;
    int cwd; /* the calling thread's, opened by the server; -1 until then */
};

enum receive_result { RECEIVED, RECEIVE_EOF, RECEIVE_MALFORMED };

static void close_received(struct server_request *request)
{
    for (int i = 0; i < request->fd_count; i++)
        if (close(request->fds[i]) < 0 && errno != EINTR)
            fprintf(stderr, "linx-spawn-server: close(%d): %s\n", request->fds[i], strerror(errno));
    request->fd_count = 0;
    if (request->cwd >= 0 && close(request->cwd) < 0 && errno != EINTR)
        fprintf(stderr, "linx-spawn-server: close(%d): %s\n", request->cwd, strerror(errno));
    request->cwd = -1;
}

static void take_fds(const struct msghdr *message, struct server_request *request)
{
    for (struct cmsghdr *header = CMSG_FIRSTHDR(message); header; header = CMSG_NXTHDR((struct msghdr *)message, header)) {
        if (header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const int *fds = (const int *)CMSG_DATA(header);
        for (size_t i = 0; i < count; i++) {
            if (request->fd_count < SERVER_SPAWN_FDS_MAX)
                request->fds[request->fd_count++] = fds[i];
            else if (close(fds[i]) < 0 && errno != EINTR)
                fprintf(stderr, "linx-spawn-server: close(%d): %s\n", fds[i], strerror(errno));
        }
    }
}

static int stdio_count(uint8_t mask)
{
    return (mask & 1) + (mask >> 1 & 1) + (mask >> 2 & 1);
}

/* A well-formed hello is type + tid, no fds; a spawn is type + tid + stdio mask with the
 * session's socket and one fd per mask bit. */
static bool well_formed(const struct server_request *request, ssize_t size)
{
    if (request->type == SERVER_HELLO)
        return size == 5 && request->fd_count == 0;
    if (request->type == SERVER_SPAWN)
        return size == 6 && request->stdio_mask <= 7 && request->fd_count == 1 + stdio_count(request->stdio_mask);
    return false;
}

static enum receive_result receive_request(struct server_request *request)
{
    uint8_t body[SERVER_MESSAGE_MAX];
    union {
        char buffer[CMSG_SPACE(sizeof(int) * SERVER_SPAWN_FDS_MAX)];
        struct cmsghdr align;
    } control;
    struct iovec vector = {.iov_base = body, .iov_len = sizeof body};
    struct msghdr message = {.msg_iov = &vector, .msg_iovlen = 1, .msg_control = control.buffer,
                             .msg_controllen = sizeof control.buffer};
    ssize_t size;
    do
        size = recvmsg(CONTROL_FD, &message, MSG_CMSG_CLOEXEC);
    while (size < 0 && errno == EINTR);
    if (size < 0) {
        fprintf(stderr, "linx-spawn-server: recvmsg: %s\n", strerror(errno));
        return RECEIVE_EOF; /* the socket is unusable: the Python side starts a new server */
    }
    memset(request, 0, sizeof *request);
    request->cwd = -1;
    take_fds(&message, request);
    if (size == 0 && request->fd_count == 0)
        return RECEIVE_EOF;
    if (size >= 5) {
        request->type = body[0];
        request->tid = load_u32(body + 1);
        request->stdio_mask = size >= 6 ? body[5] : 0;
    }
    if ((message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || !well_formed(request, size))
        return RECEIVE_MALFORMED;
    return RECEIVED;
}

/* One answer: kind, a u32 value, and an optional name (the stale piece, the failed stage). */
static void reply(uint8_t kind, uint32_t value, const char *name)
{
    uint8_t body[SERVER_MESSAGE_MAX];
    size_t length = name ? strnlen(name, sizeof body - 5) : 0;
    body[0] = kind;
    body[1] = (uint8_t)(value >> 24);
    body[2] = (uint8_t)(value >> 16);
    body[3] = (uint8_t)(value >> 8);
    body[4] = (uint8_t)value;
    if (length)
        memcpy(body + 5, name, length);
    ssize_t sent;
    do
        sent = send(CONTROL_FD, body, 5 + length, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        exit(errno == EPIPE || errno == ECONNRESET ? EXIT_DONE : EXIT_CHANNEL); /* the Python side is gone */
}

/* ---- the forked agent ------------------------------------------------------------------ */

/* Once fd 3 is the session's socket, a failure is the session's terminal error event. */
static _Noreturn void fail_agent_start(int error, const char *stage)
{
    send_error(error, stage);
    exit(EXIT_INFRASTRUCTURE);
}

/* In the new agent: the session's socket becomes fd 3, the caller's stdio fds 0-2 (a closed
 * one stays closed, as it would in a spawned agent), its cwd the agent's, its own process
 * group like a spawned agent's. The rest of the received fds are closed by prepare_process. */
static void become_agent(const struct server_request *request)
{
    if (dup2(request->fds[0], CONTROL_FD) < 0)
        exit(EXIT_INFRASTRUCTURE);
    int next = 1;
    for (int fd = 0; fd <= 2; fd++) {
        if (request->stdio_mask & (1 << fd)) {
            if (dup2(request->fds[next++], fd) < 0)
                fail_agent_start(errno, "server_stdio");
        } else if (close(fd) < 0 && errno != EBADF && errno != EINTR) {
            fail_agent_start(errno, "server_stdio");
        }
    }
    if (fchdir(request->cwd) < 0)
        fail_agent_start(errno, "server_cwd");
    if (setpgid(0, 0) < 0)
        fail_agent_start(errno, "server_setpgid");
}

/* clone3 with CLONE_PARENT: the agent is the Python process's child, not the server's. Its
 * exit signal must be left 0: the kernel gives it the server's own (SIGCHLD). */
static pid_t fork_agent(void)
{
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_PARENT;
    return (pid_t)syscall(SYS_clone3, &args, sizeof args);
}

/* ---- the loop -------------------------------------------------------------------------- */

static void prepare_server(void)
{
    python_pid = getppid();
    struct ucred peer;
    socklen_t size = sizeof peer;
    if (getsockopt(CONTROL_FD, SOL_SOCKET, SO_PEERCRED, &peer, &size) < 0)
        exit(EXIT_CHANNEL);
    if (peer.uid != geteuid() || peer.pid != python_pid) {
        fprintf(stderr, "linx-spawn-server: fd 3's peer is pid %d uid %u, not my parent\n", (int)peer.pid,
                (unsigned)peer.uid);
        exit(EXIT_CHANNEL);
    }
    if (close_range(CONTROL_FD + 1, ~0U, 0) < 0)
        exit(EXIT_INFRASTRUCTURE);
    if (prctl(PR_SET_NAME, "linx-spawner", 0, 0, 0) < 0)
        exit(EXIT_INFRASTRUCTURE);
}

/* The hello reads the server's own state, all of it; a request reads again what another
 * process could have changed since. */
static void answer_hello(void)
{
    const char *too_long = NULL;
    if (read_state(&server_subject, &server_state, false, NULL, &too_long) < 0) {
        reply(SERVER_FAILED, (uint32_t)errno, "server_state");
        return;
    }
    hello_done = true;
    reply(SERVER_READY, 0, NULL);
}

/* Reads both sides: NULL if they match, or why not (a piece's name, "unreadable"). */
static const char *compare_states(struct server_request *request, uint32_t *error)
{
    struct subject caller;
    caller_subject(request->tid, &caller);
    const char *too_long = NULL;
    *error = 0;
    int result = read_state(&caller, &caller_state, false, &request->cwd, &too_long);
    if (result == 0)
        result = read_state(&server_subject, &server_state, true, NULL, &too_long);
    if (result < 0) {
        *error = (uint32_t)errno;
        return "unreadable";
    }
    return result == PIECE_TOO_LONG ? too_long : stale_piece();
}

/* Answers a spawn request; returns true in the forked agent. */
static bool answer_spawn(struct server_request *request)
{
    if (!hello_done) {
        reply(SERVER_FAILED, EPROTO, "server_no_hello");
        return false;
    }
    uint32_t error;
    const char *stale = compare_states(request, &error);
    if (stale) {
        reply(SERVER_STALE, error, stale);
        return false;
    }
    pid_t pid = fork_agent();
    if (pid < 0) {
        reply(SERVER_FAILED, (uint32_t)errno, "server_fork");
        return false;
    }
    if (pid == 0) {
        become_agent(request);
        return true;
    }
    reply(SERVER_SPAWNED, (uint32_t)pid, NULL);
    return false;
}

void serve_spawn_requests(char *mode_argument)
{
    prepare_server();
    for (;;) {
        struct server_request request;
        enum receive_result received = receive_request(&request);
        if (received == RECEIVE_EOF)
            exit(EXIT_DONE);
        bool forked = false;
        if (received == RECEIVE_MALFORMED)
            reply(SERVER_FAILED, EPROTO, "server_malformed");
        else if (request.type == SERVER_HELLO)
            answer_hello();
        else
            forked = answer_spawn(&request);
        if (forked) {
            memset(mode_argument, 0, strlen(mode_argument));
            return; /* the received fds are closed by prepare_process's close_range */
        }
        close_received(&request);
    }
}
