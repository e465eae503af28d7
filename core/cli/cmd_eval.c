/* Placeholder until this command is implemented. */
#include <stdio.h>

#include "cli.h"

int cmd_eval(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "qtool %s: not implemented yet\n", argv[0]);
    return QT_EXIT_RUNTIME;
}
