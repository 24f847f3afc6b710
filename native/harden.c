/* The child hardens itself just before execve, in docs/hardening.md's order: extra groups, group, user
 * (capabilities kept across the uid change), rlimits, umask, capabilities, seccomp (last, so
 * the filter never has to allow these steps). Every kernel refusal is reported with its stage
 * and nothing is executed. It never leaves the workload able to outlive the agent: the kernel
 * clears the parent-death signal at each credential change, so it is re-armed after each one
 * and the agent is checked to be still there. libc and kernel headers only. */
#define _GNU_SOURCE
#include "harden.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static harden_failure report_failure;
static pid_t agent_pid; /* as the child sees it: 0 in a fresh pid namespace */
static int report_fd;   /* the write end of the report pipe; the agent holds the read end */

static _Noreturn void refuse(int error, const char *stage)
{
    report_failure(error, stage);
    _exit(CHILD_EXIT_FAILED);
}

/* After a credential change: the parent-death signal again, then a check that the agent did
 * not die before it was armed (a new parent, or no reader left on the report pipe). */
static void rearm_parent_death_signal(void)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
        refuse(errno, "parent_death_signal");
    struct pollfd report = {.fd = report_fd, .events = POLLOUT};
    if (getppid() != agent_pid || (poll(&report, 1, 0) > 0 && (report.revents & POLLERR)))
        _exit(CHILD_EXIT_ABORTED);
}

/* ---- capability sets through capget/capset (no libcap) -------------------------------- */

struct capability_sets {
    uint64_t effective, permitted, inheritable;
};

static int read_capabilities(struct capability_sets *sets)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) < 0)
        return -1;
    sets->effective = (uint64_t)data[1].effective << 32 | data[0].effective;
    sets->permitted = (uint64_t)data[1].permitted << 32 | data[0].permitted;
    sets->inheritable = (uint64_t)data[1].inheritable << 32 | data[0].inheritable;
    return 0;
}

static int write_capabilities(const struct capability_sets *sets)
{
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct data[2];
    for (int half = 0; half < 2; half++) {
        data[half].effective = (uint32_t)(sets->effective >> (32 * half));
        data[half].permitted = (uint32_t)(sets->permitted >> (32 * half));
        data[half].inheritable = (uint32_t)(sets->inheritable >> (32 * half));
    }
    return (int)syscall(SYS_capset, &header, data);
}

/* ---- the steps, in order ----------------------------------------------------------------- */

static bool setgroups_denied(void)
{
    char state[8] = "";
    int fd = open("/proc/self/setgroups", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t got = read(fd, state, sizeof state - 1);
    close(fd);
    return got >= 4 && strncmp(state, "deny", 4) == 0;
}

static void apply_groups(const struct request *request)
{
    if (request->extra_groups_given && setgroups(request->extra_group_count, request->extra_groups) < 0) {
        int error = errno;
        /* An empty list is already what a user namespace that denies setgroups gives. */
        if (!(error == EPERM && request->extra_group_count == 0 && setgroups_denied()))
            refuse(error, "setgroups");
    }
    if (!request->group_given)
        return;
    if (setresgid(request->group, request->group, request->group) < 0)
        refuse(errno, "setgid");
    rearm_parent_death_signal();
}

/* The uid change keeps the permitted set (PR_SET_KEEPCAPS) and restores the effective one, so
 * that rlimits and capabilities are applied with the privileges the agent had; the capability
 * step then leaves exactly what was asked (or, when nothing was, the kernel's rule: none). */
static void apply_user(const struct request *request)
{
    if (!request->user_given)
        return;
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
        refuse(errno, "setuid");
    if (setresuid(request->user, request->user, request->user) < 0)
        refuse(errno, "setuid");
    rearm_parent_death_signal();
    struct capability_sets sets;
    if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0 || read_capabilities(&sets) < 0)
        refuse(errno, "setuid");
    sets.effective = sets.permitted;
    if (write_capabilities(&sets) < 0)
        refuse(errno, "setuid");
}

static void apply_rlimits(const struct request *request)
{
    for (uint32_t i = 0; i < request->rlimit_count; i++) {
        const struct rlimit_setting *setting = &request->rlimits[i];
        struct rlimit limit = {.rlim_cur = setting->soft, .rlim_max = setting->hard};
        if (setrlimit(setting->resource, &limit) < 0)
            refuse(errno, "rlimit");
    }
}

/* Drops every capability outside `keep` from the bounding set (while CAP_SETPCAP is still
 * effective), then sets permitted, effective and inheritable to `keep` and raises each one in
 * the ambient set, so that it survives execve as any uid. */
static void keep_exactly(uint64_t keep)
{
    for (int capability = 0; capability < 64; capability++) {
        if (keep & (UINT64_C(1) << capability))
            continue;
        int present = prctl(PR_CAPBSET_READ, capability, 0, 0, 0);
        if (present < 0 && errno == EINVAL)
            break; /* past the kernel's last capability */
        if (present < 0 || (present == 1 && prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) < 0))
            refuse(errno, "capabilities");
    }
    struct capability_sets sets = {.effective = keep, .permitted = keep, .inheritable = keep};
    if (write_capabilities(&sets) < 0 || prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        refuse(errno, "capabilities");
    for (int capability = 0; capability < 64; capability++)
        if ((keep & (UINT64_C(1) << capability)) &&
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, capability, 0, 0) < 0)
            refuse(errno, "capabilities");
}

static void apply_capabilities(const struct request *request)
{
    if (request->capabilities_given) {
        keep_exactly(request->capabilities);
    } else if (request->user_given && request->user != 0) {
        struct capability_sets sets;
        if (read_capabilities(&sets) < 0)
            refuse(errno, "capabilities");
        sets.effective = sets.permitted = 0; /* what setuid without KEEPCAPS leaves */
        if (write_capabilities(&sets) < 0)
            refuse(errno, "capabilities");
    } else {
        return;
    }
    rearm_parent_death_signal();
}

static void apply_seccomp(const struct request *request)
{
    if (request->seccomp_length == 0)
        return;
    struct sock_fprog program = {.len = (unsigned short)request->seccomp_length,
                                 .filter = request->seccomp_program};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) < 0)
        refuse(errno, "seccomp");
}

void apply_hardening(const struct agent *agent, harden_failure fail)
{
    const struct request *request = &agent->request;
    report_failure = fail;
    report_fd = agent->report_pipe[1];
    agent_pid = getppid(); /* the parent-death signal armed at the child's start still holds */
    apply_groups(request);
    apply_user(request);
    apply_rlimits(request);
    if (request->umask_given)
        umask((mode_t)request->umask);
    apply_capabilities(request);
    apply_seccomp(request);
}
