from irnn_search.cli import main

main()
