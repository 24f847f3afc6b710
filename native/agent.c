/* linx-agent: one process per session, one workload per agent, single-shot and
 * single-threaded. Its life, one function per step: prepare the process, read the request,
 * prepare stdio host-side, join namespaces (enter mode), clone3 the child, relay ready, hold
 * the checkpoint, relay the exec outcome, supervise the workload until it is reaped.
 * The protocol is PROTOCOL.md. It never runs a workload without a proceed, never leaves a
 * child unreaped, and never exits silently while the Python side can still hear it. */
#define _GNU_SOURCE
#include "agent.h"
#include "protocol.h"
#include "reaper.h"
#include "request.h"
#include "server.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct agent agent = {
    .stdio_fds = {-1, -1, -1},
    .capture_fds = {-1, -1, -1},
    .pty_master = -1,
    .pty_slave = -1,
    .report_pipe = {-1, -1},
    .go_pipe = {-1, -1},
    .child = -1,
    .child_pidfd = -1,
    .control_open = true,
};

static uint8_t request_buffer[REQUEST_MAX];
static uint8_t command_buffer[COMMAND_MAX];

/* ---- small helpers -------------------------------------------------------------------- */

static _Noreturn void fail(int error, const char *stage, int exit_code)
{
    send_error(error, stage);
    exit(exit_code);
}

static void close_fd(int *fd)
{
    if (*fd >= 0 && close(*fd) < 0 && errno != EINTR)
        fprintf(stderr, "linx-agent: close(%d): %s\n", *fd, strerror(errno));
    *fd = -1;
}

static int signal_child(int signum)
{
    return (int)syscall(SYS_pidfd_send_signal, agent.child_pidfd, signum, NULL, 0);
}

/* Blocks until the child has exited and returns its waitid record. */
static siginfo_t reap_child(void)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    while (waitid(P_PIDFD, (id_t)agent.child_pidfd, &info, WEXITED) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "linx-agent: waitid: %s\n", strerror(errno));
            break;
        }
    }
    return info;
}

/* The child is discarded: it has not run (or must stop now) and is reaped before we go on. */
static void discard_child(void)
{
    close_fd(&agent.go_pipe[1]);
    reaper_kill_tree();
    if (signal_child(SIGKILL) < 0 && errno != ESRCH) /* should the tree have missed it */
        fprintf(stderr, "linx-agent: killing the child: %s\n", strerror(errno));
    reap_child();
}

/* After the child exists every failure discards it first, so nothing is left behind. */
static _Noreturn void fail_with_child(int error, const char *stage, int exit_code)
{
    discard_child();
    fail(error, stage, exit_code);
}

static void send_outcome(const siginfo_t *info)
{
    if (info->si_code == CLD_EXITED)
        send_event_u32(EVT_EXITED, (uint32_t)info->si_status);
    else
        send_event_u32(EVT_SIGNALED, (uint32_t)info->si_status);
}

static int64_t now_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* ---- step 1: the process itself -------------------------------------------------------- */

static void prepare_process(void)
{
    /* Keep 0..2 occupied so that no fd the agent opens can land there and be clobbered by
     * the child's dup2s. */
    for (int fd = 0; fd <= 2; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR) != fd)
            exit(EXIT_INFRASTRUCTURE);
    /* Whatever else the Python process let through stays out of the agent and the workload. */
    if (close_range(CONTROL_FD + 1, ~0U, 0) < 0)
        exit(EXIT_INFRASTRUCTURE);
    /* A write to the go pipe of a dead child must be an EPIPE, not our death. The child
     * restores the default before execve. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        exit(EXIT_INFRASTRUCTURE);
    /* Started from a sealed memfd (/proc/self/fd/N: linx_otp/agent_image.py), the kernel
     * names the process "N"; ps, and the tests, know it by its own name. */
    if (prctl(PR_SET_NAME, "linx-agent", 0, 0, 0) < 0)
        exit(EXIT_INFRASTRUCTURE);
}

/* ---- step 2: the request --------------------------------------------------------------- */

/* The held capture pipes came with the request (SCM_RIGHTS): for stdout, then stderr, each that
 * is held, its read end and its write end. Anything else is a malformed request; ends that are
 * not the two ends of one pipe fail the `capture` stage. */
static void take_held_pipes(const int *fds, size_t count)
{
    size_t next = 0;
    for (int fd = 1; fd <= 2; fd++) {
        if (agent.request.stdio[fd].kind != STDIO_CAPTURE_HELD)
            continue;
        if (next + 2 > count)
            fail(EINVAL, "malformed_request", EXIT_MALFORMED);
        int read_end = fds[next++], write_end = fds[next++];
        struct stat read_status, write_status;
        if (fstat(read_end, &read_status) < 0 || fstat(write_end, &write_status) < 0)
            fail(errno, "capture", EXIT_INFRASTRUCTURE);
        int read_flags = fcntl(read_end, F_GETFL), write_flags = fcntl(write_end, F_GETFL);
        if (!S_ISFIFO(read_status.st_mode) || read_status.st_ino != write_status.st_ino ||
            read_status.st_dev != write_status.st_dev || read_flags < 0 || write_flags < 0 ||
            (read_flags & O_ACCMODE) != O_RDONLY || (write_flags & O_ACCMODE) != O_WRONLY)
            fail(EINVAL, "capture", EXIT_INFRASTRUCTURE);
        if (fcntl(read_end, F_SETFL, read_flags | O_NONBLOCK) < 0)
            fail(errno, "capture", EXIT_INFRASTRUCTURE);
        agent.capture_fds[fd] = read_end;
        agent.stdio_fds[fd] = write_end;
        agent.held[fd] = true;
    }
    if (next != count)
        fail(EINVAL, "malformed_request", EXIT_MALFORMED);
}

