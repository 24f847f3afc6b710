/* The spawn server: one long-lived, single-threaded process per Python process that forks a
 * fresh agent per session on request, sparing the Python side a posix_spawn and the agent an
 * execve. Each forked agent is made the Python process's child (CLONE_PARENT), so the server
 * has no children, its death touches no session, and the Python side reaps agents as before.
 *
 * State a forked agent would take from the server rather than from its caller (namespaces,
 * root, credentials, cgroup, rlimits, ...) is compared per request with the calling thread's,
 * against a snapshot of the thread that started the server; any difference answers `stale`
 * and the Python side spawns that agent directly. It never runs a workload itself, never
 * holds a session's fd after the fork, and exits when the Python side hangs up.
 * The protocol is PROTOCOL.md, "Spawn server". */
#define _GNU_SOURCE
#include "server.h"
#include "agent.h"
#include "protocol.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
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

/* Read relative to /proc/<pid>/task/<tid>/ of the calling thread, the cheapest way each (a
 * namespace's readlink names its inode without making a dentry: a third of a stat's cost; the
 * limits by prlimit, not by formatting and parsing `limits`). A piece a kernel does not have
 * (ENOENT) reads as absent, alike for both sides. What a thread cannot change is not read:
 * ns/pid and ns/time (setns and unshare change only the *_for_children ones a child gets)
 * and ns/user (a threaded process can neither unshare nor setns one). */
static const struct state_piece {
    const char *name; /* as a stale answer names it */
    const char *path;
    enum piece_kind kind;
} state_pieces[] = {
    {"ns/cgroup", "ns/cgroup", PIECE_NAMESPACE},
    {"ns/ipc", "ns/ipc", PIECE_NAMESPACE},
    {"ns/mnt", "ns/mnt", PIECE_NAMESPACE},
    {"ns/net", "ns/net", PIECE_NAMESPACE},
    {"ns/pid_for_children", "ns/pid_for_children", PIECE_NAMESPACE},
    {"ns/time_for_children", "ns/time_for_children", PIECE_NAMESPACE},
    {"ns/uts", "ns/uts", PIECE_NAMESPACE},
    {"root", "root", PIECE_INODE},
    {"credentials", "status", PIECE_STATUS},
    {"scheduling", NULL, PIECE_SCHEDULING},
    {"cgroup", "cgroup", PIECE_TEXT},
    /* The process-wide ones last: a stale answer naming one of these says every thread's
     * request would be stale, and the Python side replaces the server (spawn_server.py). */
    {"limits", NULL, PIECE_LIMITS},
    {"oom_score_adj", "oom_score_adj", PIECE_TEXT},
};
#define PIECE_COUNT (sizeof state_pieces / sizeof state_pieces[0])
#define PIECE_MAX 4096

/* The lines of `status` that a child inherits: credentials, capabilities, umask,
 * no_new_privs, seccomp, CPU and memory-node affinity. */
static const char *const status_fields[] = {
    "Umask:", "Uid:", "Gid:", "Groups:", "NoNewPrivs:", "Seccomp:", "Seccomp_filters:", "CapInh:",
    "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "Cpus_allowed_list:", "Mems_allowed_list:",
};
#define STATUS_FIELD_COUNT (sizeof status_fields / sizeof status_fields[0])

struct state {
    char pieces[PIECE_COUNT][PIECE_MAX];
};

static struct state started_state; /* the starting thread's, at the hello */
static struct state caller_state;  /* the calling thread's, per request */
static bool hello_done;
static pid_t python_pid;

