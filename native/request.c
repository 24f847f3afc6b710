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
    case STDIO_CAPTURE_HELD:
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

/* ---- hardening fields (docs/hardening.md) ---- */

static uint64_t load_u64(const uint8_t *bytes)
{
    return (uint64_t)load_u32(bytes) << 32 | load_u32(bytes + 4);
}

/* A uid or gid: u32, and never -1 (which setresuid reads as "unchanged"). */
static int parse_id(const struct field *field, bool *given, uint32_t *id)
{
    *given = true;
    return parse_u32_field(field, id) < 0 || *id == UINT32_MAX ? -1 : 0;
}

static int parse_extra_groups(const struct field *field, struct request *request)
{
    uint32_t count = field->size / 4;
    if (field->size % 4 != 0 || count > EXTRA_GROUPS_MAX || request->extra_groups_given)
        return -1;
    request->extra_groups_given = true;
    request->extra_group_count = count;
    request->extra_groups = calloc(count + 1, sizeof *request->extra_groups);
    if (!request->extra_groups)
        return -1;
    for (uint32_t i = 0; i < count; i++) {
        request->extra_groups[i] = load_u32(field->value + 4 * i);
        if (request->extra_groups[i] == (gid_t)-1)
            return -1;
    }
    return 0;
}

static int parse_rlimit(const struct field *field, struct request *request)
{
    if (field->size != 17 || field->value[0] >= RLIMIT_COUNT)
        return -1;
    struct rlimit_setting setting = {
        .resource = field->value[0], .soft = load_u64(field->value + 1), .hard = load_u64(field->value + 9)};
    if (setting.soft > setting.hard)
        return -1;
    for (uint32_t i = 0; i < request->rlimit_count; i++)
        if (request->rlimits[i].resource == setting.resource)
            return -1; /* one field per resource */
    request->rlimits[request->rlimit_count++] = setting;
    return 0;
}

static int parse_umask(const struct field *field, struct request *request)
{
    request->umask_given = true;
    return parse_u32_field(field, &request->umask) < 0 || request->umask > UMASK_MAX ? -1 : 0;
}

static int parse_capabilities(const struct field *field, struct request *request)
{
    if (field->size != 8)
        return -1;
    request->capabilities_given = true;
    request->capabilities = load_u64(field->value);
    return 0;
}

/* The program is copied out of the frame so that its instructions are aligned. */
static int parse_seccomp(const struct field *field, struct request *request)
{
    uint32_t count = field->size / SECCOMP_INSTRUCTION_SIZE;
    if (field->size % SECCOMP_INSTRUCTION_SIZE != 0 || count == 0 || count > SECCOMP_INSTRUCTIONS_MAX ||
        request->seccomp_program)
        return -1;
    request->seccomp_program = malloc(field->size);
    if (!request->seccomp_program)
        return -1;
    memcpy(request->seccomp_program, field->value, field->size);
    request->seccomp_length = count;
    return 0;
}

static int apply_hardening_field(const struct field *field, struct request *request)
{
    switch (field->tag) {
    case FIELD_USER:
        return parse_id(field, &request->user_given, &request->user);
    case FIELD_GROUP:
        return parse_id(field, &request->group_given, &request->group);
    case FIELD_EXTRA_GROUPS:
        return parse_extra_groups(field, request);
    case FIELD_UMASK:
        return parse_umask(field, request);
    case FIELD_RLIMIT:
        return parse_rlimit(field, request);
    case FIELD_CAPABILITIES:
        return parse_capabilities(field, request);
    case FIELD_SECCOMP:
        return parse_seccomp(field, request);
    default:
        return 0; /* unknown tags are skipped: PROTOCOL.md */
    }
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
        return apply_hardening_field(field, request);
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
