/* cmd_serve.c — `chordd` / `chordd serve`: the daemon. Parses the flags, opens the service
 * (SQLite, job workers), starts the REST and gRPC transports, optionally submits the embedded
 * demo job, then waits for SIGINT / SIGTERM and stops in order: stop accepting connections, let
 * each running job finish its step and write a checkpoint (it resumes at the next start), end
 * the event streams and wait for every request in flight, and only then free the service and
 * close SQLite.
 *
 * Not here: anything a request does (api/http, server/service.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/auth/auth.h"
#include "api/auth/tls.h"
#include "api/grpc/grpc_server.h"
#include "api/http/http.h"
#include "cmd/commands.h"
#include "cmd/ranks.h"
#include "kernels/ops.h"
#include "server/base/fileutil.h"
#include "server/base/log.h"
#include "server/dist/dist.h"
#include "server/jobs/ranks.h"
#include "server/service.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: chordd [serve] [OPTIONS]\n\n"
            "Runs the chord server: accepts training jobs, dataset uploads and rollout requests\n"
            "over HTTP (REST + JSON, Server-Sent Events), runs them on its devices and records\n"
            "everything in SQLite under the data directory. Stops cleanly on SIGINT / SIGTERM.\n\n"
            "options:\n"
            "  --data-dir DIR        data directory (SQLite, datasets, checkpoints); default "
            "./chord-data\n"
            "  --http HOST:PORT      REST address, or 'off'; default 127.0.0.1:8080 (port 0 = "
            "any free port)\n"
            "  --grpc HOST:PORT      gRPC address (chord.v1.Chord + grpc.health.v1), or 'off';\n"
            "                        default 127.0.0.1:50051 (port 0 = any free port)\n"
            "  --device DEV          auto | cpu | cuda | cuda:N[,M...]; one worker per device;\n"
            "                        default auto (every CUDA GPU, else the CPU); cuda:all:\n"
            "                        every GPU, each job data-parallel over them (chordd runs\n"
            "                        itself under mpirun -np <GPUs>; docs/distributed.md)\n"
            "  --models-root DIR     the only directory models may be registered from;\n"
            "                        default DATA_DIR/models\n"
            "  --max-upload-mb N     dataset upload limit in MiB; default 1024\n"
            "limits (each refusal a 413 or 429 / RESOURCE_EXHAUSTED naming the flag; "
            "docs/operations.md):\n"
            "  --max-line-kb N       longest JSONL line of an upload, KiB; default 1024\n"
            "  --max-rollout-tokens N  most tokens one rollout request may ask for (prompts x\n"
            "                        n x max_tokens); default 1048576\n"
            "  --max-queued-jobs N   jobs queued at once; default 1000\n"
            "  --max-pending-rollouts N  rollout requests pending at once; default 1000\n"
            "  --webhook-url URL     POST signed job.succeeded|failed|cancelled and\n"
            "                        checkpoint.created events there (docs/pipelines.md)\n"
            "  --webhook-secret-file FILE  the signing secret (whsec_<base64>, or raw bytes)\n"
            "  --idempotency-ttl T   how long an Idempotency-Key's first result is kept:\n"
            "                        seconds, or with a unit (90s, 30m, 24h, 7d); default 24h\n"
            "  --http-max-connections N  HTTP connections open at once; default 512\n"
            "  --grpc-max-streams N  gRPC calls in progress at once; default 1000\n"
            "  --rate-limit R        requests/s per client (per token with --auth-token-file,\n"
            "                        else per IP address), health checks exempt; default 0 = off\n"
            "  --rate-burst B        requests a client may send at once; default max(1, R)\n"
            "  --device-memory-mb N  the most memory (MiB) a job or rollout may need on one\n"
            "                        device; work estimated over it is refused (413);\n"
            "                        default 0 = the device's free memory\n"
            "  --slots N             jobs at once per device (workers sharing one copy of\n"
            "                        each base model: LoRA jobs, rollouts); default 1\n"
            "  --threads N           CPU threads per worker's backend; default all cores\n"
            "  --http-threads N      HTTP thread pool size; default 4\n"
            "  --sse-heartbeat S     seconds between heartbeat comments on event streams; "
            "default 15\n"
            "  --log-level LEVEL     debug | info | warn | error; default info\n"
            "  --auth-token-file F   bearer tokens, one a line: 'admin TOKEN' or 'read TOKEN'\n"
            "                        ('#' comments); every REST route and gRPC method but health\n"
            "                        then needs 'Authorization: Bearer TOKEN' (read: GET, list,\n"
            "                        watch; admin: everything). Default: no authentication,\n"
            "                        allowed only on loopback addresses\n"
            "  --insecure-no-auth    serve a non-loopback --http / --grpc without tokens\n"
            "  --tls-cert FILE       PEM certificate (chain): REST is HTTPS and gRPC TLS only;\n"
            "  --tls-key FILE        with its unencrypted PEM private key (both or neither)\n"
            "under mpirun (docs/distributed.md): rank 0 serves, the other ranks compute every\n"
            "job with it, data-parallel (one device per rank: cpu, or cuda = the rank's GPU):\n"
            "  --dist-timeout S      a rank that does not reach a collective within S seconds\n"
            "                        fails the job, naming it, and ends the service; default 600\n"
            "  --zero 1              ZeRO-1: each rank keeps its slice of the optimizer state\n"
            "  --bucket-mb N         gradients summed in N MiB buckets during the backward;\n"
            "                        default 25 (0: one sum after it)\n"
            "  --demo                submit the embedded demo job at start: a random-init tiny\n"
            "                        model trained with CHORD on the built-in arithmetic task\n"
            "  -h, --help            this help\n\n"
            "example:\n"
            "  chordd --demo &\n"
            "  curl -N http://127.0.0.1:8080/v1/jobs/JOB_ID/events\n");
}

/* "HOST:PORT", "[V6]:PORT", ":PORT" (localhost) or "PORT". */
static int parse_addr(const char *flag, const char *v, char *host, size_t hostlen, int *port) {
    const char *colon = strrchr(v, ':');
    const char *p = colon ? colon + 1 : v;
    char *end = NULL;
    errno = 0;
    long n = strtol(p, &end, 10);
    if (!*p || *end || errno || n < 0 || n > 65535) {
        fprintf(stderr, "chordd: %s: '%s' is not HOST:PORT (or 'off')\n", flag, v);
        return -1;
    }
    *port = (int)n;
    size_t hl = colon ? (size_t)(colon - v) : 0;
    if (hl >= 2 && v[0] == '[' && v[hl - 1] == ']') {
        v++;
        hl -= 2;
    }
    if (hl == 0) {
        snprintf(host, hostlen, "127.0.0.1");
    } else {
        if (hl >= hostlen) {
            fprintf(stderr, "chordd: %s: host too long\n", flag);
            return -1;
        }
        memcpy(host, v, hl);
        host[hl] = '\0';
    }
    return 0;
}

