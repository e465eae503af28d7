/* Writes a small synthetic checkpoint: make_synth ARCH DIR [SEED]
 * (ARCH: modernbert, qwen2, bert). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "synth.h"

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: make_synth modernbert|qwen2|bert DIR [SEED]\n");
        return 2;
    }
    qt_synth_spec s = {.hidden = 64, .layers = 2, .heads = 4, .kv_heads = 2, .intermediate = 128,
                       .vocab = 300, .max_positions = 128, .num_labels = 7,
                       .seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1};
    if (strcmp(argv[1], "modernbert") == 0) s.arch = QT_SYNTH_MODERNBERT;
    else if (strcmp(argv[1], "qwen2") == 0) s.arch = QT_SYNTH_QWEN2;
    else if (strcmp(argv[1], "bert") == 0) s.arch = QT_SYNTH_BERT;
    else {
        fprintf(stderr, "make_synth: unknown architecture '%s'\n", argv[1]);
        return 2;
    }
    if (qt_synth_write(&s, argv[2])) {
        fprintf(stderr, "make_synth: %s\n", qt_last_error());
        return 1;
    }
    return 0;
}
