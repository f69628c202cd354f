"""Importing this registers every Keras layer class of the suite that a saved classifier may hold (stain control,
test-time flips, colour features), so a safe-mode load finds them: import it before loading a stage run's model."""

import mtl_suite.models.colour  # noqa: F401
import mtl_suite.models.ensemble  # noqa: F401
import mtl_suite.models.ood  # noqa: F401
import mtl_suite.models.stain  # noqa: F401
