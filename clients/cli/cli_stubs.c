/* cli_stubs.c — temporary: commands not written yet. */
#include "clients/cli/cli.h"
int cli_rollout(cli *c, int argc, char **argv) { return cli_fail(CLI_USAGE, "not yet"); }
int cli_checkpoints(cli *c, int argc, char **argv) { return cli_fail(CLI_USAGE, "not yet"); }
