from promptcast.cli import main

main()
