"""What every layer shares and nothing in it depends on a layer: typed option schemas, input/output specs and
the batched-run helper, output metrics, built-in data folders, the per-run temp folder, and the piece that
makes `edgekit.export` & co. callable modules."""
