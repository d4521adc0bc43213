"""Stage 2, the model: G's and D's torch modules and the seeded noise draws. Pure functions of
their inputs: no Ray, no files."""
