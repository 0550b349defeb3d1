from ftgen.cli import main

main()