static void read_request(void)
{
    size_t length = 0;
    int fds[FRAME_FDS_MAX];
    size_t fd_count = FRAME_FDS_MAX;
    switch (read_frame(CONTROL_FD, request_buffer, sizeof request_buffer, &length, fds, &fd_count)) {
    case FRAME_OK:
        break;
    case FRAME_EOF:
        exit(EXIT_CHANNEL); /* nobody to tell */
    case FRAME_FAILED:
        if (errno == EMSGSIZE) /* more fds than a request can carry: none was kept */
            fail(EINVAL, "malformed_request", EXIT_MALFORMED);
        fprintf(stderr, "linx-agent: reading the request: %s\n", strerror(errno));
        exit(EXIT_CHANNEL);
    case FRAME_TOO_BIG:
        fail(EMSGSIZE, "request_too_big", EXIT_CHANNEL);
    case FRAME_TRUNCATED:
    case FRAME_EMPTY:
        fail(EINVAL, "malformed_request", EXIT_MALFORMED);
    }
    if (parse_request(request_buffer, length, &agent.request) < 0)
        fail(EINVAL, "malformed_request", EXIT_MALFORMED);
    take_held_pipes(fds, fd_count);
    agent.output.size = agent.request.output_window;
    agent.output.mode = agent.request.output_mode;
}

/* ---- step 3: stdio, host-side, before any clone or setns ------------------------------- */

static int connect_unix(const char *path)
{
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    return fd;
}

