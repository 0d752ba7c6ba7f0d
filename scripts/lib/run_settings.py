"""Compare a protocol step's command with the settings its run folder records; exit 1 naming every difference.

    python scripts/lib/run_settings.py DIR ROOT REPO_ROOT -- COMMAND ...

The record is DIR/settings.txt (the command of the latest attempt), else the command on the second
line of DIR/finished.txt, else the last attempt in DIR/console.txt ('### <date>: <command>'). A
command's settings are its train.py or `ril precompute` flags and KEY VALUE overrides (the last
value of a key wins, as in yacs), except how it runs: the interpreter and launcher, --output-dir
(DIR itself), --workers, --device and USE_CUDA. An RIL table's method config (`ril precompute
--config-file`) is not compared either: a table takes only INPUT.SIZE and INPUT.INTERPOLATION from
it, and these name the table's folder, so every FDBPL-family trainer whose config cuts regions the
same way shares the table. Paths are compared relative to the repository (the folder of train.py;
for a table, the one holding its --dataset-config-file) and to the output root ROOT, so either may
move. Prints nothing and exits 0 when there is no record or the settings agree.
"""
import os
import re
import shlex
import sys

SETTINGS, MARKER, CONSOLE = "settings.txt", "finished.txt", "console.txt"
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
HOW_IT_RUNS = ("--output-dir", "--workers", "--device", "USE_CUDA")
SHIPPED_DATASET_CONFIG = re.compile(r"^(/.+)/configs/datasets/[^/]+\.yaml$")
TABLE_FOLDER_NAMES = ("--config-file",)  # what `ril precompute` takes from it is in the folder's name
NOT_GIVEN = "(not given)"
EXIT_DIFFERENT, EXIT_USAGE = 1, 2


def program(words):
    """(name, index of its first argument, repository root or None) of a train.py, ood_eval.py or ril precompute
    command."""
    for i, word in enumerate(words):
        if word.endswith("train.py"):
            return "train.py", i + 1, os.path.dirname(word)
        if word.endswith(os.path.join("scripts", "ood_eval.py")):
            return "ood_eval.py", i + 1, os.path.dirname(os.path.dirname(word))
        if words[i:i + 3] == ["-m", "ril", "precompute"]:
            return "ril precompute", i + 3, table_repo(words[i + 3:])
    return None


def table_repo(args):
    """The repository of a `ril precompute` command (which names no script): the one holding its
    --dataset-config-file, when that is one of the repository's dataset configs; else None."""
    if "--dataset-config-file" in args[:-1]:
        match = SHIPPED_DATASET_CONFIG.match(args[args.index("--dataset-config-file") + 1])
        return match.group(1) if match else None
    return None


def settings(words, root, repo_root):
    """{item: value} of a command, paths relative to the repository and to the output root; None if no command."""
    found = program(words)
    if found is None:
        return None
    name, start, own_repo = found
    args = words[start:]
    items, i = {"program": name}, 0
    while i < len(args) and not CONFIG_KEY.match(args[i]):  # flags, then KEY VALUE pairs
        takes_value = i + 1 < len(args) and not args[i + 1].startswith("--") and not CONFIG_KEY.match(args[i + 1])
        items[args[i]] = args[i + 1] if takes_value else "(set)"
        i += 2 if takes_value else 1
    for key, value in zip(args[i::2], args[i + 1::2]):
        items[key] = value
    for item in HOW_IT_RUNS + (TABLE_FOLDER_NAMES if name == "ril precompute" else ()):
        items.pop(item, None)
    prefixes = [(own_repo or repo_root) + os.sep, root.rstrip(os.sep) + os.sep]
    return {item: relative(value, prefixes) for item, value in items.items()}


def relative(value, prefixes):
    repo, root = prefixes
    if value.startswith(repo):
        return value[len(repo):]
    return "<output root>" + os.sep + value[len(root):] if value.startswith(root) else value


def recorded_root(words, rel):
    """The output root of a recorded command: its --output-dir (or --out table's folder) without `rel`."""
    for flag, folder in (("--output-dir", lambda path: path), ("--out", os.path.dirname)):
        if flag in words[:-1]:
            path = folder(words[words.index(flag) + 1]).rstrip(os.sep)
            if path.endswith(os.sep + rel):
                return path[:-len(rel)]
    return None


def record(run_dir):
    """(file, command words) of the newest record in `run_dir`, or (None, None)."""
    settings_file, marker, console = (os.path.join(run_dir, name) for name in (SETTINGS, MARKER, CONSOLE))
    lines = []
    if os.path.isfile(settings_file):
        lines = [(settings_file, open(settings_file, encoding="utf-8").read().strip())]
    elif os.path.isfile(marker):
        lines = [(marker, line) for line in open(marker, encoding="utf-8").read().splitlines()[1:2]]
    elif os.path.isfile(console):
        attempts = [line.split(": ", 1) for line in open(console, encoding="utf-8", errors="replace")
                    if line.startswith("### ")]
        lines = [(console, attempt[1].strip()) for attempt in attempts[-1:] if len(attempt) == 2]
    for path, line in lines:
        try:
            return path, shlex.split(line)
        except ValueError:
            return None, None
    return None, None


def differences(run_dir, root, repo_root, command):
    """'item: recorded X, now Y' for every setting of `command` that `run_dir` records otherwise."""
    path, words = record(run_dir)
    rel = os.path.relpath(run_dir, root)
    old = settings(words, recorded_root(words, rel) or root, repo_root) if words else None
    if old is None:
        return path, []
    new = settings(command, root, repo_root)
    return path, [f"{item}: recorded {old.get(item, NOT_GIVEN)}, now {new.get(item, NOT_GIVEN)}"
                  for item in sorted(set(old) | set(new), key=lambda item: (item[0] != "-", item))
                  if old.get(item) != new.get(item)]


def main(argv):
    if len(argv) < 5 or argv[3] != "--":
        print(__doc__.strip(), file=sys.stderr)
        return EXIT_USAGE
    run_dir, root, repo_root, command = argv[0], argv[1], argv[2], argv[4:]
    path, found = differences(run_dir, root, repo_root, command)
    if found:
        print(f"{run_dir} holds a run with other settings ({path}):\n  " + "\n  ".join(found)
              + f"\nIts results are not this sweep's. Give this sweep another --out (--ril-dir for an RIL"
              f" table), or delete {run_dir} to run it again with these settings.")
        return EXIT_DIFFERENT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
