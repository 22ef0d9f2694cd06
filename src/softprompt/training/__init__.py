"""The training loop for soft prompts and what it is made of: the step loss, checkpoints, initialisers, the
residual reparameterisation, precision and distributed helpers. Built on core/, tasks/ and evaluation/."""
