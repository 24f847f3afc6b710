/* Framing on the control socket. Never decides what a frame means: that is request.c's and
 * agent.c's job. */
#define _GNU_SOURCE
#include "wire.h"
#include "agent.h"
#include "protocol.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static bool peer_gone;

uint32_t load_u32(const uint8_t *bytes)
{
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 |
           (uint32_t)bytes[3];
}

uint16_t load_u16(const uint8_t *bytes)
{
    return (uint16_t)(bytes[0] << 8 | bytes[1]);
}

static void store_u32(uint8_t *bytes, uint32_t value)
{
    bytes[0] = (uint8_t)(value >> 24);
    bytes[1] = (uint8_t)(value >> 16);
    bytes[2] = (uint8_t)(value >> 8);
    bytes[3] = (uint8_t)value;
}

ssize_t read_fully(int fd, void *buffer, size_t size)
{
    size_t done = 0;
    while (done < size) {
        ssize_t got = read(fd, (uint8_t *)buffer + done, size - done);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return -1;
        if (got == 0)
            break;
        done += (size_t)got;
    }
    return (ssize_t)done;
}

ssize_t write_fully(int fd, const void *buffer, size_t size)
{
    size_t done = 0;
    while (done < size) {
        ssize_t written = write(fd, (const uint8_t *)buffer + done, size - done);
        if (written < 0 && errno == EINTR)
            continue;
        if (written < 0)
            return -1;
        done += (size_t)written;
    }
    return (ssize_t)done;
}

/* Reads the frame header with recvmsg, taking the fds that came with it (SCM_RIGHTS, close-on-exec)
 * into fds (capacity *fd_count; on return, how many came). More than fit is an error (EMSGSIZE),
 * with none kept. */
static ssize_t read_header_with_fds(int fd, uint8_t *header, size_t size, int *fds, size_t *fd_count)
{
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * FRAME_FDS_MAX)];
    } control;
    struct iovec part = {.iov_base = header, .iov_len = size};
    struct msghdr message = {.msg_iov = &part, .msg_iovlen = 1, .msg_control = control.space,
                             .msg_controllen = CMSG_SPACE(sizeof(int) * *fd_count)};
    ssize_t got;
    do
        got = recvmsg(fd, &message, MSG_WAITALL | MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    size_t capacity = *fd_count;
    *fd_count = 0;
    if (got < 0)
        return -1;
    for (struct cmsghdr *part_header = CMSG_FIRSTHDR(&message); part_header != NULL;
         part_header = CMSG_NXTHDR(&message, part_header)) {
        if (part_header->cmsg_level != SOL_SOCKET || part_header->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (part_header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t index = 0; index < count; index++) {
            int received;
            memcpy(&received, CMSG_DATA(part_header) + index * sizeof(int), sizeof received);
            if (*fd_count < capacity)
                fds[(*fd_count)++] = received;
            else
                close(received);
        }
    }
    if (message.msg_flags & MSG_CTRUNC || (size_t)got < size) {
        for (size_t index = 0; index < *fd_count; index++)
            close(fds[index]);
        *fd_count = 0;
        if (message.msg_flags & MSG_CTRUNC) {
            errno = EMSGSIZE;
            return -1;
        }
    }
    return got;
}

enum frame_result read_frame(int fd, uint8_t *buffer, size_t ceiling, size_t *length, int *fds, size_t *fd_count)
{
    uint8_t header[FRAME_HEADER_SIZE];
    ssize_t got = fds ? read_header_with_fds(fd, header, sizeof header, fds, fd_count)
                      : read_fully(fd, header, sizeof header);
    if (got < 0)
        return FRAME_FAILED;
    if (got == 0)
        return FRAME_EOF;
    if ((size_t)got < sizeof header)
        return FRAME_TRUNCATED;
    uint32_t declared = load_u32(header);
    if (declared == 0)
        return FRAME_EMPTY;
    if (declared > ceiling)
        return FRAME_TOO_BIG;
    got = read_fully(fd, buffer, declared);
    if (got < 0)
        return FRAME_FAILED;
    if ((size_t)got < declared)
        return FRAME_TRUNCATED;
    *length = declared;
    return FRAME_OK;
}

static void send_all(const uint8_t *bytes, size_t size)
{
    while (size > 0 && !peer_gone) {
        ssize_t sent = send(CONTROL_FD, bytes, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0) {
            if (errno != EPIPE && errno != ECONNRESET)
                fprintf(stderr, "linx-agent: sending an event: %s\n", strerror(errno));
            peer_gone = true;
            return;
        }
        bytes += sent;
        size -= (size_t)sent;
    }
}

void send_output_frame(uint8_t type, uint8_t *frame, size_t size)
{
    if (size > OUTPUT_CHUNK)
        size = OUTPUT_CHUNK; /* callers never exceed it; the guard keeps the send in bounds */
    store_u32(frame, (uint32_t)(size + 1));
    frame[FRAME_HEADER_SIZE] = type;
    send_all(frame, OUTPUT_FRAME_OFFSET + size);
}

/* Every event other than output is a few bytes (an error's stage name is the longest). */
#define SMALL_EVENT_MAX (4 + STAGE_NAME_MAX)

void send_event(uint8_t type, const void *body, size_t size)
{
    uint8_t frame[OUTPUT_FRAME_OFFSET + SMALL_EVENT_MAX];
    if (size > SMALL_EVENT_MAX)
        size = SMALL_EVENT_MAX; /* callers never exceed it; the guard keeps the copy in bounds */
    store_u32(frame, (uint32_t)(size + 1));
    frame[FRAME_HEADER_SIZE] = type;
    if (size > 0)
        memcpy(frame + OUTPUT_FRAME_OFFSET, body, size);
    send_all(frame, OUTPUT_FRAME_OFFSET + size);
}

void send_output_dropped(uint8_t stream, uint64_t bytes)
{
    uint8_t body[9] = {stream};
    store_u32(body + 1, (uint32_t)(bytes >> 32));
    store_u32(body + 5, (uint32_t)bytes);
    send_event(EVT_OUTPUT_DROPPED, body, sizeof body);
}

void send_event_u32(uint8_t type, uint32_t value)
{
    uint8_t body[4];
    store_u32(body, value);
    send_event(type, body, sizeof body);
}

void send_error(int error, const char *stage)
{
    uint8_t body[4 + STAGE_NAME_MAX];
    size_t stage_length = strnlen(stage, STAGE_NAME_MAX);
    store_u32(body, (uint32_t)error);
    memcpy(body + 4, stage, stage_length);
    send_event(EVT_ERROR, body, 4 + stage_length);
}
