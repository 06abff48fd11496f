"""Writers: output tables prepared, scored chunks staged, a run published at once."""
