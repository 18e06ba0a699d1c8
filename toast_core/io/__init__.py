"""Reading and writing: checkpoints (safetensors + JSON), safe state-dict loading, images, importers of
other projects' checkpoints. Nothing here executes code from a file."""
