from ptgpt.cli import main

main()