static void open_pty(void)
{
    agent.pty_master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (agent.pty_master < 0)
        fail(errno, "posix_openpt", EXIT_INFRASTRUCTURE);
    int flags = fcntl(agent.pty_master, F_GETFL);
    if (flags < 0 || fcntl(agent.pty_master, F_SETFL, flags | O_NONBLOCK) < 0 ||
        grantpt(agent.pty_master) < 0 || unlockpt(agent.pty_master) < 0)
        fail(errno, "ptsetup", EXIT_INFRASTRUCTURE);
    agent.pty_slave = ioctl(agent.pty_master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (agent.pty_slave < 0)
        fail(errno, "pts_open", EXIT_INFRASTRUCTURE);
}

/* A capture pipe as deep as one output event (the default is 64 KiB): the workload runs ahead
 * while the agent relays, and the agent moves the output in fewer, bigger events. Best effort:
 * an unprivileged user past the kernel's pipe-user-pages-soft gets EPERM and keeps the default. */
static void deepen_capture_pipe(int fd)
{
    if (fcntl(fd, F_SETPIPE_SZ, OUTPUT_CHUNK) < 0 && errno != EPERM)
        fprintf(stderr, "linx-agent: F_SETPIPE_SZ: %s\n", strerror(errno));
}

static void prepare_stdio(void)
{
    if (agent.request.pty) {
        open_pty();
        return;
    }
    for (int fd = 0; fd <= 2; fd++) {
        const struct stdio_directive *directive = &agent.request.stdio[fd];
        if (directive->kind == STDIO_CONNECT_UNIX) {
            agent.stdio_fds[fd] = connect_unix(directive->path);
            if (agent.stdio_fds[fd] < 0)
                fail(errno, "connect_unix", EXIT_INFRASTRUCTURE);
        } else if (directive->kind == STDIO_DEVNULL) {
            agent.stdio_fds[fd] = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (agent.stdio_fds[fd] < 0)
                fail(errno, "devnull", EXIT_INFRASTRUCTURE);
        } else if (directive->kind == STDIO_CAPTURE) {
            int ends[2];
            if (pipe2(ends, O_CLOEXEC) < 0 || fcntl(ends[0], F_SETFL, O_NONBLOCK) < 0)
                fail(errno, "capture", EXIT_INFRASTRUCTURE);
            deepen_capture_pipe(ends[0]);
            agent.capture_fds[fd] = ends[0];
            agent.stdio_fds[fd] = ends[1];
        }
    }
}

static void create_pipes(void)
{
    if (pipe2(agent.report_pipe, O_CLOEXEC) < 0 || pipe2(agent.go_pipe, O_CLOEXEC) < 0)
        fail(errno, "pipe2", EXIT_INFRASTRUCTURE);
}

/* ---- step 4 (enter mode): join the target's namespaces ---------------------------------- */

static const struct namespace_kind {
    uint32_t bit;
    const char *name;      /* as users and error stages name it */
    const char *proc_name; /* under /proc/<pid>/ns */
    int clone_flag;
} namespace_kinds[] = {
    /* Join order: user first (it grants the capabilities for the rest), pid last (it only
     * affects children). */
    {NS_USER, "user", "user", CLONE_NEWUSER},   {NS_MOUNT, "mount", "mnt", CLONE_NEWNS},
    {NS_UTS, "uts", "uts", CLONE_NEWUTS},       {NS_IPC, "ipc", "ipc", CLONE_NEWIPC},
    {NS_CGROUP, "cgroup", "cgroup", CLONE_NEWCGROUP}, {NS_NET, "net", "net", CLONE_NEWNET},
    {NS_TIME, "time", "time", CLONE_NEWTIME},   {NS_PID, "pid", "pid", CLONE_NEWPID},
};
#define NAMESPACE_KIND_COUNT (sizeof namespace_kinds / sizeof namespace_kinds[0])

static _Noreturn void fail_namespace(const char *what, const struct namespace_kind *kind)
{
    int error = errno;
    char stage[STAGE_NAME_MAX];
    snprintf(stage, sizeof stage, "%s_%s", what, kind->name);
    fail(error, stage, EXIT_CREATE);
}

static bool is_own_namespace(int fd, const struct namespace_kind *kind)
{
    char own_path[64];
    struct stat own, theirs;
    snprintf(own_path, sizeof own_path, "/proc/self/ns/%s", kind->proc_name);
    return stat(own_path, &own) == 0 && fstat(fd, &theirs) == 0 && own.st_dev == theirs.st_dev &&
           own.st_ino == theirs.st_ino;
}

static void join_namespaces(void)
{
    const struct request *request = &agent.request;
    bool join_all = !request->namespaces_given;
    uint32_t wanted = join_all ? NS_ALL : request->namespaces;
    int namespace_fds[NAMESPACE_KIND_COUNT];
    char path[64];

    /* Pin the target once: if its pid is recycled, lookups through this fd fail instead of
     * resolving somebody else's namespaces. */
    snprintf(path, sizeof path, "/proc/%u", request->target);
    int proc_dir = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (proc_dir < 0)
        fail(errno, "open_ns_proc", EXIT_CREATE);

    /* Open every namespace first, so they stay alive even if the target exits meanwhile. */
    for (size_t i = 0; i < NAMESPACE_KIND_COUNT; i++) {
        const struct namespace_kind *kind = &namespace_kinds[i];
        namespace_fds[i] = -1;
        if (!(wanted & kind->bit))
            continue;
        snprintf(path, sizeof path, "ns/%s", kind->proc_name);
        int fd = openat(proc_dir, path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && join_all && errno == ENOENT)
            continue; /* a kind this kernel does not have */
        if (fd < 0)
            fail_namespace("open_ns", kind);
        if (is_own_namespace(fd, kind))
            close_fd(&fd); /* setns into one's own user namespace fails; nothing to do */
        namespace_fds[i] = fd;
    }
    for (size_t i = 0; i < NAMESPACE_KIND_COUNT; i++) {
        if (namespace_fds[i] < 0)
            continue;
        if (setns(namespace_fds[i], namespace_kinds[i].clone_flag) < 0)
            fail_namespace("setns", &namespace_kinds[i]);
        close_fd(&namespace_fds[i]);
    }
    close_fd(&proc_dir);
}

/* ---- step 5: the child ----------------------------------------------------------------- */

static uint64_t clone_flags_for(uint32_t namespaces)
{
    uint64_t flags = 0;
    for (size_t i = 0; i < NAMESPACE_KIND_COUNT; i++)
        if (namespaces & namespace_kinds[i].bit)
            flags |= (uint64_t)namespace_kinds[i].clone_flag;
    return flags;
}

static void create_child(void)
{
    /* clone3, not clone(): CLONE_NEWTIME overlaps clone()'s exit-signal byte and is silently
     * dropped there. No stack is given, so the child continues here like a fork. */
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_PIDFD;
    if (agent.request.mode == MODE_SPAWN)
        args.flags |= clone_flags_for(agent.request.namespaces);
    args.pidfd = (uint64_t)(uintptr_t)&agent.child_pidfd;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0)
        fail(errno, agent.request.mode == MODE_SPAWN ? "clone" : "fork", EXIT_CREATE);
    if (pid == 0)
        run_child(&agent);
    agent.child = (pid_t)pid;
    reaper_set_workload(agent.child);

    /* Drop the child's ends and the stdio fds now, so that end-of-file means what it says:
     * a connect_unix listener sees EOF when the workload closes, not when the agent exits. */
    close_fd(&agent.report_pipe[1]);
    close_fd(&agent.go_pipe[0]);
    close_fd(&agent.pty_slave);
    for (int fd = 0; fd <= 2; fd++)
        close_fd(&agent.stdio_fds[fd]);
    send_event_u32(EVT_SPAWNED, (uint32_t)agent.child);
}

