/* The agent as its workload's subreaper. With PR_SET_CHILD_SUBREAPER, whatever the workload
 * forks and then orphans (background jobs, double-forked daemons, setsid children) is
 * re-parented to the agent, not to the host's init; the agent reaps those as they exit, and
 * when the workload's life is over it ends the whole remaining tree and reaps it, so the
 * terminal event means that nothing of the workload is left.
 *
 * The tree is read from /proc/<pid>/task/<tid>/children, through a /proc opened at start (in
 * enter mode the agent later joins the target's mount namespace, whose /proc may show another
 * pid namespace). Every process is signalled through a pidfd, and only after that pidfd has
 * been checked to name a child of a process already in the tree: a pid that is reused while
 * the tree is read is never signalled. This file never reaps the workload (agent.c does, by
 * its pidfd, to learn its outcome). */
#define _GNU_SOURCE
#include "reaper.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define STRAGGLER_WAIT_MS 100
#define STRAGGLER_ROUNDS 50 /* 5 s: a process stuck in the kernel may never die; the agent must */

static int proc_fd = -1;
static int signal_fd = -1;
static pid_t self_pid = -1;
static pid_t workload_pid = -1;

/* A process in the tree, pinned by its pidfd (-1 for the agent itself). */
struct member {
    pid_t pid;
    int pidfd;
};

struct tree {
    struct member *members;
    size_t count;
    size_t capacity;
};

struct pid_list {
    pid_t *pids;
    size_t count;
    size_t capacity;
};

