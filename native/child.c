/* The child's life between clone3 and execve: announce ready, wait at the checkpoint, then
 * set up stdio, signals and fds and exec the workload. Runs in a copy of the single-threaded
 * agent, so it may call libc, but it must never return into the agent's code, and every
 * failure is reported on the report pipe with its stage, then _exit. */
#define _GNU_SOURCE
#include "agent.h"
#include "harden.h"
#include "protocol.h"
#include "wire.h"

#include <errno.h>
#include <limits.h>
#include <linux/close_range.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static int report_fd = -1;
static pid_t agent_pid = -1; /* getppid() at the start: 0 in a fresh pid namespace */

static void write_report(const struct child_report *report)
{
    if (write_fully(report_fd, report, sizeof *report) != (ssize_t)sizeof *report)
        _exit(CHILD_EXIT_REPORT_FAILED);
}

static _Noreturn void fail(int error, const char *stage)
{
    struct child_report report = {.kind = REPORT_ERROR, .value = error};
    snprintf(report.stage, sizeof report.stage, "%s", stage);
    write_report(&report);
    _exit(CHILD_EXIT_FAILED);
}

static void close_agent_fds(const struct agent *agent)
{
    int agent_fds[] = {CONTROL_FD, agent->report_pipe[0], agent->go_pipe[1], agent->pty_master,
                       agent->capture_fds[1], agent->capture_fds[2]};
    for (size_t i = 0; i < sizeof agent_fds / sizeof agent_fds[0]; i++)
        if (agent_fds[i] >= 0 && close(agent_fds[i]) < 0)
            fail(errno, "stdio");
}

static void wait_at_checkpoint(int go_fd)
{
    char command;
    ssize_t got;
    do
        got = read(go_fd, &command, 1);
    while (got < 0 && errno == EINTR);
    if (got <= 0)
        _exit(CHILD_EXIT_ABORTED); /* abort, or the agent died */
    if (command != 'P')
        _exit(CHILD_EXIT_PROTOCOL);
    if (close(go_fd) < 0)
        fail(errno, "stdio");
}

static void attach_pty(int slave)
{
    if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0)
        fail(errno, "stdio");
    for (int fd = 0; fd <= 2; fd++)
        if (dup2(slave, fd) < 0)
            fail(errno, "stdio");
}

static void apply_stdio(const struct agent *agent)
{
    if (agent->request.pty) {
        attach_pty(agent->pty_slave);
        return;
    }
    /* The prepared fds are all above 2 (the agent keeps 0..2 occupied), so no dup2 here
     * clobbers a source another one still needs. dup2 clears close-on-exec on the target. */
    for (int fd = 0; fd <= 2; fd++)
        if (agent->stdio_fds[fd] >= 0 && dup2(agent->stdio_fds[fd], fd) < 0)
            fail(errno, "stdio");
}

/* The kernel's sigaction layout, for rt_sigaction without glibc in the way. */
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

/* Default dispositions for every signal and an empty mask: the workload starts clean, not
 * with what the agent (or the Python process) had. The raw syscall, because glibc's
 * sigaction refuses the two real-time signals it reserves, and those can arrive ignored. */
static void reset_signals(void)
{
    struct kernel_sigaction default_action = {.handler = SIG_DFL};
    sigset_t empty;
    for (int signum = 1; signum <= 64; signum++) {
        if (signum == SIGKILL || signum == SIGSTOP)
            continue;
        if (syscall(SYS_rt_sigaction, signum, &default_action, NULL, sizeof default_action.mask) < 0)
            fail(errno, "stdio");
    }
    sigemptyset(&empty);
    if (sigprocmask(SIG_SETMASK, &empty, NULL) < 0)
        fail(errno, "stdio");
}

static const char *lookup_env(const char **env, const char *name)
{
    size_t length = strlen(name);
    for (; *env; env++)
        if (strncmp(*env, name, length) == 0 && (*env)[length] == '=')
            return *env + length + 1;
    return NULL;
}

/* execve, searching the workload's own PATH when argv[0] has no slash, as execvp does (but
 * with the workload's environment, not the agent's). Returns the errno to report. */
