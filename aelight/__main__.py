from aelight.cli import main

main()