/* ---- the control socket ---------------------------------------------------------------- */

enum control_wait { CONTROL_QUIET, CONTROL_READABLE, CONTROL_HANGUP };

static short control_events(void)
{
    return agent.control_open ? POLLIN : 0;
}

static enum control_wait control_state(short revents)
{
    if (!agent.control_open)
        return CONTROL_QUIET;
    if (revents & POLLIN)
        return CONTROL_READABLE;
    if (revents & (POLLHUP | POLLERR))
        return CONTROL_HANGUP;
    return CONTROL_QUIET;
}

struct command {
    uint8_t type;
    const uint8_t *body;
    size_t size;
};

enum command_result { COMMAND_OK, COMMAND_HANGUP };

/* Reads one command. A malformed or oversized one is fatal: the child is discarded and the
 * error is the last event. */
static enum command_result read_command(struct command *command)
{
    size_t length = 0;
    switch (read_frame(CONTROL_FD, command_buffer, sizeof command_buffer, &length, NULL, NULL)) {
    case FRAME_OK:
        break;
    case FRAME_EOF:
    case FRAME_FAILED:
        return COMMAND_HANGUP;
    case FRAME_TOO_BIG:
        fail_with_child(EMSGSIZE, "command_too_big", EXIT_CHANNEL);
    case FRAME_TRUNCATED:
    case FRAME_EMPTY:
        fail_with_child(EPROTO, "malformed_command", EXIT_CHANNEL);
    }
    command->type = command_buffer[0];
    command->body = command_buffer + 1;
    command->size = length - 1;
    bool well_formed;
    switch (command->type) {
    case CMD_PROCEED:
    case CMD_ABORT:
    case CMD_STOP:
        well_formed = command->size == 0;
        break;
    case CMD_SIGNAL:
        well_formed = command->size == 1 && command->body[0] >= 1 && command->body[0] <= 64;
        break;
    case CMD_PTY_IN:
        well_formed = true;
        break;
    case CMD_WINSIZE:
        well_formed = command->size == 8;
        break;
    case CMD_CREDIT:
        well_formed = command->size == 4;
        break;
    case CMD_OUTPUT_MODE:
        well_formed = command->size == 1 && command->body[0] <= OUTPUT_DROP;
        break;
    case CMD_RELAY:
        well_formed = command->size == 5 && load_u32(command->body + 1) <= OUTPUT_WINDOW_MAX &&
                      (command->body[0] == OUTPUT_STREAM_STDOUT || command->body[0] == OUTPUT_STREAM_STDERR);
        break;
    default:
        well_formed = false;
    }
    if (!well_formed)
        fail_with_child(EPROTO, "malformed_command", EXIT_CHANNEL);
    return COMMAND_OK;
}

static void apply_winsize(const struct command *command)
{
    if (agent.pty_master < 0)
        return;
    struct winsize size = {
        .ws_row = load_u16(command->body),
        .ws_col = load_u16(command->body + 2),
        .ws_xpixel = load_u16(command->body + 4),
        .ws_ypixel = load_u16(command->body + 6),
    };
    if (ioctl(agent.pty_master, TIOCSWINSZ, &size) < 0)
        fprintf(stderr, "linx-agent: TIOCSWINSZ: %s\n", strerror(errno));
}

/* ---- output flow control (PROTOCOL.md, "Flow control") ------------------------------- */

/* Bytes of output the window lets the agent send now; 0 when it is full. */
static uint64_t window_room(void)
{
    const struct output_window *window = &agent.output;
    return window->in_flight >= window->size ? 0 : window->size - window->in_flight;
}

/* credit gives back bytes the owner has taken; more than is in flight is capped, so a
 * confused peer can never open the window wider than its size. */
static void apply_credit(const struct command *command)
{
    uint64_t taken = load_u32(command->body);
    agent.output.in_flight -= taken < agent.output.in_flight ? taken : agent.output.in_flight;
}

/* Every held pipe is the agent's to relay from now on (or drop): the Python side has stopped
 * reading them, or will never read again. */
static void relay_held_pipes(void)
{
    memset(agent.held, 0, sizeof agent.held);
}

/* relay: the pipe is the agent's to relay from now on, and what the Python side read from it
 * and its owner has not taken yet counts as in flight (the window carries over). */
static void relay_held_pipe(const struct command *command)
{
    uint8_t stream = command->body[0];
    if (!agent.held[stream])
        return; /* not held, or relayed already: nothing changes */
    agent.held[stream] = false;
    agent.output.in_flight += load_u32(command->body + 1);
}

/* The flow-control commands, valid in every phase; any other command is ignored here. */
static void apply_output_command(const struct command *command)
{
    if (command->type == CMD_CREDIT)
        apply_credit(command);
    else if (command->type == CMD_OUTPUT_MODE)
        agent.output.mode = command->body[0];
    else if (command->type == CMD_RELAY)
        relay_held_pipe(command);
}

/* ---- step 6: ready ---------------------------------------------------------------------- */