/* 1 when every address host resolves to is a loopback one (127.0.0.0/8, ::1, ::ffff:127.x). */
static int host_is_loopback(const char *host) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai) return 0;
    int loopback = 1;
    for (const struct addrinfo *p = ai; p; p = p->ai_next) {
        if (p->ai_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)p->ai_addr;
            loopback &= (ntohl(a->sin_addr.s_addr) >> 24) == 127;
        } else if (p->ai_family == AF_INET6) {
            const struct in6_addr *a = &((const struct sockaddr_in6 *)p->ai_addr)->sin6_addr;
            loopback &=
                IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
        } else {
            loopback = 0;
        }
    }
    freeaddrinfo(ai);
    return loopback;
}

/* Without tokens, only loopback listeners (unless --insecure-no-auth says otherwise). */
static int check_exposure(const char *flag, int on, const char *host, int have_tokens,
                          int insecure) {
    if (!on || have_tokens || host_is_loopback(host)) return 0;
    if (insecure) {
        LOG_WARN("chordd: %s %s is reachable from other machines and serves without "
                 "authentication (--insecure-no-auth)",
                 flag, host);
        return 0;
    }
    fprintf(stderr,
            "chordd: %s %s is reachable from other machines: give --auth-token-file FILE, or "
            "--insecure-no-auth to serve it without authentication\n",
            flag, host);
    return -1;
}

