from jobs.entry import main

main()
