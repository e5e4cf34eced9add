"""Where models come from: `source` resolves what a user names (an nn.Module, `module:factory`, a .onnx or
.pt2 file, `zoo:NAME`, `hf:DIR`) into one SourceModel; `hf` reads local Hugging Face folders; `checkpoint`
loads weights and exported programs as data, never as code."""