static int exec_workload(const char **argv, const char **env)
{
    const char *file = argv[0];
    char *const *args = (char *const *)argv;
    char *const *envp = (char *const *)env;
    if (file[0] == '\0')
        return ENOENT;
    if (strchr(file, '/')) {
        execve(file, args, envp);
        return errno;
    }
    const char *search = lookup_env(env, "PATH");
    if (!search)
        search = "/bin:/usr/bin";
    bool denied = false;
    for (const char *start = search;; start++) {
        const char *stop = strchrnul(start, ':');
        int dir_length = (int)(stop - start);
        char candidate[PATH_MAX];
        if (dir_length == 0)
            snprintf(candidate, sizeof candidate, "%s", file);
        else if (snprintf(candidate, sizeof candidate, "%.*s/%s", dir_length, start, file) >=
                 (int)sizeof candidate)
            goto next;
        execve(candidate, args, envp);
        if (errno == EACCES)
            denied = true;
        else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENAMETOOLONG)
            return errno;
    next:
        if (*stop == '\0')
            break;
        start = stop;
    }
    return denied ? EACCES : ENOENT;
}

/* The parent-death signal: the workload dies with its agent. The kernel clears it on every
 * change of the effective or filesystem ids and of the capabilities, so it is armed again
 * after each such change, and then an agent that died before the re-arm is looked for: a new
 * parent (getppid), or the report pipe without its reader (the agent is the only one), which
 * also works in a fresh pid namespace, where getppid() reads 0 before and after. */
static void arm_parent_death_signal(void)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        fail(errno, "parent_death_signal");
    struct pollfd reader_gone = {.fd = report_fd, .events = 0};
    if (getppid() != agent_pid || (poll(&reader_gone, 1, 0) > 0 && (reader_gone.revents & POLLERR)))
        _exit(CHILD_EXIT_ABORTED);
}

/* In a fresh user namespace, take uid and gid 0 once the host has written the maps at the
 * checkpoint, as container runtimes do: a child created by root whose map sends 0 to, say,
 * 100000 would otherwise run as the overflow uid. EINVAL means 0 is not mapped: stay as is. */
static void become_root_in_user_namespace(const struct agent *agent)
{
    if (agent->request.mode != MODE_SPAWN || !(agent->request.namespaces & NS_USER))
        return;
    if (setresgid(0, 0, 0) < 0 && errno != EINVAL)
        fail(errno, "user_ids");
    arm_parent_death_signal();
    if (setresuid(0, 0, 0) < 0 && errno != EINVAL)
        fail(errno, "user_ids");
    arm_parent_death_signal();
}

_Noreturn void run_child(struct agent *agent)
{
    report_fd = agent->report_pipe[1];
    agent_pid = getppid();
    /* The go pipe's end-of-file covers an agent that dies before this line. */
    arm_parent_death_signal();
    close_agent_fds(agent);
    if (agent->request.no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        fail(errno, "no_new_privs");
    /* A fresh mount namespace starts with private mounts, as unshare(1) does by default, so
     * nothing the workload or the host mounts in it at the checkpoint leaks to the host's
     * shared mounts (the original left propagation as inherited). */
    if (agent->request.mode == MODE_SPAWN && (agent->request.namespaces & NS_MOUNT) &&
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        fail(errno, "mount_propagation");

    struct child_report ready = {.kind = REPORT_READY, .value = (int32_t)getpid()};
    write_report(&ready);
    wait_at_checkpoint(agent->go_pipe[0]);

    become_root_in_user_namespace(agent);
    apply_stdio(agent);
    reset_signals();
    /* Only 0, 1 and 2 reach the workload; the report pipe closes at a successful execve,
     * which is how the agent learns that the workload runs. */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        fail(errno, "stdio");
    if (agent->request.cwd && chdir(agent->request.cwd) < 0)
        fail(errno, "chdir");
    apply_hardening(agent, fail);
    fail(exec_workload(agent->request.argv, agent->request.env), "execve");
}
