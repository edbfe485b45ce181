"""Dataset parsers: `load(root, **kwargs) -> records.ReidDataset` each.

market1501, dukemtmc, msmt17, veri776, cuhk03 (new protocol, labeled or
detected) and mars (video: frames with their tracklet) are the published
datasets, with their published sizes (`SIZES`, or `published_sizes(kind)`);
synthetic, synthetic_cuhk03 and synthetic_mars are drawn on first use in the
Market, CUHK03 and MARS layouts and read back by those parsers; folder
(Market-style folders) and csv_list (a CSV file) take custom data. The
registry (jreid/registry.py) maps `config.data.name` to them; `common`
holds the shared root search, listing, name parsing and size checks.
"""
