/* service_demo.c — the embedded demo (`chordd --demo`): the built-in arithmetic task
 * (server/train/task.h) written to JSONL, uploaded through the same upload path as user data,
 * and a CHORD job on a random-init tiny model with the embedded default tokenizer.
 *
 * Not here: anything the demo job does differently from a user's job (nothing). */
#include "server/service_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/base/fileutil.h"
#include "server/base/log.h"
#include "server/train/demo.h"

/* Uploads a file through svc_upload_* in 64 KiB chunks; *id receives the dataset id. */
static int upload_file(svc *s, const char *path, const char *name, const char *kind,
                       char id[STORE_ID_MAX], chord_err *err) {
    char *data = NULL;
    size_t len = 0;
    if (chord_read_file(path, &data, &len, err)) return -1;
    svc_upload *up = NULL;
    json_t *ds = NULL;
    int rc = svc_upload_begin(s, name, kind, &up, err);
    for (size_t off = 0; rc == 0 && off < len; off += 65536)
        rc = svc_upload_write(up, data + off, len - off < 65536 ? len - off : 65536, err);
    if (rc == 0) {
        rc = svc_upload_commit(up, &ds, err);
    } else {
        svc_upload_abort(up);
    }
    if (rc == 0) snprintf(id, STORE_ID_MAX, "%s", json_string_value(json_object_get(ds, "id")));
    json_decref(ds);
    free(data);
    return rc ? chord_err_prefix(err, "demo: uploading %s", path) : 0;
}

int svc_submit_demo(svc *s, json_t **job, chord_err *err) {
    *job = NULL;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/demo-task", s->data_dir);
    /* the built-in task's files, exactly as `chordd train --demo` writes them */
    char prompts[STORE_ID_MAX], expert[STORE_ID_MAX], eval[STORE_ID_MAX], p[PATH_MAX + 32];
    if (trainer_builtin_data(dir, 42, "prompts", p, sizeof p, err) ||
        upload_file(s, p, "demo-prompts", "prompts", prompts, err))
        return chord_err_prefix(err, "demo");
    if (trainer_builtin_data(dir, 42, "expert", p, sizeof p, err) ||
        upload_file(s, p, "demo-expert", "expert", expert, err))
        return chord_err_prefix(err, "demo");
    if (trainer_builtin_data(dir, 42, "eval", p, sizeof p, err) ||
        upload_file(s, p, "demo-eval", "eval", eval, err))
        return chord_err_prefix(err, "demo");

    /* the embedded demo job (server/train/demo.h, the same one `chordd train --demo` runs),
     * with the uploaded datasets in place of its "builtin:arith" references */
    json_error_t je;
    json_t *doc = json_loads(trainer_demo_job_json(), 0, &je);
    json_t *data = doc ? json_object_get(doc, "data") : NULL;
    if (data && (json_object_set_new(data, "prompts", json_string(prompts)) ||
                 json_object_set_new(data, "expert", json_string(expert)) ||
                 json_object_set_new(data, "eval", json_string(eval)))) {
        json_decref(doc);
        doc = NULL;
    }
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "demo: building the job document");
    int rc = svc_job_create(s, doc, job, err);
    json_decref(doc);
    return rc ? chord_err_prefix(err, "demo") : 0;
}
