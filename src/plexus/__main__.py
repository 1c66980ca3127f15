from plexus.cli.main import main

main()
