"""`edgekit quickstart`: the whole path on an embedded example, in one command and one report folder.

`image` distils the zoo's digits CNN, exports it to every installed target, benchmarks and recommends;
`text` (`--task text`) does the same for a sentence encoder: a 1/8-size student of all-MiniLM-L6-v2
distilled on offline English prose, exported to the targets that take token models.
"""
