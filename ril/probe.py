"""Open tables from elsewhere safely: their HDF5 structure is read first in a child process.

Damaged HDF5 metadata (a flipped byte in an object header, a B-tree or a heap) can make the
HDF5 library segfault or loop forever in whatever process reads it, taking a training run or
`verify` down with it. `load_layout` runs `format.read_layout` in a short-lived child
(`python -c`, importing only h5py and numpy); only when the child finished cleanly does this
process make the same HDF5 calls on the same bytes, which then behave the same way.
"""
import os
import signal
import subprocess
import sys

from .format import RILTableError, open_table_file, read_layout

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # makes `ril` importable in the child
PROBE_SECONDS = 120  # metadata of a healthy table reads in well under a second
IN_MEMORY_BYTES_PER_SECOND = 10e6  # in memory, the child also reads non-contiguous datasets
EXIT_TABLE_ERROR = 3  # the child's exit status for a clean RILTableError (its message on stderr)
CORRUPT_ADVICE = "copy it again from a good source, or rebuild it with python -m ril precompute --overwrite"


def probe_in_child(path, in_memory):
    """The child's work: read the layout, report a RILTableError as EXIT_TABLE_ERROR."""
    try:
        with open_table_file(path) as handle:
            read_layout(handle, path, in_memory)
    except RILTableError as error:
        print(error, file=sys.stderr)
        sys.exit(EXIT_TABLE_ERROR)


def _child_failure(path, result):
    if result.returncode == EXIT_TABLE_ERROR:
        return RILTableError(result.stderr.strip())
    if result.returncode < 0:
        how = f"the HDF5 library crashed ({signal.Signals(-result.returncode).name})"
    else:
        lines = result.stderr.strip().splitlines()
        how = f"reading it failed ({lines[-1] if lines else f'exit status {result.returncode}'})"
    return RILTableError(
        f"RIL table {path} is a corrupt file: {how} while reading its HDF5 structure; {CORRUPT_ADVICE}"
    )


def probe_table(path, in_memory=False, timeout=None):
    """Raise RILTableError if reading `path`'s structure (in a child process) fails, crashes or hangs."""
    if not os.path.isfile(path):
        open_table_file(path)  # raises its FileNotFoundError
    if timeout is None:
        timeout = PROBE_SECONDS + (os.path.getsize(path) / IN_MEMORY_BYTES_PER_SECOND if in_memory else 0)
    code = f"from ril.probe import probe_in_child; probe_in_child({os.fspath(path)!r}, {bool(in_memory)!r})"
    python_path = os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path, PYTHONWARNINGS="ignore")
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, encoding="utf-8",
                                errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise RILTableError(
            f"RIL table {path} is a corrupt file: reading its HDF5 structure did not finish within {timeout:.0f} s "
            f"(damaged metadata can make HDF5 loop forever); {CORRUPT_ADVICE}"
        ) from error
    if result.returncode != 0:
        raise _child_failure(path, result)


def load_layout(path, in_memory=False):
    """`format.TableLayout` of an existing table, its structure probed in a child first."""
    probe_table(path, in_memory)
    with open_table_file(path) as handle:
        return read_layout(handle, path, in_memory)
