/* The numbers of the control protocol (see PROTOCOL.md). Python's linx_otp/protocol.py holds
 * the same numbers; tests/test_protocol.py reads this file to check that they agree. */
#ifndef LINX_PROTOCOL_H
#define LINX_PROTOCOL_H

#define FRAME_HEADER_SIZE 4
#define REQUEST_MAX (1024 * 1024)
#define COMMAND_MAX (64 * 1024)
#define OUTPUT_CHUNK 262144
#define PTY_IN_BUFFER_MAX (1024 * 1024)
/* Flow control: bytes of output events in flight (sent, not yet credited) per session. */
#define OUTPUT_WINDOW_DEFAULT (1024 * 1024)
#define OUTPUT_WINDOW_MIN 4096
#define OUTPUT_WINDOW_MAX (1024 * 1024 * 1024)

/* Python -> agent */
#define MSG_REQUEST 0x01
#define CMD_PROCEED 0x02
#define CMD_ABORT 0x03
#define CMD_SIGNAL 0x04
#define CMD_PTY_IN 0x05
#define CMD_WINSIZE 0x06
#define CMD_STOP 0x07
#define CMD_CREDIT 0x08
#define CMD_OUTPUT_MODE 0x09
#define CMD_RELAY 0x0a

/* agent -> Python */
#define EVT_SPAWNED 0x81
#define EVT_READY 0x82
#define EVT_RUNNING 0x83
#define EVT_EXITED 0x84
#define EVT_SIGNALED 0x85
#define EVT_ABORTED 0x86
#define EVT_ERROR 0x87
#define EVT_PTY_OUT 0x88
#define EVT_PTY_IN_DROPPED 0x89
#define EVT_STDOUT 0x8a
#define EVT_STDERR 0x8b
#define EVT_OUTPUT_DROPPED 0x8c

/* request fields */
#define FIELD_MODE 0x01
#define FIELD_TARGET 0x02
#define FIELD_ARGV 0x03
#define FIELD_ENV 0x04
#define FIELD_NAMESPACES 0x05
#define FIELD_CWD 0x06
#define FIELD_STDIO 0x07
#define FIELD_PTY 0x08
#define FIELD_NO_NEW_PRIVS 0x09
#define FIELD_ORPHAN_POLICY 0x0a
#define FIELD_OUTPUT_WINDOW 0x0b
#define FIELD_OUTPUT_MODE 0x0c

/* request fields: hardening (docs/hardening.md), applied by harden.c just before execve */
#define FIELD_USER 0x10
#define FIELD_GROUP 0x11
#define FIELD_EXTRA_GROUPS 0x12
#define FIELD_UMASK 0x13
#define FIELD_RLIMIT 0x14
#define FIELD_CAPABILITIES 0x15
#define FIELD_SECCOMP 0x16
#define EXTRA_GROUPS_MAX 65536
/* UMASK_MAX is 0777 */
#define UMASK_MAX 511
#define RLIMIT_COUNT 16
#define SECCOMP_INSTRUCTIONS_MAX 4096
#define SECCOMP_INSTRUCTION_SIZE 8

#define MODE_SPAWN 0
#define MODE_ENTER 1

#define STDIO_INHERIT 0
#define STDIO_DEVNULL 1
#define STDIO_CONNECT_UNIX 2
#define STDIO_CAPTURE 3
#define STDIO_CAPTURE_HELD 4

#define ORPHAN_KILL 0
#define ORPHAN_LINGER 1
#define ORPHAN_DEFAULT_GRACE_MS 5000

#define OUTPUT_BLOCK 0
#define OUTPUT_DROP 1

/* output_dropped names its stream with these (stdout and stderr are their fd numbers) */
#define OUTPUT_STREAM_PTY 0
#define OUTPUT_STREAM_STDOUT 1
#define OUTPUT_STREAM_STDERR 2

/* namespace mask bits, in the order enter mode joins them */
#define NS_USER 1
#define NS_MOUNT 2
#define NS_UTS 4
#define NS_IPC 8
#define NS_CGROUP 16
#define NS_NET 32
#define NS_TIME 64
#define NS_PID 128
#define NS_ALL 255

/* The spawn server (PROTOCOL.md, "Spawn server"): one SOCK_SEQPACKET message each way. */
#define SERVER_HELLO 0x41
#define SERVER_SPAWN 0x42
#define SERVER_READY 0xc0
#define SERVER_SPAWNED 0xc1
#define SERVER_STALE 0xc2
#define SERVER_FAILED 0xc3
#define SERVER_MESSAGE_MAX 64
#define SERVER_SPAWN_FDS_MAX 4

#endif
