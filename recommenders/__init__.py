"""scikit-learn models that choose offers. They take feature frames and return arrays;
they know nothing of the database or of Prefect (filled in by the recommenders issue)."""
