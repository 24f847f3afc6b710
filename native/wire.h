/* Framing on the control socket (fd 3): reading one frame whole, sending events. */
#ifndef LINX_WIRE_H
#define LINX_WIRE_H

#include "protocol.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum frame_result {
    FRAME_OK,
    FRAME_EOF,        /* end-of-file before the first byte: the peer is gone */
    FRAME_TRUNCATED,  /* end-of-file inside a frame */
    FRAME_EMPTY,      /* declared length 0 */
    FRAME_TOO_BIG,    /* declared length over the ceiling; the body is left unread */
    FRAME_FAILED,     /* a read error; errno says which */
};

/* Reads one frame from fd into buffer (capacity `ceiling`); its length goes to *length. With
 * `fds`, the fds that came with the frame (SCM_RIGHTS) are taken too, close-on-exec: at most
 * *fd_count (FRAME_FDS_MAX at most), and *fd_count says how many came; more is FRAME_FAILED
 * (EMSGSIZE), with none kept. Without, the kernel closes any that came. */
#define FRAME_FDS_MAX 4
enum frame_result read_frame(int fd, uint8_t *buffer, size_t ceiling, size_t *length, int *fds, size_t *fd_count);

/* Reads exactly `size` bytes unless end-of-file comes first. Returns the bytes read, or -1. */
ssize_t read_fully(int fd, void *buffer, size_t size);

/* Writes all `size` bytes, retrying on EINTR. Returns the bytes written, or -1. */
ssize_t write_fully(int fd, const void *buffer, size_t size);

/* Events to the Python side. After the peer has gone (EPIPE) sending is a silent no-op. */
void send_event(uint8_t type, const void *body, size_t size);
void send_event_u32(uint8_t type, uint32_t value);
void send_error(int error, const char *stage);

/* An output event whose body the caller has already put at `frame + OUTPUT_FRAME_OFFSET`
 * (no copy); `frame` holds OUTPUT_FRAME_OFFSET + OUTPUT_CHUNK bytes. */
#define OUTPUT_FRAME_OFFSET (FRAME_HEADER_SIZE + 1)
void send_output_frame(uint8_t type, uint8_t *frame, size_t size);
void send_output_dropped(uint8_t stream, uint64_t bytes);

uint32_t load_u32(const uint8_t *bytes);
uint16_t load_u16(const uint8_t *bytes);

#endif
