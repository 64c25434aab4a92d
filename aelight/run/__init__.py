"""The run layer, under every command (``aelight.cli``, the applications, the sweep, export):

- ``folders``: the run folder, its layout, claiming and naming (plain Python);
- ``models`` and ``run_data``: a checkpoint becomes a model, and its run's data, one way;
- ``recording``: what a run made, into its result.json (``aelight.run_result``);
- ``arguments`` and ``trainer_cli``: the training commands' LightningCLI;
- ``api``: ``fit`` / ``validate`` / ``test`` / ``predict`` as library calls (``aelight.fit``);
- ``application``: what every command outside training shares (data options, device check, the
  report folder, one-line errors).

Nothing is imported here, so that ``aelight.run.folders`` stays light."""
