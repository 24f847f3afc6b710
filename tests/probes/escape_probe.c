/* One escape attempt per run, for tests/test_escape.py and tests/test_seccomp.py: the workload
 * may be inside a busybox rootfs, which has no Python, so this is C, libc only, built static and
 * non-PIE (so its data sits below 4 GiB, where the i386 ABI's 32-bit pointers can reach it).
 *
 *     escape_probe NAME [ARGUMENTS...]
 *
 * Prints one line: the errno of the attempt (0 when it succeeded), then, for some probes, what
 * it got. Exits 0 whatever the attempt did; 2 for a usage error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <linux/reboot.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#define I386_MKDIR 39
#define I386_CLONE 120
#define NAMESPACE_FLAGS_CLONE_NEWUSER 0x10000000

static int outcome(long result)
{
    printf("%d\n", result < 0 ? errno : 0);
    return 0;
}

/* A syscall through the i386 entry point (int 0x80): the kernel sees AUDIT_ARCH_I386. Returns
 * the raw result (negative errno on failure). */
static long int80(long number, long a, long b, long c)
{
    long result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(number), "b"(a), "c"(b), "d"(c) : "memory");
    return result;
}

static int report_raw(long result)
{
    printf("%ld\n", result < 0 ? -result : 0);
    return 0;
}

/* After a clone-like call: the child exits 0 at once, the parent reports and reaps it. */
static int report_clone(long pid, int error)
{
    if (pid == 0)
        _exit(0);
    printf("%d\n", pid < 0 ? error : 0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, __WALL);
    return 0;
}

static char low_path[4096]; /* .bss: below 4 GiB in a non-PIE binary */

static int mknod_and_read(char **arguments)
{
    dev_t device = makedev(atoi(arguments[1]), atoi(arguments[2]));
    if (mknod(arguments[0], S_IFBLK | 0600, device) < 0)
        return outcome(-1);
    int fd = open(arguments[0], O_RDONLY);
    char data[17] = "";
    if (fd < 0 || read(fd, data, 16) < 0)
        return outcome(-1);
    printf("0 %s\n", data);
    return 0;
}

static int write_file(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, data, strlen(data)) < 0)
        return outcome(-1);
    return outcome(0);
}

/* Prints the errno, then how many bytes a read got (a masked file reads as empty). */
static int read_file(const char *path)
{
    char data[64];
    int fd = open(path, O_RDONLY);
    ssize_t got = fd < 0 ? -1 : read(fd, data, sizeof data);
    if (got < 0)
        return outcome(-1);
    printf("0 %zd\n", got);
    return 0;
}

static int unshare_named(const char *name)
{
    static const struct {
        const char *name;
        int flag;
    } kinds[] = {{"user", CLONE_NEWUSER}, {"mount", CLONE_NEWNS},      {"uts", CLONE_NEWUTS},
                 {"ipc", CLONE_NEWIPC},   {"net", CLONE_NEWNET},       {"pid", CLONE_NEWPID},
                 {"cgroup", CLONE_NEWCGROUP}, {"time", CLONE_NEWTIME}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kinds[i].name, name) == 0)
            return outcome(unshare(kinds[i].flag));
    return 2;
}

static int open_by_handle(void)
{
    struct {
        struct file_handle handle;
        unsigned char bytes[MAX_HANDLE_SZ];
    } buffer = {.handle.handle_bytes = MAX_HANDLE_SZ};
    int mount_id;
    if (name_to_handle_at(AT_FDCWD, "/", &buffer.handle, &mount_id, 0) < 0)
        return outcome(-1);
    int root = open("/", O_RDONLY | O_DIRECTORY);
    return outcome(open_by_handle_at(root, &buffer.handle, O_RDONLY));
}

