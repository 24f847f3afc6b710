/* The request parser. Trusts nothing: every size is checked against the frame's end before it
 * is used, and every rule of PROTOCOL.md that makes a request malformed is enforced here. */
#include "request.h"
#include "protocol.h"
#include "wire.h"

#include <stdlib.h>
#include <string.h>

struct field {
    uint8_t tag;
    uint32_t size;
    const uint8_t *value;
};

/* Takes the field at *cursor. Returns 1 and advances, 0 at the end, -1 if it overruns. */
static int next_field(const uint8_t **cursor, const uint8_t *end, struct field *field)
{
    if (*cursor == end)
        return 0;
    if (end - *cursor < 5)
        return -1;
    field->tag = (*cursor)[0];
    field->size = load_u32(*cursor + 1);
    field->value = *cursor + 5;
    if ((size_t)(end - field->value) < field->size)
        return -1;
    *cursor = field->value + field->size;
    return 1;
}

static const char *as_string(const uint8_t *value, uint32_t size)
{
    if (size == 0 || value[size - 1] != '\0' || memchr(value, '\0', size - 1) != NULL)
        return NULL;
    return (const char *)value;
}

static int parse_stdio(const struct field *field, struct request *request)
{
    if (field->size < 2 || field->value[0] > 2)
        return -1;
    struct stdio_directive *directive = &request->stdio[field->value[0]];
    directive->kind = field->value[1];
    directive->path = NULL;
    switch (directive->kind) {
    case STDIO_INHERIT:
    case STDIO_DEVNULL:
        return field->size == 2 ? 0 : -1;
    case STDIO_CONNECT_UNIX:
        directive->path = as_string(field->value + 2, field->size - 2);
        return directive->path ? 0 : -1;
    case STDIO_CAPTURE:
        return field->size == 2 && field->value[0] != 0 ? 0 : -1; /* stdout or stderr only */
    default:
        return -1;
    }
}

static int parse_orphan_policy(const struct field *field, struct request *request)
{
    if (field->size != 5 || field->value[0] > ORPHAN_LINGER)
        return -1;
    request->orphan_policy = field->value[0];
    request->orphan_grace_ms = load_u32(field->value + 1);
    return request->orphan_grace_ms <= 0x7fffffffu ? 0 : -1;
}

static int parse_output_window(const struct field *field, struct request *request)
{
    if (field->size != 4)
        return -1;
    request->output_window = load_u32(field->value);
    return request->output_window >= OUTPUT_WINDOW_MIN && request->output_window <= OUTPUT_WINDOW_MAX ? 0 : -1;
}

static int parse_u32_field(const struct field *field, uint32_t *out)
{
    if (field->size != 4)
        return -1;
    *out = load_u32(field->value);
    return 0;
}

static int append_string(const struct field *field, const char **list, size_t *count)
{
    const char *string = as_string(field->value, field->size);
    if (!string)
        return -1;
    list[(*count)++] = string;
    return 0;
}

static int apply_field(const struct field *field, struct request *request, size_t *argc,
                       size_t *envc)
{
    switch (field->tag) {
    case FIELD_MODE:
        if (field->size != 1 || field->value[0] > MODE_ENTER)
            return -1;
        request->mode = field->value[0];
        return 0;
    case FIELD_TARGET:
        return parse_u32_field(field, &request->target);
    case FIELD_ARGV:
        return append_string(field, request->argv, argc);
    case FIELD_ENV:
        return append_string(field, request->env, envc);
    case FIELD_NAMESPACES:
        request->namespaces_given = true;
        if (parse_u32_field(field, &request->namespaces) < 0)
            return -1;
        return (request->namespaces & ~(uint32_t)NS_ALL) ? -1 : 0;
    case FIELD_CWD:
        request->cwd = as_string(field->value, field->size);
        return request->cwd ? 0 : -1;
    case FIELD_STDIO:
        return parse_stdio(field, request);
    case FIELD_PTY:
        request->pty = true;
        return field->size == 0 ? 0 : -1;
    case FIELD_NO_NEW_PRIVS:
        request->no_new_privs = true;
        return field->size == 0 ? 0 : -1;
    case FIELD_ORPHAN_POLICY:
        return parse_orphan_policy(field, request);
    case FIELD_OUTPUT_WINDOW:
        return parse_output_window(field, request);
    case FIELD_OUTPUT_MODE:
        if (field->size != 1 || field->value[0] > OUTPUT_DROP)
            return -1;
        request->output_mode = field->value[0];
        return 0;
    default:
        return 0; /* unknown tags are skipped: PROTOCOL.md */
    }
}

/* First pass: checks that the fields tile the body and counts the list entries. */
static int count_lists(const uint8_t *body, const uint8_t *end, size_t *argc, size_t *envc)
{
    struct field field;
    int more;
    *argc = *envc = 0;
    while ((more = next_field(&body, end, &field)) == 1) {
        if (field.tag == FIELD_ARGV)
            (*argc)++;
        else if (field.tag == FIELD_ENV)
            (*envc)++;
    }
    return more;
}

int parse_request(const uint8_t *buffer, size_t length, struct request *request)
{
    const uint8_t *end = buffer + length;
    size_t argc, envc;
    if (length < 1 || buffer[0] != MSG_REQUEST || count_lists(buffer + 1, end, &argc, &envc) < 0)
        return -1;
    memset(request, 0, sizeof *request);
    request->mode = 0xff;
    request->orphan_policy = ORPHAN_KILL;
    request->orphan_grace_ms = ORPHAN_DEFAULT_GRACE_MS;
    request->output_window = OUTPUT_WINDOW_DEFAULT;
    request->output_mode = OUTPUT_BLOCK;
    request->argv = calloc(argc + 1, sizeof *request->argv);
    request->env = calloc(envc + 1, sizeof *request->env);
    if (!request->argv || !request->env)
        return -1;

    const uint8_t *cursor = buffer + 1;
    struct field field;
    size_t argv_filled = 0, env_filled = 0;
    while (next_field(&cursor, end, &field) == 1)
        if (apply_field(&field, request, &argv_filled, &env_filled) < 0)
            return -1;
    if (request->mode > MODE_ENTER || argc == 0)
        return -1;
    if (request->mode == MODE_ENTER && request->target == 0)
        return -1;
    if (request->mode == MODE_ENTER && request->target > 0x7fffffffu)
        return -1;
    return 0;
}