/* Waits for one record from the child while watching fd 3 for a hangup (commands wait in the
 * socket until the checkpoint reads them in order). Returns the bytes read (0 on end-of-file).
 * A hangup of the Python side discards the child: it must never run. */
static ssize_t await_report(struct child_report *report)
{
    for (;;) {
        struct pollfd fds[2] = {
            {.fd = agent.report_pipe[0], .events = POLLIN},
            {.fd = CONTROL_FD, .events = 0},
        };
        if (poll(fds, agent.control_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            fail_with_child(errno, "poll", EXIT_INFRASTRUCTURE);
        }
        if (fds[0].revents)
            return read_fully(agent.report_pipe[0], report, sizeof *report);
        if (control_state(fds[1].revents) == CONTROL_HANGUP) {
            discard_child();
            exit(EXIT_CHANNEL);
        }
    }
}

/* The child reported an error: relay it as the terminal event, reap, done. */
static _Noreturn void relay_child_error(const struct child_report *report)
{
    char stage[STAGE_NAME_MAX];
    snprintf(stage, sizeof stage, "%.*s", STAGE_NAME_MAX - 1, report->stage);
    reap_child();
    close_fd(&agent.go_pipe[1]);
    send_error(report->value, stage);
    exit(EXIT_DONE);
}

static void await_ready(void)
{
    struct child_report report;
    ssize_t got = await_report(&report);
    if (got < 0)
        fail_with_child(errno, "ready_frame", EXIT_INFRASTRUCTURE);
    if (got == 0)
        fail_with_child(EIO, "ready_frame", EXIT_INFRASTRUCTURE);
    if (got != (ssize_t)sizeof report)
        fail_with_child(EPROTO, "malformed_ready", EXIT_INFRASTRUCTURE);
    if (report.kind == REPORT_ERROR)
        relay_child_error(&report);
    if (report.kind != REPORT_READY)
        fail_with_child(EPROTO, "malformed_ready", EXIT_INFRASTRUCTURE);
    send_event_u32(EVT_READY, (uint32_t)report.value);
}

/* ---- step 7: the checkpoint ------------------------------------------------------------- */

static _Noreturn void abort_child(void)
{
    discard_child();
    send_event(EVT_ABORTED, NULL, 0);
    exit(EXIT_DONE);
}

/* The child died while parked (killed from outside): its real fate is the outcome. */
static _Noreturn void relay_parked_death(void)
{
    siginfo_t info = reap_child();
    send_outcome(&info);
    exit(EXIT_DONE);
}

static void hold_checkpoint(void)
{
    for (;;) {
        struct pollfd fds[2] = {
            {.fd = CONTROL_FD, .events = control_events()},
            {.fd = agent.report_pipe[0], .events = POLLIN},
        };
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            fail_with_child(errno, "poll", EXIT_INFRASTRUCTURE);
        }
        if (fds[1].revents)
            relay_parked_death(); /* a parked child writes nothing: this is its death */
        enum control_wait state = control_state(fds[0].revents);
        struct command command;
        if (state == CONTROL_QUIET)
            continue;
        if (state == CONTROL_HANGUP || read_command(&command) == COMMAND_HANGUP) {
            discard_child();
            exit(EXIT_CHANNEL);
        }
        switch (command.type) {
        case CMD_PROCEED:
            if (write_fully(agent.go_pipe[1], "P", 1) < 0)
                relay_parked_death(); /* EPIPE: the child is already gone */
            close_fd(&agent.go_pipe[1]);
            return;
        case CMD_ABORT:
        case CMD_STOP:
            abort_child();
        case CMD_WINSIZE:
            apply_winsize(&command);
            break;
        default:
            apply_output_command(&command); /* anything else is not for this phase: ignored */
            break;
        }
    }
}

/* ---- step 8: the exec outcome ----------------------------------------------------------- */

static void await_exec_outcome(void)
{
    struct child_report report;
    /* Not await_report: once proceed is sent the exec is under way; a hangup now is the
     * orphan policy's business, in the supervise loop. */
    ssize_t got = read_fully(agent.report_pipe[0], &report, sizeof report);
    if (got == 0) {
        close_fd(&agent.report_pipe[0]);
        send_event(EVT_RUNNING, NULL, 0);
        return;
    }
    if (got == (ssize_t)sizeof report && report.kind == REPORT_ERROR)
        relay_child_error(&report);
    fail_with_child(got < 0 ? errno : EIO, "exec_outcome", EXIT_INFRASTRUCTURE);
}

/* ---- step 9: supervise ------------------------------------------------------------------ */

struct pty_input {
    uint8_t *data;
    size_t used;
    size_t capacity;
};

/* A stream the agent relays as events: the pty master, or a capture pipe. */
struct output_stream {
    int fd;
    uint8_t id;        /* OUTPUT_STREAM_*, as output_dropped names it; also its index */
    uint8_t event;     /* EVT_PTY_OUT, EVT_STDOUT or EVT_STDERR */
    bool readable;     /* false once every writer is gone */
    uint64_t dropped;  /* drop mode: bytes discarded in the current gap, not yet reported */
    uint64_t left;     /* bytes still to relay: unlimited until the workload exits */
};

