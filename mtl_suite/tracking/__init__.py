"""MLflow lives here (and in cli/ and tuning/): runs, tags, the Keras logging callback, the registry."""
