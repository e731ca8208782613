"""nodeguard's own netfilter rules: a model, three backends, the choice between them, a watcher."""