/* "90", "90s", "30m", "24h", "7d": whole seconds, 1 s to 366 days. */
static int parse_duration_s(const char *flag, const char *v, int64_t *out) {
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    int64_t unit = 1;
    if (end && *end && !end[1]) {
        unit = *end == 's' ? 1 : *end == 'm' ? 60 : *end == 'h' ? 3600 : *end == 'd' ? 86400 : 0;
        end++;
    }
    if (errno || end == v || !end || *end || unit == 0 || n < 1 || n > 366LL * 86400 / unit) {
        fprintf(stderr,
                "chordd: %s: '%s' is not a duration (e.g. 3600, 90s, 30m, 24h, 7d; at "
                "least 1 s, at most 366 days)\n",
                flag, v);
        return -1;
    }
    *out = (int64_t)n * unit;
    return 0;
}

/* Several ranks (mpirun): each rank's one device (cpu, or cuda:<its index on its host>) and its
 * CPU threads (the host's cores shared by its ranks unless --threads). Every rank decides alike;
 * rank 0 says why it refuses. */
static int serve_rank_setup(dist_ctx *dist, const char *device, int slots, long *threads,
                            int threads_given, char *out, size_t outlen) {
    const int rank = dist_rank(dist);
    const char *why = NULL;
    char buf[sizeof((chord_err *)0)->msg + 64];
    if (slots > 1) {
        why = "--slots: under mpirun every rank runs one job at a time, the same job (leave "
              "--slots out)";
    } else if (!strcmp(device, "cpu")) {
        snprintf(out, outlen, "cpu");
    } else if (!strcmp(device, "auto") || !strcmp(device, "cuda") || !strcmp(device, "cuda:all")) {
        chord_err gerr = {0};
        int on_gpu = cmd_rank_gpu(dist, device, out, outlen, &gerr);
        if (on_gpu < 0) {
            snprintf(buf, sizeof buf, "--%s", gerr.msg);
            why = buf;
        } else if (!on_gpu) { /* auto on a host without a GPU */
            snprintf(out, outlen, "cpu");
        }
    } else {
        snprintf(buf, sizeof buf,
                 "--device %s: under mpirun each rank takes one device, the GPU of its index on "
                 "its host: give --device cuda, auto or cpu",
                 device);
        why = buf;
    }
    if (why) {
        if (rank == 0) fprintf(stderr, "chordd: %s (docs/distributed.md)\n", why);
        return -1;
    }
    if (!threads_given) *threads = cmd_rank_threads(dist);
    return 0;
}

static int serve(int argc, char **argv, dist_ctx **dist_out);

/* `chordd serve`; under mpirun rank 0's service ends its ranks when it stops (ranks.h). */
int cmd_serve(int argc, char **argv) {
    dist_ctx *dist = NULL;
    int rc = serve(argc, argv, &dist);
    if (!dist) return rc;
    chord_err err = {0};
    if (rc == 0 && jobs_ranks_send_quit(dist, &err) == 0 && dist_close(dist, &err) == 0) return 0;
    if (rc == 0) fprintf(stderr, "chordd: ending the other ranks: %s\n", err.msg);
    dist_abort(dist, rc ? rc : 1); /* they would wait for a command forever */
}

/* *dist_out: rank 0's dist context when launched by mpirun with several ranks (set once the
 * ranks are set up: cmd_serve then ends them), else NULL. */
