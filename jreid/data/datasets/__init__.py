"""Dataset parsers: `load(root, **kwargs) -> records.ReidDataset` each.

market1501, dukemtmc, msmt17, veri776 (the published datasets, with their
published sizes in `SIZES`), synthetic (generated on first use), and for
custom data folder (Market-style folders) and csv_list (a CSV file). The
registry (jreid/registry.py) maps `config.data.name` to them; `common`
holds the shared root search, listing, name parsing and size checks.
"""