#define STREAM_COUNT 3
#define UNLIMITED UINT64_MAX
/* Reads of one stream per turn of the loop, so that a flood never starves the other streams,
 * the control socket or the workload's exit. */
#define RELAY_BURST 16

struct supervision {
    struct pty_input input;
    struct output_stream streams[STREAM_COUNT];
    int64_t kill_deadline;   /* orphan policy or descendants' grace: SIGKILL the tree at this time; -1 none */
    bool tree_killed;        /* SIGKILL went to the whole tree: whatever survived it is not waited for */
    bool workload_reaped;    /* its outcome waits in `outcome` until no descendant is left */
    bool leftover_measured;  /* all are gone: each pipe's last bytes are counted, and relayed as credit allows */
    siginfo_t outcome;
};

/* One output event, built in place: the read lands where the frame's body goes. */
static uint8_t output_frame[OUTPUT_FRAME_OFFSET + OUTPUT_CHUNK];

/* The end of a gap (drop mode): one output_dropped for all of it. */
static void report_dropped(struct output_stream *stream)
{
    if (stream->dropped == 0)
        return;
    send_output_dropped(stream->id, stream->dropped);
    stream->dropped = 0;
}

/* Whether the agent reads the stream now: block mode only while the window has room, so a
 * workload that outpaces its owner blocks in write(2); drop mode always. */
static bool may_read(const struct output_stream *stream)
{
    return stream->readable && !agent.held[stream->id] && stream->left > 0 &&
           (window_room() > 0 || agent.output.mode == OUTPUT_DROP);
}

static size_t read_size(const struct output_stream *stream, bool dropping)
{
    uint64_t size = OUTPUT_CHUNK;
    if (!dropping && window_room() < size)
        size = window_room();
    if (stream->left < size)
        size = stream->left;
    return (size_t)size;
}

static void relay_chunk(struct output_stream *stream, size_t size, bool dropping)
{
    if (stream->left != UNLIMITED)
        stream->left -= size;
    if (dropping) {
        stream->dropped += size;
        return;
    }
    report_dropped(stream);
    send_output_frame(stream->event, output_frame, size);
    agent.output.in_flight += size;
}

enum fill_end { FILL_FULL, FILL_AGAIN, FILL_CLOSED };

/* Reads up to `size` bytes into the output frame, with as many reads as the stream gives at
 * once (a pty hands out a few KiB per read): fewer, fuller events. Returns the bytes read;
 * *end says why it stopped: full, EAGAIN, or end-of-file/EIO (every writer has closed it). */
static size_t fill_frame(const struct output_stream *stream, size_t size, enum fill_end *end)
{
    size_t filled = 0;
    while (filled < size) {
        ssize_t got = read(stream->fd, output_frame + OUTPUT_FRAME_OFFSET + filled, size - filled);
        if (got > 0) {
            filled += (size_t)got;
            continue;
        }
        if (got < 0 && errno == EINTR)
            continue;
        *end = got < 0 && errno == EAGAIN ? FILL_AGAIN : FILL_CLOSED;
        if (got < 0 && errno != EAGAIN && errno != EIO) /* EIO: a pty whose every slave fd is closed */
            fprintf(stderr, "linx-agent: reading output: %s\n", strerror(errno));
        return filled;
    }
    *end = FILL_FULL;
    return filled;
}

/* Relays what the stream holds now, a burst at most: stops at a full window (block mode), at
 * EAGAIN (more may come; once the workload is gone, the stream is drained), or at end-of-file. */
static void relay_stream(struct output_stream *stream, bool workload_gone)
{
    for (int burst = 0; burst < RELAY_BURST && may_read(stream); burst++) {
        bool dropping = window_room() == 0;
        enum fill_end end;
        size_t got = fill_frame(stream, read_size(stream, dropping), &end);
        if (got > 0)
            relay_chunk(stream, got, dropping);
        if (end == FILL_AGAIN) {
            if (workload_gone)
                stream->left = 0; /* what descendants write later is not waited for */
            return;
        }
        if (end == FILL_CLOSED) {
            stream->readable = false;
            report_dropped(stream);
            return;
        }
    }
}

static void relay_streams(struct supervision *supervision, bool workload_gone)
{
    for (int index = 0; index < STREAM_COUNT; index++)
        relay_stream(&supervision->streams[index], workload_gone);
}

/* At the workload's exit a pipe holds all it will ever get from the workload: relay that much
 * and no more (a descendant may hold the pipe and write forever). A pty is read until it is
 * empty instead, as its last output may still be on its way through the line discipline. */
static void measure_leftover(struct output_stream *stream)
{
    int queued = 0;
    if (!stream->readable || stream->id == OUTPUT_STREAM_PTY || agent.held[stream->id])
        return; /* a held pipe is drained by the Python side at the terminal event */
    if (ioctl(stream->fd, FIONREAD, &queued) < 0) {
        fprintf(stderr, "linx-agent: FIONREAD: %s\n", strerror(errno));
        return; /* read it until EAGAIN instead */
    }
    stream->left = (uint64_t)queued;
}