static int bpf_map(void)
{
    union bpf_attr attr = {.map_type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4, .max_entries = 1};
    return outcome(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
}

static int perf_event(void)
{
    struct perf_event_attr attr = {.type = PERF_TYPE_SOFTWARE, .size = sizeof attr, .config = PERF_COUNT_SW_TASK_CLOCK};
    return outcome(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
}

static int ptrace_a_child(void)
{
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    long result = ptrace(PTRACE_SEIZE, child, NULL, NULL);
    int error = errno;
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    errno = error;
    return outcome(result);
}

static int clone_with(unsigned long flags)
{
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    return report_clone(pid, errno);
}

static int clone_i386(unsigned long flags)
{
    long pid = int80(I386_CLONE, (long)(flags | SIGCHLD), 0, 0);
    return report_clone(pid < 0 ? -1 : pid, (int)-pid);
}

static int clone3_plain(void)
{
    struct clone_args args = {.exit_signal = SIGCHLD};
    long pid = syscall(SYS_clone3, &args, sizeof args);
    return report_clone(pid, errno);
}

static int raise_rlimit(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
        return outcome(-1);
    limit.rlim_max += 1;
    limit.rlim_cur = limit.rlim_max;
    return outcome(setrlimit(RLIMIT_NOFILE, &limit));
}

/* Runs a setuid-root copy of this program (arguments[0]), which then tries to use a capability
 * the caller does not have: mknod of /dev/null's numbers at arguments[1]. */
static int exec_setuid(char *const *arguments)
{
    char *const argv[] = {arguments[0], "mknod_char", arguments[1], NULL};
    execv(arguments[0], argv);
    return outcome(-1);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    const char *probe = argv[1];
    char **rest = argv + 2;
    int count = argc - 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(probe, "mknod_read") == 0 && count == 3)
        return mknod_and_read(rest);
    if (strcmp(probe, "mount_tmpfs") == 0 && count == 1)
        return outcome(mount("tmpfs", rest[0], "tmpfs", 0, NULL));
    if (strcmp(probe, "mount_proc") == 0 && count == 1)
        return outcome(mount("proc", rest[0], "proc", 0, NULL));
    if (strcmp(probe, "mount_bind_root") == 0 && count == 1)
        return outcome(mount("/", rest[0], NULL, MS_BIND | MS_REC, NULL));
    if (strcmp(probe, "fsopen") == 0)
        return outcome(syscall(SYS_fsopen, "tmpfs", 0));
    if (strcmp(probe, "open_tree") == 0)
        return outcome(syscall(SYS_open_tree, AT_FDCWD, "/", 1 /* OPEN_TREE_CLONE */));
    if (strcmp(probe, "unshare") == 0 && count == 1)
        return unshare_named(rest[0]);
    if (strcmp(probe, "setns") == 0)
        return outcome(setns(open("/proc/self/ns/uts", O_RDONLY), CLONE_NEWUTS));
    if (strcmp(probe, "init_module") == 0)
        return outcome(syscall(SYS_init_module, low_path, 0, ""));
    if (strcmp(probe, "finit_module") == 0)
        return outcome(syscall(SYS_finit_module, open("/proc/self/exe", O_RDONLY), "", 0));
    if (strcmp(probe, "kexec_load") == 0)
        return outcome(syscall(SYS_kexec_load, 0, 0, NULL, 0));
    if (strcmp(probe, "reboot") == 0)
        /* Only as pid 1 of a pid namespace, where a restart ends that namespace, not the host. */
        return getpid() == 1 ? outcome(syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                                               LINUX_REBOOT_CMD_RESTART, NULL))
                             : 2;
    if (strcmp(probe, "open_by_handle_at") == 0)
        return open_by_handle();
    if (strcmp(probe, "bpf") == 0)
        return bpf_map();
    if (strcmp(probe, "perf_event_open") == 0)
        return perf_event();
    if (strcmp(probe, "keyctl") == 0)
        return outcome(syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL));
    if (strcmp(probe, "ptrace") == 0)
        return ptrace_a_child();
    if (strcmp(probe, "clone") == 0)
        return clone_with(0);
    if (strcmp(probe, "clone_newuser") == 0)
        return clone_with(CLONE_NEWUSER);
    if (strcmp(probe, "clone_newuser_i386") == 0)
        return clone_i386(NAMESPACE_FLAGS_CLONE_NEWUSER);
    if (strcmp(probe, "clone3") == 0)
        return clone3_plain();
    if (strcmp(probe, "mkdir") == 0 && count == 1)
        return outcome(mkdir(rest[0], 0700));
    if (strcmp(probe, "mkdir_i386") == 0 && count == 1 && strlen(rest[0]) < sizeof low_path) {
        strcpy(low_path, rest[0]);
        return report_raw(int80(I386_MKDIR, (long)(uintptr_t)low_path, 0700, 0));
    }
    if (strcmp(probe, "write_file") == 0 && count == 2)
        return write_file(rest[0], rest[1]);
    if (strcmp(probe, "read_file") == 0 && count == 1)
        return read_file(rest[0]);
    if (strcmp(probe, "raise_rlimit") == 0)
        return raise_rlimit();
    if (strcmp(probe, "exec_setuid") == 0 && count == 2)
        return exec_setuid(rest);
    if (strcmp(probe, "mknod_char") == 0 && count == 1)
        return outcome(mknod(rest[0], S_IFCHR | 0600, makedev(1, 3)));
    return 2;
}
