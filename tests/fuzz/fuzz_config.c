/* libFuzzer target: the config parser (config.h) on arbitrary bytes.
 *
 * Input: every line before the first line that starts with '{' (at most 8) is one --set override
 * ("key.path=value"), the rest is the JSON text (NUL-terminated copy; a NUL inside ends it, as C
 * strings do). Data files are not checked (no file system access).
 * Properties checked besides the sanitizers:
 *   - a refusal is one line (the command line prints cf_error_msg() as one line, exit status 2);
 *   - an accepted config printed by cf_config_to_json parses back to the identical struct (run
 *     directories store config.json, and --resume rereads it). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cformer/config.h"
#include "cformer/core.h"

enum { MAX_OVERRIDES = 8 };

static void fail(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_config: %s: %s\n", what, detail);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    const char *overrides[MAX_OVERRIDES];
    int n = 0;
    char *json = text;
    while (n < MAX_OVERRIDES && *json != '{') {
        char *nl = strchr(json, '\n');
        if (!nl) break;
        *nl = 0;
        overrides[n++] = json;
        json = nl + 1;
    }
    cf_config c;
    if (cf_config_parse(&c, json, overrides, n, 0)) {
        if (strpbrk(cf_error_msg(), "\n\r")) fail("a refusal of more than one line", cf_error_msg());
    } else {
        char *out = cf_config_to_json(&c);
        cf_config again;
        if (cf_config_parse(&again, out, NULL, 0, 0)) fail("the printed config does not parse", cf_error_msg());
        if (memcmp(&c, &again, sizeof c)) fail("the printed config parses to another struct", out);
        free(out);
    }
    free(text);
    return 0;
}
