"""Training components: a dataset and hyperparameters in, a servable model folder out."""
