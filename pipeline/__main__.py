from pipeline.encode import main

main()
