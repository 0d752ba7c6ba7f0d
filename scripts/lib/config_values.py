"""Print what the protocol scripts need from method configs, resolved as train.py resolves them.

    python scripts/lib/config_values.py CONFIG.yaml [CONFIG.yaml ...] [-- KEY VALUE ...]

One line per config: OPTIM.MAX_EPOCH (the epoch eval-only loads), INPUT.SIZE height and width,
and INPUT.INTERPOLATION (both part of an RIL table's folder name), space-separated. The trailing KEY VALUE pairs
are merged after each config file, as train.py merges its opts (through trainers/config.py, so the
reference repositories' keys are taken as train.py takes them).
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

import trainers.dassl_compat  # noqa: E402,F401  (Dassl fixes, before Dassl is used)
from trainers.config import get_cfg, merge_file, merge_opts  # noqa: E402

EXIT_ERROR = 2


def config_values(config_file, opts):
    """(max_epoch, height, width, interpolation) of one method config plus `opts`."""
    cfg = get_cfg()
    merge_file(cfg, config_file, "config")
    merge_opts(cfg, opts)
    height, width = cfg.INPUT.SIZE
    return cfg.OPTIM.MAX_EPOCH, height, width, cfg.INPUT.INTERPOLATION


def main(argv):
    files, opts = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if not files or len(opts) % 2:
        print(__doc__.strip(), file=sys.stderr)
        return EXIT_ERROR
    for config_file in files:
        try:
            values = config_values(config_file, opts)
        except ValueError as error:  # names the file or the override
            print(f"config_values.py: {error}", file=sys.stderr)
            return EXIT_ERROR
        print(*values)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
