"""Problem catalogue, baselines, normalized scoring, and the reference optimizers."""
