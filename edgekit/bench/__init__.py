"""The benchmark harness (`edgekit bench`): latency, memory, size and accuracy of artifacts, per device.

Layout, so each piece can change alone:

- `harness`  what is measured and in which order (interleaved rounds), references, records;
- `worker`   the process that loads one artifact and times it (runs on the device, speaks JSON lines);
- `devices`  where workers run: a Device starts workers and moves files; `local` now, ssh/adb later;
- `records`  the benchmark record of DESIGN.md: its fields, statistics, validation, flattening;
- `report`   the terminal table, JSON, CSV and the latency-vs-accuracy Pareto plot.

Nothing heavy is imported here: the worker imports this package on the device before it measures memory.
"""
