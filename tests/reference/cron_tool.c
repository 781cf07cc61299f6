/* cron_tool.c — the C side of reference.cron: reads lines "EXPR<TAB>START_MS<TAB>N" on stdin and
 * prints, per line, the N next times of EXPR after START_MS (unix ms, space-separated) as
 * server/jobs/cron.h computes them, or "error<TAB>message". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/jobs/cron.h"

int main(void) {
    char line[1024];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        char *tab1 = strchr(line, '\t'), *tab2 = tab1 ? strchr(tab1 + 1, '\t') : NULL;
        if (!tab2) {
            fprintf(stderr, "bad input line: %s\n", line);
            return 2;
        }
        *tab1 = *tab2 = '\0';
        long long t = atoll(tab1 + 1);
        int n = atoi(tab2 + 1);
        cron_expr c;
        chord_err err = {0};
        if (cron_parse(line, &c, &err)) {
            printf("error\t%s\n", err.msg);
        } else {
            for (int i = 0; i < n; i++) {
                t = cron_next(&c, t);
                printf("%s%lld", i ? " " : "", t);
                if (t < 0) break;
            }
            printf("\n");
        }
        fflush(stdout);
    }
    return 0;
}
