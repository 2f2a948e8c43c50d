"""One module per ``slimllm`` subcommand."""
