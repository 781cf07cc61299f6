/* cmd_ranks.c — the ranks of an mpirun launch, as `chordd train` and `chordd serve` both set them
 * up (ranks.h, docs/distributed.md): each rank's GPU and threads, and `--device cuda:all` outside
 * mpirun, the command run again under mpirun, one rank per GPU (commands.h). chordd only
 * (chordctl compiles cmd_args.c alone). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cmd/ranks.h"
#include "kernels/ops.h"
#include "server/dist/dist.h"

/* --device cuda:all outside mpirun on a host with several GPUs: runs this same command again
 * under `mpirun -np <GPUs>` (one rank per GPU, each taking cuda:<its rank on the host>), with
 * --device cuda. Returns only on failure. Never ran: no GPU host was available to this work. */
int cmd_relaunch_per_gpu(const char *command, int argc, char **argv, int gpus) {
    if (!dist_have_mpi()) {
        fprintf(stderr,
                "chordd %s: --device cuda:all: %d GPUs need one rank each, and this "
                "chordd was built without MPI (install libopenmpi-dev and rebuild, or "
                "use --device cuda:N)\n",
                command, gpus);
        return 2;
    }
    char self[4096], np[16];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "chordd %s: --device cuda:all: /proc/self/exe: %s\n", command,
                strerror(errno));
        return 1;
    }
    self[len] = '\0';
    snprintf(np, sizeof np, "%d", gpus);
    char **args = calloc((size_t)argc + 16, sizeof *args);
    if (!args) {
        fprintf(stderr, "chordd %s: out of memory\n", command);
        return 1;
    }
    int n = 0;
    args[n++] = "mpirun";
    args[n++] = "-np";
    args[n++] = np;
    args[n++] = "--bind-to"; /* each rank's OpenMP threads may use more than one core */
    args[n++] = "none";
    if (geteuid() == 0) args[n++] = "--allow-run-as-root";
    args[n++] = self;
    for (int i = 0; i < argc; i++) /* argv[0] is the subcommand (or serve's first flag) */
        if (!strcmp(argv[i], "cuda:all") && i > 0 && !strcmp(argv[i - 1], "--device"))
            args[n++] = "cuda";
        else if (!strcmp(argv[i], "--device=cuda:all"))
            args[n++] = "--device=cuda";
        else
            args[n++] = argv[i];
    args[n] = NULL;
    fprintf(stderr, "chordd %s: --device cuda:all: %d GPUs: running under mpirun -np %d\n", command,
            gpus, gpus);
    fflush(stderr);
    execvp("mpirun", args);
    fprintf(stderr,
            "chordd %s: --device cuda:all: cannot run mpirun: %s (install Open MPI, or "
            "launch one rank per GPU yourself: mpirun -np %d chordd %s ... --device "
            "cuda)\n",
            command, strerror(errno), gpus, command);
    free(args);
    return 1;
}

int cmd_rank_gpu(const dist_ctx *d, const char *dev, char *out, size_t outlen, chord_err *err) {
    if (dist_size(d) <= 1) return 0;
    int gpus = ops_cuda_device_count();
    if (!(!strcmp(dev, "cuda") || !strcmp(dev, "cuda:all") || (!strcmp(dev, "auto") && gpus > 0)))
        return 0;
    if (dist_local_rank(d) >= gpus)
        return chord_err_set(err,
                             "device %s: rank %d is rank %d on its host, which has %d GPU%s "
                             "(launch one rank per GPU)",
                             dev, dist_rank(d), dist_local_rank(d), gpus, gpus == 1 ? "" : "s");
    snprintf(out, outlen, "cuda:%d", dist_local_rank(d));
    return 1;
}

long cmd_rank_threads(const dist_ctx *d) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN), local = dist_local_size(d);
    return local > 0 && cores / local > 0 ? cores / local : 1;
}