int reaper_start(void)
{
    self_pid = getpid();
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
        return -1;
    proc_fd = open("/proc", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (proc_fd < 0)
        return -1;
    sigset_t child_signal;
    sigemptyset(&child_signal);
    sigaddset(&child_signal, SIGCHLD);
    /* The child inherits the blocked SIGCHLD and empties its mask before execve. */
    if (sigprocmask(SIG_BLOCK, &child_signal, NULL) < 0)
        return -1;
    signal_fd = signalfd(-1, &child_signal, SFD_NONBLOCK | SFD_CLOEXEC);
    return signal_fd < 0 ? -1 : 0;
}

int reaper_signal_fd(void)
{
    return signal_fd;
}

void reaper_set_workload(pid_t workload)
{
    workload_pid = workload;
}

/* ---- reading the tree ------------------------------------------------------------------ */

static bool append_pid(struct pid_list *list, pid_t pid)
{
    if (list->count == list->capacity) {
        size_t capacity = list->capacity ? list->capacity * 2 : 64;
        pid_t *grown = realloc(list->pids, capacity * sizeof *grown);
        if (!grown) {
            fprintf(stderr, "linx-agent: reaper: out of memory reading the process tree\n");
            return false;
        }
        list->pids = grown;
        list->capacity = capacity;
    }
    list->pids[list->count++] = pid;
    return true;
}

/* Appends the pids listed in one task's `children` file (space-separated decimals). */
static void read_task_children(int task_dir, const char *tid, struct pid_list *children)
{
    char path[64];
    snprintf(path, sizeof path, "%s/children", tid);
    int fd = openat(task_dir, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* the thread is gone */
    char chunk[4096];
    long pid = -1; /* the number being read across chunks; -1 between numbers */
    for (;;) {
        ssize_t got = read(fd, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        for (ssize_t i = 0; i < got; i++) {
            if (chunk[i] >= '0' && chunk[i] <= '9') {
                pid = (pid < 0 ? 0 : pid * 10) + (chunk[i] - '0');
            } else if (pid >= 0) {
                if (!append_pid(children, (pid_t)pid))
                    goto done;
                pid = -1;
            }
        }
    }
    if (pid >= 0)
        append_pid(children, (pid_t)pid);
done:
    close(fd);
}

/* The children of every thread of `pid`. */
static void read_children(pid_t pid, struct pid_list *children)
{
    char path[32];
    children->count = 0;
    snprintf(path, sizeof path, "%d/task", pid);
    int task_dir = openat(proc_fd, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (task_dir < 0)
        return; /* the process is gone */
    DIR *tasks = fdopendir(task_dir);
    if (!tasks) {
        close(task_dir);
        return;
    }
    struct dirent *entry;
    while ((entry = readdir(tasks)) != NULL)
        if (entry->d_name[0] != '.')
            read_task_children(task_dir, entry->d_name, children);
    closedir(tasks);
}

/* The parent pid in /proc/<pid>/stat, or -1. */
static pid_t read_parent(pid_t pid)
{
    char path[32], stat[512];
    snprintf(path, sizeof path, "%d/stat", pid);
    int fd = openat(proc_fd, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t got = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (got <= 0)
        return -1;
    stat[got] = '\0';
    /* "pid (comm) state ppid ...": comm may hold anything, so look after its last ')'. */
    char *rest = strrchr(stat, ')');
    char state;
    int parent;
    if (!rest || sscanf(rest + 1, " %c %d", &state, &parent) != 2)
        return -1;
    return parent;
}

static int send_signal(int pidfd, int signum)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signum, NULL, 0);
}

/* Not yet reaped (a zombie still holds its pid, so /proc/<pid> is still this process). */
static bool still_there(int pidfd)
{
    return send_signal(pidfd, 0) == 0 || errno == EPERM;
}

static bool in_tree(const struct tree *tree, pid_t pid)
{
    for (size_t i = 0; i < tree->count; i++)
        if (tree->members[i].pid == pid)
            return true;
    return false;
}

static bool append_member(struct tree *tree, struct member member)
{
    if (tree->count == tree->capacity) {
        size_t capacity = tree->capacity ? tree->capacity * 2 : 64;
        struct member *grown = realloc(tree->members, capacity * sizeof *grown);
        if (!grown) {
            fprintf(stderr, "linx-agent: reaper: out of memory reading the process tree\n");
            return false;
        }
        tree->members = grown;
        tree->capacity = capacity;
    }
    tree->members[tree->count++] = member;
    return true;
}

/* Pins `pid` if it is still a child of `parent`; -1 if not (gone, or re-parented meanwhile:
 * then a later scan finds it where it is now). */
static int pin_child(pid_t pid, pid_t parent)
{
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0)
        return -1;
    if (read_parent(pid) != parent || !still_there(pidfd)) {
        close(pidfd);
        return -1;
    }
    return pidfd;
}

/* Every process below the agent, each pinned by a pidfd, parents before children. The agent
 * itself is members[0]. */
static void scan_tree(struct tree *tree)
{
    struct pid_list children = {0};
    tree->count = 0;
    if (!append_member(tree, (struct member){self_pid, -1}))
        return;
    for (size_t index = 0; index < tree->count; index++) {
        struct member parent = tree->members[index];
        read_children(parent.pid, &children);
        if (parent.pidfd >= 0 && !still_there(parent.pidfd))
            continue; /* reaped while we read: that list may be another process's */
        for (size_t i = 0; i < children.count; i++) {
            if (in_tree(tree, children.pids[i]))
                continue;
            int pidfd = pin_child(children.pids[i], parent.pid);
            if (pidfd < 0)
                continue;
            if (!append_member(tree, (struct member){children.pids[i], pidfd})) {
                close(pidfd);
                break;
            }
        }
    }
    free(children.pids);
}

static void release_tree(struct tree *tree)
{
    for (size_t i = 0; i < tree->count; i++)
        if (tree->members[i].pidfd >= 0)
            close(tree->members[i].pidfd);
    free(tree->members);
    *tree = (struct tree){0};
}

/* ---- reaping and ending ------------------------------------------------------------------ */

static void drain_signal_fd(void)
{
    struct signalfd_siginfo info;
    while (read(signal_fd, &info, sizeof info) == (ssize_t)sizeof info)
        ;
}

static void reap(pid_t pid)
{
    while (waitpid(pid, NULL, WNOHANG | __WALL) < 0 && errno == EINTR)
        ;
}

/* Reaps every exited child but the workload, whose outcome agent.c takes. One at a time by
 * peeking (WNOWAIT) at the next one the kernel offers; once that is the dead workload, which
 * comes first, child by child from the list. */
void reaper_collect(void)
{
    drain_signal_fd();
    for (;;) {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) < 0) {
            if (errno == EINTR)
                continue;
            return; /* ECHILD: no child at all */
        }
        if (info.si_pid == 0)
            return;
        if (info.si_pid != workload_pid) {
            reap(info.si_pid);
            continue;
        }
        struct pid_list children = {0};
        read_children(self_pid, &children);
        for (size_t i = 0; i < children.count; i++)
            if (children.pids[i] != workload_pid)
                reap(children.pids[i]);
        free(children.pids);
        return;
    }
}

