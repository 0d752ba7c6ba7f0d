"""Region Information Lookup (RIL) tables: a teacher's soft labels for random regions of every
training image, computed once offline (`python -m ril precompute`) and read back in training.

Modules: `format` (schema, fingerprint, validation), `integrity` (checksums, value checks), `probe`
(opening a table's HDF5 structure in a child process first), `writer` (creation, checked writes,
read-back), `crops` (deterministic regions), `teachers`, `templates`, `precompute`, `merge`,
`reader`, `region_dataset`, `features`, `summary`; `__main__` is the CLI.
Kept import-light: nothing here imports Dassl.
"""
