"""The Hugging Face layer: loading, devices and dtypes, token formats, data, judges."""
