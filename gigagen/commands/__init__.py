"""One module per `gigagen` subcommand, each with add_parser(subparsers) and run(args)."""
