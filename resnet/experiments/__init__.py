"""Experiments over many runs: the runner that plans, resumes and records them, and the studies built on it
(the published optimizer/lr/dropout/size grid, the remove-one ablation, time to accuracy).

This layer trains through the core (``resnet``) and never imports the studio."""
