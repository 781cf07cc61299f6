/* log.h — one-line logs to stderr with a timestamp and level; thread-safe. */
#ifndef CHORD_BASE_LOG_H
#define CHORD_BASE_LOG_H

enum { CHORD_LOG_DEBUG = 0, CHORD_LOG_INFO = 1, CHORD_LOG_WARN = 2, CHORD_LOG_ERROR = 3 };

void chord_log_set_level(int level);
/* Parses "debug|info|warn|error"; returns -1 on an unknown name. */
int chord_log_parse_level(const char *name, int *level);
void chord_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_DEBUG(...) chord_log(CHORD_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...) chord_log(CHORD_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) chord_log(CHORD_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) chord_log(CHORD_LOG_ERROR, __VA_ARGS__)

#endif