static int serve(int argc, char **argv, dist_ctx **dist_out) {
    const char *data_dir = "./chord-data", *http = "127.0.0.1:8080", *grpc = "127.0.0.1:50051";
    const char *device = "auto", *models_root = NULL, *log_level = "info";
    const char *auth_file = NULL, *tls_cert = NULL, *tls_key = NULL;
    int insecure_no_auth = 0;
    long slots = 1;
    long max_upload_mb = 1024, threads = 0, http_threads = 4, heartbeat = 15, memory_mb = 0;
    long max_line_kb = SVC_DEFAULT_MAX_LINE_BYTES >> 10,
         max_rollout_tokens = SVC_DEFAULT_MAX_ROLLOUT_TOKENS;
    long max_queued_jobs = SVC_DEFAULT_MAX_QUEUED_JOBS,
         max_pending_rollouts = SVC_DEFAULT_MAX_PENDING_ROLLOUTS;
    long http_max_connections = 512, grpc_max_streams = 1000;
    double rate_limit = 0, rate_burst = 0;
    int64_t idempotency_ttl_s = SVC_DEFAULT_IDEMPOTENCY_TTL_S;
    const char *webhook_url = NULL, *webhook_secret_file = NULL;
    int demo = 0;
    double dist_timeout = DIST_DEFAULT_TIMEOUT_S, bucket_mb = 25.0;
    long zero = 0;
    int dist_flag = 0;     /* a flag only the ranks of an mpirun launch take */
    int threads_given = 0; /* --threads (else each rank takes its share of the cores) */
    int i = 1;
    if (argc >= 1 && argv[0] && argv[0][0] == '-') i = 0; /* called with no subcommand */
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
#define VALUE()                                                                                    \
    do {                                                                                           \
        if (!next) {                                                                               \
            fprintf(stderr, "chordd: %s needs a value\n", a);                                      \
            return 2;                                                                              \
        }                                                                                          \
        i++;                                                                                       \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--data-dir")) {
            VALUE();
            data_dir = next;
        } else if (!strcmp(a, "--http")) {
            VALUE();
            http = next;
        } else if (!strcmp(a, "--grpc")) {
            VALUE();
            grpc = next;
        } else if (!strcmp(a, "--device")) {
            VALUE();
            device = next;
        } else if (!strcmp(a, "--models-root")) {
            VALUE();
            models_root = next;
        } else if (!strcmp(a, "--max-upload-mb")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 1L << 20, &max_upload_mb)) return 2;
        } else if (!strcmp(a, "--max-line-kb")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 1L << 20, &max_line_kb)) return 2;
        } else if (!strcmp(a, "--max-rollout-tokens")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 1L << 40, &max_rollout_tokens)) return 2;
        } else if (!strcmp(a, "--max-queued-jobs")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 1000000, &max_queued_jobs)) return 2;
        } else if (!strcmp(a, "--max-pending-rollouts")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 1000000, &max_pending_rollouts)) return 2;
        } else if (!strcmp(a, "--webhook-url")) {
            VALUE();
            webhook_url = next;
        } else if (!strcmp(a, "--webhook-secret-file")) {
            VALUE();
            webhook_secret_file = next;
        } else if (!strcmp(a, "--idempotency-ttl")) {
            VALUE();
            if (parse_duration_s(a, next, &idempotency_ttl_s)) return 2;
        } else if (!strcmp(a, "--http-max-connections")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 100000, &http_max_connections)) return 2;
        } else if (!strcmp(a, "--grpc-max-streams")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 1000000, &grpc_max_streams)) return 2;
        } else if (!strcmp(a, "--rate-limit")) {
            VALUE();
            if (cmd_arg_double(a, next, 0, 1e9, &rate_limit)) return 2;
        } else if (!strcmp(a, "--rate-burst")) {
            VALUE();
            if (cmd_arg_double(a, next, 0, 1e9, &rate_burst)) return 2;
        } else if (!strcmp(a, "--device-memory-mb")) {
            VALUE();
            if (cmd_arg_long(a, next, 0, 1L << 30, &memory_mb)) return 2;
        } else if (!strcmp(a, "--slots")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 64, &slots)) return 2;
        } else if (!strcmp(a, "--threads")) {
            VALUE();
            if (cmd_arg_long(a, next, 0, 4096, &threads)) return 2;
            threads_given = 1;
        } else if (!strcmp(a, "--dist-timeout")) {
            VALUE();
            if (cmd_arg_double(a, next, CMD_DIST_TIMEOUT_MIN, CMD_DIST_TIMEOUT_MAX, &dist_timeout))
                return 2;
            dist_flag = 1;
        } else if (!strcmp(a, "--zero")) {
            VALUE();
            if (cmd_arg_long(a, next, 0, 1, &zero)) return 2;
            dist_flag = 1;
        } else if (!strcmp(a, "--bucket-mb")) {
            VALUE();
            if (cmd_arg_double(a, next, 0, CMD_BUCKET_MB_MAX, &bucket_mb)) return 2;
            dist_flag = 1;
        } else if (!strcmp(a, "--http-threads")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 256, &http_threads)) return 2;
        } else if (!strcmp(a, "--sse-heartbeat")) {
            VALUE();
            if (cmd_arg_long(a, next, 1, 3600, &heartbeat)) return 2;
        } else if (!strcmp(a, "--log-level")) {
            VALUE();
            log_level = next;
        } else if (!strcmp(a, "--auth-token-file")) {
            VALUE();
            auth_file = next;
        } else if (!strcmp(a, "--insecure-no-auth")) {
            insecure_no_auth = 1;
        } else if (!strcmp(a, "--tls-cert")) {
            VALUE();
            tls_cert = next;
        } else if (!strcmp(a, "--tls-key")) {
            VALUE();
            tls_key = next;
        } else if (!strcmp(a, "--demo")) {
            demo = 1;
        } else {
            fprintf(stderr, "chordd: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
#undef VALUE
    }
    int level;
    if (chord_log_parse_level(log_level, &level)) {
        fprintf(stderr, "chordd: --log-level: must be debug, info, warn or error\n");
        return 2;
    }
    chord_log_set_level(level);
    /* under mpirun: rank 0 goes on as the service, the others follow it (ranks.h) */
    dist_ctx *dist = NULL;
    char rank_device[32] = "";
    if (dist_flag && !dist_launched_by_mpi()) {
        fprintf(stderr, "chordd: --dist-timeout, --zero and --bucket-mb set up the ranks of a "
                        "service launched by mpirun; this one is not (docs/distributed.md)\n");
        return 2;
    }
    if (!strcmp(device, "cuda:all") && !dist_launched_by_mpi()) {
        /* every GPU of the host, data-parallel: one rank each under mpirun, as `chordd train` */
        int gpus = ops_cuda_device_count();
        if (gpus <= 0) {
            fprintf(stderr, "chordd: --device cuda:all: no CUDA device on this host (or no CUDA "
                            "driver)\n");
            return 2;
        }
        if (gpus > 1) return cmd_relaunch_per_gpu("serve", argc, argv, gpus);
        device = "cuda:0";
    }
    if (dist_launched_by_mpi()) {
        chord_err derr = {0};
        if (dist_open(dist_timeout, &dist, &derr) != 0) {
            fprintf(stderr, "chordd: %s\n", derr.msg);
            return 1;
        }
        if (dist_size(dist) == 1) {
            dist_close(dist, &derr);
            dist = NULL;
            if (!strcmp(device, "cuda:all")) device = "cuda:0"; /* mpirun -np 1 */
            if (dist_flag) {
                fprintf(stderr, "chordd: --dist-timeout, --zero and --bucket-mb need several "
                                "ranks (mpirun -np N, N > 1)\n");
                return 2;
            }
        }
    }
    if (dist) {
        int rc = serve_rank_setup(dist, device, (int)slots, &threads, threads_given, rank_device,
                                  sizeof rank_device);
        if (rc == 0 && dist_rank(dist) != 0) {
            chord_err ferr = {0};
            jobs_ranks_options ro = {.zero = (int)zero, .bucket_mb = bucket_mb};
            if (jobs_ranks_follow(dist, rank_device, (int)threads, &ro, &ferr) != 0) {
                fprintf(stderr, "chordd: rank %d of %d: %s\n", dist_rank(dist), dist_size(dist),
                        ferr.msg);
                dist_abort(dist, 1);
            }
            if (dist_close(dist, &ferr) != 0) {
                fprintf(stderr, "chordd: rank %d: %s\n", dist_rank(dist), ferr.msg);
                return 1;
            }
            return 0;
        }
        if (rc != 0) dist_abort(dist, 2); /* every rank refused alike: said once, by rank 0 */
        device = rank_device;
        *dist_out = dist;
    }
    char http_host[256] = "", grpc_host[256] = "";
    int http_port = 0, grpc_port = 0;
    int http_on = strcmp(http, "off") != 0, grpc_on = strcmp(grpc, "off") != 0;
    if (http_on && parse_addr("--http", http, http_host, sizeof http_host, &http_port)) return 2;
    if (grpc_on && parse_addr("--grpc", grpc, grpc_host, sizeof grpc_host, &grpc_port)) return 2;
    if (auth_file && insecure_no_auth) {
        fprintf(stderr, "chordd: --auth-token-file and --insecure-no-auth: give one, not both\n");
        return 2;
    }
    if (!tls_cert != !tls_key) {
        fprintf(stderr, "chordd: --tls-cert and --tls-key go together: give both, or neither\n");
        return 2;
    }
    if (check_exposure("--http", http_on, http_host, auth_file != NULL, insecure_no_auth) ||
        check_exposure("--grpc", grpc_on, grpc_host, auth_file != NULL, insecure_no_auth))
        return 2;
    chord_err err = {0};
    /* read by request threads: both freed after both transports stopped */
    api_auth *auth = NULL;
    api_tls tls = {0};
    if (auth_file) {
        if (api_auth_load(auth_file, &auth, &err)) {
            fprintf(stderr, "chordd: %s\n", err.msg);
            return 2;
        }
        LOG_INFO("chordd: authentication on: %d admin and %d read token(s) from %s",
                 api_auth_count(auth, API_SCOPE_ADMIN), api_auth_count(auth, API_SCOPE_READ),
                 auth_file);
    }
    if (tls_cert) {
        if (api_tls_load(tls_cert, tls_key, &tls, &err)) {
            fprintf(stderr, "chordd: %s\n", err.msg);
            api_auth_free(auth);
            return 2;
        }
        LOG_INFO("chordd: TLS on (REST https, gRPC TLS): %s", tls.summary);
    } else if (auth && ((http_on && !host_is_loopback(http_host)) ||
                        (grpc_on && !host_is_loopback(grpc_host)))) {
        LOG_WARN("chordd: tokens cross the network in clear text: give --tls-cert and --tls-key");
    }

    /* signals are taken by sigwait below: block them before any thread starts */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);

    svc_options so = {.data_dir = data_dir,
                      .models_root = models_root,
                      .device = device,
                      .slots = (int)slots,
                      .threads = (int)threads,
                      .max_upload_bytes = (int64_t)max_upload_mb << 20,
                      .max_line_bytes = (int64_t)max_line_kb << 10,
                      .max_rollout_tokens = max_rollout_tokens,
                      .max_queued_jobs = (int)max_queued_jobs,
                      .max_pending_rollouts = (int)max_pending_rollouts,
                      .memory_limit = (int64_t)memory_mb << 20,
                      .workers = 1,
                      .idempotency_ttl_s = idempotency_ttl_s,
                      .webhook_url = webhook_url,
                      .dist = dist,
                      .zero = (int)zero,
                      .bucket_mb = bucket_mb};
    /* one bucket per client across both transports; freed after both stopped */
    api_rate *rate = api_rate_new(rate_limit, rate_burst);
    if (rate_limit > 0 && !rate) {
        fprintf(stderr, "chordd: out of memory\n");
        api_auth_free(auth);
        api_tls_clear(&tls);
        return 1;
    }
    char *webhook_secret = NULL;
    if (webhook_secret_file) {
        size_t len = 0;
        chord_err werr = {0};
        if (chord_read_file(webhook_secret_file, &webhook_secret, &len, &werr)) {
            LOG_ERROR("chordd: --webhook-secret-file: %s", werr.msg);
            api_rate_free(rate);
            api_auth_free(auth);
            api_tls_clear(&tls);
            return 1;
        }
        while (len > 0 && (webhook_secret[len - 1] == '\n' || webhook_secret[len - 1] == '\r' ||
                           webhook_secret[len - 1] == ' '))
            webhook_secret[--len] = '\0';
        so.webhook_secret = webhook_secret;
    }
    svc *s = NULL;
    int opened = svc_open(&so, &s, &err);
    free(webhook_secret); /* the service keeps its own key */
    if (opened) {
        LOG_ERROR("chordd: %s", err.msg);
        api_rate_free(rate);
        api_auth_free(auth);
        api_tls_clear(&tls);
        return 1;
    }
    /* gRPC binds first: a taken port fails the start before /healthz answers, and a healthy
     * /healthz means both transports are listening */
    api_grpc *g = NULL;
    if (grpc_on) {
        api_grpc_options go = {.host = grpc_host,
                               .port = grpc_port,
                               .auth = auth,
                               .max_calls = (int)grpc_max_streams,
                               .rate = rate,
                               .tls_cert_pem = tls.cert_pem,
                               .tls_key_pem = tls.key_pem};
        if (api_grpc_start(s, &go, &g, &err)) {
            LOG_ERROR("chordd: %s", err.msg);
            svc_close(s);
            api_rate_free(rate);
            api_auth_free(auth);
            api_tls_clear(&tls);
            return 1;
        }
    }
    api_http *h = NULL;
    if (http_on) {
        api_http_options ho = {.host = http_host,
                               .port = http_port,
                               .threads = (int)http_threads,
                               .heartbeat_s = (int)heartbeat,
                               .connection_limit = (int)http_max_connections,
                               .rate = rate,
                               .auth = auth,
                               .tls_cert_pem = tls.cert_pem,
                               .tls_key_pem = tls.key_pem};
        if (api_http_start(s, &ho, &h, &err)) {
            LOG_ERROR("chordd: %s", err.msg);
            api_grpc_stop(g);
            svc_close(s);
            api_rate_free(rate);
            api_auth_free(auth);
            api_tls_clear(&tls);
            return 1;
        }
    }
    int n_dev = 0;
    const char *const *devs = svc_devices(s, &n_dev);
    if (h)
        LOG_INFO("chordd %s listening on %s://%s%s%s:%d (data %s, models root %s, device %s%s)",
                 SVC_VERSION, tls.cert_pem ? "https" : "http", strchr(http_host, ':') ? "[" : "",
                 http_host, strchr(http_host, ':') ? "]" : "", api_http_port(h), data_dir,
                 svc_models_root(s), devs[0], n_dev > 1 ? ",..." : "");
    else
        LOG_INFO("chordd %s running without HTTP (data %s)", SVC_VERSION, data_dir);
    if (g)
        LOG_INFO("chordd gRPC listening on %s%s%s:%d%s", strchr(grpc_host, ':') ? "[" : "",
                 grpc_host, strchr(grpc_host, ':') ? "]" : "", api_grpc_port(g),
                 tls.cert_pem ? " (TLS)" : "");
    if (demo) {
        json_t *job = NULL;
        if (svc_submit_demo(s, &job, &err)) {
            LOG_ERROR("chordd: %s", err.msg);
        } else {
            const char *id = json_string_value(json_object_get(job, "id"));
            LOG_INFO("demo job %s queued; watch it with: curl -N %s%s%s://%s:%d/v1/jobs/%s/events",
                     id, auth ? "-H 'Authorization: Bearer TOKEN' " : "",
                     tls.cert_pem ? "--cacert CERT " : "", tls.cert_pem ? "https" : "http",
                     http_host[0] ? http_host : "127.0.0.1", h ? api_http_port(h) : 8080, id);
            json_decref(job);
        }
    }

    int sig = 0;
    while (sigwait(&stop_set, &sig) != 0) {
    }
    LOG_INFO("chordd: %s received, stopping (running jobs write a checkpoint first)",
             sig == SIGINT ? "SIGINT" : "SIGTERM");
    /* The order that keeps every request's memory alive (service.h, "Lifetime"):
     * 1. no new connections or calls; requests in flight go on */
    api_http_quiesce(h);
    api_grpc_quiesce(g);
    /* 2. work refused (503 / UNAVAILABLE), running jobs checkpoint and go back to the queue,
     *    workers joined; nothing freed */
    svc_shutdown(s);
    /* 3. event streams end, every request thread has returned, every watch is closed */
    api_http_stop(h);
    api_grpc_stop(g);
    /* 4. only now: the jobs pool, the watch feeds, SQLite */
    svc_close(s);
    api_rate_free(rate);
    api_auth_free(auth);
    api_tls_clear(&tls);
    LOG_INFO("chordd: stopped");
    return 0;
}
