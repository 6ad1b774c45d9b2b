from cartspec.cli import main

main()
