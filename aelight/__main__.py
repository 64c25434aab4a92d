from aelight.commands import main

main()
