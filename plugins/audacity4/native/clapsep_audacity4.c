/*
 * clapsep's native part of its Audacity 4 extension (plugins/audacity4).
 *
 * Audacity 4 loads <bundle>/platform/linux/x86_64/clapsep.so when the extension's script calls
 * require("MuseApi.Native").open("clapsep"), and calls its one export, extension_dispatch_v0,
 * with a call name and its arguments: on the UI thread for library.dispatch(name, args), on one of
 * two worker threads for library.dispatchWorker(name, args) (which returns a Promise to the script).
 *
 * Calls (arguments; result):
 *   version ()                                     string
 *   job_folder ()                                  string: a new private folder for one job
 *   raw_create (path)                              object: a file of interleaved float32 frames
 *   raw_write (file, channel0[, channel1])         number: frames written (each channel a buffer)
 *   raw_open (path, channels)                      object
 *   raw_read (file, channel0[, channel1])          number: frames read into the buffers (0 at the end)
 *   raw_close (file)                               number: frames written or read in all
 *   write_text (path, text) / read_text (path)     none / string
 *   remove_folder (path)                           none: removes a job folder and what it holds
 *   run (log, program, arguments...)               string, on a worker: runs program (no shell), its
 *                                                  output appended to log; lines "clapsep-progress F
 *                                                  TEXT" set the progress. Fails with the program's
 *                                                  last line of output when it exits non-zero.
 *   progress () / progress_text ()                 number / string: the running program's progress
 *   cancel ()                                      none: stops the running program (its process group)
 *
 * The ABI (ext_value and the status codes) follows Audacity 4's src/extensions/native/nativeextension.h.
 * Build: cc -shared -fPIC -O2 -o clapsep.so clapsep_audacity4.c -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <pthread.h>

#define EXT_STATUS_OK ((int32_t)0)
#define EXT_STATUS_ERROR ((int32_t)1)
#define EXT_STATUS_UNKNOWN_CALL ((int32_t)2)
#define EXT_STATUS_INVALID_ARGUMENT ((int32_t)3)

#define EXT_VALUE_NONE ((uint32_t)0)
#define EXT_VALUE_BOOL ((uint32_t)1)
#define EXT_VALUE_NUMBER ((uint32_t)2)
#define EXT_VALUE_STRING ((uint32_t)3)
#define EXT_VALUE_OBJECT ((uint32_t)4)
#define EXT_VALUE_BUFFER ((uint32_t)5)

#pragma pack(push, 8)
typedef struct ext_buffer {
    void *data;
    uint64_t size; /* bytes */
} ext_buffer;

typedef struct ext_value {
    uint32_t type;
    union {
        bool as_bool;
        double as_number;
        const char *as_string;
        void *as_object;
        ext_buffer as_buffer;
    };
} ext_value;
#pragma pack(pop)

#define VERSION "clapsep-audacity4 1"
#define MAX_CHANNELS 2
#define TAIL_BYTES 4096

/* A returned string lives until the next call on the same thread. */
static __thread char *returned;

static int32_t give_string(ext_value *result, const char *text)
{
    free(returned);
    returned = strdup(text ? text : "");
    result->type = EXT_VALUE_STRING;
    result->as_string = returned;
    return EXT_STATUS_OK;
}

