"""The container marketers edit: parse, validate, compile, its history and what changed."""
