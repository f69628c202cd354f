"""Plain-Keras training: stage plans and weight transfer, fitting, cross-validation, metrics and plots.
No tracking or tuning library is imported here; they enter through callbacks and observers."""