static int32_t fail(ext_value *result, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int32_t fail(ext_value *result, const char *fmt, ...)
{
    char text[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    give_string(result, text);
    return EXT_STATUS_ERROR;
}

static int32_t give_number(ext_value *result, double value)
{
    result->type = EXT_VALUE_NUMBER;
    result->as_number = value;
    return EXT_STATUS_OK;
}

static const char *string_arg(const ext_value *args, uint32_t count, uint32_t index)
{
    return index < count && args[index].type == EXT_VALUE_STRING ? args[index].as_string : NULL;
}

/* ------------------------------------------------------------------ raw float32 files */

typedef struct raw_file {
    uint32_t magic;
    FILE *file;
    int channels;
    uint64_t frames;
    float *frame_buffer;
    size_t frame_capacity;
} raw_file;

#define RAW_MAGIC 0x636c6170u

static raw_file *raw_arg(const ext_value *args, uint32_t count)
{
    if (count < 1 || args[0].type != EXT_VALUE_OBJECT || !args[0].as_object) {
        return NULL;
    }
    raw_file *raw = args[0].as_object;
    return raw->magic == RAW_MAGIC ? raw : NULL;
}

static int32_t raw_new(const char *path, const char *mode, int channels, ext_value *result)
{
    raw_file *raw = calloc(1, sizeof *raw);
    if (!raw) {
        return fail(result, "out of memory");
    }
    raw->file = fopen(path, mode);
    if (!raw->file) {
        int err = errno;
        free(raw);
        return fail(result, "%s: %s", path, strerror(err));
    }
    raw->magic = RAW_MAGIC;
    raw->channels = channels;
    result->type = EXT_VALUE_OBJECT;
    result->as_object = raw;
    return EXT_STATUS_OK;
}

/* The channel buffers of a raw_write or raw_read: all of the same size, one per channel. */
static int channel_buffers(const ext_value *args, uint32_t count, raw_file *raw, float **channels, size_t *frames)
{
    int n = (int)count - 1;
    if (n < 1 || n > MAX_CHANNELS || (raw->channels && n != raw->channels)) {
        return 0;
    }
    for (int c = 0; c < n; ++c) {
        const ext_value *arg = &args[c + 1];
        if (arg->type != EXT_VALUE_BUFFER || arg->as_buffer.size % sizeof(float)) {
            return 0;
        }
        size_t these = arg->as_buffer.size / sizeof(float);
        if (c > 0 && these != *frames) {
            return 0;
        }
        *frames = these;
        channels[c] = arg->as_buffer.data;
    }
    if (raw->frame_capacity < *frames * n) {
        float *grown = realloc(raw->frame_buffer, *frames * n * sizeof(float));
        if (!grown) {
            return 0;
        }
        raw->frame_buffer = grown;
        raw->frame_capacity = *frames * n;
    }
    raw->channels = n;
    return n;
}

static int32_t raw_write(const ext_value *args, uint32_t count, ext_value *result)
{
    raw_file *raw = raw_arg(args, count);
    float *channels[MAX_CHANNELS];
    size_t frames = 0;
    int n = raw ? channel_buffers(args, count, raw, channels, &frames) : 0;
    if (!n) {
        return EXT_STATUS_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < frames; ++i) {
        for (int c = 0; c < n; ++c) {
            raw->frame_buffer[i * n + c] = channels[c][i];
        }
    }
    if (fwrite(raw->frame_buffer, sizeof(float) * n, frames, raw->file) != frames) {
        return fail(result, "cannot write audio: %s", strerror(errno));
    }
    raw->frames += frames;
    return give_number(result, (double)frames);
}

static int32_t raw_read(const ext_value *args, uint32_t count, ext_value *result)
{
    raw_file *raw = raw_arg(args, count);
    float *channels[MAX_CHANNELS];
    size_t frames = 0;
    int n = raw ? channel_buffers(args, count, raw, channels, &frames) : 0;
    if (!n) {
        return EXT_STATUS_INVALID_ARGUMENT;
    }
    size_t got = fread(raw->frame_buffer, sizeof(float) * n, frames, raw->file);
    if (got < frames && ferror(raw->file)) {
        return fail(result, "cannot read audio: %s", strerror(errno));
    }
    for (size_t i = 0; i < got; ++i) {
        for (int c = 0; c < n; ++c) {
            channels[c][i] = raw->frame_buffer[i * n + c];
        }
    }
    for (size_t i = got; i < frames; ++i) { /* a short read leaves silence, never garbage */
        for (int c = 0; c < n; ++c) {
            channels[c][i] = 0.0f;
        }
    }
    raw->frames += got;
    return give_number(result, (double)got);
}

static int32_t raw_close(const ext_value *args, uint32_t count, ext_value *result)
{
    raw_file *raw = raw_arg(args, count);
    if (!raw) {
        return EXT_STATUS_INVALID_ARGUMENT;
    }
    int bad = fclose(raw->file) != 0;
    double frames = (double)raw->frames;
    raw->magic = 0;
    free(raw->frame_buffer);
    free(raw);
    return bad ? fail(result, "cannot close an audio file: %s", strerror(errno)) : give_number(result, frames);
}

/* ------------------------------------------------------------------ text files and folders */

static int32_t write_text(const char *path, const char *text, ext_value *result)
{
    FILE *file = fopen(path, "w");
    if (!file) {
        return fail(result, "%s: %s", path, strerror(errno));
    }
    size_t length = strlen(text);
    int bad = fwrite(text, 1, length, file) != length;
    bad |= fclose(file) != 0;
    if (bad) {
        return fail(result, "%s: cannot write", path);
    }
    result->type = EXT_VALUE_NONE;
    return EXT_STATUS_OK;
}

static int32_t read_text(const char *path, ext_value *result)
{
    FILE *file = fopen(path, "r");
    if (!file) {
        return fail(result, "%s: %s", path, strerror(errno));
    }
    size_t size = 0, capacity = 4096;
    char *text = malloc(capacity);
    size_t got;
    while (text && (got = fread(text + size, 1, capacity - size - 1, file)) > 0) {
        size += got;
        if (capacity - size - 1 == 0) {
            char *grown = realloc(text, capacity * 2);
            if (!grown) {
                free(text);
                text = NULL;
                break;
            }
            text = grown;
            capacity *= 2;
        }
    }
    fclose(file);
    if (!text) {
        return fail(result, "out of memory");
    }
    text[size] = 0;
    free(returned);
    returned = text;
    result->type = EXT_VALUE_STRING;
    result->as_string = returned;
    return EXT_STATUS_OK;
}

static int32_t job_folder(ext_value *result)
{
    const char *base = getenv("XDG_RUNTIME_DIR");
    char parent[4096];
    struct stat info;
    if (!base || !*base || stat(base, &info) != 0 || !S_ISDIR(info.st_mode)) {
        base = getenv("TMPDIR");
    }
    if (!base || !*base) {
        base = "/tmp";
    }
    snprintf(parent, sizeof parent, "%s/clapsep-audacity4-XXXXXX", base);
    if (!mkdtemp(parent)) {
        return fail(result, "cannot make a job folder in %s: %s", base, strerror(errno));
    }
    return give_string(result, parent);
}

static int remove_entry(const char *path, const struct stat *info, int flag, struct FTW *ftw)
{
    (void)info;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int32_t remove_folder(const char *path, ext_value *result)
{
    if (!strstr(path, "/clapsep-audacity4-")) { /* only ever a folder job_folder made */
        return EXT_STATUS_INVALID_ARGUMENT;
    }
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    result->type = EXT_VALUE_NONE;
    return EXT_STATUS_OK;
}

/* ------------------------------------------------------------------ running clapsep */

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t running; /* the running program's pid (its own process group), or 0 */
static bool cancelled;
static double progress_fraction;
static char progress_message[512];

static void progress_line(const char *line)
{
    const char *prefix = "clapsep-progress ";
    if (strncmp(line, prefix, strlen(prefix)) != 0) {
        return;
    }
    char *rest = NULL;
    double fraction = strtod(line + strlen(prefix), &rest);
    if (rest == line + strlen(prefix)) {
        return;
    }
    while (*rest == ' ') {
        ++rest;
    }
    pthread_mutex_lock(&run_lock);
    progress_fraction = fraction < 0 ? 0 : fraction > 1 ? 1 : fraction;
    snprintf(progress_message, sizeof progress_message, "%s", rest);
    pthread_mutex_unlock(&run_lock);
}

static int32_t run(const ext_value *args, uint32_t count, ext_value *result)
{
    const char *log_path = string_arg(args, count, 0);
    if (!log_path || count < 2 || count > 64) {
        return EXT_STATUS_INVALID_ARGUMENT;
    }
    char *argv[64];
    for (uint32_t i = 1; i < count; ++i) {
        argv[i - 1] = (char *)string_arg(args, count, i);
        if (!argv[i - 1]) {
            return EXT_STATUS_INVALID_ARGUMENT;
        }
    }
    argv[count - 1] = NULL;

    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
        return fail(result, "cannot start %s: %s", argv[0], strerror(errno));
    }
    FILE *log = fopen(log_path, "a");
    pthread_mutex_lock(&run_lock);
    if (running) {
        pthread_mutex_unlock(&run_lock);
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        if (log) {
            fclose(log);
        }
        return fail(result, "a clapsep job is already running in this Audacity: wait for it, or cancel it");
    }
    cancelled = false;
    progress_fraction = 0;
    progress_message[0] = 0;
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        dup2(pipe_fds[1], 1);
        dup2(pipe_fds[1], 2);
        int null_fd = open("/dev/null", O_RDONLY);
        if (null_fd >= 0) {
            dup2(null_fd, 0);
        }
        execvp(argv[0], argv);
        dprintf(2, "cannot start %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (pid > 0) {
        setpgid(pid, pid); /* also here, so that cancel finds the group before the child runs */
        running = pid;
    }
    pthread_mutex_unlock(&run_lock);
    close(pipe_fds[1]);
    if (pid < 0) {
        close(pipe_fds[0]);
        if (log) {
            fclose(log);
        }
        return fail(result, "cannot start %s: %s", argv[0], strerror(errno));
    }

    /* Read its output line by line: progress lines, and the last other line (its message). */
    char line[TAIL_BYTES], last[TAIL_BYTES] = "";
    size_t used = 0;
    char chunk[4096];
    ssize_t got;
    while ((got = read(pipe_fds[0], chunk, sizeof chunk)) != 0) {
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (log) {
            fwrite(chunk, 1, (size_t)got, log);
            fflush(log);
        }
        for (ssize_t i = 0; i < got; ++i) {
            if (chunk[i] == '\n' || used == sizeof line - 1) {
                line[used] = 0;
                if (strncmp(line, "clapsep-progress ", 17) == 0) {
                    progress_line(line);
                } else if (used > 0) {
                    memcpy(last, line, used + 1);
                }
                used = 0;
                if (chunk[i] == '\n') {
                    continue;
                }
            }
            line[used++] = chunk[i];
        }
    }
    if (used > 0) {
        line[used] = 0;
        memcpy(last, line, used + 1);
    }
    close(pipe_fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&run_lock);
    running = 0;
    bool was_cancelled = cancelled;
    pthread_mutex_unlock(&run_lock);
    if (log) {
        fclose(log);
    }
    if (was_cancelled) {
        return fail(result, "clapsep: cancelled");
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        return give_string(result, last);
    }
    if (WIFSIGNALED(status)) {
        return fail(result, "clapsep stopped (signal %d)%s%s", WTERMSIG(status), *last ? ": " : "", last);
    }
    return fail(result, "%s", *last ? last : "clapsep failed");
}

static int32_t cancel(ext_value *result)
{
    pthread_mutex_lock(&run_lock);
    if (running) {
        cancelled = true;
        kill(-running, SIGTERM);
    }
    pthread_mutex_unlock(&run_lock);
    result->type = EXT_VALUE_NONE;
    return EXT_STATUS_OK;
}

/* ------------------------------------------------------------------ the dispatcher */

__attribute__((visibility("default"))) int32_t extension_dispatch_v0(const char *call, const ext_value *args,
                                                                    uint32_t count, ext_value *result)
{
    if (!call || !result) {
        return EXT_STATUS_INVALID_ARGUMENT;
    }
    result->type = EXT_VALUE_NONE;
    if (!strcmp(call, "version")) {
        return give_string(result, VERSION);
    }
    if (!strcmp(call, "job_folder")) {
        return job_folder(result);
    }
    if (!strcmp(call, "raw_create") || !strcmp(call, "raw_open")) {
        const char *path = string_arg(args, count, 0);
        int channels = 0;
        if (!strcmp(call, "raw_open")) {
            channels = count > 1 && args[1].type == EXT_VALUE_NUMBER ? (int)args[1].as_number : -1;
        }
        if (!path || channels < 0 || channels > MAX_CHANNELS) {
            return EXT_STATUS_INVALID_ARGUMENT;
        }
        return raw_new(path, channels ? "rb" : "wb", channels, result);
    }
    if (!strcmp(call, "raw_write")) {
        return raw_write(args, count, result);
    }
    if (!strcmp(call, "raw_read")) {
        return raw_read(args, count, result);
    }
    if (!strcmp(call, "raw_close")) {
        return raw_close(args, count, result);
    }
    if (!strcmp(call, "write_text")) {
        const char *path = string_arg(args, count, 0), *text = string_arg(args, count, 1);
        return path && text ? write_text(path, text, result) : EXT_STATUS_INVALID_ARGUMENT;
    }
    if (!strcmp(call, "read_text")) {
        const char *path = string_arg(args, count, 0);
        return path ? read_text(path, result) : EXT_STATUS_INVALID_ARGUMENT;
    }
    if (!strcmp(call, "remove_folder")) {
        const char *path = string_arg(args, count, 0);
        return path ? remove_folder(path, result) : EXT_STATUS_INVALID_ARGUMENT;
    }
    if (!strcmp(call, "run")) {
        return run(args, count, result);
    }
    if (!strcmp(call, "progress")) {
        pthread_mutex_lock(&run_lock);
        double fraction = progress_fraction;
        pthread_mutex_unlock(&run_lock);
        return give_number(result, fraction);
    }
    if (!strcmp(call, "progress_text")) {
        char text[sizeof progress_message];
        pthread_mutex_lock(&run_lock);
        memcpy(text, progress_message, sizeof text);
        pthread_mutex_unlock(&run_lock);
        return give_string(result, text);
    }
    if (!strcmp(call, "cancel")) {
        return cancel(result);
    }
    return EXT_STATUS_UNKNOWN_CALL;
}
