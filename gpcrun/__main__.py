from gpcrun.cli.main import main

main()