static bool streams_drained(const struct supervision *supervision)
{
    for (int index = 0; index < STREAM_COUNT; index++)
        if (supervision->streams[index].readable && !agent.held[index] && supervision->streams[index].left > 0)
            return false;
    return true;
}

/* The terminal event is last: after every gap has been reported. */
static void send_final_events(struct supervision *supervision)
{
    for (int index = 0; index < STREAM_COUNT; index++)
        report_dropped(&supervision->streams[index]);
    send_outcome(&supervision->outcome);
}

static void flush_pty_input(struct supervision *supervision)
{
    struct pty_input *input = &supervision->input;
    while (input->used > 0) {
        ssize_t written = write(agent.pty_master, input->data, input->used);
        if (written < 0 && errno == EINTR)
            continue;
        if (written < 0 && errno == EAGAIN)
            return;
        if (written < 0) {
            input->used = 0; /* the slave side is gone: nothing will read it */
            return;
        }
        memmove(input->data, input->data + written, input->used - (size_t)written);
        input->used -= (size_t)written;
    }
}

static void queue_pty_input(struct supervision *supervision, const struct command *command)
{
    struct pty_input *input = &supervision->input;
    if (agent.pty_master < 0 || command->size == 0)
        return;
    if (input->used + command->size > PTY_IN_BUFFER_MAX) {
        send_event_u32(EVT_PTY_IN_DROPPED, (uint32_t)command->size);
        return;
    }
    if (input->used + command->size > input->capacity) {
        size_t capacity = input->capacity ? input->capacity : 4096;
        while (capacity < input->used + command->size)
            capacity *= 2;
        uint8_t *grown = realloc(input->data, capacity);
        if (!grown) {
            send_event_u32(EVT_PTY_IN_DROPPED, (uint32_t)command->size);
            return;
        }
        input->data = grown;
        input->capacity = capacity;
    }
    memcpy(input->data + input->used, command->body, command->size);
    input->used += command->size;
    flush_pty_input(supervision);
}

/* The Python side is gone without a graceful stop: apply the orphan policy. Nobody takes
 * output any more, so it is dropped rather than left to block the workload. */
static void orphan(struct supervision *supervision)
{
    agent.control_open = false;
    agent.output.mode = OUTPUT_DROP;
    relay_held_pipes();
    if (agent.request.orphan_policy == ORPHAN_LINGER)
        return;
    if (signal_child(SIGTERM) < 0 && errno != ESRCH)
        fprintf(stderr, "linx-agent: SIGTERM to the workload: %s\n", strerror(errno));
    if (supervision->kill_deadline < 0) /* descendants already being ended keep their deadline */
        supervision->kill_deadline = now_ms() + agent.request.orphan_grace_ms;
}

/* SIGKILL to the workload and everything below it, frozen first: killed first, the workload
 * would hand its children to an entered pid namespace's init before they are found.
 * Returns once all but the workload are reaped. */
static void kill_workload(struct supervision *supervision)
{
    reaper_kill_tree();
    if (!supervision->workload_reaped && signal_child(SIGKILL) < 0 && errno != ESRCH)
        fprintf(stderr, "linx-agent: SIGKILL to the workload: %s\n", strerror(errno));
    supervision->tree_killed = true;
    supervision->kill_deadline = -1;
}

static void handle_running_command(struct supervision *supervision)
{
    struct command command;
    if (read_command(&command) == COMMAND_HANGUP) {
        orphan(supervision);
        return;
    }
    switch (command.type) {
    case CMD_SIGNAL:
        if (signal_child(command.body[0]) < 0 && errno != ESRCH)
            fprintf(stderr, "linx-agent: signal %d: %s\n", command.body[0], strerror(errno));
        break;
    case CMD_PTY_IN:
        queue_pty_input(supervision, &command);
        break;
    case CMD_WINSIZE:
        apply_winsize(&command);
        break;
    case CMD_STOP:
        kill_workload(supervision);
        agent.output.mode = OUTPUT_DROP; /* the reap never waits for an owner to take output */
        relay_held_pipes();
        break;
    default:
        apply_output_command(&command); /* proceed or abort after running: nothing to do */
        break;
    }
}

/* The workload has ended: its outcome waits while its descendants get SIGTERM, and SIGKILL
 * when the grace is over (or at the orphan policy's deadline, if that comes first). */
static void reap_if_exited(struct supervision *supervision)
{
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PIDFD, (id_t)agent.child_pidfd, &info, WEXITED | WNOHANG) < 0 || info.si_pid == 0)
        return;
    supervision->workload_reaped = true;
    supervision->outcome = info;
    reaper_set_workload(-1);
    if (!reaper_has_descendants())
        return;
    reaper_terminate_descendants();
    uint32_t grace_ms = agent.request.orphan_policy == ORPHAN_LINGER ? ORPHAN_DEFAULT_GRACE_MS
                                                                     : agent.request.orphan_grace_ms;
    if (supervision->kill_deadline < 0)
        supervision->kill_deadline = now_ms() + grace_ms;
}

