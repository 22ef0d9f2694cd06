"""Training: the one loop every method steps through (loop), training on a task's examples (supervised), prompt
tuning (prompt_tuning), and what they are made of: the step loss, checkpoints, initialisers, the residual
reparameterisation, precision and distributed helpers. Built on core/, tasks/ and evaluation/."""
