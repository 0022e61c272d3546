"""The `tagserver` command and its groups of subcommands."""