/* Returns true once the workload and every descendant are reaped, what they wrote is relayed
 * (in block mode, as credit comes), and the outcome is sent, last. */
static bool report_if_all_gone(struct supervision *supervision)
{
    if (!supervision->workload_reaped)
        return false;
    reaper_collect();
    if (!supervision->tree_killed && reaper_has_descendants())
        return false;
    if (!supervision->leftover_measured) {
        for (int index = 0; index < STREAM_COUNT; index++)
            measure_leftover(&supervision->streams[index]);
        supervision->leftover_measured = true;
    }
    relay_streams(supervision, true);
    if (!streams_drained(supervision))
        return false; /* block mode: the rest waits for credit */
    send_final_events(supervision);
    return true;
}

static int poll_timeout(const struct supervision *supervision)
{
    if (supervision->kill_deadline < 0)
        return -1;
    int64_t left = supervision->kill_deadline - now_ms();
    return left < 0 ? 0 : (int)(left > 60000 ? 60000 : left);
}

/* The poll entry of a stream: input when the agent may read it, output when keystrokes wait
 * for the pty (which never depends on the window); -1 when neither, so that a hangup does not
 * wake the loop while the window is full. */
static struct pollfd stream_poll_entry(const struct supervision *supervision, int index)
{
    const struct output_stream *stream = &supervision->streams[index];
    struct pollfd entry = {.fd = -1};
    if (may_read(stream))
        entry.events |= POLLIN;
    if (index == OUTPUT_STREAM_PTY && stream->readable && supervision->input.used)
        entry.events |= POLLOUT;
    if (entry.events)
        entry.fd = stream->fd;
    return entry;
}

static void supervise(void)
{
    struct supervision supervision = {
        .streams = {
            [OUTPUT_STREAM_PTY] = {agent.pty_master, OUTPUT_STREAM_PTY, EVT_PTY_OUT, agent.pty_master >= 0, 0,
                                   UNLIMITED},
            [OUTPUT_STREAM_STDOUT] = {agent.capture_fds[1], OUTPUT_STREAM_STDOUT, EVT_STDOUT,
                                      agent.capture_fds[1] >= 0, 0, UNLIMITED},
            [OUTPUT_STREAM_STDERR] = {agent.capture_fds[2], OUTPUT_STREAM_STDERR, EVT_STDERR,
                                      agent.capture_fds[2] >= 0, 0, UNLIMITED},
        },
        .kill_deadline = -1,
    };
    for (;;) {
        if (report_if_all_gone(&supervision))
            return;
        struct pollfd fds[3 + STREAM_COUNT] = {
            {.fd = supervision.workload_reaped ? -1 : agent.child_pidfd, .events = POLLIN},
            {.fd = agent.control_open ? CONTROL_FD : -1, .events = control_events()},
            [2 + STREAM_COUNT] = {.fd = reaper_signal_fd(), .events = POLLIN},
        };
        for (int index = 0; index < STREAM_COUNT; index++)
            fds[2 + index] = stream_poll_entry(&supervision, index);
        if (poll(fds, 3 + STREAM_COUNT, poll_timeout(&supervision)) < 0) {
            if (errno == EINTR)
                continue;
            /* Report it, but never leave an unsupervised workload behind. */
            int error = errno;
            kill_workload(&supervision);
            if (!supervision.workload_reaped)
                reap_child();
            fail(error, "poll", EXIT_INFRASTRUCTURE);
        }
        for (int index = 0; index < STREAM_COUNT; index++)
            if (fds[2 + index].revents & (POLLIN | POLLHUP | POLLERR))
                relay_stream(&supervision.streams[index], false);
        if (fds[2 + OUTPUT_STREAM_PTY].revents & (POLLOUT | POLLHUP | POLLERR))
            flush_pty_input(&supervision);
        if (fds[2 + STREAM_COUNT].revents)
            reaper_collect();
        if (fds[0].revents)
            reap_if_exited(&supervision);
        enum control_wait state = control_state(fds[1].revents);
        if (state == CONTROL_READABLE)
            handle_running_command(&supervision);
        else if (state == CONTROL_HANGUP)
            orphan(&supervision);
        if (supervision.kill_deadline >= 0 && now_ms() >= supervision.kill_deadline)
            kill_workload(&supervision);
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], SERVER_ARGUMENT) == 0)
        serve_spawn_requests(argv[1]); /* returns in each agent it forks */
    prepare_process();
    read_request();
    prepare_stdio();
    create_pipes();
    if (reaper_start() < 0)
        fail(errno, "reaper", EXIT_INFRASTRUCTURE);
    if (agent.request.mode == MODE_ENTER)
        join_namespaces();
    create_child();
    await_ready();
    hold_checkpoint();
    await_exec_outcome();
    supervise();
    return EXIT_DONE;
}