bool reaper_has_descendants(void)
{
    if (workload_pid < 0) { /* every child is a descendant: one call tells whether there is any */
        siginfo_t info;
        return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0 || errno != ECHILD;
    }
    struct pid_list children = {0};
    bool found = false;
    read_children(self_pid, &children);
    for (size_t i = 0; i < children.count && !found; i++)
        found = children.pids[i] != workload_pid;
    free(children.pids);
    return found;
}

void reaper_terminate_descendants(void)
{
    struct tree tree = {0};
    scan_tree(&tree);
    for (size_t i = 1; i < tree.count; i++) {
        if (tree.members[i].pid == workload_pid)
            continue;
        send_signal(tree.members[i].pidfd, SIGTERM);
        send_signal(tree.members[i].pidfd, SIGCONT);
    }
    release_tree(&tree);
}

/* SIGSTOPs every process below the agent, scanning again until a scan finds nobody new: a
 * stopped process cannot fork, so the tree stops growing while it is killed. (One caught in
 * the middle of a fork finishes it first; that child is found by a later scan, at worst by
 * reaper_kill_tree's scans for stragglers.) Returns the tree, every member pinned. */
static void freeze_tree(struct tree *frozen)
{
    for (;;) {
        struct tree found = {0};
        size_t fresh = 0;
        scan_tree(&found);
        for (size_t i = 1; i < found.count; i++) {
            struct member member = found.members[i];
            if (in_tree(frozen, member.pid) || !append_member(frozen, member)) {
                close(member.pidfd);
                continue;
            }
            send_signal(member.pidfd, SIGSTOP);
            fresh++;
        }
        free(found.members);
        if (fresh == 0)
            return;
    }
}

static void wait_for_child_signal(int timeout_ms)
{
    struct pollfd child_signal = {.fd = signal_fd, .events = POLLIN};
    if (poll(&child_signal, 1, timeout_ms) < 0 && errno != EINTR)
        fprintf(stderr, "linx-agent: reaper: poll: %s\n", strerror(errno));
}

/* Waits until every member has exited: its pidfd turns readable then, whoever its parent is
 * (in an entered pid namespace, the killed are re-parented to that namespace's init, not to
 * the agent, so reaping them is not how the agent learns they are gone). */
static void await_exits(struct tree *tree)
{
    struct pollfd *exits = calloc(tree->count, sizeof *exits);
    if (!exits) {
        fprintf(stderr, "linx-agent: reaper: out of memory waiting for the killed\n");
        return;
    }
    for (int round = 0; round < STRAGGLER_ROUNDS; round++) {
        nfds_t waiting = 0;
        for (size_t i = 0; i < tree->count; i++)
            if (tree->members[i].pidfd >= 0)
                exits[waiting++] = (struct pollfd){.fd = tree->members[i].pidfd, .events = POLLIN};
        if (waiting == 0)
            break;
        if (poll(exits, waiting, STRAGGLER_WAIT_MS) < 0 && errno != EINTR)
            break;
        nfds_t next = 0; /* exits[] lists the members still waited for, in their order */
        for (size_t i = 0; i < tree->count; i++) {
            if (tree->members[i].pidfd < 0)
                continue;
            if (exits[next++].revents) {
                close(tree->members[i].pidfd);
                tree->members[i].pidfd = -1;
            }
        }
    }
    free(exits);
}

void reaper_kill_tree(void)
{
    struct tree frozen = {0};
    freeze_tree(&frozen);
    for (size_t i = 0; i < frozen.count; i++)
        if (send_signal(frozen.members[i].pidfd, SIGKILL) < 0 && errno != ESRCH)
            fprintf(stderr, "linx-agent: reaper: SIGKILL to %d: %s\n", frozen.members[i].pid, strerror(errno));
    await_exits(&frozen);
    release_tree(&frozen);
    /* The dead are re-parented to the agent as their parents die; reap until none is left. */
    for (int round = 0;; round++) {
        reaper_collect();
        if (!reaper_has_descendants())
            return;
        if (round == STRAGGLER_ROUNDS) {
            fprintf(stderr, "linx-agent: reaper: descendants survive SIGKILL; not waiting for them\n");
            return;
        }
        wait_for_child_signal(STRAGGLER_WAIT_MS);
        struct tree stragglers = {0};
        scan_tree(&stragglers);
        for (size_t i = 1; i < stragglers.count; i++)
            send_signal(stragglers.members[i].pidfd, SIGKILL);
        release_tree(&stragglers);
    }
}
