from voxseg.cli import main

main()
