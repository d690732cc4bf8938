from clapsep_cli.cli import main

main()
