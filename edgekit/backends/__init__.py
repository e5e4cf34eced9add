"""One module per runtime, each with an Exporter and a Runner; `registry` lists them without importing them."""
