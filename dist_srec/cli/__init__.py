"""The `dist-srec` command line: each module maps one group of subcommands' flags onto the library's
configs and calls it (`main` builds the parser)."""
