/* http_ui.c — the web dashboard's files (clients/web, docs/dashboard.md): `GET /` is the page,
 * `GET /ui/{name}` its script, style sheet and Chart.js (Debian's libjs-chart.js), all compiled
 * into the binary at build time (cmake/ChordEmbed.cmake), so nothing is read from disk or
 * fetched from elsewhere at run time.
 *
 * These routes need no token: the files hold no data, and the page must load to ask for one.
 * Everything the page shows comes from the /v1 routes, with the token it was given.
 *
 * Not here: the API (http_routes.c), the daemon (http_server.c). */
#include <string.h>

#include "api/http/http_internal.h"
#include "embedded/web_assets.h"

typedef struct ui_asset {
    const char *name; /* under /ui/ ("" for the page at /) */
    const unsigned char *bytes;
    size_t len;
    const char *content_type;
} ui_asset;

static const ui_asset assets[] = {
    {"", web_index_html, sizeof web_index_html - 1, "text/html; charset=utf-8"},
    {"app.js", web_app_js, sizeof web_app_js - 1, "text/javascript; charset=utf-8"},
    {"app.css", web_app_css, sizeof web_app_css - 1, "text/css; charset=utf-8"},
    {"chart.min.js", web_chart_js, sizeof web_chart_js - 1, "text/javascript; charset=utf-8"},
    {"favicon.svg", web_favicon_svg, sizeof web_favicon_svg - 1, "image/svg+xml"},
};

/* The page runs only its own files: no inline script, no other origin (a second line of defence
 * behind the page's escaping of every server string it shows). */
static const char csp[] = "default-src 'self'; script-src 'self'; style-src 'self'; "
                          "img-src 'self' data:; connect-src 'self'; object-src 'none'; "
                          "base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

static enum MHD_Result send_asset(http_req *r, const ui_asset *a) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(a->len, (void *)a->bytes, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    if (MHD_add_response_header(resp, "Content-Type", a->content_type) != MHD_YES ||
        MHD_add_response_header(resp, "Content-Security-Policy", csp) != MHD_YES ||
        MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff") != MHD_YES ||
        MHD_add_response_header(resp, "Referrer-Policy", "no-referrer") != MHD_YES) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    r->bytes_out = (int64_t)a->len;
    return http_queue_response(r, 200, resp);
}

enum MHD_Result http_ui_page(http_req *r) {
    return send_asset(r, &assets[0]);
}

enum MHD_Result http_ui_file(http_req *r) {
    const char *name = r->params[0];
    for (size_t i = 1; i < sizeof assets / sizeof assets[0]; i++)
        if (!strcmp(name, assets[i].name)) return send_asset(r, &assets[i]);
    return http_send_error(r, 404, "not_found", "no such dashboard file: %s", name);
}

int http_route_is_ui(const http_route *rt) {
    return rt->handle == http_ui_page || rt->handle == http_ui_file;
}
