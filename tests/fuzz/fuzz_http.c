/* fuzz_http.c — the REST router (api/http: http_route_find, what each request's first call uses
 * to map method + path to a route and its parameters, and the Allow header of a 405). Input:
 * the method, one space, the path (a NUL ends it early, as it would a URL from libmicrohttpd).
 * Every parameter must be a non-empty piece of the path without '/', except a "{name*}" rest. */
#include "api/http/http_internal.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_cstring(data, size);
    char *space = strchr(text, ' ');
    const char *method = "GET", *path = text;
    if (space && space - text < 12) {
        *space = '\0';
        method = text;
        path = space + 1;
    }
    char *params[HTTP_MAX_PARAMS] = {0};
    int n = -1;
    char allow[64];
    const http_route *rt = http_route_find(method, path, params, &n, allow, sizeof allow);
    if (n < 0 || n > HTTP_MAX_PARAMS || (!rt && n) || strlen(allow) >= sizeof allow) abort();
    size_t covered = 0;
    for (int i = 0; i < n; i++) {
        if (!params[i] || !params[i][0] || !strstr(path, params[i])) abort();
        int rest = strstr(rt->pattern, "*}") != NULL && i == n - 1;
        if (!rest && strchr(params[i], '/')) abort();
        covered += strlen(params[i]);
        free(params[i]);
    }
    if (covered > strlen(path)) abort();
    /* the tiny allow buffers of a careless caller */
    char small[3];
    n = 0;
    rt = http_route_find(method, path, params, &n, small, sizeof small);
    for (int i = 0; i < n; i++)
        free(params[i]);
    rt = http_route_find(method, path, params, &n, NULL, 0);
    for (int i = 0; i < n; i++)
        free(params[i]);
    free(text);
    return 0;
}
