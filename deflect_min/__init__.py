"""deflect_min: DEFLECT in a few small modules."""
