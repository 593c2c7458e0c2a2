/* Run configuration (docs/architecture.md section 8): strict JSON with documented defaults.
 * Every key is listed in configs/README.md with its default. Unknown keys, wrong types and
 * impossible values are errors naming the key path ("model.n_heads: must divide model.d_model"). */
#ifndef CFORMER_CONFIG_H
#define CFORMER_CONFIG_H

#include "schema.h"

/* Parse JSON text over the defaults, then apply overrides ("model.n_layers=6"; the value is JSON,
 * or a bare string), then validate. 0 on success, else -1 with cf_error_msg() = one line that
 * names the key path. check_files: also require the data files to exist. */
int cf_config_parse(cf_config *c, const char *json_text, const char *const *overrides, int n_overrides,
                    int check_files);
int cf_config_load(cf_config *c, const char *path, const char *const *overrides, int n_overrides,
                   int check_files);
/* the resolved config (every key, defaults filled in) as pretty JSON; caller frees */
char *cf_config_to_json(const cf_config *c);

#endif
