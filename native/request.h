/* Parsing the request frame into a struct request (PROTOCOL.md, "The request"). */
#ifndef LINX_REQUEST_H
#define LINX_REQUEST_H

#include "agent.h"

/* Fills *request from a whole request frame (type byte first). Strings point into buffer.
 * Returns 0, or -1 when the frame is malformed. */
int parse_request(const uint8_t *buffer, size_t length, struct request *request);

#endif
