/* test_dist.c — dist.h's single-process implementation (what every process not launched by
 * mpirun gets): rank 0 of 1, collectives that leave their buffers as they are, a gather that
 * copies, a device-buffer sum on the CPU backend. The MPI implementation runs under mpirun in
 * integration.mpi (tests/integration/mpi_test.py); a rank's share of a step's rollouts is
 * test_rollout.c's test_share_of_a_step. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "server/dist/dist.h"

static void test_single_process(void **state) {
    (void)state;
    /* launched by hand, not by mpirun (ctest's environment has no launcher variables) */
    unsetenv("OMPI_COMM_WORLD_SIZE");
    unsetenv("PMIX_RANK");
    unsetenv("PMI_SIZE");
    unsetenv("PMI_RANK");
    assert_int_equal(dist_launched_by_mpi(), 0);
    chord_err err = {0};
    dist_ctx *d = NULL;
    assert_int_equal(dist_open(5.0, &d, &err), 0);
    assert_non_null(d);
    assert_int_equal(dist_rank(d), 0);
    assert_int_equal(dist_size(d), 1);
    assert_int_equal(dist_local_rank(d), 0);
    assert_string_equal(dist_kind(d), "single");
    float f[3] = {1.5f, -2.0f, 3.25f};
    double g[2] = {0.125, 7.0};
    int64_t m[2] = {3, -4};
    assert_int_equal(dist_allreduce_sum_f32(d, f, 3, "f", &err), 0);
    assert_int_equal(dist_allreduce_sum_f64(d, g, 2, "g", &err), 0);
    assert_int_equal(dist_allreduce_max_i64(d, m, 2, "m", &err), 0);
    assert_true(f[0] == 1.5f && f[1] == -2.0f && f[2] == 3.25f);
    assert_true(g[0] == 0.125 && g[1] == 7.0 && m[0] == 3 && m[1] == -4);
    assert_int_equal(dist_broadcast(d, f, sizeof f, 0, "b", &err), 0);
    assert_int_equal(dist_barrier(d, "x", &err), 0);
    char *all = NULL;
    size_t lens[1] = {0};
    assert_int_equal(dist_gather_bytes(d, "abc", 3, 0, &all, lens, "s", &err), 0);
    assert_int_equal(lens[0], 3);
    assert_memory_equal(all, "abc", 3);
    free(all);
    /* the CPU backend's device memory is host memory: the sum of one rank is the buffer */
    char msg[256];
    ops_ctx *ops = ops_open("cpu", 1, msg, sizeof msg);
    assert_non_null(ops);
    assert_int_equal(dist_allreduce_sum_device_f32(d, ops, f, 3, "grads", &err), 0);
    assert_true(f[0] == 1.5f);
    /* ZeRO-1's slices: one rank's is the whole buffer; its collectives leave it, the gather
     * copies it */
    size_t lo = 9, hi = 9;
    dist_slice(d, 7, 0, &lo, &hi);
    assert_true(lo == 0 && hi == 7);
    float h[3] = {0};
    assert_int_equal(dist_reduce_scatter_sum_f32(d, f, 3, "rs", &err), 0);
    assert_int_equal(dist_allgather_f32(d, f, 3, "ag", &err), 0);
    assert_int_equal(dist_reduce_scatter_sum_device_f32(d, ops, f, 3, "rs", &err), 0);
    assert_int_equal(dist_allgather_device_f32(d, ops, f, 3, "ag", &err), 0);
    assert_true(f[0] == 1.5f && f[1] == -2.0f && f[2] == 3.25f);
    assert_int_equal(dist_gather_f32(d, f, 3, h, 0, "g", &err), 0);
    assert_memory_equal(h, f, sizeof f);
    /* one process has no NCCL communicator to attach: nothing to do */
    assert_int_equal(dist_attach_nccl(d, ops, &err), 0);
    ops_close(ops);
    assert_int_equal(dist_close(d, &err), 0);
    assert_int_equal(dist_close(NULL, &err), 0);
    /* NULL is one process too */
    assert_int_equal(dist_size(NULL), 1);
    assert_int_equal(dist_allreduce_sum_f32(NULL, f, 3, "f", &err), 0);
}

static void test_bad_timeout(void **state) {
    (void)state;
    chord_err err = {0};
    dist_ctx *d = (dist_ctx *)1;
    assert_int_equal(dist_open(0.0, &d, &err), -1);
    assert_null(d);
    assert_non_null(strstr(err.msg, "timeout"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_process),
        cmocka_unit_test(test_bad_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
