from hookdrop.cli import main

main()
