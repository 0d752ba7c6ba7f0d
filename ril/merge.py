"""Merge tables of the same request (torchrun shards, or partial runs) into one table.

Each image is taken from the first source that has it done; its rows are checked against the
source's checksum on the way and written with a fresh one. The result is written under a
temporary name (removed on failure) and renamed, so `out` is either the old file or the whole
merged table; it is marked complete only after its read-back check (see `writer`).
"""
import logging
import os

import numpy as np

from .format import FINGERPRINT_FIELDS, SETTING_FIELDS, compare_settings
from .reader import RILTable
from .writer import TableWriter, check_output_path, complete_table, create_table, replace_durably

logger = logging.getLogger(__name__)


def _read_sources(sources):
    tables = [RILTable(path, require_complete=False) for path in sources]
    fields = [name for name, _ in FINGERPRINT_FIELDS] + list(SETTING_FIELDS)
    for table in tables[1:]:
        compare_settings(tables[0].attrs, table.attrs, tables[0].path, table.path, fields)
    return tables


def copy_rows(tables, writer):
    """Copy every done image from the first source that has it; returns the merged done flags."""
    merged = np.any([table.done for table in tables], axis=0)
    for index in np.flatnonzero(merged):
        rows, size = next(table for table in tables if table.done[index]).image_rows(index)
        writer.write_image(int(index), size, rows)
    return merged


def merge_tables(sources, out, overwrite=False):
    """Merge `sources` into `out`; returns True when the merged table is complete."""
    if not sources:
        raise ValueError("merge needs at least one source table")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it with the merged table")
    check_output_path(out)
    tables = _read_sources(list(sources))
    first = tables[0]
    temporary = f"{out}.merging-{os.getpid()}"
    try:
        attrs = dict(first.attrs, complete=False, shard_rank=0, shard_count=1)
        create_table(temporary, attrs, first.image_paths, first.labels)
        with TableWriter(temporary, sync_each_image=False) as writer:
            merged = copy_rows(tables, writer)
        if merged.all():
            complete_table(temporary)
        replace_durably(temporary, out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    if not merged.all():
        logger.warning(
            "%s is unfinished: %d of %d images done; resume it with python -m ril precompute ... --out %s",
            out, int(merged.sum()), len(merged), out,
        )
    return bool(merged.all())