static int read_text(int task, const char *path, char *text, size_t size)
{
    int fd = openat(task, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t used = 0;
    ssize_t got = 0;
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
    return got < 0 ? -1 : 0;
}

static bool is_inherited_status_line(const char *line)
{
    for (size_t i = 0; i < STATUS_FIELD_COUNT; i++)
        if (strncmp(line, status_fields[i], strlen(status_fields[i])) == 0)
            return true;
    return false;
}

/* Keeps only the inherited lines of a status text, in place. */
static void filter_status(char *text)
{
    char *kept = text;
    for (char *line = text; *line;) {
        char *end = strchrnul(line, '\n');
        size_t length = (size_t)(end - line) + (*end == '\n');
        if (is_inherited_status_line(line)) {
            memmove(kept, line, length);
            kept += length;
        }
        line += length;
    }
    *kept = '\0';
}

/* The soft and hard limit of every resource, as `prlimit` of the Python process reads them. */
static int read_limits(char *text)
{
    size_t used = 0;
    for (int resource = 0; resource < RLIM_NLIMITS; resource++) {
        struct rlimit limit;
        if (prlimit(python_pid, resource, NULL, &limit) < 0)
            return -1;
        used += (size_t)snprintf(text + used, PIECE_MAX - used, "%llu:%llu ", (unsigned long long)limit.rlim_cur,
                                 (unsigned long long)limit.rlim_max);
    }
    return 0;
}

/* The thread's nice value and scheduling policy (both per thread on Linux). */
static int read_scheduling(uint32_t tid, char *text)
{
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, (id_t)tid);
    if (nice == -1 && errno != 0)
        return -1;
    int policy = sched_getscheduler((pid_t)tid);
    if (policy < 0)
        return -1;
    snprintf(text, PIECE_MAX, "%d:%d", nice, policy);
    return 0;
}

static int read_piece(int task, uint32_t tid, const struct state_piece *piece, char *text)
{
    struct stat status;
    ssize_t length;
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
        return read_limits(text);
    case PIECE_SCHEDULING:
        return read_scheduling(tid, text);
    case PIECE_TEXT:
    case PIECE_STATUS:
        break;
    }
    if (read_text(task, piece->path, text, PIECE_MAX) < 0)
        return errno == ENOENT ? snprintf(text, PIECE_MAX, "absent"), 0 : -1;
    if (piece->kind == PIECE_STATUS)
        filter_status(text);
    return 0;
}

/* Reads the state of thread `tid` of the Python process, and opens its cwd (O_PATH) into `cwd`
 * unless that is NULL: the thread's own, as posix_spawn from it would give the agent, without
 * the caller opening and sending it. -1 with errno if it cannot. */
static int read_state(uint32_t tid, struct state *state, int *cwd)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%u", (int)python_pid, tid);
    int task = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (task < 0)
        return -1;
    int result = 0;
    for (size_t i = 0; i < PIECE_COUNT && result == 0; i++)
        result = read_piece(task, tid, &state_pieces[i], state->pieces[i]);
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

/* The first piece that differs from the snapshot, or NULL. */
static const char *stale_piece(void)
{
    for (size_t i = 0; i < PIECE_COUNT; i++)
        if (strcmp(started_state.pieces[i], caller_state.pieces[i]) != 0)
            return state_pieces[i].name;
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

static void answer_hello(const struct server_request *request)
{
    if (read_state(request->tid, &started_state, NULL) < 0) {
        reply(SERVER_FAILED, (uint32_t)errno, "server_state");
        return;
    }
    hello_done = true;
    reply(SERVER_READY, 0, NULL);
}

/* Answers a spawn request; returns true in the forked agent. */
static bool answer_spawn(struct server_request *request)
{
    if (!hello_done) {
        reply(SERVER_FAILED, EPROTO, "server_no_hello");
        return false;
    }
    if (read_state(request->tid, &caller_state, &request->cwd) < 0) {
        reply(SERVER_STALE, (uint32_t)errno, "unreadable");
        return false;
    }
    const char *stale = stale_piece();
    if (stale) {
        reply(SERVER_STALE, 0, stale);
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
            answer_hello(&request);
        else
            forked = answer_spawn(&request);
        if (forked) {
            memset(mode_argument, 0, strlen(mode_argument));
            return; /* the received fds are closed by prepare_process's close_range */
        }
        close_received(&request);
    }
}
